"""The batched, seeded second-order degradation engine.

`Degradation(spec)` degrades images with per-image random parameters. Every random choice of an
image comes from generators seeded with that image's seed (parameters: a CPU generator; noise: a
generator on the image's device), and every operator is applied per sample, with arithmetic that
depends only on the sample's own size and parameters. Hence with explicit seeds an image's output
depends only on its seed and pixels.

Stages, each run over a chunk of images: blur, resize, noise, JPEG, blur (p = second_blur_prob),
resize, noise, then [resize back + sinc] and JPEG in the sampled order, and 8-bit rounding.
JPEG uses libjpeg through Pillow for CPU tensors and the bit-identical tensor codec on CUDA.

CPU execution (parallel.py): the chunks (one image each by default) are spread over
`num_threads` worker threads that run torch at one intra-op thread, so images are processed in
parallel rather than each small operation being split, and every operation always runs
single-threaded. That makes two faster operators safe to use there, whose rounding could
otherwise change with the thread count: resizing as banded GEMMs (resize.py, "matmul") and
filtering kernels of size >= 17 through the FFT (filtering_fft.py). Elsewhere (CUDA): grouped
depthwise convolutions (large isotropic Gaussians as two 1-D passes) and gather-based resizing.

Kept from the release: 8-bit rounding only at JPEG inputs and at the end; the first resize uses
scale-factor grids; the second is relative to the original size (/ scale / LQSeg divisor).
Deliberate differences: integer JPEG qualities with a real libjpeg codec (see jpeg.py); tiny
images are reflect-padded by repeated reflection instead of failing; with scale > 1 the result is
resized back to the input size (bilinear, as released) and rounded to 8 bits again (the release
leaves that last resize off the 8-bit grid).

Determinism scope: byte-identity across batch composition/order/chunking/thread counts is tested
on CPU (same machine and library build: MKL and oneDNN pick CPU-specific kernels). On CUDA the
parameters and the noise are fixed by the seed, but cuDNN may choose other convolution
algorithms for other group counts, so a rare 8-bit rounding can differ; build fixed evaluation
sets with the offline tool on CPU. CPU and CUDA outputs differ (noise generators differ).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .filtering import filter2d, filter2d_separable
from .filtering_fft import filter2d_fft
from .jpeg import jpeg_roundtrip, jpeg_roundtrip_libjpeg
from .kernels import gaussian_kernel_1d, kernel_from_params
from .noise import add_noise
from .parallel import in_single_threaded_worker, map_single_threaded
from .presets import DegradationSpec
from .resize import resize, resize_many
from .sampling import sample_params

__all__ = ["Degradation", "quantize_8bit"]

_JPEG_BACKENDS = ("auto", "tensor", "pillow", "opencv")
# Isotropic Gaussians from this size up are filtered as two 1-D passes; smaller ones as one 2-D
# kernel (on CPU one small 2-D pass is cheaper than two 1-D passes; measured at 512×512).
_SEPARABLE_MIN_SIZE = 15
# In the CPU workers, kernels from this size up are applied through the FFT (filtering_fft.py).
_FFT_MIN_SIZE = 17


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the nearest of the 256 levels k/255."""
    return x.mul(255.0).round_().clamp_(0.0, 255.0).div_(255.0)


class Degradation:
    """Real-ESRGAN-style second-order degradation with per-image seeds.

    Args:
        spec: the model's parameters (see `presets.get_spec`).
        seed: seed of the generator that draws per-image seeds when a call passes none
            (None: seeded from the operating system's entropy).
        jpeg_backend: "auto" (tensor codec for CUDA tensors, Pillow otherwise), "tensor",
            "pillow" or "opencv". All give identical bytes with libjpeg-turbo.
        chunk_size: images run through the stages together; None = 1 on CPU (keeps an image's
            intermediates in cache; measured fastest) and the whole call elsewhere. Outputs do
            not depend on it.
        num_threads: CPU worker threads over which the chunks are spread, each running its
            torch operations on one thread; None = `torch.get_num_threads()` at call time.
            Outputs do not depend on it.
    """

    def __init__(
        self,
        spec: DegradationSpec,
        seed: Optional[int] = None,
        jpeg_backend: str = "auto",
        chunk_size: Optional[int] = None,
        num_threads: Optional[int] = None,
    ):
        if jpeg_backend not in _JPEG_BACKENDS:
            raise ValueError(f"Unknown jpeg_backend {jpeg_backend!r}; expected one of {_JPEG_BACKENDS}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.spec = spec
        self.num_threads = num_threads
        self.jpeg_backend = jpeg_backend
        self.chunk_size = chunk_size
        self._seed_gen = torch.Generator()
        self.reseed(seed)
        self.last_params: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ public API
    def reseed(self, seed: Optional[int]) -> None:
        """Re-seed the generator of per-image seeds (None: from the operating system's entropy)."""
        if seed is None:
            self._seed_gen.seed()
        else:
            self._seed_gen.manual_seed(int(seed))

    def draw_seeds(self, n: int) -> List[int]:
        """Per-image seeds from this engine's own generator."""
        return [int(v) for v in torch.randint(0, 1 << 62, (n,), generator=self._seed_gen)]

    def __call__(
        self, images: torch.Tensor, seeds: Optional[Sequence[int]] = None, return_params: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[Dict[str, Any]]]]:
        """Degrade a batch.

        Args:
            images: B×3×H×W float tensor in [0, 1] (RGB), any device.
            seeds: one int per image; None draws them from the engine's generator.
            return_params: also return the sampled parameters (one dict per image).

        Returns:
            The degraded B×3×H×W batch in [0, 1], quantised to 8-bit levels (k/255), same
            dtype/device; with `return_params`, a tuple (batch, params).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Degradation expects a B×3×H×W batch, got shape {tuple(images.shape)}")
        batch = torch.empty_like(images, memory_format=torch.contiguous_format)
        _, params = self._degrade(list(images.unbind(0)), seeds, into=batch)  # workers fill `batch`
        return (batch, params) if return_params else batch

    def degrade_list(
        self, images: Sequence[torch.Tensor], seeds: Optional[Sequence[int]] = None
    ) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
        """Degrade 3×H×W images of possibly different sizes (same contract as `__call__`).

        Returns:
            (degraded images, sampled parameters), in input order.
        """
        return self._degrade(images, seeds)

    def _degrade(
        self, images: Sequence[torch.Tensor], seeds: Optional[Sequence[int]], into: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
        """`degrade_list`; with `into` (a B×3×H×W batch) each result is copied into its slot by
        the thread that computed it."""
        seeds = self.draw_seeds(len(images)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(images):
            raise ValueError(f"Got {len(seeds)} seeds for {len(images)} images")
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
                raise ValueError(f"Each image must be a float 3×H×W tensor, got {img.dtype} {tuple(img.shape)}")
        params = [sample_params(self.spec, s, int(img.shape[1]), int(img.shape[2])) for s, img in zip(seeds, images)]
        on_cpu = any(img.device.type == "cpu" for img in images)
        chunk = self.chunk_size or (1 if on_cpu else max(1, len(images)))
        spans = [(start, start + chunk) for start in range(0, len(images), chunk)]
        workers = (self.num_threads or torch.get_num_threads()) if on_cpu else 1

        def run(span: Tuple[int, int]) -> List[torch.Tensor]:
            res = self._apply(images[span[0] : span[1]], params[span[0] : span[1]])
            if into is not None:
                for i, img in enumerate(res, start=span[0]):
                    into[i].copy_(img)
            return res

        if on_cpu:
            parts = map_single_threaded(run, spans, workers)
        else:
            parts = [run(span) for span in spans]
        out = [img for part in parts for img in part]
        self.last_params = params
        return out, params

    def apply(self, images: Sequence[torch.Tensor], params: Sequence[Dict[str, Any]]) -> List[torch.Tensor]:
        """Run the pipeline with given (sampled or recorded) parameters (CPU: in a one-thread worker)."""
        if any(img.device.type == "cpu" for img in images) and not in_single_threaded_worker():
            return map_single_threaded(lambda _: self._apply(images, params), [None], 1)[0]
        return self._apply(images, params)

    def _apply(self, images: Sequence[torch.Tensor], params: Sequence[Dict[str, Any]]) -> List[torch.Tensor]:
        dtypes = [img.dtype for img in images]
        xs = [img.to(torch.float32) for img in images]
        gens = [self._noise_generator(p["noise_seed"], x.device) for p, x in zip(params, xs)]

        xs = self._blur(xs, [p["blur1"] for p in params])
        method = self._resize_method(xs)
        xs = resize_many(xs, [p["resize1"]["size"] for p in params], [p["resize1"]["mode"] for p in params],
                         [p["resize1"]["scale"] for p in params], method=method)
        xs = [add_noise(x, p["noise1"], g) for x, p, g in zip(xs, params, gens)]
        xs = self._jpeg(xs, [p["jpeg1"] for p in params])

        blur2 = [i for i, p in enumerate(params) if p["blur2"] is not None]
        blurred = self._blur([xs[i] for i in blur2], [params[i]["blur2"] for i in blur2])
        for i, x in zip(blur2, blurred):
            xs[i] = x
        xs = resize_many(xs, [p["resize2"]["size"] for p in params], [p["resize2"]["mode"] for p in params], method=method)
        xs = [add_noise(x, p["noise2"], g) for x, p, g in zip(xs, params, gens)]

        first = [i for i, p in enumerate(params) if p["final"]["order"] == "resize_sinc_jpeg"]
        second = [i for i, p in enumerate(params) if p["final"]["order"] != "resize_sinc_jpeg"]
        done = self._resize_sinc([xs[i] for i in first], [params[i] for i in first])
        done = self._jpeg(done, [params[i]["final"]["jpeg"] for i in first])
        later = self._jpeg([xs[i] for i in second], [params[i]["final"]["jpeg"] for i in second])
        later = self._resize_sinc(later, [params[i] for i in second])
        for i, x in zip(first + second, done + later):
            xs[i] = x

        out = []
        for x, p, dt in zip(xs, params, dtypes):
            x = quantize_8bit(x)
            if tuple(x.shape[-2:]) != tuple(p["size"]):  # scale > 1: back to the input size, as released
                x = quantize_8bit(resize(x[None], tuple(p["size"]), "bilinear", method=method)[0])
            out.append(x.to(dt))
        return out

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _noise_generator(seed: int, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        return g

    def _blur(self, xs: List[torch.Tensor], kparams: Sequence[Optional[Dict[str, Any]]]) -> List[torch.Tensor]:
        """Filter each image with its kernel, one grouped convolution per (image size, kernel size).

        Kernels are applied at their drawn size (the release's zero padding to 21 changes nothing),
        identity kernels are skipped (exactly equal). On CPU (always in a one-thread worker)
        kernels of size >= 17 go through the FFT; otherwise isotropic Gaussians of size >= 15 are
        two 1-D passes and the rest direct 2-D filters. The path depends only on the image's own
        parameters, never on the rest of the batch.
        """
        out = list(xs)
        groups: Dict[tuple, List[int]] = {}
        fft_ok = in_single_threaded_worker()
        for i, (x, kp) in enumerate(zip(xs, kparams)):
            if kp is not None:
                size = int(kp["size"])
                if fft_ok and x.device.type == "cpu" and size >= _FFT_MIN_SIZE:
                    path = "fft"
                elif kp["type"] == "iso" and size >= _SEPARABLE_MIN_SIZE:
                    path = "separable"
                else:
                    path = "direct"
                groups.setdefault((tuple(x.shape), x.device, path, size), []).append(i)
        for (_, device, path, _), idx in groups.items():
            batch = xs[idx[0]][None] if len(idx) == 1 else torch.stack([xs[i] for i in idx])
            if path == "fft":
                k2 = torch.stack([kernel_from_params(kparams[i]) for i in idx]).to(device=device, dtype=torch.float32)
                res = filter2d_fft(batch, k2)
            elif path == "separable":
                k1 = torch.stack([gaussian_kernel_1d(int(kparams[i]["size"]), float(kparams[i]["sigma_x"])) for i in idx])
                k1 = k1.to(device=device, dtype=torch.float32)
                res = filter2d_separable(batch, k1, k1)
            else:
                k2 = torch.stack([kernel_from_params(kparams[i]) for i in idx]).to(device=device, dtype=torch.float32)
                res = filter2d(batch, k2)
            for j, i in enumerate(idx):
                out[i] = res[j]
        return out

    @staticmethod
    def _resize_method(xs: Sequence[torch.Tensor]) -> str:
        """GEMM-based resizing on CPU (this code then runs in a one-thread worker), gathers elsewhere."""
        return "matmul" if xs and all(x.device.type == "cpu" for x in xs) and in_single_threaded_worker() else "gather"

    def _resize_sinc(self, xs: List[torch.Tensor], params: Sequence[Dict[str, Any]]) -> List[torch.Tensor]:
        xs = resize_many(xs, [p["final"]["size"] for p in params], [p["final"]["mode"] for p in params],
                         method=self._resize_method(xs))
        return self._blur(xs, [p["final"]["sinc"] for p in params])

    def _jpeg(self, xs: List[torch.Tensor], qualities: Sequence[int]) -> List[torch.Tensor]:
        """Clamp, round to 8 bits and JPEG-compress each image with its quality."""
        if not xs:
            return []
        levels = [x.mul(255.0).round_().clamp_(0.0, 255.0) for x in xs]
        backend = self.jpeg_backend
        if backend == "auto":
            backend = "tensor" if xs[0].device.type == "cuda" else "pillow"
        if backend == "tensor":
            return [y.div_(255.0) for y in jpeg_roundtrip(levels, qualities)]
        out = []
        for lv, q in zip(levels, qualities):
            planes = lv.to(torch.uint8).cpu().numpy()
            dec = torch.from_numpy(jpeg_roundtrip_libjpeg(planes, int(q), backend=backend, channels_first=True))
            out.append(dec.to(device=lv.device, dtype=torch.float32).div_(255.0))
        return out
