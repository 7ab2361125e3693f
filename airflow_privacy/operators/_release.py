"""The recipe of a budgeted DP release, shared by DP-spending operators."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from airflow_privacy.core import io
from airflow_privacy.core.dp import dp_aggregate
from airflow_privacy.core.errors import PrivacyError
from airflow_privacy.hooks.budget import PrivacyBudgetHook

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_privacy.core.budget import BudgetStatus, PrivacyLedger
    from airflow_privacy.operators.dp_aggregate import DPAggregateOperator


def release_id(context: Context) -> str:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{-1 if map_index is None else map_index}"


def privacy_summary(dataset: str, rid: str, epsilon: float, delta: float, status: BudgetStatus) -> dict[str, Any]:
    """The ``privacy`` dict of DESIGN §4 (XCom return value and key ``privacy_budget``)."""
    return {
        "dataset": dataset,
        "release_id": rid,
        "epsilon": round(epsilon, 10),
        "delta": delta,
        "spent_epsilon": round(status.spent_epsilon, 10),
        "spent_delta": status.spent_delta,
        "remaining_epsilon": round(status.remaining_epsilon, 10),
        "cap_epsilon": status.cap_epsilon,
        "cap_delta": status.cap_delta,
        "accountant": status.accountant,
    }


def _read_sources(source: str | list[str]) -> pd.DataFrame:
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise FileNotFoundError("source is empty: expected a URI or a non-empty list of URIs")
    frames = [io.read_batch(s) for s in sources]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def run_dp_release(op: DPAggregateOperator, context: Context) -> dict[str, Any]:
    rid = release_id(context)
    ledger: PrivacyLedger = PrivacyBudgetHook(op.budget_conn_id).get_ledger()
    if op.budget_cap is not None:
        ledger.ensure_budget(op.dataset, epsilon=op.budget_cap[0], delta=op.budget_cap[1])
    else:
        _require_budget(ledger, op.dataset)

    previous = ledger.get_release(op.dataset, rid)
    if previous is not None and previous.output and io.exists(previous.output):
        op.log.info("Release %s was already published to %s: returning it (no new charge, no new noise)",
                    rid, previous.output)
        rows = len(io.read_batch(previous.output))
        return _finish(op, context, ledger, rid, previous.epsilon, previous.delta, previous.output, rows)

    df = _read_sources(op.source)
    op.log.info("Read %d rows from %s", len(df), op.source)

    def charge(cost):
        if not math.isfinite(cost.epsilon) or cost.epsilon > op.epsilon * (1 + 1e-9):
            raise PrivacyError(f"planned cost epsilon={cost.epsilon} exceeds the requested epsilon={op.epsilon}")
        done = ledger.charge(op.dataset, release_id=rid, cost=cost, output=op.destination,
                             dag_id=context["ti"].dag_id, run_id=context["ti"].run_id,
                             task_id=context["ti"].task_id, map_index=getattr(context["ti"], "map_index", -1))
        if done.replayed:
            if done.events != cost.events:
                raise PrivacyError(f"release {rid} was charged with different parameters; refusing to release")
            op.log.info("Release %s was charged by an earlier try that published nothing; reusing that charge", rid)
        else:
            op.log.info("Charged epsilon=%.6g delta=%.3g to dataset %r", cost.epsilon, cost.delta, op.dataset)

    result = dp_aggregate(
        df, epsilon=op.epsilon, delta=op.delta, metrics=op.metrics, by=op.by, privacy_unit=op.privacy_unit,
        bounds=op.bounds, max_groups_per_unit=op.max_groups_per_unit, max_rows_per_group=op.max_rows_per_group,
        public_groups=op.public_groups, bins=op.bins, mechanism=op.mechanism, on_cost=charge,
    )
    rows = io.write_batch(result.table, op.destination)
    ledger.mark_released(op.dataset, rid, op.destination)
    op.log.info("Released %d rows to %s (noise sd per query: %s)", rows, op.destination,
                {k: round(v, 4) for k, v in result.noise_sd.items()})
    return _finish(op, context, ledger, rid, result.cost.epsilon, result.cost.delta, op.destination, rows)


def _require_budget(ledger: PrivacyLedger, dataset: str) -> None:
    try:
        ledger.status(dataset)
    except KeyError as exc:
        raise PrivacyError(f"{exc.args[0]}; pass budget_cap=(epsilon, delta) or run "
                           f"`airflow-privacy budget set {dataset} --epsilon E --delta D`") from None


def _finish(op, context, ledger, rid, epsilon, delta, output, rows) -> dict[str, Any]:
    privacy = privacy_summary(op.dataset, rid, epsilon, delta, ledger.status(op.dataset))
    context["ti"].xcom_push(key="privacy_budget", value=privacy)
    op.log.info("Privacy budget of %r: spent epsilon=%.4g of %.4g (remaining %.4g, %s)", op.dataset,
                privacy["spent_epsilon"], privacy["cap_epsilon"], privacy["remaining_epsilon"], privacy["accountant"])
    return {"output": output, "rows": rows, "privacy": privacy}
