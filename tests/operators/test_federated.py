"""federated_training under dag.test(): rounds continue across runs, epsilon grows, a site
dropping out is recovered by the secure sum, shared storage holds no rows."""

from __future__ import annotations

import json

import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import resolve, write_batch
from airflow_privacy.demo.data import SITES, generate_batch


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return url


def _run(dagbag, date, sites):
    from airflow_privacy.demo.data import demo_root

    for site in sites:
        write_batch(generate_batch(site, date), f"{demo_root()}/raw/site={site}/date={date}.parquet")
    run = dagbag.get_dag("federated_training").test(logical_date=pendulum.parse(date))
    return run, {t.task_id: t for t in run.get_task_instances()}


def test_two_runs_continue_rounds_and_accounting_with_a_dropout(dagbag, ledger_url, demo_root):
    run1, tis1 = _run(dagbag, "2026-10-01", SITES)
    assert run1.state == "success"
    r1 = tis1["federated.round_3.aggregate"].xcom_pull(task_ids="federated.round_3.aggregate")
    eps = [tis1[f"federated.round_{r}.aggregate"].xcom_pull(
        task_ids=f"federated.round_{r}.aggregate", key="privacy_budget")["spent_epsilon"] for r in (1, 2, 3)]
    assert r1["round"] >= 3 and eps[0] < eps[1] < eps[2] <= 8.0

    # Next day site_c has no batch: its training fails, the secure sum drops it, rounds complete.
    run2, tis2 = _run(dagbag, "2026-10-02", ["site_a", "site_b"])
    assert tis2["federated.round_1.train_site_c"].state == "failed"
    agg = tis2["federated.round_3.aggregate"]
    assert agg.state == "success"
    r2 = agg.xcom_pull(task_ids="federated.round_3.aggregate")
    assert r2["round"] == r1["round"] + 3
    assert r2["metrics"]["sites"] == ["site_a", "site_b"]
    assert r2["privacy"]["spent_epsilon"] > eps[2]
    assert 0.55 < r2["metrics"]["eval_accuracy"] <= 1.0
    ledger = PrivacyLedger(ledger_url)
    assert {d.dataset for d in ledger.datasets()} == {"patients_site_a", "patients_site_b", "patients_site_c"}
    assert all(d.spent_epsilon <= d.cap_epsilon for d in ledger.datasets())

    # Shared storage: checkpoints, masked messages, reports, metrics -- never a row.
    fs, root = resolve(f"{demo_root}/federated")
    raw = generate_batch("site_a", "2026-10-01")
    needles = [s.encode() for s in list(raw.patient_id[:50]) + list(raw.name[:50])]
    for path in fs.find(root):
        if path.endswith("holdout.parquet"):
            continue  # the agreed synthetic evaluation set
        blob = fs.cat_file(path)
        assert not any(n in blob for n in needles), path
    assert fs.exists(f"{root}/checkpoints/metrics.png")


def test_robust_aggregation_with_secure_sum_is_rejected_at_parse_time():
    from airflow.sdk import DAG

    from airflow_privacy.operators.federated import federated_round_group

    training = {"features": ["age"], "label": "outcome", "ranges": {"age": (0, 100)}, "aggregator": "median"}
    with DAG("parse_check", schedule=None), pytest.raises(InvalidParameterError, match="secure sum"):
        federated_round_group("f", sites=list(SITES), source="s", training=training, checkpoint_dir="c",
                              shared_storage="x", site_storage="y")
