"""The semantic evaluation gives the same numbers with one and with two processes (gloo, CPU):
mIoU, fwIoU, mACC, pACC, per-class IoU / Acc / Boundary IoU and the RLE predictions."""
import json
import os
import subprocess
import sys
import textwrap

from detectron2.data import DatasetCatalog, MetadataCatalog

from tests import sem_seg_cases

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.environ["RASS_REPO"])
    from detectron2.engine import launch


    def main(label_dir, out):
        import rass  # noqa: F401
        from detectron2.utils import comm
        from rass.evaluation import CheckedSemSegEvaluator, write_eval_results
        from tests import sem_seg_cases

        records = [{"file_name": n, "sem_seg_file_name": os.path.join(label_dir, n.replace(".jpg", ".png"))}
                   for n, _, _ in sem_seg_cases.cases()]
        sem_seg_cases.register("mp_sem_seg", records)
        ev = CheckedSemSegEvaluator("mp_sem_seg", distributed=True, output_dir=out)
        ev.reset()
        cases = sem_seg_cases.cases()
        rank, world = comm.get_rank(), comm.get_world_size()
        share = (len(cases) + world - 1) // world  # consecutive shares: the gathered predictions keep their order
        for name, _, scores in cases[rank * share:(rank + 1) * share]:
            ev.process([{"file_name": name}], [{"sem_seg": scores}])
        res = ev.evaluate()
        if comm.is_main_process():
            write_eval_results({"world": world, "processed": share, **res}, out + "/res.json")
        if world > 1:  # orderly teardown: a rank leaving while gloo still runs may abort at exit
            import torch.distributed as dist

            comm.synchronize()
            dist.destroy_process_group()


    if __name__ == "__main__":
        launch(main, int(sys.argv[3]), dist_url="auto", args=(sys.argv[1], sys.argv[2]))
''')


def test_one_and_two_processes_agree(tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    labels.mkdir()
    sem_seg_cases.write_labels(str(labels))
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT)
    results = []
    (tmp_path / "out1").mkdir()  # one process: here (not "__main__": launch is not called)
    ns: dict = {}
    monkeypatch.setenv("RASS_REPO", REPO)
    exec(compile(SCRIPT, str(script), "exec"), ns)
    try:
        ns["main"](str(labels), str(tmp_path / "out1"))
    finally:
        DatasetCatalog.remove("mp_sem_seg")
        MetadataCatalog.remove("mp_sem_seg")
    results.append(json.load(open(tmp_path / "out1" / "res.json")))
    out = tmp_path / "out2"  # two processes: detectron2's launch, gloo on CPU
    out.mkdir()
    r = subprocess.run([sys.executable, str(script), str(labels), str(out), "2"], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results.append(json.load(open(out / "res.json")))
    n = len(sem_seg_cases.SHAPES)
    assert [(r.pop("world"), r.pop("processed")) for r in results] == [(1, n), (2, (n + 1) // 2)]
    one, two = results[0]["sem_seg"], results[1]["sem_seg"]
    assert one == two  # every metric, exactly
    names = sem_seg_cases.CLASSES
    assert sorted(k for k in one if k.startswith(("IoU-", "BoundaryIoU-"))) == sorted(
        [f"IoU-{c}" for c in names] + [f"BoundaryIoU-{c}" for c in names])
    assert all(0 < one[k] < 100 for k in ("mIoU", "fwIoU", "mACC", "pACC", "mBoundaryIoU"))
    assert (tmp_path / "out1" / "sem_seg_predictions.json").read_bytes() == \
        (tmp_path / "out2" / "sem_seg_predictions.json").read_bytes()
