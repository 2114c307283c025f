"""RobustSAM trains under DDP (2 processes, gloo, CPU, `train_net`'s Trainer): each rank decodes its own image,
the gradients are averaged across the ranks, and both ranks end the step with the same weights."""
import os
import subprocess
import sys
import textwrap

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from detectron2.engine import launch


    def main(config, out):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from detectron2.utils import comm
        from rass.config import setup_cfg
        from rass.engine import Trainer

        trainer = Trainer(setup_cfg(config, ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2",
                                             "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.BASE_LR", "0.001",
                                             "DATALOADER.NUM_WORKERS", "0"]))
        trainer.resume_or_load(resume=False)
        ddp = trainer.model
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel), type(ddp)
        model = ddp.module
        names, local, averaged = [], {}, {}
        model.register_forward_pre_hook(lambda m, args: names.extend(d["file_name"] for d in args[0]))

        def record(state, bucket):  # this rank's gradients before DDP averages them, and the average
            local[bucket.index()] = bucket.buffer().clone()

            def keep(f):  # (the buckets' averages may complete in any order)
                value = f.value()[0] if isinstance(f.value(), list) else f.value()
                averaged[bucket.index()] = value.clone()
                return value

            return allreduce_hook(None, bucket).then(keep)

        ddp.register_comm_hook(None, record)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer.train()
        after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"world": comm.get_world_size(), "names": names, "trainable": trainable, "before": before,
                    "after": after, "local": torch.cat([local[i] for i in sorted(local)]),
                    "averaged": torch.cat([averaged[i] for i in sorted(averaged)])},
                   f"{out}/rank{comm.get_rank()}.pt")


    if __name__ == "__main__":
        launch(main, 2, dist_url="auto", args=(sys.argv[1], sys.argv[2]))
''')


def test_two_processes_average_the_gradients_and_keep_the_weights_equal(tmp_path):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = str(tmp_path / "syn")
    make_synthetic_lqseg(root, 0, 1, [], 64, 96, False, None, num_train=2)  # two training images
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    config = os.path.join(REPO, "configs", "lqseg", "tiny_robustsam_train.yaml")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", RASS_LQSEG_SYNTHETIC_ROOT=root,
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(script), config, str(out)], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert [d["world"] for d in ranks] == [2, 2]
    # each rank decoded one image, not the same one
    assert [len(d["names"]) for d in ranks] == [1, 1] and ranks[0]["names"] != ranks[1]["names"]
    # their own gradients differ; DDP's step used their mean on both ranks
    local0, local1 = ranks[0]["local"], ranks[1]["local"]
    assert local0.shape == local1.shape and local0.numel() > 0
    assert not torch.allclose(local0, local1)
    for d in ranks:
        torch.testing.assert_close(d["averaged"], (local0 + local1) / 2, atol=1e-6, rtol=1e-5)
    # the decoder + robust modules were trained and are the same on both ranks after the step
    assert ranks[0]["trainable"] == ranks[1]["trainable"]
    assert any(n.startswith("robust.") for n in ranks[0]["trainable"])
    moved = [n for n in ranks[0]["trainable"] if not torch.equal(ranks[0]["before"][n], ranks[0]["after"][n])]
    assert any(n.startswith("robust.") for n in moved) and any(n.startswith("sam.mask_decoder.") for n in moved)
    for n in ranks[0]["trainable"]:
        assert torch.equal(ranks[0]["before"][n], ranks[1]["before"][n]), n  # same start (seeded init)
        assert torch.equal(ranks[0]["after"][n], ranks[1]["after"][n]), n
