"""The SOD evaluation gives the same numbers with one and with two processes (gloo, CPU)."""
import json
import os
import subprocess
import sys
import textwrap

from conftest import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.nn.functional as F
    from detectron2.engine import launch


    class BrightnessModel(torch.nn.Module):
        """Logits = the image's brightness (its 32x32 input resized back to the GT size): depends on the input."""

        def forward(self, batch):
            outs = []
            for d in batch:
                x = d["image"].float().mean(0, keepdim=True)[None]
                x = F.interpolate(x, size=(d["height"], d["width"]), mode="bilinear", align_corners=False)[0]
                outs.append({"mask_logits": (x - 128.0) / 16.0})
            return outs


    def main(root, out):
        import rass.data  # noqa: F401
        from detectron2.data import DatasetCatalog, build_detection_test_loader
        from detectron2.evaluation import inference_on_dataset
        from detectron2.utils import comm
        from rass.data.dataset_mappers.sod import MGDSODDatasetMapper
        from rass.data.datasets.sod import register_sod_folder
        from rass.evaluation.sod import SODEvaluator

        register_sod_folder("mp_sod", root + "/test/im", root + "/test/gt")
        loader = build_detection_test_loader(DatasetCatalog.get("mp_sod"),
                                             mapper=MGDSODDatasetMapper(is_train=False, image_size=32))
        res = inference_on_dataset(BrightnessModel(), loader, SODEvaluator("mp_sod", output_dir=out))
        if comm.is_main_process():
            with open(out + "/res.json", "w") as f:
                json.dump({"world": comm.get_world_size(), **res["sod"]}, f)


    if __name__ == "__main__":
        launch(main, int(sys.argv[3]), dist_url="auto", args=(sys.argv[1], sys.argv[2]))
''')


def test_one_and_two_processes_agree(tmp_path):
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    data = str(tmp_path / "syn")
    tool.make_synthetic_sod(data, seed=1, num_train=0, num_test=5, min_size=24, max_size=40)
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT)
    results = []
    ns: dict = {}
    exec(compile(SCRIPT, str(script), "exec"), ns)  # one process: here (not "__main__": launch is not called)
    (tmp_path / "out1").mkdir()
    ns["main"](data, str(tmp_path / "out1"))
    results.append(json.load(open(tmp_path / "out1" / "res.json")))
    out = tmp_path / "out2"  # two processes: detectron2's launch, gloo on CPU
    out.mkdir()
    r = subprocess.run([sys.executable, str(script), data, str(out), "2"], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results.append(json.load(open(out / "res.json")))
    assert [r.pop("world") for r in results] == [1, 2]
    assert results[0] == results[1] and results[0]["num_images"] == 5
    assert 0.0 < results[0]["maxF"] < 1.0 and results[0]["HCE"] > 0
    one = json.load(open(tmp_path / "out1" / "sod_mp_sod.json"))
    two = json.load(open(tmp_path / "out2" / "sod_mp_sod.json"))
    assert one == two and len(one["images"]) == 5
