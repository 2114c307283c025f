"""tools/fetch_weights.py, offline: a local folder stands in for the Hugging Face hub."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, load_script
from rass.utils import model_zoo
from rass.utils.errors import UserKeyError, UserValueError

fw = load_script("tools/fetch_weights.py", "fetch_weights_tool")

PAYLOAD = b"released weights " * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake hub: files under tmp/hub/<repo_type>/<repo_id>/<path>; records the calls."""
    root = tmp_path / "hub"
    calls = []

    def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None, local_dir=None, **kw):
        calls.append(("file", repo_id, filename, repo_type or "model", revision))
        src = root / (repo_type or "model") / repo_id / filename
        if not src.is_file():
            raise FileNotFoundError(f"fake hub: no {repo_id}/{filename}")
        out = os.path.join(local_dir, filename)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(src, out)
        return out

    def snapshot_download(repo_id, *, repo_type=None, revision=None, allow_patterns=None, local_dir=None, **kw):
        import fnmatch

        calls.append(("folder", repo_id, tuple(allow_patterns), repo_type or "model", revision))
        base = root / (repo_type or "model") / repo_id
        for d, _, fs in os.walk(base):
            for f in fs:
                rel = os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
                if any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                    os.makedirs(os.path.dirname(os.path.join(local_dir, rel)), exist_ok=True)
                    shutil.copyfile(os.path.join(d, f), os.path.join(local_dir, rel))
        os.makedirs(os.path.join(local_dir, ".cache", "huggingface"), exist_ok=True)  # as huggingface_hub leaves it
        return local_dir

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    def put(repo_id, path, data, repo_type="model"):
        p = root / repo_type / repo_id / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return put, calls


def _entry(**kw):
    base = dict(name="toy", method="Test", what="toy weights", dest="weights/toy/toy.pth", config_key="MODEL.TOY",
                source="hub", url="https://huggingface.co/org/toy", repo_id="org/toy", filename="sub/toy.pth",
                size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    base.update(kw)
    return model_zoo.ZooEntry(**base)


@pytest.fixture
def table(monkeypatch):
    """Replace the zoo by the given entries (plus the real ones) for one test."""
    def use(*entries):
        monkeypatch.setattr(model_zoo, "ZOO", tuple(entries) + model_zoo.ZOO)
    return use


def test_fetch_checks_sha_and_writes_the_default_path(tmp_path, hub, table, capsys):
    put, calls = hub
    put("org/toy", "sub/toy.pth", PAYLOAD)
    table(_entry())
    assert fw.main(["toy", "--root", str(tmp_path)]) == 0
    dest = tmp_path / "weights" / "toy" / "toy.pth"
    assert dest.read_bytes() == PAYLOAD
    assert calls == [("file", "org/toy", "sub/toy.pth", "model", None)]
    out = capsys.readouterr().out
    assert f"sha256 {PAYLOAD_SHA}; matches the published sha256" in out
    assert os.listdir(dest.parent) == ["toy.pth"]  # the staging folder is gone
    # a second run keeps the file and downloads nothing
    assert fw.main(["toy", "--root", str(tmp_path)]) == 0
    assert len(calls) == 1 and "already present" in capsys.readouterr().out


def test_sha_mismatch_is_one_clear_error_and_leaves_no_file(tmp_path, hub, table):
    put, calls = hub
    put("org/toy", "sub/toy.pth", PAYLOAD[:-1] + b"X")  # same size, other bytes
    table(_entry())
    with pytest.raises(UserValueError) as e:
        fw.main(["toy", "--root", str(tmp_path)])
    msg = str(e.value)
    assert "downloaded org/toy/sub/toy.pth: sha256 " in msg and f"expected {PAYLOAD_SHA} for toy" in msg
    assert "nothing written to" in msg and "\n" not in msg
    assert not (tmp_path / "weights" / "toy" / "toy.pth").exists()
    assert os.listdir(tmp_path / "weights" / "toy") == []  # the download was deleted with its staging folder


def test_size_mismatch_is_refused_before_hashing(tmp_path, hub, table):
    put, _ = hub
    put("org/toy", "sub/toy.pth", PAYLOAD + b"!")
    table(_entry())
    with pytest.raises(UserValueError, match=rf"{len(PAYLOAD) + 1:,} bytes, expected {len(PAYLOAD):,} for toy"):
        fw.main(["toy", "--root", str(tmp_path)])
    assert os.listdir(tmp_path / "weights" / "toy") == []


def test_unknown_sha_is_computed_and_printed(tmp_path, hub, capsys):
    """A real entry of the table (RAM, a file of a hub Space, no sha256 published)."""
    put, calls = hub
    put("xinyu1205/recognize-anything", "ram_swin_large_14m.pth", b"ram" * 10, repo_type="space")
    assert fw.main(["ram", "--root", str(tmp_path)]) == 0
    assert calls == [("file", "xinyu1205/recognize-anything", "ram_swin_large_14m.pth", "space", None)]
    assert (tmp_path / "weights" / "ram_swin_large_14m.pth").read_bytes() == b"ram" * 10
    out = capsys.readouterr().out
    assert hashlib.sha256(b"ram" * 10).hexdigest() in out and "no sha256 published" in out


def test_existing_file_with_another_sha_is_not_replaced(tmp_path, hub, table):
    put, calls = hub
    table(_entry())
    dest = tmp_path / "weights" / "toy" / "toy.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * len(PAYLOAD))
    with pytest.raises(UserValueError, match="move that file away"):
        fw.main(["toy", "--root", str(tmp_path)])
    assert calls == [] and dest.read_bytes() == b"x" * len(PAYLOAD)


def test_folder_fetch_takes_only_the_listed_files(tmp_path, hub, capsys):
    """The SD-2.1-base entry: a diffusers folder, fp32 safetensors only."""
    put, calls = hub
    repo = "Manojb/stable-diffusion-2-1-base"
    entry = model_zoo.by_name()["sd21-base"]
    for pattern in entry.folder_files:
        put(repo, pattern.replace("*", "vocab.json"), pattern.encode())
    put(repo, "unet/diffusion_pytorch_model.bin", b"pickle")  # not wanted
    put(repo, "unet/diffusion_pytorch_model.fp16.safetensors", b"fp16")  # not wanted
    assert fw.main(["sd21-base", "--root", str(tmp_path)]) == 0
    dest = tmp_path / "weights" / "stable-diffusion-2-1-base"
    got = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    assert got == sorted(p.replace("*", "vocab.json") for p in entry.folder_files)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (dest / unet).read_bytes() == unet.encode()
    out = capsys.readouterr().out
    sha = hashlib.sha256(b"vae/diffusion_pytorch_model.safetensors").hexdigest()
    assert f"{sha}  vae/diffusion_pytorch_model.safetensors" in out
    assert os.listdir(tmp_path / "weights") == ["stable-diffusion-2-1-base"]


def test_folder_missing_a_file_is_an_error_and_writes_nothing(tmp_path, hub):
    put, _ = hub
    put("Manojb/stable-diffusion-2-1-base", "model_index.json", b"{}")
    with pytest.raises(Exception, match=r"has no .*unet/diffusion_pytorch_model.safetensors.* for sd21-base"):
        fw.main(["sd21-base", "--root", str(tmp_path)])
    assert os.listdir(tmp_path / "weights") == []


def test_unknown_name_lists_the_names(tmp_path, hub):
    _, calls = hub
    with pytest.raises(UserKeyError) as e:
        fw.main(["sam-vit-x", "ram", "--root", str(tmp_path)])
    msg = str(e.value)
    assert "unknown name(s) 'sam-vit-x'" in msg
    for name in ("sam-vit-l", "sd21-base", "rass", "glesam-h-lora"):
        assert name in msg
    assert calls == []  # nothing fetched when one name is wrong


def test_non_hub_file_prints_instructions(tmp_path, hub, capsys):
    _, calls = hub
    assert fw.main(["sam-vit-l", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth" in out
    assert os.path.join(str(tmp_path), "weights", "sam_vit_l_0b3195.pth") in out
    assert "1,249,524,607 bytes" in out and "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622" in out
    assert "MODEL.SAM.CHECKPOINT" in out and calls == []


def test_verify_a_hand_downloaded_file(tmp_path, table, capsys):
    table(_entry(source="manual"))
    dest = tmp_path / "weights" / "toy" / "toy.pth"
    assert fw.main(["--verify", "toy", "--root", str(tmp_path)]) == 1
    assert "MISSING" in capsys.readouterr().out
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    assert fw.main(["--verify", "toy", "--root", str(tmp_path)]) == 0
    assert f"OK {dest} (sha256 {PAYLOAD_SHA}, as published)" in capsys.readouterr().out
    dest.write_bytes(PAYLOAD[:-1] + b"Z")
    assert fw.main(["--verify", "toy", "--root", str(tmp_path)]) == 1
    assert f"FAILED {dest}: sha256" in capsys.readouterr().out


def test_list_names_every_entry(capsys):
    assert fw.main(["--list"]) == 0
    out = capsys.readouterr().out
    for e in model_zoo.ZOO:
        assert f"{e.name:20s} {e.method}: {e.what}" in out
        assert e.dest in out
    assert "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e" in out  # sam_vit_h


def test_no_name_downloads_nothing(hub, capsys):
    _, calls = hub
    assert fw.main([]) == 0
    assert "nothing fetched" in capsys.readouterr().out and calls == []


def test_table_is_consistent():
    names = [e.name for e in model_zoo.ZOO]
    assert len(names) == len(set(names))
    for e in model_zoo.ZOO:
        assert e.source in ("hub", "manual"), e.name
        assert e.url.startswith(("https://", "http://")), e.name
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0), e.name
        if e.source == "hub":
            assert e.repo_id.count("/") == 1 and (bool(e.filename) != e.is_folder), e.name
            assert e.repo_type in ("model", "space", "dataset"), e.name
    # the SAM files: published sizes and the first 12 hex digits recorded in the shared reference
    sam = {e.name: e for e in model_zoo.ZOO if e.name.startswith("sam-vit-")}
    assert sam["sam-vit-b"].size == 375_042_383 and sam["sam-vit-b"].sha256.startswith("ec2df6273261")
    assert sam["sam-vit-l"].size == 1_249_524_607 and sam["sam-vit-l"].sha256.startswith("3adcc4315b64")
    assert sam["sam-vit-h"].size == 2_564_550_879 and sam["sam-vit-h"].sha256.startswith("a7bf3b02f3eb")


def test_model_zoo_page_shows_the_table():
    with open(os.path.join(REPO, "docs", "MODEL_ZOO.md"), encoding="utf-8") as f:
        page = f.read()
    start = page.index(model_zoo.TABLE_BEGIN) + len(model_zoo.TABLE_BEGIN)
    end = page.index(model_zoo.TABLE_END)
    assert page[start:end].strip() == model_zoo.render_markdown_table().strip(), (
        "docs/MODEL_ZOO.md is out of date: paste the output of `tools/fetch_weights.py --markdown` between its markers")


def test_help_imports_neither_torch_nor_huggingface_hub():
    code = ("import runpy, sys\nsys.argv = ['fetch_weights.py', '--help']\n"
            "try:\n    runpy.run_path('tools/fetch_weights.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = ('torch', 'huggingface_hub', 'numpy', 'detectron2')\n"
            "print('HEAVY', sorted(m for m in heavy if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: fetch_weights.py" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"
