"""MGD-SAM2 assembled (tiny "test" SAM2 size, CPU): shapes of the final and view logits, the adapters really run
before every trunk block (zero adapters = plain trunk), the decoder's output is mask token 1's hypernetwork mask on
the upscaled embedding that feeds the DRM, the meta-architecture's input / output dicts, the loss, and size errors."""
from __future__ import annotations

import os

import pytest
import torch
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers everything)
from rass.config import setup_cfg
from rass.modeling.mgd_sam2 import image_to_views
from rass.modeling.mgd_sam2.model import build_mgd_sam2, check_mgd_sam2_input_size
from rass.modeling.sam2 import sam2_variant
from rass.utils.errors import UserValueError
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "dis5k", "tiny_mgd_sam2.yaml")
SIZE = 128


@pytest.fixture(scope="module")
def model():
    return build_mgd_sam2("test", SIZE, None, adapter_reduction=4, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


@pytest.fixture(scope="module")
def meta_arch():
    torch.manual_seed(0)
    return build_model(setup_cfg(TINY, ["MODEL.MGD_SAM2.TTA", "False"])).eval()


def test_output_shapes_and_input_dependence(model, images):
    with torch.no_grad():
        logits, views = model(images)
        other, _ = model(images.flip(0))
    assert logits.shape == (2, 1, SIZE, SIZE) and views.shape == (10, 1, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(other, logits.flip(0), rtol=1e-4, atol=1e-5)  # per image: no mixing across the batch
    assert (logits[0] - logits[1]).abs().max() > 1e-3  # the output depends on the image


def test_adapters_run_before_every_block_and_zero_adapters_are_the_plain_trunk(model, images):
    views = image_to_views(images)
    seen = []
    hook = model.mpadapter.register_forward_hook(lambda m, args, out: seen.append((args[1], tuple(args[0].shape))))
    with torch.no_grad():
        adapted, _ = model.image_encoder(views)
    hook.remove()
    dims = [b.dim for b in model.image_encoder.trunk.blocks]
    assert [i for i, _ in seen] == list(range(len(dims)))
    assert [s[0] for _, s in seen] == [10] * len(dims) and [s[-1] for _, s in seen] == dims
    zeroed = build_mgd_sam2("test", SIZE, None, adapter_reduction=4, generator=torch.Generator().manual_seed(0))
    for name in zeroed.mpadapter.used_adapter_names():
        last = getattr(zeroed.mpadapter, name)[3]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    with torch.no_grad():
        plain = [f.clone() for f in zeroed.image_encoder(views)[0]]
        for h in zeroed._adapter_hooks:
            h.remove()
        without = zeroed.image_encoder(views)[0]
    for a, b, c in zip(plain, without, adapted):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # zero adapters: the trunk as if they were not there
        assert (a - c).abs().max() > 1e-4  # and the random adapters do change it


def test_view_logits_are_mask_token_one_on_the_drm_embedding(images):
    m = build_mgd_sam2("test", SIZE, None, adapter_reduction=4, generator=torch.Generator().manual_seed(0))
    captured = {}
    m.detail_enhance.register_forward_hook(lambda mod, args, out: captured.update(up=args[1]))
    mlps = m.mask_decoder.output_hypernetworks_mlps
    with torch.no_grad():
        for k, mlp in enumerate(mlps):  # token k's hypernetwork weights = one-hot on channel k + 3
            torch.nn.init.zeros_(mlp.proj_out.weight)
            torch.nn.init.zeros_(mlp.proj_out.bias)
            mlp.proj_out.bias[k + 3] = 1.0
        _, views = m(images)
    up = captured["up"]
    assert up.shape == (10, 8, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(views[:, 0], up[:, 4], rtol=0, atol=0)  # token index 1 -> channel 4


def test_input_sizes_are_checked():
    v = sam2_variant("base_plus")
    assert check_mgd_sam2_input_size(v, 1024) == 1024 and check_mgd_sam2_input_size(v, 768) == 768
    with pytest.raises(UserValueError, match=r"MODEL.MGD_SAM2.IMAGE_SIZE 1000: MGD-SAM2 needs a square input side "
                                             r"divisible by 64"):
        check_mgd_sam2_input_size(v, 1000)
    with pytest.raises(UserValueError, match=r"MODEL.MGD_SAM2.IMAGE_SIZE 96"):
        build_model(setup_cfg(TINY, ["MODEL.MGD_SAM2.IMAGE_SIZE", "96"]))
    with pytest.raises(UserValueError, match=r"MODEL.MGD_SAM2.TTA_SCALES: scale 0.75 of IMAGE_SIZE 128 gives 96"):
        build_model(setup_cfg(TINY, ["MODEL.MGD_SAM2.TTA_SCALES", "[0.75, 1.0]"]))


def test_meta_architecture_inference_on_any_image_size(meta_arch):
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 50, 83), generator=g, dtype=torch.uint8)
    out = meta_arch([{"image": image, "height": 50, "width": 83}])[0]
    assert out["mask_logits"].shape == (1, 50, 83) and out["masks"].dtype == torch.bool
    assert torch.equal(out["masks"], out["mask_logits"] > 0)
    # the image is resized to IMAGE_SIZE (bilinear, antialias) and normalised: same as the model on those pixels
    with torch.no_grad():
        logits, _ = meta_arch.logits(meta_arch.transform(image))
    want = torch.nn.functional.interpolate(logits, size=(50, 83), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["mask_logits"], want)


def test_meta_architecture_training_losses(meta_arch):
    g = torch.Generator().manual_seed(3)
    batch = [{"image": torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8),
              "gt_mask": (torch.rand(SIZE, SIZE, generator=g) > 0.5).float()} for _ in range(2)]
    meta_arch.train()
    try:
        losses = meta_arch(batch)
        assert set(losses) == {"loss_bce", "loss_iou", "loss_bce_views", "loss_iou_views"}
        sum(losses.values()).backward()
        trunk = meta_arch.image_encoder.trunk
        assert trunk.patch_embed.projection.weight.grad is None  # frozen
        assert meta_arch.mpadapter.lightweight_mlp1_0[3].weight.grad.abs().sum() > 0
        assert meta_arch.mask_decoder.new_multifieldcrossatt.norm1.weight.grad.abs().sum() > 0
        assert meta_arch.no_mask_embed.weight.grad.abs().sum() > 0
        batch[0]["gt_mask"] = torch.zeros(64, 64)
        with pytest.raises(UserValueError, match=r"gt_mask of .* is \(64, 64\), expected 128 x 128"):
            meta_arch(batch)
    finally:
        meta_arch.zero_grad(set_to_none=True)
        meta_arch.eval()
