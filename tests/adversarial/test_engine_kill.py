"""A worker SIGKILLed while DuckDB runs a release's aggregate query (issue 15): nothing is
written, nothing is charged, and the rows DuckDB spilled to disk do not outlive the next run.

The child is a forked process running the real ``DPAggregateOperator(engine="duckdb")`` (a
memory limit small enough that the query spills) against a real SQLite ledger; the parent
kills it once its spill folder holds data, i.e. mid-query, before the charge (the engine
runs before it). Then: no output, no temporary file next to it, no ledger row; the spill
folder is still there (no process can clean up after SIGKILL) and a retry in the parent --
the next run on this machine -- removes it, releases once and leaves no spill behind.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp.engines import duckdb_engine
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

pytestmark = pytest.mark.slow
FORK = mp.get_context("fork")


class _TI:
    dag_id, task_id, map_index = "dp_engine_kill", "stats", -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.pushed: dict = {}

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


def _dataset(folder: Path, rows: int = 3_000_000, parts: int = 3) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    per = rows // parts
    for i in range(parts):
        pd.DataFrame({"patient_id": rng.integers(0, rows // 3, per), "g": rng.integers(0, 200, per),
                      "cost": rng.uniform(0, 100, per)}).to_parquet(folder / f"part-{i}.parquet", index=False)


def _spills(root: Path) -> dict[str, int]:
    """Spill folders under ``root`` and the bytes each holds."""
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            for d in root.iterdir() if d.name.startswith("airflow_privacy_duckdb-")}


def test_sigkill_mid_query_leaves_no_output_no_charge_and_spills_swept(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    ledger = PrivacyLedger(url)
    ledger.set_budget("patients", epsilon=100.0, delta=1e-4)
    ledger.engine.dispose()
    _dataset(tmp_path / "data")
    spill_root = tmp_path / "spill"
    spill_root.mkdir()
    monkeypatch.setattr(duckdb_engine, "TEMP_ROOT", str(spill_root))
    monkeypatch.setattr(duckdb_engine, "MEMORY_LIMIT", "96MB")  # the killed query spills within seconds
    out = tmp_path / "out"
    op = DPAggregateOperator(task_id="stats", source=str(tmp_path / "data"), destination=f"file://{out}/stats.parquet",
                             dataset="patients", epsilon=1.0, delta=1e-7, by=["g"], privacy_unit="patient_id",
                             metrics={"n": "count", "m": ("mean", "cost")}, bounds={"cost": (0, 100)},
                             max_groups_per_unit=2, engine="duckdb")
    child = FORK.Process(target=op.execute, args=({"ti": _TI("kill")},))
    child.start()
    deadline, spilled = time.monotonic() + 600, {}
    while time.monotonic() < deadline and child.is_alive():
        spilled = {d: n for d, n in _spills(spill_root).items() if n > 0}
        if spilled:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    child.join(timeout=60)
    assert spilled, "the query ended before it spilled: nothing was killed mid-query"
    assert child.exitcode == -signal.SIGKILL
    assert not out.exists() or list(out.iterdir()) == []  # no output, no temporary sibling
    assert ledger.get_release("patients", "dp_engine_kill/kill/stats/-1") is None
    assert ledger.status("patients").releases == 0
    left = _spills(spill_root)
    assert set(spilled) <= set(left)  # SIGKILL: nobody could remove them

    # the next run on this machine (the task's retry), with room to finish (at 96MB the
    # top-L0 lists per unit do not fit; the limit only had to make the killed query spill)
    monkeypatch.setattr(duckdb_engine, "MEMORY_LIMIT", "1GB")
    ret = op.execute({"ti": _TI("kill")})
    assert ret["output"].endswith("stats.parquet") and (out / "stats.parquet").exists()
    assert sorted(p.name for p in out.iterdir()) == ["stats.parquet"]
    assert ledger.status("patients").releases == 1
    assert _spills(spill_root) == {}  # the killed run's spill swept, the retry's own removed
    print(f"SIGKILL mid-query with {sum(spilled.values()) / 2**20:.1f} MiB spilled: no output, 0 charges; "
          f"retry swept {len(left)} stale spill folder(s), released once, 0 spill bytes left")
