"""No private attribute of Ray, Optuna, MLflow (or anything else we did not write) in the
code: a Ray or Optuna upgrade must not break a study silently."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "trainables", "search_spaces")
#: Private names that are fine, and why.
ALLOWED = {
    "argparse._SubParsersAction": "the documented type of add_subparsers() (type hints)",
    "torch._foreach_": "PyTorch's foreach ops (its optimizers' fast path), kept stable",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    where = path.relative_to(root)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = ast.unparse(node.value)
            name = f"{owner}.{node.attr}"
            if owner in ("self", "cls") or any(name.startswith(a) for a in ALLOWED):
                continue
            found.append(f"{where}:{node.lineno}: {name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".") + [a.name for a in node.names]
            if parts[0] in ("ray", "optuna", "mlflow") and any(map(_private, parts)):
                found.append(f"{where}:{node.lineno}: from {node.module} "
                             f"import {', '.join(a.name for a in node.names)}")
    return found


def test_no_private_attribute_of_other_code():
    found = [use for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for use in _private_uses(path)]
    assert found == []


def test_the_check_sees_a_private_attribute(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(search, grid):\n    search._ot_trials[1] = grid._experiment_analysis\n"
                   "from ray.tune.search._x import y\n")
    assert len(_private_uses(bad, tmp_path)) == 3
