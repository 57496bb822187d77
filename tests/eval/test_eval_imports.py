"""Evaluation returns results and never talks to MLflow itself: the stages log them through
:mod:`v2w_core.tracking` (issue 22). Nothing under ``v2w_core/eval`` imports mlflow or the tracking package,
not even inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import v2w_core.eval

EVAL_DIR = Path(v2w_core.eval.__file__).parent
FORBIDDEN = ("mlflow", "v2w_core.tracking")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``path``, at any depth (functions, classes, branches)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            # ``from v2w_core import tracking`` names the package in the alias, not the module
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_no_eval_module_imports_mlflow_or_tracking() -> None:
    files = sorted(EVAL_DIR.rglob("*.py"))
    assert len(files) >= 8  # the scan really sees the package (evaluate, rollouts, metrics, features, ...)
    offenders = [f"{p.relative_to(EVAL_DIR.parent.parent)}:{line}: import {m}"
                 for p in files for line, m in _imported_modules(p) if _forbidden(m)]  # fmt: skip
    assert not offenders, "eval must return results, not log them:\n" + "\n".join(offenders)


def test_the_scan_catches_each_import_form(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import mlflow.pyfunc\ndef f():\n    from v2w_core import tracking\n"
                   "    from v2w_core.tracking.runs import start_run\n")  # fmt: skip
    assert [m for _, m in _imported_modules(src) if _forbidden(m)] == [
        "mlflow.pyfunc", "v2w_core.tracking", "v2w_core.tracking.runs", "v2w_core.tracking.runs.start_run",
    ]


def test_importing_eval_loads_neither() -> None:
    code = ("import sys, v2w_core.eval, v2w_core.eval.evaluate, v2w_core.eval.rollouts, v2w_core.eval.videos, "
            "v2w_core.eval.features, v2w_core.eval.weights\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow' or m.startswith('v2w_core.tracking')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
