"""SAM, GleSAM and promptable-segmentation keys (MODEL.SAM, MODEL.GLESAM, INPUT.PROMPT, TEST.PROMPT)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_glesam_config", "add_promptable_config", "add_sam_config"]


def add_sam_config(cfg: CN) -> None:
    """SAM keys (MODEL.SAM): image encoder variant, checkpoint files, preprocessing (GleSAM, plain SAM)."""
    cfg.MODEL.SAM = CN()
    # Image-encoder variant: "vit_b", "vit_l" (GleSAM's release), "vit_h", "tiny" (random, for tests) or "custom" (the keys below).
    cfg.MODEL.SAM.VARIANT = "vit_l"
    # VARIANT "custom" only (0 otherwise): ViT width of the image encoder (vit_b 768, vit_l 1024, vit_h 1280).
    cfg.MODEL.SAM.EMBED_DIM = 0
    # VARIANT "custom" only (0 otherwise): number of ViT blocks (vit_b 12, vit_l 24, vit_h 32).
    cfg.MODEL.SAM.DEPTH = 0
    # VARIANT "custom" only (0 otherwise): attention heads per block; EMBED_DIM must be divisible by it.
    cfg.MODEL.SAM.NUM_HEADS = 0
    # VARIANT "custom" only: indexes of the blocks with global attention (vit_b [2, 5, 8, 11]); []: every block windowed.
    cfg.MODEL.SAM.GLOBAL_ATTN_INDEXES = []
    # VARIANT "custom" only: attention window of the other blocks; 0 = SAM's 14.
    cfg.MODEL.SAM.WINDOW_SIZE = 0
    # SAM weights in segment-anything names (sam_vit_*.pth, GleSAM-l.pth, epoch_last.pth, ft-decoder.pth); "": none.
    cfg.MODEL.SAM.CHECKPOINT = ""
    # Full SAM file loaded first when CHECKPOINT holds only the mask decoder (e.g. ft-decoder.pth); "": none.
    cfg.MODEL.SAM.BASE_CHECKPOINT = ""
    # Side of SAM's square input (longest image side is resized to it); 1024 for the released weights.
    cfg.MODEL.SAM.IMAGE_SIZE = 1024
    # Return SAM's 3 multimask outputs instead of the single mask (mask token 0), as GleSAM's evaluation does.
    cfg.MODEL.SAM.MULTIMASK_OUTPUT = False
    # SAM's RGB pixel mean (0..255 scale), subtracted after resizing.
    cfg.MODEL.SAM.PIXEL_MEAN = [123.675, 116.28, 103.53]
    # SAM's RGB pixel std (0..255 scale), divided after subtracting the mean.
    cfg.MODEL.SAM.PIXEL_STD = [58.395, 57.12, 57.375]
    # Threshold on the mask logits that gives the binary mask (SAM: 0.0).
    cfg.MODEL.SAM.MASK_THRESHOLD = 0.0
    # Add "intermediates" to each output dict (z_L, the enhanced embedding, all decoder logits and IoUs; see PromptableSAM).
    cfg.MODEL.SAM.RETURN_INTERMEDIATES = False


def add_glesam_config(cfg: CN) -> None:
    """GleSAM latent-enhancement keys (MODEL.GLESAM): CRE UNet, LoRA, FEAT_WEIGHT, timestep."""
    g = cfg.MODEL.GLESAM = CN()
    # Enhance SAM's image embedding with the one-step CRE UNet before the mask decoder (False = plain SAM).
    g.ENHANCE = True
    # Local Stable Diffusion folder in diffusers layout (unet/, text_encoder/, tokenizer/, optional scheduler/); "" = random init from ARCH.
    g.SD_PATH = ""
    # Packaged UNet/text-encoder architecture used when SD_PATH is "": "sd21_base", "sd15", "tiny", or a folder of JSON configs.
    g.ARCH = "sd21_base"
    # GleSAM's UNet LoRA file (pytorch_lora_weights.safetensors, diffusers or peft key style); "" = freshly initialised adapter.
    g.LORA_PATH = ""
    # LoRA rank of the UNet adapter (8 as released).
    g.LORA_RANK = 8
    # LoRA alpha (scaling alpha / rank; 8 as released).
    g.LORA_ALPHA = 8.0
    # UNet module-name suffixes wrapped with LoRA (peft list rule; the 16 released types).
    g.LORA_TARGETS = [
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
        "conv_in", "conv_out",
    ]
    # FDA scale gamma: the UNet sees gamma * z_L and the result is divided by gamma (5 as in the paper/README; demo.sh uses 3).
    g.FEAT_WEIGHT = 5.0
    # Diffusion timestep T of the single UNet pass (1 as the released scripts pass; the Python entry points default to 999).
    g.TIMESTEP = 1
    # Channels of the latent = SAM's image-embedding channels (256); conv_in/conv_out are tiled to it (CRE).
    g.LATENT_CHANNELS = 256
    # dtype of the CRE UNet and its LoRA: "float32" (as released), "float16" or "bfloat16"; x0 is always computed in float64.
    g.DTYPE = "float32"
    # Merge the UNet's LoRA into its weights whenever no gradient can reach it (inference: same output to ~1e-6, up to ~10% faster UNet on CPU); False runs them apart as released.
    g.MERGE_LORA = True
    # Training stage: "none" (inference only), "denoise" (stage 1: the CRE UNet's LoRA) or "decoder" (stage 2: SAM's mask decoder).
    g.STAGE = "none"
    # Stage-1 loss: "paper" (MSE(x0, gamma * z_H), z_H = SAM features of the clean image) or "release" (+ DMD2 and GAN terms).
    g.STAGE1_LOSS = "paper"
    # Stage-1 "release" recipe: the generator LoRA is updated every this many iterations, the guidance model every one (5).
    g.GEN_UPDATE_RATIO = 5
    # Stage-2 weight of the Dice loss on the mask logits (1 as released).
    g.DICE_WEIGHT = 1.0
    # Stage-2 weight of the focal loss on the mask logits (1 as released).
    g.FOCAL_WEIGHT = 1.0


def add_promptable_config(cfg: CN) -> None:
    """Promptable-segmentation data and evaluation keys (INPUT.PROMPT, TEST.PROMPT, LQSeg)."""
    cfg.INPUT.PROMPT = CN()
    # Training prompts drawn from the GT mask: "points" (positive points inside the object), "box", "point_box".
    cfg.INPUT.PROMPT.PROTOCOL = "points"
    # Positive points per object (GleSAM: 3).
    cfg.INPUT.PROMPT.NUM_POINTS = 3
    # Box jitter scale of GleSAM's misc.box_noise (0 = exact box; the release's value is 0.05).
    cfg.INPUT.PROMPT.BOX_NOISE = 0.0
    # Base seed of the training prompts (per process and data-loader worker, re-drawn at every call).
    cfg.INPUT.PROMPT.SEED = 0
    # Square side the image is resized to (bicubic, aspect not kept) as GleSAM's loader; 0 keeps the image size.
    cfg.INPUT.PROMPT.IMAGE_SIZE = 512
    # Mask value above which a pixel is object, for masks that are not 0/255 (as GleSAM's metrics: > 128).
    cfg.INPUT.PROMPT.MASK_THRESHOLD = 128
    cfg.TEST.PROMPT = CN()
    # Evaluation prompts drawn from the GT mask: "points" (the released protocol), "box" or "point_box".
    cfg.TEST.PROMPT.PROTOCOL = "points"
    # Positive points per object at evaluation (GleSAM: 3).
    cfg.TEST.PROMPT.NUM_POINTS = 3
    # Box jitter scale at evaluation (0 = exact box; 0.05 = the release's box_noise).
    cfg.TEST.PROMPT.BOX_NOISE = 0.0
    # Base seed of the evaluation prompts; each image's prompts derive from it and the image id only.
    cfg.TEST.PROMPT.SEED = 0
