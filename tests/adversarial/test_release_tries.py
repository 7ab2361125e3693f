"""A DP release against its operational adversaries, on SQLite and a real PostgreSQL.

* Two live tries of one task: the scheduler starts a retry after a heartbeat timeout while
  the first worker still runs. Both execute ``DPAggregateOperator`` with the same task
  instance at the same instant. Invariant: one charge, one answer -- the published file is
  the sealed one, and a try that lost the seal writes nothing and fails without retry.
* A worker killed with SIGKILL right after each step of a release (read, charge, seal,
  write, mark released, XCom), then a retry. Invariant: exactly one charge, never a second
  answer, no temporary file left; the retry returns the sealed bytes, or -- when the kill
  fell between seal and write -- fails without retry and without drawing again.

The task instance is the few attributes a release reads (ids and ``xcom_push``), as in
tests/operators/test_dp_aggregate.py; the operator, ledger, files and SQL are real.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

FORK = mp.get_context("fork")


class _TI:
    dag_id, task_id, map_index = "dp_adversarial", "stats", -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.pushed: dict = {}

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        url = request.getfixturevalue("postgres").url(f"release_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    PrivacyLedger(url).set_budget("patients", epsilon=1000.0, delta=1e-3)
    return url


def _operator(tmp_path: Path, name: str) -> DPAggregateOperator:
    source = f"file://{tmp_path}/in.parquet"
    if not io.exists(source):
        rng = np.random.default_rng(0)
        io.write_batch(pd.DataFrame({"patient_id": np.arange(2000), "g": rng.choice(list("abcd"), 2000),
                                     "cost": rng.uniform(0, 100, 2000)}), source)
    return DPAggregateOperator(task_id="stats", source=source, destination=f"file://{tmp_path}/out/{name}.parquet",
                               dataset="patients", epsilon=1.0, delta=1e-7, by=["g"], privacy_unit="patient_id",
                               metrics={"n": "count", "m": ("mean", "cost")}, bounds={"cost": (0, 100)})


def _sha(uri: str) -> str | None:
    return hashlib.sha256(io.read_bytes(uri)).hexdigest() if io.exists(uri) else None


def _stray_files(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    return sorted(p.name for p in out.iterdir() if not p.name.endswith(".parquet")) if out.exists() else []


def _try(op, run_id, gate, results) -> None:
    gate.wait()
    try:
        ret = op.execute({"ti": _TI(run_id)})
        results.put(("ok", _sha(ret["output"])))
    except AirflowFailException as exc:
        results.put(("failed", str(exc)))


@pytest.mark.slow
def test_two_live_tries_of_one_task_publish_one_answer(ledger_url, tmp_path):
    trials = 15
    ledger = PrivacyLedger(ledger_url)
    ledger.engine.dispose()
    tally = {"one ok": 0, "both ok, same answer": 0}
    for t in range(trials):
        op = _operator(tmp_path, f"t{t}")
        gate, results = FORK.Barrier(2), FORK.Queue()
        procs = [FORK.Process(target=_try, args=(op, f"race{t}", gate, results)) for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=300) for _ in range(2)]
        for p in procs:
            p.join(timeout=60)
        charge = ledger.get_release("patients", f"dp_adversarial/race{t}/stats/-1")
        published = _sha(op.destination)
        assert charge is not None and charge.output_sha256 == published, (got, charge)
        oks = [sha for status, sha in got if status == "ok"]
        assert oks and all(sha == published for sha in oks), got
        for status, message in got:
            if status == "failed":
                assert "one charge has one answer" in message or "output is missing" in message, message
        tally["one ok" if len(oks) == 1 else "both ok, same answer"] += 1
        assert _stray_files(tmp_path) == []
    status = ledger.status("patients")
    print(f"{ledger_url.split(':')[0]}: {trials} pairs of live tries: {tally}; "
          f"{status.releases} charges, two answers under one charge: 0")
    assert status.releases == trials


STEPS = ("read", "charge", "seal", "write", "mark_released", "xcom")


def _killed_after(step: str, op, run_id: str) -> None:
    """Run one try and SIGKILL this process right after ``step`` returns."""
    from airflow_privacy.core.budget import ledger as ledger_module

    def after(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            if step != "write" or op.destination in args:  # not the in-memory serialization
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return wrapped

    targets = {"read": (io, "read_batch"), "charge": (ledger_module.PrivacyLedger, "charge"),
               "seal": (ledger_module.PrivacyLedger, "seal_release"), "write": (io, "write_bytes"),
               "mark_released": (ledger_module.PrivacyLedger, "mark_released"), "xcom": (_TI, "xcom_push")}
    owner, name = targets[step]
    setattr(owner, name, after(getattr(owner, name)))
    op.execute({"ti": _TI(run_id)})


@pytest.mark.parametrize("step", STEPS)
def test_a_worker_killed_after_each_step_never_yields_two_answers(ledger_url, tmp_path, step):
    ledger = PrivacyLedger(ledger_url)
    ledger.engine.dispose()
    op = _operator(tmp_path, step)
    rid = f"dp_adversarial/kill-{step}/stats/-1"
    child = FORK.Process(target=_killed_after, args=(step, op, f"kill-{step}"))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    after_kill = ledger.get_release("patients", rid)
    written = _sha(op.destination)
    charged = STEPS.index(step) >= STEPS.index("charge")
    assert (after_kill is not None) == charged
    if written is not None:
        assert after_kill.output_sha256 == written  # nothing is ever visible before it is sealed

    try:  # the retry, in this (unkilled) process
        ret = op.execute({"ti": _TI(f"kill-{step}")})
        outcome = "returned the sealed answer" if after_kill and after_kill.output_sha256 else "released"
        assert _sha(ret["output"]) == ledger.get_release("patients", rid).output_sha256
        if written is not None:
            assert _sha(ret["output"]) == written
    except AirflowFailException as exc:
        outcome = "failed without retry"
        assert step == "seal" and "output is missing" in str(exc)  # sealed, never written: no redraw
        assert not io.exists(op.destination)
    final = ledger.get_release("patients", rid)
    assert ledger.status("patients").releases == 1 and len(ledger.history("patients")) == 1
    assert final.output_sha256 is not None
    assert _stray_files(tmp_path) == []
    print(f"{ledger_url.split(':')[0]}: SIGKILL after {step}: charged={charged}, file written={written is not None}; "
          f"retry {outcome}; 1 charge, 1 answer, no stray file")
