"""Project configuration: every key RASS adds to detectron2's defaults, and `setup_cfg`.

Each key carries a one-line comment. Keys are grouped by the part of the project that reads
them; a module reads the config only in its `from_config`.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .degradation import add_degradation_config
from .robustsam import add_robustsam_config
from .stable_sam import add_stable_sam_config
from .sam import add_glesam_config, add_promptable_config, add_sam_config
from .sam2 import add_sam2_config
from .sam_hq import add_sam_hq_config

__all__ = ["add_rass_config", "setup_cfg"]


def _add_data_config(cfg: CN) -> None:
    """Data loading, augmentation and dataset keys."""
    # Name of the dataset mapper used for training ("rass_semantic").
    cfg.INPUT.DATASET_MAPPER_NAME = "rass_semantic"
    # Apply SSD-style colour augmentation (brightness/contrast/saturation/hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Retry random crops until no single category covers more than this fraction of the crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad images/labels to this size in the mapper (-1: no padding in the mapper).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Check that every label value is in 0..NUM_CLASSES-1 or IGNORE_VALUE when it is loaded.
    cfg.INPUT.VALIDATE_LABELS = True
    # EXIF orientation of labelled images (datasets): "apply" (turned upright, as detectron2; labels must follow the upright image) or "ignore" (stored pixels).
    cfg.INPUT.LABELLED_EXIF = "apply"


def _add_solver_config(cfg: CN) -> None:
    """Optimiser keys (AdamW with a backbone learning-rate multiplier)."""
    # Optimiser: "ADAMW", "ADAM" (L2 weight decay in the gradient, GleSAM's stage 2) or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier for every parameter under `backbone.`.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of embedding parameters (query embeddings, level embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Power of the polynomial LR decay used by LR_SCHEDULER_NAME "WarmupPolyLR".
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Keep only the newest N periodic checkpoints (0: keep all; model_final.pth is always kept).
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
    # A total loss above this many times the median of the run's first in-range losses (or a NaN / inf one)
    # marks the checkpoints whose weights gave it as diverged (OUTPUT_DIR/diverged_checkpoints.json); --resume
    # skips them. 0: only NaN / inf losses count.
    cfg.SOLVER.LOSS_RANGE_FACTOR = 100.0
    r = cfg.SOLVER.PARAM_RULES = CN()
    # Regexes on trainable parameter names (re.search); the first one that matches sets the LR multiplier and
    # weight decay below (the same index); a parameter no rule matches keeps the default rules. []: none.
    r.PATTERNS = []
    # LR multiplier of each PATTERNS entry (x SOLVER.BASE_LR).
    r.LR_MULTIPLIERS = []
    # Weight decay of each PATTERNS entry (replaces WEIGHT_DECAY / _NORM / _EMBED).
    r.WEIGHT_DECAYS = []



def _add_test_config(cfg: CN) -> None:
    """Evaluation and output keys."""
    # Pictures written per evaluated dataset (0: none): semantic input | GT | prediction panels, promptable
    # image | GT | SAM | GleSAM grids (prompts drawn, IoU per mask).
    cfg.TEST.NUM_VIS = 0


def _add_mask_former_config(cfg: CN) -> None:
    """Mask2Former head keys (meta-architecture, pixel decoder, transformer decoder, loss).

    Names and defaults are Mask2Former's (its published configs override many of them); keys
    added by this project are marked "(RASS)".
    """
    mf = cfg.MODEL.MASK_FORMER = CN()
    # Add the loss of every intermediate decoder prediction (deep supervision).
    mf.DEEP_SUPERVISION = True
    # Class-loss weight of the "no object" class.
    mf.NO_OBJECT_WEIGHT = 0.1
    # Weight of the classification loss (and of the class term of the matching cost).
    mf.CLASS_WEIGHT = 1.0
    # Weight of the Dice loss (and of the Dice term of the matching cost).
    mf.DICE_WEIGHT = 1.0
    # Weight of the sigmoid BCE mask loss (and of the BCE term of the matching cost).
    mf.MASK_WEIGHT = 20.0
    # Attention heads of the transformer decoder.
    mf.NHEADS = 8
    # Dropout of the transformer layers (the pixel decoder's deformable encoder uses it too).
    mf.DROPOUT = 0.1
    # Hidden width of the transformer decoder's feed-forward blocks.
    mf.DIM_FEEDFORWARD = 2048
    # Transformer encoder layers of MaskFormer (v1) decoders; unused by Mask2Former's decoder.
    mf.ENC_LAYERS = 0
    # Decoder layers + 1: the learnable queries get their own prediction and loss.
    mf.DEC_LAYERS = 6
    # Pre-LayerNorm transformer blocks.
    mf.PRE_NORM = False
    # Width of the queries / transformer decoder.
    mf.HIDDEN_DIM = 256
    # Number of queries.
    mf.NUM_OBJECT_QUERIES = 100
    # What the transformer decoder attends to: "multi_scale_pixel_decoder" (Mask2Former),
    # "transformer_encoder", "pixel_embedding" or a backbone feature name.
    mf.TRANSFORMER_IN_FEATURE = "res5"
    # Add a 1x1 input projection even when the input width equals HIDDEN_DIM.
    mf.ENFORCE_INPUT_PROJ = False
    # Registered name of the transformer decoder.
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Pad the batch to a multiple of this (-1: the backbone's size_divisibility).
    mf.SIZE_DIVISIBILITY = 32
    # Points per mask on which the mask losses and the matching cost are evaluated (112 * 112).
    mf.TRAIN_NUM_POINTS = 112 * 112
    # PointRend oversampling: candidates per point for importance sampling (k of the paper).
    mf.OVERSAMPLE_RATIO = 3.0
    # Fraction of points chosen by uncertainty, the rest uniformly (beta of the paper).
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    # (RASS) Seed of the point samplers of the matcher and the criterion (+ process rank).
    mf.POINT_SAMPLE_SEED = 0
    mf.TEST = CN()
    # Output semantic segmentation ("sem_seg").
    mf.TEST.SEMANTIC_ON = True
    # Instance outputs (not implemented in this project: must stay False).
    mf.TEST.INSTANCE_ON = False
    # Panoptic outputs (not implemented in this project: must stay False).
    mf.TEST.PANOPTIC_ON = False
    # Panoptic/instance score threshold of a query (unused for semantic segmentation).
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic overlap threshold (unused for semantic segmentation).
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize the mask logits to the output size before combining them with the class scores.
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    head = cfg.MODEL.SEM_SEG_HEAD
    # Channels of the per-pixel mask features.
    head.MASK_DIM = 256
    # Layers of the pixel decoder's (deformable) transformer encoder.
    head.TRANSFORMER_ENC_LAYERS = 0
    # Registered name of the pixel decoder (this project registers "MSDeformAttnPixelDecoder").
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Backbone levels read by the deformable encoder (the finer IN_FEATURES get FPN convs).
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Sampling points per head and level of the deformable attention.
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    # Heads of the deformable attention.
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # (RASS) Feed-forward width of the deformable encoder layers (fixed to 1024 in Mask2Former).
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024
    # (RASS) Deformable attention op: "auto" (compiled kernel if available), "kernel" or "torch".
    head.DEFORMABLE_ATTENTION_BACKEND = "auto"


def _add_backbone_config(cfg: CN) -> None:
    """Restoration-adapted diffusion backbone keys (MODEL.RASS, MODEL.FEATURE_PROJECTION)."""
    cfg.MODEL.RASS = CN()
    # Local Stable Diffusion 2.1-base folder in diffusers layout (unet/, vae/, text_encoder/, tokenizer/); "" = random init from ARCH.
    cfg.MODEL.RASS.SD_PATH = ""
    # Packaged architecture used when SD_PATH is "": "sd21_base" (full size), "tiny", or a folder holding unet.json/vae.json/text_encoder.json.
    cfg.MODEL.RASS.ARCH = "sd21_base"
    # Restoration LoRA in OSEDiff format (the release's scr.pkl), merged into the UNet before the trainable adapters; "" = none.
    cfg.MODEL.RASS.RESTORATION_LORA_PATH = ""
    # LoRA alpha the restoration LoRA was trained with (scaling = alpha / rank_unet; peft's default 8 for OSEDiff).
    cfg.MODEL.RASS.RESTORATION_LORA_ALPHA = 8.0
    # Rank of the new trainable UNet LoRA adapter (4 as released; 0 = no adapter).
    cfg.MODEL.RASS.LORA_RANK = 4
    # Alpha of the trainable adapter (scaling = alpha / rank; 8 = peft's default, as released).
    cfg.MODEL.RASS.LORA_ALPHA = 8.0
    # Substrings of UNet weight names whose layers get the trainable adapter (the released list; bias/norm/conv_out never).
    cfg.MODEL.RASS.LORA_TARGETS = [
        "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in",
        "conv_shortcut", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
    ]
    # Train the UNet conv_in weight and bias (as released).
    cfg.MODEL.RASS.TRAIN_CONV_IN = True
    # UNet timestep of the single feature pass (1 as released; no noise is added).
    cfg.MODEL.RASS.TIMESTEP = 1
    # Latent taken from the VAE posterior: "sample" (as released) or "mean".
    cfg.MODEL.RASS.LATENT = "sample"
    # Seed of the backbone's posterior samples: training mixes in rank and iteration (a resume continues the stream), eval re-seeds from it at every forward.
    cfg.MODEL.RASS.SEED = 0
    # Tapped modules (paths inside the backbone); their outputs are the features indexed by FEATURE_PROJECTION.
    cfg.MODEL.RASS.FEATURE_TAPS = [
        "vae.encoder.down_blocks.1", "vae.encoder.down_blocks.3",
        "unet.up_blocks.0", "unet.up_blocks.1", "unet.up_blocks.2", "unet.up_blocks.3",
    ]
    # Text appended to every tagger prompt after ", " (the release's pos_prompt_vsd, "").
    cfg.MODEL.RASS.PROMPT_SUFFIX = ""
    # Number of distinct prompts whose text embeddings are cached (0 = no cache).
    cfg.MODEL.RASS.PROMPT_CACHE_SIZE = 512
    # Gradient checkpointing inside the UNet blocks (saves activation memory in training).
    cfg.MODEL.RASS.GRADIENT_CHECKPOINTING = False
    # dtype of the frozen VAE and text encoder: "float32", "float16" or "bfloat16".
    cfg.MODEL.RASS.FROZEN_DTYPE = "float32"
    cfg.MODEL.RASS.SLIDING_WINDOW = CN()
    # Test-time sliding-window feature extraction (as released); training always uses the whole image.
    cfg.MODEL.RASS.SLIDING_WINDOW.ENABLED = True
    # Square window side in pixels (0 = the input's short side, as released); a multiple of 8 (the VAE's factor).
    cfg.MODEL.RASS.SLIDING_WINDOW.SIZE = 0
    # Window stride in pixels (0 = the window side, as released); a multiple of 8.
    cfg.MODEL.RASS.SLIDING_WINDOW.STRIDE = 0
    # Windows run through the backbone together in one batch.
    cfg.MODEL.RASS.SLIDING_WINDOW.BATCH_SIZE = 4

    # Released key names; feature i below is the output of MODEL.RASS.FEATURE_TAPS[i].
    cfg.MODEL.FEATURE_PROJECTION = CN()
    # Channels of each tapped feature ([] = inferred from the VAE/UNet configs).
    cfg.MODEL.FEATURE_PROJECTION.FEATURE_DIMS = [256, 512, 1280, 1280, 640, 320]
    # Groups of feature indices projected together (released: every feature alone).
    cfg.MODEL.FEATURE_PROJECTION.GROUPED_INDICES = [[0], [1], [2], [3], [4], [5]]
    # Stride of each tapped feature w.r.t. the input ([] = inferred); features of one stride are summed.
    cfg.MODEL.FEATURE_PROJECTION.FEATURE_STRIDES = [4, 8, 32, 16, 8, 8]
    # Output feature names (res<log2 stride>) given to the head.
    cfg.MODEL.FEATURE_PROJECTION.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Channels of every projected feature (512 as released).
    cfg.MODEL.FEATURE_PROJECTION.PROJECTION_DIM = 512
    # detectron2 BottleneckBlocks per projection (bottleneck width PROJECTION_DIM // 4).
    cfg.MODEL.FEATURE_PROJECTION.NUM_BLOCKS = 1
    # Normalisation in the projection blocks (detectron2 get_norm name; "GN" = 32 groups).
    cfg.MODEL.FEATURE_PROJECTION.NORM = "GN"
    # Strides are clamped to [MIN_STRIDE, MAX_STRIDE] before grouping (4 and 32 as released).
    cfg.MODEL.FEATURE_PROJECTION.MIN_STRIDE = 4
    # Upper clamp of feature strides.
    cfg.MODEL.FEATURE_PROJECTION.MAX_STRIDE = 32


def _add_tagger_config(cfg: CN) -> None:
    """Image tagger keys (RAM / DAPE prompts)."""
    cfg.MODEL.TAGGER = CN()
    # Registered tagger producing the UNet text prompts: "none" (fixed prompt), "ram" or "dape".
    cfg.MODEL.TAGGER.NAME = "none"
    # The prompt of the "none" tagger (the release's empty prompt when no tagger is used).
    cfg.MODEL.TAGGER.PROMPT = ""
    # Which image the tagger reads: "clean_train_lq_test" (as released) or "lq" (always the LQ input).
    cfg.MODEL.TAGGER.INPUT = "clean_train_lq_test"

    # RAM (recognize-anything ram_swin_large_14m); the "dape" tagger uses these keys too.
    cfg.MODEL.TAGGER.RAM = CN()
    # Local ram_swin_large_14m.pth, loaded strictly ("": random initialisation, for tests/shape checks).
    cfg.MODEL.TAGGER.RAM.WEIGHTS = ""
    # Local tag list, one tag per line (RAM's ram_tag_list.txt); required when WEIGHTS is set.
    cfg.MODEL.TAGGER.RAM.TAG_LIST = ""
    # Number of tags when TAG_LIST is "" (random-init builds only; tags are then named "tag<i>").
    cfg.MODEL.TAGGER.RAM.NUM_CLASSES = 4585
    # Local per-class thresholds file, one float per tag (RAM's ram_tag_list_threshold.txt); "": DEFAULT_THRESHOLD.
    cfg.MODEL.TAGGER.RAM.THRESHOLDS = ""
    # Threshold on sigmoid(logit) for every tag when THRESHOLDS is "" (RAM's default).
    cfg.MODEL.TAGGER.RAM.DEFAULT_THRESHOLD = 0.68
    # Tag indices never emitted (RAM's delete_tag_index; RAM's published inference deletes none).
    cfg.MODEL.TAGGER.RAM.DELETE_TAG_INDICES = []
    # Side of the square tagger input (images are resized to it, bilinear).
    cfg.MODEL.TAGGER.RAM.IMAGE_SIZE = 384
    # Antialias that resize (False: as released, torchvision 0.16's tensor Resize, whose prompts RASS was trained with).
    cfg.MODEL.TAGGER.RAM.ANTIALIAS = False
    # ImageNet mean (RGB, 0..1 scale) subtracted after resizing.
    cfg.MODEL.TAGGER.RAM.PIXEL_MEAN = [0.485, 0.456, 0.406]
    # ImageNet std (RGB, 0..1 scale) divided after resizing.
    cfg.MODEL.TAGGER.RAM.PIXEL_STD = [0.229, 0.224, 0.225]
    # Swin encoder: channels of the first stage (Swin-L: 192).
    cfg.MODEL.TAGGER.RAM.SWIN_EMBED_DIM = 192
    # Swin encoder: blocks per stage (Swin-L: 2, 2, 18, 2).
    cfg.MODEL.TAGGER.RAM.SWIN_DEPTHS = [2, 2, 18, 2]
    # Swin encoder: attention heads per stage.
    cfg.MODEL.TAGGER.RAM.SWIN_NUM_HEADS = [6, 12, 24, 48]
    # Swin encoder: window side (12 at 384 input).
    cfg.MODEL.TAGGER.RAM.SWIN_WINDOW_SIZE = 12
    # Width of the label embeddings and projected image tokens (RAM: 512).
    cfg.MODEL.TAGGER.RAM.EMBED_DIM = 512
    # Local BERT config (JSON file or folder with config.json) of the tag encoder/text decoder; "": RAM's built-in.
    cfg.MODEL.TAGGER.RAM.TEXT_BERT_CONFIG = ""
    # Local BERT config (JSON file or folder with config.json) of the tagging head; "": RAM's built-in (2 layers).
    cfg.MODEL.TAGGER.RAM.HEAD_BERT_CONFIG = ""
    # Build RAM's tag encoder and text decoder (unused for tagging; needed for the checkpoint's exact names).
    cfg.MODEL.TAGGER.RAM.TEXT_MODULES = True
    # Compute dtype on CUDA: "float32", "float16" (as released) or "bfloat16"; CPU always runs float32.
    cfg.MODEL.TAGGER.RAM.DTYPE = "float16"
    # Images per tagger forward pass (larger batches are split).
    cfg.MODEL.TAGGER.RAM.BATCH_SIZE = 8
    # Cache tags per image content while the model is in eval mode (cleared when it goes back to training).
    cfg.MODEL.TAGGER.RAM.CACHE = True
    # Maximal number of cached images (least recently used are dropped).
    cfg.MODEL.TAGGER.RAM.CACHE_SIZE = 10000

    # DAPE (SeeSR): RAM with loralib-style LoRA on Swin qkv (q, v) and BERT query/key.
    cfg.MODEL.TAGGER.DAPE = CN()
    # Local DAPE.pth (the LoRA entries), loaded non-strictly on top of MODEL.TAGGER.RAM.WEIGHTS.
    cfg.MODEL.TAGGER.DAPE.WEIGHTS = ""
    # LoRA rank of the adapters (DAPE: 8).
    cfg.MODEL.TAGGER.DAPE.LORA_RANK = 8
    # LoRA alpha; updates are scaled by alpha / rank (loralib's default 1, as SeeSR uses).
    cfg.MODEL.TAGGER.DAPE.LORA_ALPHA = 1.0


def _add_checkpoint_config(cfg: CN) -> None:
    """Checkpoint loading keys (MODEL.WEIGHTS handling)."""
    # Accept a MODEL.WEIGHTS file that leaves trainable parameters unloaded or has other shapes (e.g.
    # fine-tuning with another head / NUM_CLASSES); False: such a file is an error naming the counts.
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = False
    # Let MODEL.WEIGHTS be a URL (detectron2://, catalog://, http(s)://) that detectron2 downloads into its cache;
    # False: a URL is refused, naming the address to download by hand and the key to set.
    cfg.MODEL.ALLOW_DOWNLOADS = False


def add_rass_config(cfg: CN) -> None:
    """Add every RASS key (with its default) to a detectron2 config, in place.

    Args:
        cfg: a detectron2 `CfgNode`, usually from `detectron2.config.get_cfg()`.
    """
    from rass import register_all

    register_all()  # the names the config refers to (datasets, models) are registered
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_mask_former_config(cfg)
    add_degradation_config(cfg)
    _add_backbone_config(cfg)
    _add_tagger_config(cfg)
    _add_checkpoint_config(cfg)
    add_sam_config(cfg)
    add_glesam_config(cfg)
    add_promptable_config(cfg)
    add_sam2_config(cfg)
    add_robustsam_config(cfg)
    add_sam_hq_config(cfg)
    add_stable_sam_config(cfg)


def setup_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Build the project config: detectron2 defaults + RASS keys + a YAML file + overrides.

    YAML files are read with a safe loader (no Python tags). Problems are `UserError`s that name
    the file or override (`rass.utils.config_loading`): an unknown key is a `KeyError` (with a
    close key as hint), a missing file or `_BASE_` a `FileNotFoundError`, malformed YAML or a value
    of the wrong type a `ValueError` quoting the value given. Relative ``output/``, ``weights/``,
    ``datasets/`` paths of the packaged configs (under ``configs/``) resolve against the repository;
    paths given by the user stay relative to the current folder (`rass.utils.paths`).

    Args:
        config_file: path of a YAML config (may use `_BASE_`), or None for the defaults.
        opts: trailing `KEY VALUE` overrides, as given on the command line.
        freeze: return a frozen config.

    Returns:
        The config.
    """
    from rass.utils.config_loading import ProjectCfgNode, merge_file, merge_overrides

    cfg = get_cfg()
    add_rass_config(cfg)
    cfg = ProjectCfgNode(cfg)
    if config_file:
        merge_file(cfg, config_file)
    if opts:
        merge_overrides(cfg, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: using 'cpu'")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
