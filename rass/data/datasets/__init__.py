from .register import register_all
from .lqseg import load_image_mask_folder, register_image_mask_folder  # registers the LQSeg sets
from .sem_seg import IGNORE_LABEL, NUM_ADE20K_CLASSES, DatasetRoot, load_sem_seg_split, register_sem_seg_split

register_all()

__all__ = ["register_all", "load_sem_seg_split", "register_sem_seg_split", "DatasetRoot", "IGNORE_LABEL", "NUM_ADE20K_CLASSES"]
