"""``DPAggregateOperator``: differentially private statistics under a persistent budget."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.dp.accuracy import check_error_bars
from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.dp.engines import ENGINES
from airflow_privacy.core.dp.spec import check_release_spec
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.operators._params import check_name, check_uri, fail_without_retry, is_template
from airflow_privacy.operators._release import PRIVACY_XCOM_KEY, run_dp_release
from airflow_privacy.operators.links import PrivacyBudgetLink

if TYPE_CHECKING:
    import jinja2
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
    :param epsilon: ε of this release, in [1e-6, 100] (templated: a number, or a Jinja string
        such as ``"{{ dag_run.conf.get('epsilon', 1) }}"`` checked when the task renders it,
        before anything is read or charged).
    :param delta: δ of this release, in [0, 1) (templated like ``epsilon``).
    :param metrics: ``{output column: spec}`` as in ``dp_aggregate``.
    :param by: group-by columns.
    :param privacy_unit: column of the protected individual (None: each row).
    :param bounds: ``{column: (lo, hi)}`` for every value column.
    :param max_groups_per_unit: L0 contribution bound.
    :param max_rows_per_group: Linf contribution bound.
    :param public_groups: known group keys (``{column: values}``), or None for private selection.
    :param bins: ``{column: edges}`` to release histograms (see ``dp_aggregate``).
    :param mechanism: ``"laplace"`` or ``"gaussian"``.
    :param engine: where bounding and the integer aggregates run: ``"pandas"`` (reads the batch
        into memory) or ``"duckdb"`` (out of core over the Parquet ``source`` -- file, glob,
        hive-partitioned folder -- within a memory limit, spilling to disk) or ``"spark"`` (the
        cluster of ``spark_conn_id``); ``None`` picks by the source's size (``pandas`` up to
        256 MiB of Parquet). Noise, budget and XCom are the same for every engine.
    :param spark_conn_id: with ``engine="spark"``: the Airflow connection naming the cluster --
        type ``spark`` (a standalone master ``spark://host:7077``) or ``spark_connect`` (a Spark
        Connect server ``sc://host:15002``), as for apache-airflow-providers-apache-spark
        (:class:`~airflow_privacy.hooks.spark.SparkEngineHook`). The task is the driver; the
        cluster's executors read ``source``, so it must be a path or URI they can read. ``None``:
        ``AIRFLOW_PRIVACY_SPARK_MASTER``, else ``local[*]`` on the worker. A cluster that cannot
        be reached fails the task at once, without retries, before anything is read or charged.
    :param error_bars: ``"sd"`` and/or ``"ci95"``: add ``<metric>_sd`` / ``<metric>_ci95``
        columns to the output (see :mod:`airflow_privacy.core.dp.accuracy`). Either way the
        return value holds ``accuracy`` -- per metric ``basis`` and ``sd``/``ci95`` (largest
        over the released groups) or ``rank_error95`` -- and the metrics are rounded to their noise.
    :param budget_cap: ``(epsilon, delta)`` creating the dataset's cap when missing; must equal
        an existing cap (raise caps with ``airflow-privacy budget set``).
    :param budget_parent: the population ``dataset`` is a disjoint partition of (e.g.
        ``"patients"`` for ``"patients_site_a"``): declared with ``budget_cap`` when the dataset
        is created, checked against the ledger afterwards. Each charge is then checked against
        the parent's cap too, for one person's worst case (see ``airflow-privacy budget show``).
    :param budget_alert_notifiers: Airflow notifiers (``BaseNotifier``: e-mail, Slack, ...)
        called once when a charge first passes the alert share of the dataset's or an
        ancestor's cap (80 % by default; ``airflow-privacy budget set --alert-share``). The
        task log always gets a warning.
    :param budget_alert_share: the alert share of a dataset ``budget_cap`` creates (default 0.8).
    :param budget_conn_id: ``privacy_budget`` connection id.
    """

    template_fields: Sequence[str] = ("source", "destination", "dataset", "epsilon", "delta")
    ui_color = "#e8d5f5"
    operator_extra_links = (PrivacyBudgetLink(),)

    def __init__(
        self,
        *,
        source: str | list[str],
        destination: str,
        dataset: str,
        epsilon: float | str,
        metrics: Mapping[str, Any],
        delta: float | str = 0.0,
        by: Sequence[str] = (),
        privacy_unit: str | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        max_groups_per_unit: int = 1,
        max_rows_per_group: int = 1,
        public_groups: Mapping[str, Sequence[Any]] | None = None,
        bins: Mapping[str, Sequence[float]] | None = None,
        mechanism: str = "laplace",
        engine: str | None = None,
        spark_conn_id: str | None = None,
        error_bars: Sequence[str] | str | None = (),
        budget_cap: tuple[float, float] | None = None,
        budget_parent: str | None = None,
        budget_alert_notifiers: Sequence[Any] = (),
        budget_alert_share: float | None = None,
        budget_conn_id: str = PrivacyBudgetHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Cheap checks at parse time, reading no data: a DAG with epsilon=0, a misspelt metric
        # or a mean without bounds should not even import. A templated epsilon/delta is
        # checked when rendered (render_template_fields).
        self.epsilon = epsilon if is_template(epsilon) else check_epsilon(epsilon)
        self.delta = delta if is_template(delta) else check_delta(delta)
        check_release_spec(metrics=metrics, by=by, bounds=bounds, mechanism=mechanism,
                           delta=None if is_template(delta) else self.delta)
        if budget_cap is not None:
            if not isinstance(budget_cap, (tuple, list)) or len(budget_cap) != 2:
                raise InvalidParameterError("budget_cap", budget_cap, "expected (epsilon, delta)")
            budget_cap = (check_epsilon(budget_cap[0], "budget_cap epsilon", maximum=math.inf),
                          check_delta(budget_cap[1], "budget_cap delta"))
        self.source = check_uri("source", source, many=True)
        self.destination = check_uri("destination", destination)
        self.dataset = check_name("dataset", dataset)
        self.metrics = dict(metrics)
        self.by = list(by)
        self.privacy_unit = check_name("privacy_unit", privacy_unit, optional=True)
        self.bounds = dict(bounds or {})
        self.max_groups_per_unit = max_groups_per_unit
        self.max_rows_per_group = max_rows_per_group
        self.public_groups = public_groups
        self.bins = bins
        self.mechanism = mechanism
        if engine is not None and engine not in ENGINES:
            raise InvalidParameterError("engine", engine, f"expected one of {ENGINES} or None (chosen by input size)")
        self.engine = engine
        if spark_conn_id is not None and (engine != "spark" or not isinstance(spark_conn_id, str)
                                          or not spark_conn_id.strip()):
            raise InvalidParameterError("spark_conn_id", spark_conn_id, "expected a connection id, with "
                                        f"engine='spark' (engine is {engine!r})")
        self.spark_conn_id = spark_conn_id
        self.error_bars = check_error_bars(error_bars)
        if budget_parent is not None and (not isinstance(budget_parent, str) or not budget_parent.strip()):
            raise InvalidParameterError("budget_parent", budget_parent, "expected the parent dataset's name")
        if not all(callable(n) for n in budget_alert_notifiers):
            raise InvalidParameterError("budget_alert_notifiers", budget_alert_notifiers,
                                        "expected Airflow notifiers (BaseNotifier instances)")
        self.budget_cap = budget_cap
        self.budget_parent = budget_parent
        self.budget_alert_notifiers = list(budget_alert_notifiers)
        if budget_alert_share is not None and (isinstance(budget_alert_share, bool)
                                               or not isinstance(budget_alert_share, (int, float))
                                               or not 0 < budget_alert_share <= 1):
            raise InvalidParameterError("budget_alert_share", budget_alert_share, "expected a share of the cap in (0, 1]")
        self.budget_alert_share = budget_alert_share
        self.budget_conn_id = budget_conn_id

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        super().render_template_fields(context, jinja_env)
        try:
            self.epsilon = check_epsilon(_number(self.epsilon))
            self.delta = check_delta(_number(self.delta))
            check_release_spec(metrics=self.metrics, by=self.by, bounds=self.bounds, mechanism=self.mechanism,
                               delta=self.delta)
        except InvalidParameterError as exc:  # a bad run conf: fail before reading or charging, no retry
            raise AirflowFailException(f"{exc} (after rendering the task's templates)") from exc

    def execute(self, context: Context) -> dict[str, Any]:
        # Deterministic failures (bad input, over the cap, an unreadable batch): retrying cannot
        # help and must not spend more budget.
        with fail_without_retry():
            return run_dp_release(self, context)


def _number(value: Any) -> Any:
    """A rendered template is text: ``"0.5"`` -> 0.5; anything else is left for the range check
    to reject by name (a float that does not parse stays text)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value
