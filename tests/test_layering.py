"""DESIGN §2: ``core/`` is a pure library and never imports Airflow."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import airflow_privacy.core

CORE = Path(airflow_privacy.core.__file__).parent


def _core_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages([str(CORE)], prefix="airflow_privacy.core.")
    ]


def test_core_sources_have_no_airflow_import():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(CORE)}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_importing_core_does_not_load_airflow():
    """Catches transitive imports too: a fresh interpreter imports every core module."""
    modules = _core_modules()
    assert "airflow_privacy.core.io" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as e:\n"
        "        if 'airflow' in str(e): raise\n"
        "print(sorted(k for k in sys.modules if k == 'airflow' or k.startswith('airflow.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_core_modules_import():
    for name in _core_modules():
        importlib.import_module(name)
