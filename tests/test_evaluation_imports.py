"""`rass.evaluation` keeps metrics, reports and plots: none of its modules imports the engine (the
trainer, predictors, the robustness orchestration in `rass.engine.robustness`)."""
import ast
import os

from tests.conftest import REPO

EVALUATION = os.path.join(REPO, "rass", "evaluation")


def _imported_modules(path: str, package: str):
    """Every module an import statement of the file names (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def test_no_evaluation_module_imports_the_engine():
    files = sorted(f for f in os.listdir(EVALUATION) if f.endswith(".py"))
    assert "sem_seg.py" in files and "robustness_report.py" in files and "robustness.py" not in files
    found = {}
    for f in files:
        names = list(_imported_modules(os.path.join(EVALUATION, f), "rass.evaluation"))
        assert names, f
        bad = [n for n in names if n == "rass.engine" or n.startswith("rass.engine.") or n.endswith(".Trainer")
               or n == "detectron2.engine" or n.startswith("detectron2.engine.")]
        if bad:
            found[f] = bad
    assert found == {}


def test_the_check_sees_relative_and_absolute_engine_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from ..engine import Trainer\nimport rass.engine.robustness\nfrom .sem_seg import x\n")
    names = list(_imported_modules(str(path), "rass.evaluation"))
    assert "rass.engine.Trainer" in names and "rass.engine.robustness" in names and "rass.evaluation.sem_seg" in names
