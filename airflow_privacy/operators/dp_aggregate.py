"""``DPAggregateOperator``: differentially private statistics under a persistent budget."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError, SchemaError
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.operators._release import PRIVACY_XCOM_KEY, run_dp_release
from airflow_privacy.operators.links import PrivacyBudgetLink

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["DPAggregateOperator", "PRIVACY_XCOM_KEY"]


class DPAggregateOperator(BaseOperator):
    """Release DP aggregates of a batch and charge them to a dataset's privacy budget.

    The budget is checked and charged in the ledger *before* noise is drawn
    (``release_id = dag_id/run_id/task_id/map_index``). A retry of a task whose release was
    already written returns that release -- same numbers, no new charge. Over the cap the task
    fails without retrying and writes nothing. See :func:`airflow_privacy.core.dp.dp_aggregate`
    for the guarantee and the meaning of each statistical parameter.

    :param source: URI (or list of URIs, concatenated) of the input batch, templated.
    :param destination: URI of the released table (Parquet/CSV), templated.
    :param dataset: budget scope, e.g. ``"patients"`` (templated).
    :param epsilon: ε of this release, in [1e-6, 100].
    :param delta: δ of this release, in [0, 1).
    :param metrics: ``{output column: spec}`` as in ``dp_aggregate``.
    :param by: group-by columns.
    :param privacy_unit: column of the protected individual (None: each row).
    :param bounds: ``{column: (lo, hi)}`` for every value column.
    :param max_groups_per_unit: L0 contribution bound.
    :param max_rows_per_group: Linf contribution bound.
    :param public_groups: known group keys (``{column: values}``), or None for private selection.
    :param bins: ``{column: edges}`` to release histograms (see ``dp_aggregate``).
    :param mechanism: ``"laplace"`` or ``"gaussian"``.
    :param budget_cap: ``(epsilon, delta)`` creating the dataset's cap when missing; must equal
        an existing cap (raise caps with ``airflow-privacy budget set``).
    :param budget_conn_id: ``privacy_budget`` connection id.
    """

    template_fields: Sequence[str] = ("source", "destination", "dataset")
    ui_color = "#e8d5f5"
    operator_extra_links = (PrivacyBudgetLink(),)

    def __init__(
        self,
        *,
        source: str | list[str],
        destination: str,
        dataset: str,
        epsilon: float,
        metrics: Mapping[str, Any],
        delta: float = 0.0,
        by: Sequence[str] = (),
        privacy_unit: str | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        max_groups_per_unit: int = 1,
        max_rows_per_group: int = 1,
        public_groups: Mapping[str, Sequence[Any]] | None = None,
        bins: Mapping[str, Sequence[float]] | None = None,
        mechanism: str = "laplace",
        budget_cap: tuple[float, float] | None = None,
        budget_conn_id: str = PrivacyBudgetHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Cheap checks at parse time: a DAG with epsilon=0 should not even import.
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        if budget_cap is not None:
            if not isinstance(budget_cap, (tuple, list)) or len(budget_cap) != 2:
                raise InvalidParameterError("budget_cap", budget_cap, "expected (epsilon, delta)")
            budget_cap = (check_epsilon(budget_cap[0], "budget_cap epsilon", maximum=math.inf),
                          check_delta(budget_cap[1], "budget_cap delta"))
        self.source = source
        self.destination = destination
        self.dataset = dataset
        self.metrics = dict(metrics)
        self.by = list(by)
        self.privacy_unit = privacy_unit
        self.bounds = dict(bounds or {})
        self.max_groups_per_unit = max_groups_per_unit
        self.max_rows_per_group = max_rows_per_group
        self.public_groups = public_groups
        self.bins = bins
        self.mechanism = mechanism
        self.budget_cap = budget_cap
        self.budget_conn_id = budget_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return run_dp_release(self, context)
        except (PrivacyError, SchemaError, FileNotFoundError) as exc:
            # Deterministic failures: retrying cannot help and must not spend more budget.
            raise AirflowFailException(str(exc)) from exc
