"""Weight files cannot run code, and nothing is downloaded unless MODEL.ALLOW_DOWNLOADS: hand-made
malicious pickles (`.pkl`, `.pth`, `.pyth`) are refused without running, real model-zoo pickles load,
URLs and folders as MODEL.WEIGHTS are clear errors."""
import builtins
import collections
import glob
import io
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

from rass.checkpoint import CheckpointFileError, RASSCheckpointer
from rass.checkpoint.safe_pickle import UnsafePickleError, safe_pickle_load
from rass.checkpoint.urls import check_download_allowed, resolve_url
from rass.config import setup_cfg
from rass.utils.errors import UserFileNotFoundError, UserValueError
from tests.conftest import REPO


class _Shell:
    """Unpickling it runs `touch <marker>` through os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec:
    """Unpickling it runs Python code (builtins.exec) that writes the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize("payload,refused", [(_Shell, f"{os.system.__module__}.system"), (_Exec, "builtins.exec")])
def test_malicious_pkl_is_refused_and_runs_nothing(tmp_path, payload, refused):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:  # a model-zoo-looking file with one poisoned entry
        pickle.dump({"model": {"weight": np.ones((2, 3), np.float32), "bias": payload(marker)},
                     "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    # the payload is real: plain pickle.load runs it (in a copy, to prove the test's premise)
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsafePickleError) as e:
        RASSCheckpointer(model).load(str(path))
    assert str(e.value).startswith(
        f"MODEL.WEIGHTS: {path}: refused to load: the pickle asks for {refused}, which a weight file does not need "
        "(only dicts, lists, tuples, strings, numbers and numpy arrays / dtypes / scalars are accepted)")
    assert e.value.global_name == refused
    assert not marker.exists()  # no code ran
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_malicious_pth_and_pyth_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    for name, obj in [("evil.pth", {"model": {"weight": _Shell(marker)}}),
                      ("evil.pyth", {"model_state": {"weight": _Shell(marker)}})]:
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointFileError) as e:
            RASSCheckpointer(_model()).load(str(path))
        assert str(e.value).startswith(f"MODEL.WEIGHTS: cannot read {path}: it is a checkpoint holding pickled "
                                       "objects other than tensors and plain containers, which safe loading "
                                       f"(torch.load(weights_only=True)) refuses (it asks for {os.system.__module__}.system")
        assert not marker.exists()


def test_mask2former_format_pkl_loads_exactly(tmp_path):
    """The model-zoo format (numpy arrays under "model", "__author__", "matching_heuristics"), written with
    every pickle protocol, loads the same values."""
    ref = _model()
    state = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"m2f_p{proto}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": state, "__author__": "Mask2Former", "matching_heuristics": False}, f, protocol=proto)
        model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            model.weight.zero_()
        RASSCheckpointer(model).load(str(path))
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=0, msg=f"{k} protocol {proto}")


def test_pycls_pyth_loads(tmp_path):
    ref = _model()
    path = tmp_path / "R-tiny.pyth"
    torch.save({"model_state": ref.state_dict(), "epoch": 3}, path)
    model = torch.nn.Linear(3, 2)
    data = RASSCheckpointer(model)._load_file(str(path))
    assert data["__author__"] == "pycls" and data["matching_heuristics"] is True
    assert all(torch.equal(data["model"][k], v) for k, v in ref.state_dict().items())


def test_safe_unpickler_keeps_values_and_types():
    obj = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "s": np.float64(2.5), "i": np.int64(-3),
           "o": collections.OrderedDict(x=[1, (2.0, None)], y={"z", "w"}), "b": b"\x00\xff", "t": "text"}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        got = safe_pickle_load(io.BytesIO(pickle.dumps(obj, protocol=proto)))
        assert got["a"].dtype == np.float16 and np.array_equal(got["a"], obj["a"])
        assert got["s"] == 2.5 and type(got["s"]) is np.float64 and got["i"] == -3
        assert got["o"] == obj["o"] and type(got["o"]) is collections.OrderedDict
        assert got["b"] == obj["b"] and got["t"] == "text"
    with pytest.raises(UnsafePickleError, match=r"<stream>: refused to load: the pickle asks for collections.Counter"):
        safe_pickle_load(io.BytesIO(pickle.dumps(collections.Counter("ab"))))


def test_url_weights_are_refused_unless_downloads_are_allowed(tmp_path):
    url = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    real = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    assert resolve_url(url) == real
    cfg = setup_cfg(None, ["MODEL.WEIGHTS", url])
    assert cfg.MODEL.ALLOW_DOWNLOADS is False
    with pytest.raises(UserValueError) as e:
        RASSCheckpointer(cfg, _model()).load(cfg.MODEL.WEIGHTS)
    assert e.value.message == (f"MODEL.WEIGHTS: {url!r} is a URL (it resolves to {real}); nothing is downloaded "
                               "unless MODEL.ALLOW_DOWNLOADS is True")
    assert e.value.hint.startswith(f"download {real} to weights/R-50.pkl and set MODEL.WEIGHTS weights/R-50.pkl, or "
                                   "set MODEL.ALLOW_DOWNLOADS True")
    for other in ("https://example.com/w.pth", "catalog://ImageNetPretrained/MSRA/R-50"):
        with pytest.raises(UserValueError, match="is a URL"):
            RASSCheckpointer(_model()).load(other)
    # with the key set, the URL goes on to detectron2 (not called here: no network in tests)
    allowed = setup_cfg(None, ["MODEL.ALLOW_DOWNLOADS", "True"])
    assert RASSCheckpointer(allowed, _model()).allow_downloads is True
    assert check_download_allowed(url, "MODEL.WEIGHTS", allow=True) == real
    assert check_download_allowed(str(tmp_path / "w.pth"), "MODEL.WEIGHTS", allow=False) is None


def test_packaged_configs_download_nothing():
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            text = f.read()
        weights = (yaml.safe_load(text) or {}).get("MODEL", {}).get("WEIGHTS", "")
        assert "://" not in weights, path
    cfg = setup_cfg(os.path.join(REPO, "configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml"))
    assert cfg.MODEL.WEIGHTS.endswith("weights/R-50.pkl") and cfg.MODEL.ALLOW_DOWNLOADS is False


def test_folder_and_missing_weights_are_named(tmp_path):
    RASSCheckpointer(_model(), str(tmp_path)).save("model_final")
    with pytest.raises(UserValueError) as e:
        RASSCheckpointer(_model()).load(str(tmp_path))
    assert e.value.message.startswith(f"MODEL.WEIGHTS: {tmp_path} is a folder; expected a weight file (a torch "
                                      "checkpoint (.pth")
    assert e.value.hint == f"it holds model_final.pth: e.g. MODEL.WEIGHTS {tmp_path / 'model_final.pth'}"
    with pytest.raises(UserFileNotFoundError, match=f"MODEL.WEIGHTS: checkpoint file not found: {tmp_path / 'no.pth'}"):
        RASSCheckpointer(_model()).load(str(tmp_path / "no.pth"))
