"""Online degradation keys (INPUT.DEGRADATION): the Real-ESRGAN-style pipeline and its presets."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_degradation_config"]


def add_degradation_config(cfg: CN) -> None:
    """Online degradation keys (INPUT.DEGRADATION), read by `rass.data.degradation.OnlineDegradation`.

    PARAMS holds one key per value of a preset (`DegradationSpec` field, upper-cased); None keeps
    the preset's value. Ranges are [low, high]; resize probabilities are [up, down, keep].
    """
    d = cfg.INPUT.DEGRADATION = CN()
    # Degrade training images online (labels untouched; the unpadded image content only).
    d.ENABLED = False
    # Preset: "rass", "realesrgan_x4", "realesrgan_x2", "lqseg_1", "lqseg_2", "lqseg_3" or "lqseg_train" (GleSAM's training).
    d.PRESET = "rass"
    # Where to degrade: "model" (batched, on the model's device, in its preprocessing) or "worker" (data-loader workers, CPU).
    d.DEVICE = "model"
    # Keep the clean image available to the model next to the degraded one (e.g. for the tagger).
    d.KEEP_CLEAN = True
    # Base seed of the per-image degradation seeds (either DEVICE): each process draws from a stream of (SEED, rank, data-loader worker id), restarted with the run (also on resume); -1: operating-system entropy (not reproducible).
    d.SEED = -1
    # JPEG implementation: "auto" (Pillow on CPU, tensor codec elsewhere), "tensor", "pillow" or "opencv" (identical bytes).
    d.JPEG_BACKEND = "auto"
    p = d.PARAMS = CN()
    # Scale of the low-quality image before it is resized back to the input size (1 for "rass").
    p.SCALE = None
    # Odd blur-kernel sizes drawn uniformly (preset: 7, 9, ..., 21).
    p.KERNEL_RANGE = None
    # Size the release zero-pads blur kernels to; bounds KERNEL_RANGE, no effect on the image (preset: 21).
    p.KERNEL_PAD_TO = None
    # Sinc cut-off range (radians) for kernel sizes below 13 (preset: [pi/3, pi]).
    p.SINC_OMEGA_SMALL = None
    # Sinc cut-off range (radians) for kernel sizes 13 and above (preset: [pi/5, pi]).
    p.SINC_OMEGA_LARGE = None
    # First stage: blur kernel types (iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso).
    p.KERNEL_LIST = None
    # First stage: weights of KERNEL_LIST (preset: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]).
    p.KERNEL_PROB = None
    # First stage: probability of a sinc kernel instead of KERNEL_LIST (preset: 0.1).
    p.SINC_PROB = None
    # First stage: blur sigma range, pixels, for both axes (preset: [0.2, 3]).
    p.BLUR_SIGMA = None
    # First stage: anisotropic kernel rotation range, radians (preset: [-pi, pi]).
    p.ROTATION_RANGE = None
    # First stage: generalized-Gaussian beta range (preset: [0.5, 4]).
    p.BETAG_RANGE = None
    # First stage: plateau beta range (preset: [1, 2]).
    p.BETAP_RANGE = None
    # First stage: resize probabilities [up, down, keep] (preset: [0.2, 0.7, 0.1]).
    p.RESIZE_PROB = None
    # First stage: resize scale range [down low, up high] (preset: [0.15, 1.5]).
    p.RESIZE_RANGE = None
    # First stage: resize modes drawn uniformly (preset: area, bilinear, bicubic).
    p.RESIZE_MODES = None
    # First stage: probability of Gaussian (else Poisson) noise (preset: 0.5).
    p.GAUSSIAN_NOISE_PROB = None
    # First stage: Gaussian noise sigma range on the 0..255 scale (preset: [1, 30]).
    p.NOISE_RANGE = None
    # First stage: Poisson noise scale range (preset: [0.05, 3]).
    p.POISSON_SCALE_RANGE = None
    # First stage: probability that the noise is gray (shared by channels) (preset: 0.4).
    p.GRAY_NOISE_PROB = None
    # First stage: integer JPEG quality range (preset: [30, 95]).
    p.JPEG_RANGE = None
    # Second stage: probability of blurring at all (preset: 0.8).
    p.SECOND_BLUR_PROB = None
    # Second stage: blur kernel types (as KERNEL_LIST).
    p.KERNEL_LIST2 = None
    # Second stage: weights of KERNEL_LIST2.
    p.KERNEL_PROB2 = None
    # Second stage: probability of a sinc kernel (preset: 0.1).
    p.SINC_PROB2 = None
    # Second stage: blur sigma range (preset: [0.2, 1.5]).
    p.BLUR_SIGMA2 = None
    # Second stage: anisotropic kernel rotation range (preset: [-pi, pi]).
    p.ROTATION_RANGE2 = None
    # Second stage: generalized-Gaussian beta range (preset: [0.5, 4]).
    p.BETAG_RANGE2 = None
    # Second stage: plateau beta range (preset: [1, 2]).
    p.BETAP_RANGE2 = None
    # Second stage: resize probabilities [up, down, keep] (preset: [0.3, 0.4, 0.3]).
    p.RESIZE_PROB2 = None
    # Second stage: resize scale range, relative to the input size / SCALE (preset: [0.3, 1.2]).
    p.RESIZE_RANGE2 = None
    # Second stage: resize modes.
    p.RESIZE_MODES2 = None
    # Second stage: the resize target is also divided by this (LQSeg levels 1 / 2 / 4; preset: 1).
    p.SECOND_RESIZE_DIVISOR = None
    # Second stage: per-image divisor drawn uniformly from this list, replacing SECOND_RESIZE_DIVISOR ("lqseg_train": [1, 2, 3, 3, 4, 4, 4, 4]; [] = off).
    p.SECOND_RESIZE_DIVISORS = None
    # Second stage: probability of Gaussian (else Poisson) noise (preset: 0.5).
    p.GAUSSIAN_NOISE_PROB2 = None
    # Second stage: Gaussian noise sigma range on the 0..255 scale (preset: [1, 25]).
    p.NOISE_RANGE2 = None
    # Second stage: Poisson noise scale range (preset: [0.05, 2.5]).
    p.POISSON_SCALE_RANGE2 = None
    # Second stage: probability of gray noise (preset: 0.4).
    p.GRAY_NOISE_PROB2 = None
    # Final stage: integer JPEG quality range (preset: [30, 95]).
    p.JPEG_RANGE2 = None
    # Final stage: probability of a sinc filter after resizing back (else identity) (preset: 0.8).
    p.FINAL_SINC_PROB = None
    # Final stage: sinc cut-off range, radians (preset: [pi/3, pi]).
    p.FINAL_SINC_OMEGA = None
    # Final stage: modes of the resize back to the input size / SCALE.
    p.FINAL_RESIZE_MODES = None
    # Final stage: probability of (resize back + sinc) before JPEG, else JPEG first (preset: 0.5).
    p.FINAL_RESIZE_SINC_FIRST_PROB = None
