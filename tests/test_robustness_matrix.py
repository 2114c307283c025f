"""The robustness matrix (`rass.engine.robustness_matrix`, tools/eval_robustness_matrix.py): closed-form scores of
a model that paints its prompts, the files (JSON, a table per model, a heat map per metric), two processes =
one process on a real tiny HQ-SAM over clean + a degraded level, and the command's one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import rass  # noqa: F401
from rass.config import setup_cfg
from rass.data.datasets.lqseg import register_image_mask_folder
from rass.data.prompt_quality import ProtocolSpec
from rass.engine.robustness_matrix import ModelSpec, parse_model_specs, run_matrix
from rass.utils.errors import UserValueError
from tests.conftest import REPO

TINY_SAM = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")
TINY_HQ = os.path.join(REPO, "configs", "lqseg", "tiny_sam_hq.yaml")
RECTS = {"a": (5, 6, 30, 20), "b": (10, 3, 40, 33), "c": (0, 0, 20, 12)}  # x0, y0, x1, y1 (inclusive)


def _rect_set(root):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for stem, (x0, y0, x1, y1) in RECTS.items():
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(f"{root}/images/{stem}.png")
        m = np.zeros((40, 56), np.uint8)
        m[y0:y1 + 1, x0:x1 + 1] = 255
        Image.fromarray(m).save(f"{root}/masks/{stem}.png")
    return os.path.join(root, "images"), os.path.join(root, "masks")


class PaintModel(torch.nn.Module):
    """Mask = the prompt box's pixels (inclusive, rounded), or the prompt points' pixels: closed-form IoUs."""

    def forward(self, batch):
        outs = []
        for d in batch:
            n = len(d["boxes"]) if "boxes" in d else len(d["point_coords"])
            m = torch.zeros(n, d["height"], d["width"], dtype=torch.bool)
            for i in range(n):
                if "boxes" in d:
                    x0, y0, x1, y1 = d["boxes"][i].round().long().tolist()
                    m[i, y0:y1 + 1, x0:x1 + 1] = True
                else:
                    for x, y in d["point_coords"][i].long().tolist():
                        m[i, y, x] = True
            outs.append({"masks": m})
        return outs


def test_scores_of_a_model_that_paints_its_prompts(tmp_path):
    images, masks = _rect_set(str(tmp_path / "rects"))
    register_image_mask_folder("matrix_rects", images, masks)
    cfg = setup_cfg(TINY_SAM, ["INPUT.PROMPT.IMAGE_SIZE", "0"])
    spec = ProtocolSpec(box_noise_scales=(0.0, 0.3), num_points=(1, 5), box_points=2, draws=4, seed=3,
                        protocols=("gt_box", "box_noise_0", "box_noise_0.3", "points_1", "points_5"))
    report = run_matrix([ModelSpec("paint", TINY_SAM)], lambda m: (cfg, PaintModel()), "matrix_rects", ["clean"],
                        spec=spec, output_dir=str(tmp_path / "out"))
    res = report["results"]["paint"]["clean"]
    assert res["gt_box"] == {"mIoU": 1.0, "mBIoU": 1.0, "stability": None, "num_images": 3, "notes": 0}
    assert res["box_noise_0"]["mIoU"] == 1.0 and res["box_noise_0"]["stability"] is None  # scale 0: the exact box
    assert 0.3 < res["box_noise_0.3"]["mIoU"] < 1.0 and 0.3 < res["box_noise_0.3"]["stability"] < 1.0
    areas = [(x1 - x0 + 1) * (y1 - y0 + 1) for x0, y0, x1, y1 in RECTS.values()]
    assert res["points_1"]["mIoU"] == pytest.approx(np.mean([1 / a for a in areas]))  # one object pixel painted
    assert res["points_5"]["mIoU"] == pytest.approx(np.mean([5 / a for a in areas]))  # five distinct ones
    # 4 draws of 1 point: distinct pixels (IoU 0) unless two draws hit the same one
    assert 0.0 <= res["points_1"]["stability"] < 0.2
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["matrix_mBIoU.png", "matrix_mIoU.png", "matrix_stability.png",
                                       "robustness_matrix.json", "robustness_matrix.md",
                                       "robustness_matrix_per_image.json"]
    assert json.loads((out / "robustness_matrix.json").read_text())["results"] == report["results"]
    md = (out / "robustness_matrix.md").read_text()
    assert "## paint" in md and "| clean | 100.0 / 100.0 / - | 100.0 / 100.0 / - |" in md
    assert (out / "matrix_mIoU.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_image = json.loads((out / "robustness_matrix_per_image.json").read_text())
    assert len(per_image) == 3 * 5 and {r["image_id"] for r in per_image} == set(RECTS)
    limited = run_matrix([ModelSpec("paint", TINY_SAM)], lambda m: (cfg, PaintModel()), "matrix_rects", ["clean"],
                         spec=spec, limit=2)
    assert limited["results"]["paint"]["clean"]["gt_box"]["num_images"] == 2


SCRIPT = textwrap.dedent('''
    import json, sys
    from detectron2.engine import launch


    def main(images, masks, out, cache, config):
        import rass  # noqa: F401
        from detectron2.utils import comm
        from rass.data.datasets.lqseg import register_image_mask_folder
        from rass.engine.robustness_matrix import build_from_config, parse_model_specs, run_matrix

        register_image_mask_folder("matrix_mp", images, masks)
        opts = ["TEST.PROMPT_QUALITY.STABILITY_DRAWS", "2", "TEST.PROMPT_QUALITY.PROTOCOLS",
                "['gt_box', 'box_noise_0.4', 'points_3']", "INPUT.PROMPT.IMAGE_SIZE", "0"]
        run_matrix(parse_model_specs([config]), lambda m: build_from_config(m, opts), "matrix_mp",
                   ["clean", "lqseg_1"], output_dir=out, cache_dir=cache)


    if __name__ == "__main__":
        launch(main, int(sys.argv[6]), dist_url="auto", args=tuple(sys.argv[1:6]))
''')


def test_two_processes_give_the_same_matrix_as_one(tmp_path):
    images, masks = _rect_set(str(tmp_path / "rects"))
    script = tmp_path / "run_matrix.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    runs = []
    for n in (1, 2):
        out = str(tmp_path / f"out{n}")
        if n == 1:  # one process: here (not "__main__": launch is not called)
            ns: dict = {}
            exec(compile(SCRIPT, str(script), "exec"), ns)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the two processes (OMP_NUM_THREADS=1): tiny models, many small ops
            try:
                ns["main"](images, masks, out, str(tmp_path / "cache"), TINY_HQ)
            finally:
                torch.set_num_threads(threads)
        else:  # two processes: detectron2's launch, gloo on CPU, reusing the degraded copy written above
            r = subprocess.run([sys.executable, str(script), images, masks, out, str(tmp_path / "cache"), TINY_HQ,
                                str(n)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
        with open(os.path.join(out, "robustness_matrix.json")) as f:
            runs.append(json.load(f))
        with open(os.path.join(out, "robustness_matrix_per_image.json")) as f:
            runs[-1]["per_image"] = json.load(f)
    assert [r["run"].pop("processes") for r in runs] == [1, 2]
    assert runs[0] == runs[1]
    res = runs[0]["results"]["tiny_sam_hq"]
    assert set(res) == {"clean", "lqseg_1"} and res["clean"]["gt_box"]["num_images"] == 3
    assert res["clean"]["points_3"] != res["lqseg_1"]["points_3"]  # the degraded copy changes the masks
    assert 0.0 < res["clean"]["box_noise_0.4"]["stability"] <= 1.0


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(UserValueError, match=r"config file 'nope.yaml' does not exist"):
        parse_model_specs(["nope.yaml"])
    with pytest.raises(UserValueError, match=r"the name\(s\) \['tiny_sam'\] are used twice"):
        parse_model_specs([TINY_SAM, TINY_SAM])
    assert parse_model_specs([f"a:{TINY_SAM}=w.pth"]) == [ModelSpec("a", TINY_SAM, "w.pth")]
    r = subprocess.run([sys.executable, "tools/eval_robustness_matrix.py", "--models", "missing.yaml", "--dataset",
                        "x"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "config file 'missing.yaml' does not exist" in r.stderr + r.stdout
    images, masks = _rect_set(str(tmp_path / "rects"))
    register_image_mask_folder("matrix_bad", images, masks)
    with pytest.raises(Exception, match="Level 'lqseg_9': unknown degradation preset"):
        run_matrix([ModelSpec("paint", TINY_SAM)], lambda m: (None, PaintModel()), "matrix_bad", ["clean", "lqseg_9"])
    cfgs = {"a": setup_cfg(TINY_SAM, ["INPUT.PROMPT.IMAGE_SIZE", "0"]), "b": setup_cfg(TINY_SAM)}
    with pytest.raises(UserValueError, match=r"INPUT.PROMPT.IMAGE_SIZE differs between the models \(a: 0, b: 128\)"):
        run_matrix([ModelSpec("a", TINY_SAM), ModelSpec("b", TINY_SAM)], lambda m: (cfgs[m.name], PaintModel()),
                   "matrix_bad", ["clean"], limit=1)


def test_the_image_is_encoded_once_with_the_masks_of_whole_forwards(tmp_path, monkeypatch):
    """SAM-family models: one image encoding serves every protocol group (`_encoded_once`), and the records equal
    those of one whole forward per group — for GleSAM (the enhanced embedding) and HQ-SAM (its early features)."""
    import rass.engine.robustness_matrix as rm
    from rass.data.dataset_mappers import PromptableDatasetMapper
    from rass.engine.robustness_matrix import build_from_config, evaluate_image
    from detectron2.data import DatasetCatalog

    image_dir, mask_dir = _rect_set(str(tmp_path))
    register_image_mask_folder("matrix_once_rects", image_dir, mask_dir)
    protocols = ["gt_box", "box_noise_0.2", "points_1", "box_points_3"]
    spec = ProtocolSpec(draws=3)
    for config in (os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml"), TINY_HQ):
        cfg, model = build_from_config(parse_model_specs([config])[0], init_seed=0)
        inp = PromptableDatasetMapper(cfg, is_train=False)(DatasetCatalog.get("matrix_once_rects")[1])
        calls = []
        encoder = model.sam.vision_encoder if hasattr(model.sam, "vision_encoder") else model.sam.image_encoder
        handle = encoder.register_forward_hook(lambda *a: calls.append(1))
        once = evaluate_image(model, inp, spec, protocols)
        assert len(calls) == 1, config  # 3 groups, one encoding
        monkeypatch.setattr(rm, "_encoded_once", lambda m, image: None)
        whole = evaluate_image(model, inp, spec, protocols)
        monkeypatch.undo()
        handle.remove()
        assert len(calls) == 1 + 3
        assert once == whole, config
        assert len({r["IoU"] for r in once}) > 1  # the protocols give different masks
