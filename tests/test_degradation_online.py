"""Config keys of INPUT.DEGRADATION and the OnlineDegradation wrapper."""
import pytest
import torch

from rass.config import setup_cfg
from rass.data.degradation import OnlineDegradation, get_spec
from rass.data.degradation import online as online_mod
from rass.data.degradation.presets import spec_field_names


def test_params_keys_mirror_every_preset_value():
    cfg = setup_cfg(None)
    d = cfg.INPUT.DEGRADATION
    assert (d.ENABLED, d.PRESET, d.DEVICE, d.KEEP_CLEAN, d.SEED) == (False, "rass", "model", True, -1)
    assert sorted(k.lower() for k in d.PARAMS) == sorted(spec_field_names())
    assert all(v is None for v in d.PARAMS.values())


def test_from_config_applies_preset_and_overrides():
    cfg = setup_cfg(None, [
        "INPUT.DEGRADATION.ENABLED", "True",
        "INPUT.DEGRADATION.PRESET", "lqseg_3",
        "INPUT.DEGRADATION.DEVICE", "worker",
        "INPUT.DEGRADATION.KEEP_CLEAN", "False",
        "INPUT.DEGRADATION.PARAMS.JPEG_RANGE2", "[70, 80]",
        "INPUT.DEGRADATION.PARAMS.GRAY_NOISE_PROB", "0.0",
    ])
    od = OnlineDegradation(cfg)
    assert od.enabled and od.device == "worker" and not od.keep_clean
    assert od.spec == get_spec("lqseg_3", jpeg_range2=(70, 80), gray_noise_prob=0.0)
    assert od.spec.second_resize_divisor == 4.0


def test_bad_device_and_unknown_param_are_named():
    with pytest.raises(ValueError, match="INPUT.DEGRADATION.DEVICE"):
        OnlineDegradation(setup_cfg(None, ["INPUT.DEGRADATION.DEVICE", "gpu"]))
    with pytest.raises(KeyError, match="NOT_A_VALUE"):
        setup_cfg(None, ["INPUT.DEGRADATION.PARAMS.NOT_A_VALUE", "1"])
    with pytest.raises(ValueError, match="jpeg_range"):
        OnlineDegradation(setup_cfg(None, ["INPUT.DEGRADATION.PARAMS.JPEG_RANGE", "[0, 101]"]))


def test_call_contract_sizes_levels_and_seeds():
    od = OnlineDegradation(enabled=True, preset="rass", seed=3)
    g = torch.Generator()
    g.manual_seed(0)
    imgs = [torch.rand(3, 40, 52, generator=g) * 255, torch.rand(3, 33, 33, generator=g) * 255, torch.rand(3, 40, 52, generator=g) * 255]
    out = od(imgs, seeds=[7, 8, 9])
    assert [o.shape for o in out] == [i.shape for i in imgs]
    for o in out:
        assert o.dtype == torch.float32 and o.min() >= 0 and o.max() <= 255
        assert torch.equal(o, torch.round(o))
    assert [p["seed"] for p in od.last_params] == [7, 8, 9]
    again, params = od.degrade_with_params([imgs[2]], seeds=[9])
    assert torch.equal(again[0], out[2]) and params[0]["seed"] == 9
    # same engine results as the public API on [0, 1] images
    from rass.data.degradation import build_degradation

    ref = build_degradation("rass")(imgs[0][None] / 255, seeds=[7])[0]
    assert torch.equal(out[0], torch.round(ref * 255))


def test_disabled_returns_inputs_and_process_seeding(monkeypatch):
    imgs = [torch.rand(3, 20, 20) * 255]
    off = OnlineDegradation(enabled=False)
    assert off(imgs)[0] is imgs[0]

    od = OnlineDegradation(enabled=True, seed=11)
    monkeypatch.setattr(online_mod, "_process_identity", lambda: (0, 0))
    worker0 = od._seeds(4)
    od2 = OnlineDegradation(enabled=True, seed=11)
    assert od2._seeds(4) == worker0  # same (seed, rank, worker) → same stream
    monkeypatch.setattr(online_mod, "_process_identity", lambda: (0, 1))
    od3 = OnlineDegradation(enabled=True, seed=11)
    assert od3._seeds(4) != worker0  # another worker → another stream
    monkeypatch.setattr(online_mod, "_process_identity", lambda: (1, 0))
    od4 = OnlineDegradation(enabled=True, seed=11)
    assert od4._seeds(4) != worker0  # another rank → another stream


def test_uint8_images_keep_their_dtype():
    od = OnlineDegradation(enabled=True, preset="lqseg_1")
    img = (torch.rand(3, 36, 44) * 255).to(torch.uint8)
    out = od([img], seeds=[4])[0]
    assert out.dtype == torch.uint8 and out.shape == img.shape
    ref = od([img.float()], seeds=[4])[0]
    assert torch.equal(out.float(), ref)
