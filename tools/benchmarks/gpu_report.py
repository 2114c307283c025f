#!/usr/bin/env python
"""Environment report and the final summary table of scripts/gpu_check.sh (standard library only).

    python tools/benchmarks/gpu_report.py env OUT.json      # benchmark imports, versions vs the pins, GPU,
                                                            # the APIs the project imports
    python tools/benchmarks/gpu_report.py summary OUTDIR    # one table of steps, tests and figures;
                                                            # writes OUTDIR/gpu_check.json

`env` imports every tools/benchmarks module, compares the installed versions with constraints.txt and checks that every name the project
imports from a third-party module (`from X import a, b` in rass/, tools/, train_net.py, demo/) exists
under the installed versions; each missing one is listed with the file that needs it (imports inside a
`try:` are marked optional). `summary` reads what gpu_check.sh left in OUTDIR/parts/ (steps.tsv,
env.json, junit_*.xml, bench_gpu.json) and prints one table: steps, test counts (with the failing
tests), benchmark rows and numerical checks.
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("rass", "tools", "demo")
SOURCE_FILES = ("train_net.py",)
# Distributions whose version is reported (and compared with constraints.txt when pinned there).
REPORTED = ("torch", "torchvision", "triton", "transformers", "diffusers", "peft", "accelerate", "timm", "safetensors",
            "huggingface_hub", "tokenizers", "numpy", "scipy", "pillow", "opencv-python-headless", "fvcore", "iopath",
            "omegaconf", "hydra-core", "pycocotools", "sal-detectron2", "torch-ms-deform-attn", "pytest")


# ------------------------------------------------------------------------------------ environment
def pins(path: str = os.path.join(REPO, "constraints.txt")) -> Dict[str, str]:
    """name (lower case, '-' for '_') -> pinned version."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def versions(names: Iterable[str] = REPORTED) -> List[Dict]:
    pinned = pins()
    rows = []
    for name in names:
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        pin = pinned.get(name.lower().replace("_", "-"))
        if name == "sal-detectron2":
            pin = _script_pin("D2_VERSION")
        elif name == "torch-ms-deform-attn":
            pin = _script_pin("MSDA_VERSION")
        base = installed.split("+")[0] if installed else None
        rows.append({"name": name, "installed": installed, "pin": pin, "differs": bool(pin and base != pin)})
    return rows


def _script_pin(var: str) -> Optional[str]:
    with open(os.path.join(REPO, "scripts", "setup_env.sh")) as f:
        for line in f:
            if line.startswith(f"{var}="):
                return line.split("=", 1)[1].strip().strip('"')
    return None


def _sources() -> List[str]:
    files = [os.path.join(REPO, f) for f in SOURCE_FILES]
    for d in SOURCE_DIRS:
        for root, _, names in os.walk(os.path.join(REPO, d)):
            files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
    return [f for f in files if os.path.isfile(f)]


def third_party_imports(files: Optional[Sequence[str]] = None) -> Dict[Tuple[str, str], Dict]:
    """(module, name or "") -> {"files": [...], "optional": bool} for imports of non-project, non-stdlib modules."""
    local = {"rass", "tests", "tools", "demo", "train_net", "__future__"} | {
        os.path.splitext(n)[0] for d in ("tools", "tools/benchmarks", "demo", "datasets")
        for n in (os.listdir(os.path.join(REPO, d)) if os.path.isdir(os.path.join(REPO, d)) else [])}
    found: Dict[Tuple[str, str], Dict] = {}

    def add(module: str, name: str, path: str, optional: bool) -> None:
        root = module.split(".")[0]
        if not module or root in local or root in sys.stdlib_module_names:
            return
        rec = found.setdefault((module, name), {"files": [], "optional": True})
        rec["files"].append(os.path.relpath(path, REPO))
        rec["optional"] = rec["optional"] and optional

    for path in files or _sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                for child in node.body:
                    guarded.update(id(n) for n in ast.walk(child))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    add(node.module, "" if alias.name == "*" else alias.name, path, id(node) in guarded)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, "", path, id(node) in guarded)
    return found


def api_check(imports: Optional[Dict] = None) -> Dict:
    """Which imported modules / names do not exist under the installed versions."""
    imports = third_party_imports() if imports is None else imports
    missing = []
    for (module, name), rec in sorted(imports.items()):
        try:
            mod = importlib.import_module(module)
            if name and not hasattr(mod, name):
                importlib.import_module(f"{module}.{name}")  # a submodule imported by name
            ok, why = True, ""
        except Exception as e:  # ImportError, or an error raised while importing
            ok, why = False, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if not ok:
            missing.append({"import": f"from {module} import {name}" if name else f"import {module}", "error": why,
                            "files": sorted(set(rec["files"]))[:5], "optional": rec["optional"]})
    return {"checked": len(imports), "missing": missing}


def gpu_info() -> Dict:
    info = {"python": platform.python_version(), "executable": sys.executable}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0),
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout
        info["nvcc"] = out.strip().splitlines()[-1] if out.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        info["nvcc"] = None
    return info


def import_benchmarks() -> Dict:
    """Import every tools/benchmarks module (catches rot between GPU runs); name -> error or None."""
    here = os.path.join(REPO, "tools", "benchmarks")
    for p in (REPO, here):
        if p not in sys.path:
            sys.path.insert(0, p)
    errors = {}
    for name in sorted(os.path.splitext(n)[0] for n in os.listdir(here) if n.endswith(".py")):
        try:
            importlib.import_module(name)
            errors[name] = None
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return errors


def env_report(path: str) -> Dict:
    """Benchmark imports, versions vs pins, API check and platform; written to `path` and printed."""
    report = {"benchmark_imports": import_benchmarks(), "platform": gpu_info(), "versions": versions(),
              "api": api_check()}
    write_json(path, report)
    bad = {k: v for k, v in report["benchmark_imports"].items() if v}
    print(f"benchmark modules imported: {', '.join(k for k, v in report['benchmark_imports'].items() if not v)}")
    for name, err in bad.items():
        print(f"  BENCHMARK MODULE DOES NOT IMPORT: {name} ({err})")
    print("versions (installed vs constraints.txt):")
    for r in report["versions"]:
        mark = "  <- differs from the pin" if r["differs"] else ""
        print(f"  {r['name']:<24} {r['installed'] or 'not installed':<18} pin {r['pin'] or '-'}{mark}")
    api = report["api"]
    print(f"APIs: {api['checked']} third-party imports of the project checked, {len(api['missing'])} missing")
    for m in api["missing"]:
        print(f"  MISSING{' (optional)' if m['optional'] else ''}: {m['import']} ({m['error']}) used in {', '.join(m['files'])}")
    print(f"platform: {report['platform']}")
    return report


# ---------------------------------------------------------------------------------------- summary
def write_json(path: str, data: Dict) -> None:
    """Write `data` atomically: with the project's `atomic_open` when rass is imported already, else with a
    temp file + rename (the report must also work where the project does not import, and the summary
    should not pay for importing it)."""
    text = json.dumps(data, indent=2, default=str)
    try:
        if "rass" not in sys.modules:
            raise ImportError("rass is not imported")
        from rass.utils.io import atomic_open
    except Exception:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return
    with atomic_open(path, "w") as f:
        f.write(text)


def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


BENCH_ORDER = ("rass_infer", "rass_train", "msda", "degradation", "glesam")
_FIGURES = (("s_per_image", "s/img", ".4f"), ("s_per_iter", "s/iter", ".4f"), ("s_per_batch", "s/batch", ".4f"),
            ("images_per_s", "img/s", ".2f"), ("peak_gib", "GiB peak", ".2f"), ("torch_ms", "torch ms", ".3g"),
            ("kernel_ms", "kernel ms", ".3g"), ("speedup", "x faster", ".3g"),
            ("overhead_vs_sam", "x SAM's time", ".3g"), ("losses_finite", "finite losses", ""),
            ("cpu_threads", "CPU threads", ""), ("build_s", "build s", ".3g"))


def bench_rows(results: Dict) -> List[Tuple[str, str, str, str]]:
    """(part, item, result, figures) rows of bench_gpu.py's results, in the issue's order."""
    rows = []
    for name in BENCH_ORDER:
        sec = results.get("sections", {}).get(name)
        if sec is None:
            continue
        if sec["status"] != "ok":
            rows.append((name, "(section)", sec["status"].upper(), sec.get("reason", "")))
            continue
        for r in sec["rows"]:
            if r.get("check"):
                result = "skipped" if r.get("ok") is None else ("ok" if r["ok"] else "FAIL")
                figures = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("name", "check", "ok"))
                rows.append((name, r["name"], result, figures))
            else:
                figures = ", ".join(f"{_fmt(r[k], spec)} {label}" if spec else f"{label} {_fmt(r[k])}"
                                    for k, label, spec in _FIGURES if r.get(k) is not None)
                rows.append((name, r["name"], "ok", figures))
    return rows


def markdown(rows: Sequence[Tuple[str, ...]], header: Sequence[str] = ("part", "item", "result", "figures")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def junit(path: str) -> Optional[Dict]:
    """Counts and failing test ids of a pytest --junitxml file (None if absent or unreadable)."""
    if not os.path.isfile(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in (root.iter("testsuite")):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed
    return counts


def read_steps(path: str) -> List[Dict]:
    steps = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 4:
                    steps.append({"step": parts[0], "status": parts[1], "seconds": parts[2], "note": parts[3]})
    return steps


def summary(outdir: str) -> Dict:
    parts = os.path.join(outdir, "parts")
    steps = read_steps(os.path.join(parts, "steps.tsv"))
    env = {}
    if os.path.isfile(os.path.join(parts, "env.json")):
        with open(os.path.join(parts, "env.json")) as f:
            env = json.load(f)
    bench = {}
    if os.path.isfile(os.path.join(parts, "bench_gpu.json")):
        with open(os.path.join(parts, "bench_gpu.json")) as f:
            bench = json.load(f)
    tests = {k: junit(os.path.join(parts, f"junit_{k}.xml")) for k in ("gpu", "suite")}
    rows = []
    for s in steps:
        note = s["note"]
        key = {"tests/test_gpu.py": "gpu", "test suite subset": "suite"}.get(s["step"])
        t = tests.get(key) if key else None
        if t is not None:
            note = (f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
                    + (f": {', '.join(t['failed_tests'][:6])}" if t["failed_tests"] else "") + (f"; {note}" if note else ""))
        rows.append(("step", s["step"], s["status"], f"{s['seconds']} s" + (f"; {note}" if note else "")))
    differs = [f"{v['name']} {v['installed']} (pin {v['pin']})" for v in env.get("versions", []) if v.get("differs")]
    if env:
        bad = {k: v for k, v in env.get("benchmark_imports", {}).items() if v}
        rows.append(("versions", "benchmark modules import", "FAIL" if bad else "ok",
                     "; ".join(f"{k}: {v}" for k, v in bad.items()) or ", ".join(env.get("benchmark_imports", {}))))
        rows.append(("versions", "differ from the pins", "info", ", ".join(differs) or "none"))
        missing = env.get("api", {}).get("missing", [])
        rows.append(("versions", "APIs the project imports", "FAIL" if any(not m["optional"] for m in missing) else "ok",
                     "; ".join(f"{m['import']} ({', '.join(m['files'][:2])})" for m in missing) or
                     f"all {env.get('api', {}).get('checked', 0)} present"))
    rows += bench_rows(bench)
    table = markdown(rows)
    data = {"steps": steps, "tests": tests, "environment": env, "benchmarks": bench}
    write_json(os.path.join(outdir, "gpu_check.json"), data)
    platform_info = env.get("platform", {})
    print(f"\n## GPU check summary ({platform_info.get('gpu', 'no GPU')}, torch {platform_info.get('torch', '?')}, "
          f"Python {platform_info.get('python', '?')})")
    print(table)
    return data


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print("usage: gpu_report.py env OUT.json | gpu_report.py summary OUTDIR\n\n" + __doc__.strip())
        return
    if len(argv) != 2 or argv[0] not in ("env", "summary"):
        raise SystemExit("usage: gpu_report.py env OUT.json | gpu_report.py summary OUTDIR")
    if argv[0] == "env":
        report = env_report(argv[1])
        if any(not m["optional"] for m in report["api"]["missing"]):
            raise SystemExit("gpu_report: names the project imports are missing under these versions (listed above)")
        if any(report["benchmark_imports"].values()):
            raise SystemExit("gpu_report: some benchmark modules do not import (listed above)")
    else:
        summary(argv[1])


if __name__ == "__main__":
    main()
