"""CUDA paths: run wherever a GPU is visible (skipped on CPU-only machines).

The kernel, the batched degradation engine (tensor JPEG), AMP training and the fp16 tagger on
CUDA, each checked against the CPU results.
"""
import os

import numpy as np
import pytest
import torch

from rass.config import setup_cfg
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _msda_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[16, 16], [8, 8], [4, 4]], dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s, n, m, d, lq, p = int(sizes.sum()), 2, 8, 32, 50, 4
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, lq, m, 3, p, 2, generator=g)
    w = torch.rand(n, lq, m, 3, p, generator=g)
    return value, shapes, starts, loc, w / w.sum((-1, -2), keepdim=True)


def test_cuda_kernel_matches_cpu_torch_path_forward_and_backward():
    from rass.ops import kernel_available, ms_deform_attn

    if not kernel_available(CUDA):
        pytest.fail("torch-ms-deform-attn has no CUDA kernel: RASS_MSDA_FORCE_CUDA=1 scripts/setup_env.sh")
    cpu = [t.clone().requires_grad_(t.is_floating_point()) for t in _msda_inputs()]
    gpu = [t.detach().to(CUDA).requires_grad_(t.is_floating_point()) for t in cpu]
    ref = ms_deform_attn(*cpu, backend="torch")
    out = ms_deform_attn(*gpu, backend="kernel")
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)
    ref.square().sum().backward()
    out.square().sum().backward()
    for a, b in zip(gpu, cpu):
        if b.grad is not None:
            torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-4, atol=1e-4)


def test_cuda_degradation_follows_the_seed_and_tensor_jpeg_matches_libjpeg():
    from rass.data.degradation import build_degradation, jpeg_roundtrip, jpeg_roundtrip_libjpeg

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 96, 80, generator=g)
    deg = build_degradation("rass")
    gpu = deg(images.to(CUDA), seeds=[1, 2, 3, 4]).cpu()
    cpu = deg(images, seeds=[1, 2, 3, 4])
    assert gpu.shape == cpu.shape and float(gpu.min()) >= 0 and float(gpu.max()) <= 1
    torch.testing.assert_close(gpu * 255, (gpu * 255).round(), rtol=0, atol=1e-4)  # 8-bit levels
    # same sampled parameters, so the same degradation up to the devices' float arithmetic
    assert (gpu - cpu).abs().mean() * 255 < 2.0
    img = (images[0] * 255).round()
    for q in (30, 75, 95):
        t = jpeg_roundtrip([img.to(CUDA)], [q])[0].cpu()
        ref = jpeg_roundtrip_libjpeg(img.permute(1, 2, 0).numpy().astype(np.uint8), q)
        assert np.abs(t.permute(1, 2, 0).numpy() - ref.astype(np.float32)).mean() < 0.5


def test_amp_training_steps_on_cuda(tmp_path, synthetic_env):
    from rass.engine import Trainer

    cfg = setup_cfg(os.path.join(REPO, "configs/quickstart/tiny_rass.yaml"),
                    ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "3",
                     "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_fp16_tagger_on_cuda_matches_cpu(tmp_path):
    from rass.modeling.tagging import build_tagger, write_tiny_tagger_files

    opts = write_tiny_tagger_files(str(tmp_path), num_tags=24)
    cfg = setup_cfg(None, list(opts) + ["MODEL.TAGGER.NAME", "ram", "MODEL.TAGGER.RAM.DTYPE", "float16"])
    torch.manual_seed(0)
    tagger = build_tagger(cfg).eval()
    x = torch.rand(2, 3, 64, 64)
    p_cpu = tagger.tag_probabilities(x)
    p_gpu = tagger.to(CUDA).tag_probabilities(x.to(CUDA))
    torch.testing.assert_close(p_gpu, p_cpu, rtol=0, atol=2e-2)
