"""Operator behaviour shared by the site and aggregator operators: the *Privacy budget* extra
link on every task that spends budget, and key rings that fail without retry."""

from __future__ import annotations

from airflow_privacy.operators.links import PrivacyBudgetLink, privacy_dataset
from airflow_privacy.operators.secure_sum import SecureShareOperator, SecureSumOperator

DP = {"epsilon": 1.0, "delta": 1e-6, "l2_sensitivity": 1.0, "dataset": "patients"}
ROUND = dict(sites=["site_a", "site_b", "site_c"], bounds=(0.0, 10.0), shared_storage="file:///tmp/x",
             length=4)


def test_dp_secure_sum_steps_link_to_the_charged_dataset():
    link = PrivacyBudgetLink()
    for step in ("route", "unmask"):
        op = SecureSumOperator(task_id=f"agg_{step}", step=step, destination="file:///tmp/x/sum.parquet",
                               dp=DP, **ROUND)
        assert PrivacyBudgetLink in {type(x) for x in op.operator_extra_links}
        assert privacy_dataset(op) == "patients"
        assert link.get_link(op, ti_key=None) == "/plugin/privacy-budget/privacy/dashboard/datasets/patients"


def test_no_link_target_without_dp():
    op = SecureSumOperator(task_id="agg", step="route", **ROUND)
    assert privacy_dataset(op) is None and PrivacyBudgetLink().get_link(op, ti_key=None) == ""
    site = SecureShareOperator(task_id="s", step="mask", site="site_a", source="file:///tmp/v.parquet",
                               site_storage="file:///tmp/a", **ROUND)
    assert privacy_dataset(site) is None


FED = dict(sites=["site_a", "site_b", "site_c"], checkpoint_dir="file:///tmp/c", shared_storage="file:///tmp/m",
           dataset="patients")
BASE = {"features": ["age"], "label": "outcome", "ranges": {"age": (0, 100)}}
RECORD = {**BASE, "dp": {"level": "record", "max_rows": 600, "epsilon": 8, "delta": 1e-5, "max_grad_norm": 1.0}}
SITE = {**BASE, "min_sites": 3, "dp": {"level": "site", "noise_multiplier": 1.0, "clip": 0.5}}


def _client(training):
    from airflow_privacy.operators.federated import FederatedClientOperator

    return FederatedClientOperator(task_id="c", site="site_b", source="file:///tmp/s.parquet", training=training,
                                   site_storage="file:///tmp/b", **FED)


def _round(training):
    from airflow_privacy.operators.federated import FederatedRoundOperator

    return FederatedRoundOperator(task_id="r", step="charge", training=training, **FED)


def test_federated_tasks_link_to_the_dataset_they_charge():
    link = PrivacyBudgetLink()
    # record-level DP: each site's task charges <dataset>_<site>; the round charges nothing
    assert link.get_link(_client(RECORD), ti_key=None).endswith("/datasets/patients_site_b")
    assert privacy_dataset(_round(RECORD)) is None
    # site-level DP: the round's charge step charges <dataset>; the sites charge nothing
    assert link.get_link(_round(SITE), ti_key=None).endswith("/datasets/patients")
    assert privacy_dataset(_client(SITE)) is None
    # no DP: no budget page to open
    assert privacy_dataset(_client(BASE)) is None and privacy_dataset(_round(BASE)) is None


def test_a_malformed_site_key_ring_fails_without_retry(monkeypatch):
    """Retrying cannot mend a key ring: the site steps fail at once, naming the connection."""
    from types import SimpleNamespace

    import pytest
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_BROKEN", '{"conn_type": "privacy_keys", "password": "{not json"}')
    context = {"ti": SimpleNamespace(dag_id="d", run_id="r")}
    site = SecureShareOperator(task_id="s", step="advertise", site="site_a", source="file:///tmp/v.parquet",
                               site_storage="file:///tmp/a", key_conn_id="privacy_keys_broken", **ROUND)
    with pytest.raises(AirflowFailException, match="privacy_keys_broken") as err:
        site.execute(context)
    assert "not json" not in str(err.value)
    client = _client(BASE)
    client.key_conn_id = "privacy_keys_broken"
    with pytest.raises(AirflowFailException, match="privacy_keys_broken"):
        client.execute(context)
