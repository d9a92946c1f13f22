"""The serving runtime: no import of ``elis.experiments`` from ``elis.serving``; the builders."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "elis" / "serving"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from … import`` names in ``path`` (incl. lazy ones in functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_no_serving_module_imports_experiments():
    files = sorted(SERVING.rglob("*.py"))
    assert len(files) > 10  # the scan sees the package
    bad = [f"{p.relative_to(SERVING.parent.parent)}:{line} imports {mod}"
           for p in files for line, mod in _imported_modules(p)
           if mod == "elis.experiments" or mod.startswith("elis.experiments.")]
    assert bad == [], "elis/serving must not import elis/experiments:\n" + "\n".join(bad)


def test_scan_catches_a_lazy_experiments_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from elis.experiments.run import build_schedulers\n")
    assert (2, "elis.experiments.run") in _imported_modules(p)


def test_importing_the_runtime_loads_no_experiments_module():
    code = ("import sys, elis.serving.runtime, elis.serving.wallclock, elis.serving.simulator;"
            "print(sorted(m for m in sys.modules if m.startswith('elis.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_schedulers_rejects_unknown_sched_keys():
    from elis.serving.runtime import build_schedulers

    with pytest.raises(ValueError, match=r"unknown keys \['polcy'\]"):
        build_schedulers({"policy": "fcfs", "polcy": "x"}, 1, 4, 50, None, None, None)
    (s,) = build_schedulers({"policy": "fcfs", "mode": "continuous"}, 1, 3, 7, None, None, None, 100)
    assert (s.max_batch_size, s.window_tokens, s.mode, s.max_context_tokens) == (3, 7, "continuous", 100)
