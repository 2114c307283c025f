"""HQ-SAM (SysCV/sam-hq, NeurIPS 2023) on transformers' `SamHQModel`, composed: configs and builder of the
released sizes (and tiny / custom), the encoder with its early features, and prompted decoding. Released weights
(`sam_hq_vit_{b,l,h}.pth`, original names) load with `rass.checkpoint.sam_hq_loader.load_sam_hq_checkpoint`."""
from .build import HQ_MODULES, build_sam_hq, init_sam_hq_weights, sam_config_of, sam_hq_config
from .predict import sam_hq_image_embeddings, sam_hq_predict

__all__ = ["HQ_MODULES", "build_sam_hq", "init_sam_hq_weights", "sam_config_of", "sam_hq_config",
           "sam_hq_image_embeddings", "sam_hq_predict"]
