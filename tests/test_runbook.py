"""Every `$ ...` command of docs/runbook.md runs, against a throw-away Airflow home."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy.core.crypto import KeyRing, encrypt_bytes

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"
BIN = Path(sys.executable).parent


def _commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    return [line[2:].strip() for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_runbook_has_commands():
    cmds = _commands()
    assert any(c.startswith("airflow-privacy budget set") for c in cmds)
    assert any(c.startswith("airflow dags trigger") for c in cmds)


@pytest.mark.parametrize("command", _commands())
def test_runbook_command_runs(command, airflow_db, tmp_path_factory):
    work = tmp_path_factory.getbasetemp() / "runbook"
    work.mkdir(exist_ok=True)
    (work / "archive.parquet.enc").write_bytes(encrypt_bytes(b"x" * 100, KeyRing.generate()))
    env = {**os.environ}
    if command.startswith("airflow-privacy budget") and " set " not in command:
        # the budget must exist for show/history: create it the way the runbook says
        subprocess.run([str(BIN / "airflow-privacy"), "budget", "set", "patients", "--epsilon", "6", "--delta",
                        "1e-6"], env=env, cwd=work, check=True, capture_output=True)
    if command.startswith("airflow dags trigger"):
        # what the dag-processor does in a running deployment: parse the DAGs into the DB
        subprocess.run([str(BIN / "airflow"), "dags", "reserialize"], env=env, check=True, capture_output=True)
    argv = shlex.split(command)
    redirect = None
    if ">" in argv:
        i = argv.index(">")
        argv, redirect = argv[:i], work / argv[i + 1]
    argv[0] = str(BIN / argv[0])
    proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if redirect is not None:
        redirect.write_text(proc.stdout)
