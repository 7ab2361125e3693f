"""The *Privacy budget* extra link is on every task that spends privacy budget."""

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
