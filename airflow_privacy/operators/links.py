"""Operator extra links of airflow-privacy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class PrivacyBudgetLink(BaseOperatorLink):
    """*Privacy budget* button on a DP task: its dataset's page of the budget dashboard.

    Airflow 3 computes the link in the task process when the task finishes (and stores it in
    XCom), so the dataset name is the rendered one. The URL opens the page framed in the
    Airflow UI (``/plugin/privacy-budget/...``); it is empty for a task that spends no budget.
    """

    name = "Privacy budget"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.configuration import conf

        from airflow_privacy.plugins.budget_urls import dataset_ui_url

        dataset = privacy_dataset(operator)
        if not dataset:
            return ""
        return dataset_ui_url(dataset, conf.get("api", "base_url", fallback=None))


def privacy_dataset(operator: BaseOperator) -> str | None:
    """The ledger dataset a task charges, or ``None``: the operator's ``privacy_dataset`` when
    it has one (federated tasks, which charge only under DP: ``<dataset>_<site>`` per site for
    record-level, ``<dataset>`` for site-level), else ``dataset`` (DP aggregates), else
    ``dp["dataset"]`` (secure-sum rounds with distributed DP)."""
    if hasattr(operator, "privacy_dataset"):
        value = operator.privacy_dataset
    elif hasattr(operator, "dataset"):
        value = operator.dataset
    else:
        dp = getattr(operator, "dp", None)
        value = dp.get("dataset") if isinstance(dp, dict) else None
    return value if isinstance(value, str) and value else None
