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
    XCom), so ``operator.dataset`` is the rendered dataset name. The URL opens the page framed
    in the Airflow UI (``/plugin/privacy-budget/...``); it is empty for an operator without a
    ``dataset``.
    """

    name = "Privacy budget"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.configuration import conf

        from airflow_privacy.plugins.budget_urls import dataset_ui_url

        dataset = getattr(operator, "dataset", None)
        if not isinstance(dataset, str) or not dataset:
            return ""
        return dataset_ui_url(dataset, conf.get("api", "base_url", fallback=None))
