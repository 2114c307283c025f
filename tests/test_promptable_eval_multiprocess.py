"""The promptable evaluation gives the same numbers with one and with two processes (gloo, CPU)."""
import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from detectron2.engine import launch


    class PointModel(torch.nn.Module):
        """Mask = 7x7 squares around the prompt points: depends on which points were drawn."""

        def forward(self, batch):
            outs = []
            for d in batch:
                m = torch.zeros(1, d["height"], d["width"], dtype=torch.bool)
                for x, y in d["point_coords"][0].round().long().tolist():
                    m[0, max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = True
                outs.append({"masks": m})
            return outs


    def main(root, out):
        import rass  # noqa: F401
        from detectron2.data import DatasetCatalog, build_detection_test_loader
        from detectron2.evaluation import inference_on_dataset
        from detectron2.utils import comm
        from rass.data.dataset_mappers.promptable import PromptableDatasetMapper
        from rass.data.datasets.lqseg import register_image_mask_folder
        from rass.evaluation.promptable import PromptableMaskEvaluator

        register_image_mask_folder("mp_set", root + "/images", root + "/masks")
        loader = build_detection_test_loader(DatasetCatalog.get("mp_set"),
                                             mapper=PromptableDatasetMapper(is_train=False, image_size=0))
        res = inference_on_dataset(PointModel(), loader, PromptableMaskEvaluator("mp_set", output_dir=out))
        if comm.is_main_process():
            with open(out + "/res.json", "w") as f:
                json.dump({"world": comm.get_world_size(), **res["promptable"]}, f)


    if __name__ == "__main__":
        launch(main, int(sys.argv[3]), dist_url="auto", args=(sys.argv[1], sys.argv[2]))
''')


def test_one_and_two_processes_agree(tmp_path):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    make_synthetic_lqseg(str(tmp_path / "syn"), seed=0, num_images=5, levels=(), min_size=32, max_size=48)
    data = str(tmp_path / "syn" / "test_clear" / "Synthetic")
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
    assert 0.0 < results[0]["IoU"] < 1.0
    one = json.load(open(tmp_path / "out1" / "promptable_per_image_mp_set.json"))["images"]
    two = json.load(open(tmp_path / "out2" / "promptable_per_image_mp_set.json"))["images"]
    assert one == two
