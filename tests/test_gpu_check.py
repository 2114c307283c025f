"""The prepared GPU check without a GPU: `scripts/gpu_check.sh --dry-run`, the tiny CPU run of
tools/benchmarks/bench_gpu.py, the carried wheel set (when .gpu_wheels/ exists) and the report helpers.

The three scripts run once, in one module fixture, and several tests read their output.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

BENCH_DIR = os.path.join(REPO, "tools", "benchmarks")
sys.path.insert(0, BENCH_DIR)

import bench_gpu  # noqa: E402
import gpu_report  # noqa: E402

WHEELS = os.path.join(REPO, ".gpu_wheels")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (return code, output, out dir) of the dry run, the tiny benchmark and the wheel check."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    commands = {
        "dry": ["bash", "scripts/gpu_check.sh", str(out / "dry"), "--dry-run"],
        "bench": [sys.executable, "tools/benchmarks/bench_gpu.py", "--tiny", "--device", "cpu", "--threads", "1",
                  "--warmup", "0", "--repeats", "1", "--json", str(out / "bench.json")],
    }
    if os.path.isdir(WHEELS):
        commands["wheels"] = ["bash", "scripts/gpu_wheels.sh", "--check"]
    results = {}
    for k, c in commands.items():
        p = subprocess.run(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        results[k] = (p.returncode, p.stdout, out)
    return results


def test_dry_run_checks_wheels_prints_kernel_build_and_imports_every_benchmark(runs):
    rc, text, out = runs["dry"]
    assert rc == 0, text[-3000:]
    # the kernel build command, as it will run on the GPU machine
    build = next(line for line in text.splitlines() if "FORCE_CUDA=1" in line and "pip install" in line)
    for part in ("--no-build-isolation", "--no-index", "--target", "torch_ms_deform_attn-0.1.1.tar.gz",
                 "TORCH_CUDA_ARCH_LIST="):
        assert part in build
    modules = sorted(n[:-3] for n in os.listdir(BENCH_DIR) if n.endswith(".py"))
    imported = next(line for line in text.splitlines() if line.startswith("benchmark modules imported:"))
    assert [m.strip() for m in imported.split(":", 1)[1].split(",")] == modules
    # wheel folder: verified when present, reported when absent
    steps = {s["step"]: s for s in json.load(open(out / "dry" / "gpu_check.json"))["steps"]}
    wheel_step = steps["wheel folder .gpu_wheels"]
    assert wheel_step["status"] == ("ok" if os.path.isdir(WHEELS) else "absent")
    assert steps["benchmark imports, versions, APIs"]["status"] == "ok"
    # one summary table last, and the full log written
    tail = text.rstrip().splitlines()[-len(steps) - 5:]  # header, rule, steps, 3 version rows
    assert tail[0].startswith("| part | item | result | figures |") and all(x.startswith("|") for x in tail)
    assert "APIs the project imports | ok" in text
    log = (out / "dry" / "gpu_check.log").read_text()
    assert "FORCE_CUDA=1" in log and log.rstrip().endswith(text.rstrip().splitlines()[-1])


def expected_rows(s):
    rows = [f"RASS infer {h}x{w} {bench_gpu.DTYPE_NAMES[d]} b{b}" for d in s.dtypes for (h, w) in s.sizes
            for b in s.batches]
    rows += [f"check {bench_gpu.DTYPE_NAMES[d]} vs fp32 scores {h}x{w}" for d in s.dtypes[1:] for (h, w) in s.sizes]
    rows += [f"RASS train iter {s.train_size}x{s.train_size} fp32 b{b}" for b in s.train_batches]
    rows += [f"msda {p} b{b}" for b in s.msda_batches for p in ("forward", "forward+backward")]
    rows += [f"degradation cpu b{s.degradation_batch} {s.degradation_size}px"]
    return rows


def test_tiny_cpu_benchmark_prints_every_row_with_consistent_figures(runs):
    rc, text, out = runs["bench"]
    assert rc == 0, text[-3000:]
    s = bench_gpu.settings(tiny=True)
    table = text[text.index("| part | item | result | figures |"):]
    for name in expected_rows(s):
        assert f"| {name} |" in table, name
    results = json.load(open(out / "bench.json"))
    sections = results["sections"]
    for name in ("rass_infer", "rass_train", "msda", "degradation"):
        assert sections[name]["status"] == "ok", (name, sections[name])
    rows = {r["name"]: r for sec in sections.values() for r in sec.get("rows", [])}
    for name in expected_rows(s):
        r = rows[name]
        if r.get("check"):
            assert r["ok"] is True and 0 < r["rel_l2_error"] < r["tolerance"], r  # > 0: the dtype took effect
            continue
        if "images_per_s" in r and "s_per_image" in r:
            assert r["images_per_s"] > 0 and math.isclose(r["images_per_s"] * r["s_per_image"], 1.0, rel_tol=1e-9)
        assert r.get("peak_gib") is None  # peak memory is a CUDA figure
    assert rows[f"RASS train iter {s.train_size}x{s.train_size} fp32 b2"]["losses_finite"] is True
    kernel = rows["check msda kernel vs torch"]
    if kernel["ok"] is not None:  # the CPU kernel is installed here: it must agree with the torch path
        assert kernel["ok"] and kernel["forward_max_rel"] < 1e-4 and kernel["grad_max_rel"] < 1e-4
    glesam = sections["glesam"]
    if glesam["status"] == "ok":
        sam, gle = (r for r in glesam["rows"])
        assert sam["name"].startswith(f"SAM {s.sam_variant} ") and gle["name"].startswith(f"GleSAM {s.sam_variant} ")
        assert f"| {sam['name']} |" in table and f"| {gle['name']} |" in table
        assert gle["s_per_image"] > 0 and math.isclose(gle["overhead_vs_sam"], gle["s_per_image"] / sam["s_per_image"])
    else:
        assert glesam["status"] == "skipped" and glesam["reason"], glesam


@pytest.mark.skipif(not os.path.isdir(WHEELS), reason=".gpu_wheels/ not fetched (scripts/gpu_wheels.sh)")
def test_wheel_set_is_pinned_small_and_installs_into_an_empty_target(runs):
    rc, text, _ = runs["wheels"]
    assert rc == 0 and "check OK" in text, text[-3000:]
    pins = gpu_report.pins()
    with open(os.path.join(WHEELS, "MANIFEST.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    listed = {name: (kind, version, int(size)) for kind, name, version, _file, size, _sha in rows}
    for name in ("diffusers", "fvcore", "iopath", "omegaconf", "hydra-core", "antlr4-python3-runtime", "pycocotools",
                 "termcolor", "yacs"):
        assert listed[name][1] == pins[name], name
    assert listed["sal-detectron2"][:2] == ("detectron2", gpu_report._script_pin("D2_VERSION"))
    assert listed["torch-ms-deform-attn"][:2] == ("sdist", gpu_report._script_pin("MSDA_VERSION"))
    total = sum(v[2] for v in listed.values())
    assert total == sum(os.path.getsize(os.path.join(WHEELS, r[3])) for r in rows) and total < 60 * 2**20


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_weight_copied_build_gives_the_reference_scores(one_thread):
    s = bench_gpu.settings(tiny=True)
    cpu = torch.device("cpu")
    ref, _ = bench_gpu.build_rass(s, cpu, "float32")
    copy, _ = bench_gpu.build_rass(s, cpu, "float32", reference=ref)
    image = bench_gpu.sample_images(1, 64, 64, seed=7)[0]
    assert torch.equal(bench_gpu.scores(copy, image), bench_gpu.scores(ref, image))
    x = torch.zeros(5)
    with bench_gpu.random_fill_skipped():
        assert torch.equal(x.uniform_(), torch.zeros(5)) and torch.equal(x.normal_(), torch.zeros(5))
    assert not torch.equal(x.uniform_(), torch.zeros(5))  # restored
    with pytest.raises(RuntimeError, match=r"differ in 4 tensor names, e.g. \['0.bias'"):
        bench_gpu.copy_weights(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_api_check_names_missing_imports_and_marks_guarded_ones_optional(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom torch import nn\nfrom torch import not_a_torch_name_xyz\n"
                   "try:\n    from torch import guarded_missing_xyz\nexcept ImportError:\n    pass\n"
                   "from torch.nn import functional\n")
    found = gpu_report.third_party_imports([str(src)])
    assert set(found) == {("torch", "nn"), ("torch", "not_a_torch_name_xyz"), ("torch", "guarded_missing_xyz"),
                          ("torch.nn", "functional")}  # os (stdlib) is not checked
    report = gpu_report.api_check(found)
    missing = {m["import"]: m["optional"] for m in report["missing"]}
    assert report["checked"] == 4
    assert missing == {"from torch import not_a_torch_name_xyz": False, "from torch import guarded_missing_xyz": True}


def test_summary_counts_tests_and_marks_failures_and_skips(tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "steps.tsv").write_text("install wheels\tok\t4\t\nkernel build\tFAIL\t61\texit code 1\n"
                                     "tests/test_gpu.py\tFAIL\t30\texit code 1\n")
    (parts / "junit_gpu.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu" name="test_a"/><testcase classname="tests.test_gpu" name="test_b"/>'
        '<testcase classname="tests.test_gpu" name="test_kernel"><failure message="no kernel"/></testcase>'
        '</testsuite></testsuites>')
    bench = {"sections": {
        "msda": {"status": "ok", "rows": [
            {"name": "msda forward b1", "torch_ms": 2.0, "kernel_ms": None, "speedup": None},
            {"name": "check msda kernel vs torch", "check": True, "ok": False, "forward_max_rel": 0.5}]},
        "glesam": {"status": "skipped", "reason": "GleSAM modules not importable"}}}
    (parts / "bench_gpu.json").write_text(json.dumps(bench))
    data = gpu_report.summary(str(tmp_path))
    text = capsys.readouterr().out
    assert "| step | tests/test_gpu.py | FAIL | 30 s; 2 passed, 1 failed, 0 skipped: tests.test_gpu::test_kernel" in text
    assert "| step | kernel build | FAIL | 61 s; exit code 1 |" in text
    assert "| msda | check msda kernel vs torch | FAIL | forward_max_rel 0.5 |" in text
    assert "| glesam | (section) | SKIPPED | GleSAM modules not importable |" in text
    saved = json.load(open(tmp_path / "gpu_check.json"))
    assert saved["tests"]["gpu"]["failed_tests"] == ["tests.test_gpu::test_kernel"] == data["tests"]["gpu"]["failed_tests"]
    assert saved["tests"]["suite"] is None and saved["benchmarks"] == bench


def test_full_size_run_uses_the_issue_sizes_and_valid_released_configs():
    from rass.config import setup_cfg

    s = bench_gpu.settings(tiny=False)
    assert s.sizes == [(512, 512), (512, 683)] and s.batches == [1, 8] and s.train_batches == [2, 8]
    assert s.degradation_batch == 16 and s.dtypes == ["float32", "bfloat16", "float16"] and s.sam_variant == "vit_l"
    for dtype in s.dtypes:
        cfg = setup_cfg(s.rass_config, s.rass_opts + ["MODEL.DEVICE", "cpu", "MODEL.RASS.FROZEN_DTYPE", dtype])
        assert cfg.MODEL.RASS.FROZEN_DTYPE == dtype and cfg.MODEL.RASS.ARCH == "sd21_base"
        assert cfg.MODEL.RASS.SD_PATH == "" and cfg.MODEL.TAGGER.NAME == "ram" and cfg.MODEL.TAGGER.RAM.WEIGHTS == ""
        assert cfg.MODEL.RASS.SLIDING_WINDOW.ENABLED and cfg.INPUT.CROP.SIZE[0] == s.train_size
