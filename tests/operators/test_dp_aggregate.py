"""DPAggregateOperator under real ``dag.test()`` runs, real SQLite ledger, real files."""

from __future__ import annotations

import json

import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import exists, read_batch, write_batch
from airflow_privacy.demo.data import SITES, generate_batch
from airflow_privacy.operators.dp_aggregate import DPAggregateOperator

DATES = [pendulum.datetime(2026, 5, d, tz="UTC") for d in (1, 2, 3, 4)]


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return url


@pytest.fixture
def batches(demo_root):
    for date in DATES:
        for site in SITES:
            uri = f"{demo_root}/raw/site={site}/date={date.date()}.parquet"
            if not exists(uri):
                write_batch(generate_batch(site, date.date()), uri)


def _run(dag, date, run_after=None):
    run = dag.test(logical_date=date, run_after=run_after or pendulum.now("UTC"))
    ti = next(t for t in run.get_task_instances() if t.task_id == "visit_statistics")
    return run, ti


def test_budget_accumulates_retry_is_free_and_cap_fails_cleanly(dagbag, batches, ledger_url, demo_root):
    dag = dagbag.get_dag("dp_daily_statistics")
    # The demo cap (12, 1e-5) is shared with cross_site_totals and the sites' training; spend
    # 9 of it elsewhere so that exactly three daily releases (epsilon 1 each) fit.
    ledger = PrivacyLedger(ledger_url)
    ledger.set_budget("patients", epsilon=12.0, delta=1e-5)
    ledger.charge("patients", release_id="elsewhere", cost=PrivacyCost(9.0, 0.0, [{"kind": "pure", "epsilon": 9.0}]))
    fixed = pendulum.datetime(2026, 6, 1, tz="UTC")
    spent, outputs = [], []
    for date in DATES[:3]:
        # the third run gets a fixed run_after, hence a run_id we can reproduce below
        run, ti = _run(dag, date, run_after=fixed if date == DATES[2] else None)
        assert run.state == "success"
        ret = ti.xcom_pull(task_ids="visit_statistics")
        pushed = ti.xcom_pull(task_ids="visit_statistics", key="privacy_budget")
        assert pushed == ret["privacy"]
        assert set(pushed) >= {"dataset", "release_id", "epsilon", "delta", "spent_epsilon", "spent_delta",
                               "remaining_epsilon", "cap_epsilon", "cap_delta", "accountant"}
        spent.append(pushed["spent_epsilon"])
        outputs.append(ret["output"])
        assert ret["rows"] == len(read_batch(ret["output"])) == 24  # 3 sites x 8 public diagnoses
    assert 9.0 < spent[0] < spent[1] < spent[2] <= 12.0

    before = ledger.status("patients")
    assert before.releases == 4
    assert [c.output for c in ledger.history("patients")][1:] == outputs

    # Clear-and-rerun of the third run (same run_id): the stored release, no new charge.
    first = read_batch(outputs[2])
    run, ti = _run(dag, DATES[2], run_after=fixed)
    assert run.state == "success"
    assert ti.xcom_pull(task_ids="visit_statistics", key="privacy_budget")["spent_epsilon"] == spent[2]
    assert read_batch(ti.xcom_pull(task_ids="visit_statistics")["output"]).equals(first)
    assert ledger.status("patients") == before

    # A fourth release does not fit under the cap: the run fails, nothing is written or charged.
    dest = f"{demo_root}/dp/visit_statistics/date={DATES[3].date()}.parquet"
    run, ti = _run(dag, DATES[3])
    assert run.state == "failed" and ti.state == "failed"
    assert not exists(dest)
    assert ledger.status("patients") == before
    assert ledger.get_release("patients", f"dp_daily_statistics/{ti.run_id}/visit_statistics/-1") is None


def test_parse_time_validation():
    with pytest.raises(InvalidParameterError, match="epsilon"):
        DPAggregateOperator(task_id="x", source="/s", destination="/d", dataset="p", epsilon=0, metrics={"n": "count"})
    with pytest.raises(InvalidParameterError, match="budget_cap"):
        DPAggregateOperator(task_id="x", source="/s", destination="/d", dataset="p", epsilon=1,
                            metrics={"n": "count"}, budget_cap=(1.0,))
    import numpy as np

    op = DPAggregateOperator(task_id="x", source="/s", destination="/d", dataset="p", epsilon=np.int64(2),
                             metrics={"n": "count"}, budget_cap=(np.float32(500), 0))
    assert op.epsilon == 2.0 and op.budget_cap == (500.0, 0.0)
    with pytest.raises(InvalidParameterError, match=r"epsilon=1000.0: expected a number in \[1e-06, 100\]"):
        DPAggregateOperator(task_id="x", source="/s", destination="/d", dataset="p", epsilon=1e3, metrics={"n": "count"})


class _TI:
    """The few task-instance attributes a DP release reads (a retry = same ids again)."""

    dag_id, run_id, task_id, map_index = "dp_test", "manual__1", "stats", -1

    def __init__(self) -> None:
        self.pushed: dict = {}

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


def _release_op(tmp_path, demo_root) -> DPAggregateOperator:
    import numpy as np
    import pandas as pd

    source = f"file://{tmp_path}/in.parquet"
    rng = np.random.default_rng(0)
    write_batch(pd.DataFrame({"patient_id": np.arange(500), "cost": rng.uniform(0, 100, 500)}), source)
    return DPAggregateOperator(task_id="stats", source=source, destination=f"file://{tmp_path}/out/stats.parquet",
                               dataset="patients", epsilon=1.0, metrics={"n": "count", "m": ("mean", "cost")},
                               privacy_unit="patient_id", bounds={"cost": (0, 100)}, budget_cap=(5.0, 1e-6))


@pytest.mark.parametrize("damage", ["delete", "alter"])
def test_retry_with_lost_or_altered_output_fails_and_never_redraws(tmp_path, ledger_url, demo_root, damage):
    """A sealed release whose output is missing or changed must not be recomputed: fresh noise
    under the same charge would publish a second, independent answer. The retry fails (no
    Airflow retry), writes nothing, charges nothing; the ledger holds the output's SHA-256."""
    import hashlib

    from airflow.sdk.exceptions import AirflowFailException

    from airflow_privacy.core.io import read_bytes, resolve

    op = _release_op(tmp_path, demo_root)
    first = op.execute({"ti": _TI()})
    ledger = PrivacyLedger(ledger_url)
    sealed = hashlib.sha256(read_bytes(first["output"])).hexdigest()
    # A retry with the output intact returns the same bytes, no new charge.
    assert op.execute({"ti": _TI()})["privacy"] == first["privacy"]
    before = ledger.status("patients")

    fs, path = resolve(first["output"])
    if damage == "delete":
        fs.rm(path)
    else:
        write_batch(read_batch(first["output"]).assign(n=0), first["output"])
    altered = None if damage == "delete" else read_bytes(first["output"])
    with pytest.raises(AirflowFailException, match="missing" if damage == "delete" else "changed") as err:
        op.execute({"ti": _TI()})
    assert "restore" in str(err.value).lower() and "new dag run" in str(err.value).lower()
    assert (not exists(first["output"])) if damage == "delete" else read_bytes(first["output"]) == altered
    assert ledger.status("patients") == before
    (charge,) = ledger.history("patients")
    assert charge.status == "released" and charge.output_sha256 == sealed


def test_retry_after_a_charge_that_sealed_nothing_reuses_the_charge(tmp_path, ledger_url, demo_root, monkeypatch):
    """An earlier try charged, then died before its answer was sealed (so nothing could have
    been published): the retry replays the same charge -- no second charge -- and releases."""
    from airflow_privacy.core.budget import ledger as ledger_module

    op = _release_op(tmp_path, demo_root)

    def crash(*args, **kwargs):
        raise RuntimeError("worker lost")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="worker lost"):
        patch.setattr(ledger_module.PrivacyLedger, "seal_release", crash)
        op.execute({"ti": _TI()})
    ledger = PrivacyLedger(ledger_url)
    assert [c.status for c in ledger.history("patients")] == ["charged"]
    out = op.execute({"ti": _TI()})
    (charge,) = ledger.history("patients")
    assert charge.status == "released" and exists(out["output"]) and ledger.status("patients").releases == 1
