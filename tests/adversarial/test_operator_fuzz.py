"""A fuzzer over the operators' parameters: hostile values, one parameter at a time.

Adversary: a DAG author or a ``dag_run.conf`` that passes NaN, infinities, negative or huge
numbers, wrong types, empty or path-like strings, unknown columns, missing or corrupt input
files. For every case the operator is built (DAG parse time) and, when that succeeds, run
against real files, a real key ring and a real SQLite ledger. Invariants, counted and printed:

* 0 unhandled exceptions: a failure is a clear ``PrivacyError`` / ``ValueError`` /
  ``TypeError`` at parse time, or an ``AirflowFailException`` at run time (a bare
  ``ZeroDivisionError`` or ``KeyError`` would be retried by Airflow);
* 0 partial outputs: a failed run leaves no file at its destination (nor a temporary);
* 0 charges for a failed run: the ledger holds no charge for a release that failed.

The task instance is the few attributes the operators read (ids, ``xcom_push``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.errors import PrivacyError
from airflow_privacy.core.io import write_batch

HOSTILE = [None, float("nan"), float("inf"), -float("inf"), -1, 0, 10**30, True, "", "   ", "../../etc/passwd",
           "{{ 1/0 }}", [], {}, ["nope"], {"x": "y"}, object(), b"\x00\xff", "drop table x;--", 1e-320]

pytestmark = pytest.mark.slow


class _TI:
    dag_id, task_id, map_index = "fuzz", "t", -1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def xcom_push(self, key, value) -> None:
        json.dumps(value)  # XCom must stay JSON-able


@pytest.fixture
def world(tmp_path, monkeypatch):
    # Hostile values include relative paths ("../../etc/passwd"): whatever slips through must
    # land inside this test's own directory, never the machine's.
    sandbox = tmp_path / "cwd" / "a" / "b"
    sandbox.mkdir(parents=True)
    monkeypatch.chdir(sandbox)
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"patient_id": np.arange(300), "g": rng.choice(list("abc"), 300),
                       "cost": rng.uniform(0, 100, 300), "name": [f"n{i}" for i in range(300)],
                       "zip": rng.choice(["12345", "12399", "54321"], 300)})
    df.loc[5, "cost"] = np.nan
    write_batch(df, f"file://{tmp_path}/in.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "out").mkdir()
    return tmp_path, PrivacyLedger(url)


def _dp_base(tmp: Path) -> dict:
    return dict(task_id="t", source=f"file://{tmp}/in.parquet", destination=f"file://{tmp}/out/dp.parquet",
                dataset="patients", epsilon=1.0, delta=1e-6, metrics={"n": "count", "m": ("mean", "cost")},
                by=["g"], privacy_unit="patient_id", bounds={"cost": (0, 100)}, budget_cap=(1000.0, 1e-3))


def _deid_base(tmp: Path) -> dict:
    return dict(task_id="t", source=f"file://{tmp}/in.parquet", destination=f"file://{tmp}/out/deid.parquet",
                rules={"name": "drop", "patient_id": {"hash": {}}, "zip": {"generalize": {"prefix": 3}}},
                report_destination=f"file://{tmp}/out/deid.json")


def _crypto_base(tmp: Path) -> dict:
    return dict(task_id="t", source=f"file://{tmp}/in.parquet", destination=f"file://{tmp}/out/enc.bin")


def _cases(base: dict, extra_sources: list[str]) -> list[tuple[str, object]]:
    cases = [(param, value) for param in base if param != "task_id" for value in HOSTILE]
    cases += [("source", s) for s in extra_sources]
    return cases


def _run(factory, kwargs: dict, tmp: Path, ledger: PrivacyLedger | None, case: int, label: str, tally: dict) -> None:
    try:
        op = factory(**kwargs)
    except (PrivacyError, ValueError, TypeError):
        tally["refused at parse"] += 1
        return
    before = {p.name for p in (tmp / "out").iterdir()}
    context = {"ti": _TI(f"run{case}"), "logical_date": None}
    try:
        op.execute(context)
        tally["succeeded"] += 1
        return
    except AirflowFailException:
        tally["failed cleanly"] += 1
    except Exception as exc:  # noqa: BLE001 -- exactly what the fuzzer hunts
        tally["unhandled"].append((label, type(exc).__name__, str(exc)[:200]))
        return
    after = {p.name for p in (tmp / "out").iterdir()}
    if after - before:
        tally["partial outputs"].append((label, sorted(after - before)))
    if ledger is not None and any(ledger.get_release(d.dataset, f"fuzz/run{case}/t/-1") for d in ledger.datasets()):
        tally["charged on failure"].append(label)


@pytest.mark.parametrize("operator", ["dp_aggregate", "deidentify", "encrypt", "decrypt"])
def test_hostile_parameters_never_escape_retry_partial_write_or_charge(world, operator):
    from airflow_privacy.operators.crypto import DecryptOperator, EncryptOperator
    from airflow_privacy.operators.deidentify import DeidentifyOperator
    from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

    tmp, ledger = world
    factory, base = {
        "dp_aggregate": (DPAggregateOperator, _dp_base(tmp)),
        "deidentify": (DeidentifyOperator, _deid_base(tmp)),
        "encrypt": (EncryptOperator, _crypto_base(tmp)),
        "decrypt": (DecryptOperator, {**_crypto_base(tmp), "source": f"file://{tmp}/corrupt.parquet",
                                      "destination": f"file://{tmp}/out/dec.parquet"}),
    }[operator]
    extra = [f"file://{tmp}/missing.parquet", f"file://{tmp}/corrupt.parquet", f"file://{tmp}",
             "s3://no-such-bucket-xyz/x.parquet", "nosuchscheme://x"]
    if operator == "dp_aggregate":
        extra_params = [("metrics", {"n": "cnt"}), ("metrics", {"m": ("mean", "missing_column")}),
                        ("by", ["missing_column"]), ("privacy_unit", "missing_column"),
                        ("bounds", {"cost": (math.nan, 1)}), ("bounds", {"cost": (5, 5)}),
                        ("public_groups", {"g": []}), ("public_groups", {"g": ["a", "a"]}),
                        ("bins", {"g": [1, 0]}), ("max_groups_per_unit", 10**12), ("delta", 0.999),
                        ("mechanism", "gaussian"), ("budget_cap", (0.5, 0.0))]
    else:
        extra_params = []
    tally = {"refused at parse": 0, "succeeded": 0, "failed cleanly": 0, "unhandled": [], "partial outputs": [],
             "charged on failure": []}
    cases = _cases(base, extra) + extra_params
    for i, (param, value) in enumerate(cases):
        for leftover in (tmp / "out").iterdir():
            leftover.unlink()
        _run(factory, {**base, param: value}, tmp, ledger if operator == "dp_aggregate" else None, i,
             f"{param}={value!r}", tally)
    print(f"{operator}: {len(cases)} hostile cases: {tally['refused at parse']} refused at parse, "
          f"{tally['failed cleanly']} failed without retry, {tally['succeeded']} succeeded; unhandled "
          f"{len(tally['unhandled'])}, partial outputs {len(tally['partial outputs'])}, charges for a failed run "
          f"{len(tally['charged on failure'])}")
    for item in tally["unhandled"]:
        print("  unhandled:", *item)
    assert tally["unhandled"] == []
    assert tally["partial outputs"] == []
    assert tally["charged on failure"] == []
