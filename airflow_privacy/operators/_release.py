"""The recipe of a budgeted DP release, shared by DP-spending operators."""

from __future__ import annotations

import contextlib
import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import fsspec
import pandas as pd
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.dp import dp_aggregate
from airflow_privacy.core.dp.engines import choose_engine
from airflow_privacy.core.errors import PrivacyError
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.hooks.spark import SparkEngineHook
from airflow_privacy.operators._params import check_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_privacy.core.budget import BudgetStatus, Charge, PrivacyLedger

PRIVACY_XCOM_KEY = "privacy_budget"


class DPReleaseTask(Protocol):
    """What a budgeted release needs of its operator (``DPAggregateOperator`` provides it).

    A protocol rather than the operator class, so this module never imports the operator
    module that calls it."""

    source: str | list[str]
    destination: str
    dataset: str
    epsilon: float
    delta: float
    metrics: Mapping[str, Any]
    by: Sequence[str]
    privacy_unit: str | None
    bounds: Mapping[str, tuple[float, float]]
    max_groups_per_unit: int
    max_rows_per_group: int
    public_groups: Any
    bins: Any
    mechanism: str
    error_bars: Sequence[str]
    budget_cap: tuple[float, float] | None
    budget_parent: str | None
    budget_alert_notifiers: Sequence[Any]
    budget_alert_share: float | None
    budget_conn_id: str
    log: Any


def release_id(context: Context) -> str:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{-1 if map_index is None else map_index}"


def privacy_summary(dataset: str, rid: str, epsilon: float, delta: float, status: BudgetStatus) -> dict[str, Any]:
    """The ``privacy`` dict of DESIGN §4 (XCom return value and key ``privacy_budget``).

    ``spent_epsilon`` is the worst case of one person of the dataset's population (its own
    spend when it has no partitions); ``ancestors`` gives the same figures for every
    population the dataset is a partition of, nearest first."""
    def figures(s: BudgetStatus) -> dict[str, Any]:
        return {"dataset": s.dataset, "spent_epsilon": round(s.spent_epsilon, 10),
                "own_epsilon": round(s.own_epsilon if s.own_epsilon is not None else s.spent_epsilon, 10),
                "remaining_epsilon": round(s.remaining_epsilon, 10), "cap_epsilon": s.cap_epsilon,
                "cap_delta": s.cap_delta}

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
        "parent": status.parent,
        "ancestors": [figures(a) for a in status.ancestors],
    }


def charge_identity(context: Context) -> dict[str, Any]:
    """The task identity a ledger charge (or refusal) records."""
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1), "logical_date": context.get("logical_date")}


def announce_alerts(op: Any, context: Context, charge: Charge, ledger: PrivacyLedger) -> None:
    """A charge that first passed a dataset's alert share (80 % of its cap by default, the
    charged dataset's or an ancestor population's): a warning in the task log, and each of the
    operator's ``budget_alert_notifiers`` (Airflow ``BaseNotifier`` objects -- e-mail, Slack,
    ...) called once with the context plus ``privacy_alert``."""
    for name, share in charge.alerts:
        status = ledger.status(name)
        alert = {"dataset": name, "share": share, "spent_epsilon": status.spent_epsilon,
                 "cap_epsilon": status.cap_epsilon, "release_id": charge.release_id}
        op.log.warning("Privacy budget alert: dataset %r passed %d%% of its cap (worst-case epsilon %.4g of %.4g) "
                       "with release %s", name, round(share * 100), status.spent_epsilon, status.cap_epsilon,
                       charge.release_id)
        for notifier in getattr(op, "budget_alert_notifiers", None) or ():
            notifier({**context, "privacy_alert": alert})


def _read_sources(source: str | list[str]) -> pd.DataFrame:
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise FileNotFoundError("source is empty: expected a URI or a non-empty list of URIs")
    frames = [io.read_batch(s) for s in sources]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def run_dp_release(op: DPReleaseTask, context: Context) -> dict[str, Any]:
    for name in ("source", "destination"):  # rendered by now: check the final URIs again
        check_uri(name, getattr(op, name), many=name == "source")
    rid = release_id(context)
    ledger: PrivacyLedger = PrivacyBudgetHook(op.budget_conn_id).get_ledger()
    if op.budget_cap is not None:
        ledger.ensure_budget(op.dataset, epsilon=op.budget_cap[0], delta=op.budget_cap[1], parent=op.budget_parent,
                             alert_share=op.budget_alert_share)
    else:
        _require_budget(ledger, op.dataset)
        if op.budget_parent is not None and ledger.status(op.dataset).parent != op.budget_parent:
            raise PrivacyError(f"dataset {op.dataset!r} is not declared a partition of {op.budget_parent!r} in the "
                               f"ledger; run `airflow-privacy budget set {op.dataset} --parent {op.budget_parent} "
                               "--reason ...` or fix the DAG's budget_parent")

    previous = ledger.get_release(op.dataset, rid)
    if previous is not None and (previous.output_sha256 is not None or previous.status == "released"):
        return _reuse_release(op, context, ledger, rid, previous)

    engine = choose_engine(op.source, getattr(op, "engine", None))
    if engine == "pandas":
        df = _read_sources(op.source)
        op.log.info("Read %d rows from %s", len(df), op.source)
    else:  # the engine reads the dataset itself, before the charge (dp_aggregate's on_cost)
        df = op.source
        op.log.info("Aggregating %s with engine=%r", op.source, engine)

    def charge(cost):
        if not math.isfinite(cost.epsilon) or cost.epsilon > op.epsilon * (1 + 1e-9):
            raise PrivacyError(f"planned cost epsilon={cost.epsilon} exceeds the requested epsilon={op.epsilon}")
        done = ledger.charge(op.dataset, release_id=rid, cost=cost, output=op.destination,
                             **charge_identity(context))
        announce_alerts(op, context, done, ledger)
        if done.replayed:  # the ledger refused it had the cost differed
            op.log.info("Release %s was charged by an earlier try that published nothing; reusing that charge", rid)
        else:
            op.log.info("Charged epsilon=%.6g delta=%.3g to dataset %r", cost.epsilon, cost.delta, op.dataset)

    with _engine_scope(op, engine):
        result = dp_aggregate(
            df, epsilon=op.epsilon, delta=op.delta, metrics=op.metrics, by=op.by, privacy_unit=op.privacy_unit,
            bounds=op.bounds, max_groups_per_unit=op.max_groups_per_unit, max_rows_per_group=op.max_rows_per_group,
            public_groups=op.public_groups, bins=op.bins, mechanism=op.mechanism, on_cost=charge,
            accountant=ledger.status(op.dataset).accountant, error_bars=op.error_bars, engine=engine,
        )
    data, rows = _serialize(result.table, op.destination)
    # Seal the answer before it can be seen: a retry after this point returns these bytes or
    # fails, it never draws again. A crash between seal and write leaves a sealed release with
    # no file -- the retry then fails hard, which costs a new run but never a second answer.
    # Of two live tries (a retry started while the first still runs) only one seals; the
    # other gets ReleaseConflictError here, before writing anything, and fails without retry.
    ledger.seal_release(op.dataset, rid, output=op.destination, sha256=hashlib.sha256(data).hexdigest())
    io.write_bytes(data, op.destination)
    ledger.mark_released(op.dataset, rid, op.destination)
    op.log.info("Released %d rows to %s; error bars per metric: %s", rows, op.destination, result.accuracy)
    done = _finish(op, context, ledger, rid, result.cost.epsilon, result.cost.delta, op.destination, rows)
    return {**done, "accuracy": result.accuracy}


def _engine_scope(op: DPReleaseTask, engine: str) -> contextlib.AbstractContextManager:
    """``engine="spark"`` with ``spark_conn_id``: a session on that connection's cluster for
    the release, reached (or refused, naming ``spark_conn_id``) before the engine reads a row
    and so before the charge."""
    conn_id = getattr(op, "spark_conn_id", None)
    if engine != "spark" or conn_id is None:
        return contextlib.nullcontext()
    from airflow_privacy.core.dp.engines.spark_session import spark_on

    return spark_on(SparkEngineHook(conn_id).get_url(), parameter="spark_conn_id", value=conn_id)


def _serialize(table: pd.DataFrame, destination: str) -> tuple[bytes, int]:
    """The exact bytes ``io.write_batch`` would write to ``destination``, and the row count.

    Written to an in-memory file of the same name, so the format is inferred as for the
    destination and serialization stays in ``core.io``.
    """

    class _Memory:
        fs = fsspec.filesystem("memory")
        path = f"/airflow-privacy-release-{uuid.uuid4().hex}/{destination.rstrip('/').rpartition('/')[2]}"

    rows = io.write_batch(table, _Memory)
    try:
        return io.read_bytes(_Memory), rows
    finally:
        _Memory.fs.rm(_Memory.path.rpartition("/")[0], recursive=True)


def _reuse_release(op, context, ledger, rid, previous) -> dict[str, Any]:
    """Return a sealed release's stored output after checking it is byte-for-byte the one sealed.

    Never re-draws: the charge already has its one answer, and a fresh draw next to a
    published (then lost or altered) one would release two independent noisy answers for a
    single charge.
    """
    output, sealed = previous.output, previous.output_sha256
    where = f"release {rid!r} of dataset {op.dataset!r} (ledger status {previous.status!r}, output {output}"
    where += f", sha256 {sealed})" if sealed else ")"
    advice = ("It cannot be recomputed under the same charge: fresh noise would publish a second, independent "
              "answer. Restore the file from a backup, or trigger a new DAG run (a new release id and a new charge).")
    if not output or not io.exists(output):
        raise AirflowFailException(f"{where} already exists in the privacy ledger but its output is missing. {advice}")
    found = hashlib.sha256(io.read_bytes(output)).hexdigest()
    if sealed is None:  # released by a package older than ledger schema v2: nothing to verify against
        op.log.warning("Release %s has no recorded sha256 (ledger schema v1); returning %s unverified", rid, output)
    elif found != sealed:
        raise AirflowFailException(f"{where} already exists in the privacy ledger but its output was changed "
                                   f"(sha256 now {found}). {advice}")
    if previous.status != "released":  # sealed, then the earlier try stopped before recording it
        ledger.mark_released(op.dataset, rid, output)
    # The accuracy of a ratio depends on the noisy values; the ledger does not keep it, so a
    # replay returns accuracy None (the output's <metric>_sd/_ci95 columns, if asked, hold it).
    op.log.info("Release %s was already published to %s: returning it (no new charge, no new noise)", rid, output)
    rows = len(io.read_batch(output))
    return {**_finish(op, context, ledger, rid, previous.epsilon, previous.delta, output, rows), "accuracy": None}


def _require_budget(ledger: PrivacyLedger, dataset: str) -> None:
    try:
        ledger.status(dataset)
    except KeyError as exc:
        raise PrivacyError(f"{exc.args[0]}; pass budget_cap=(epsilon, delta) or run "
                           f"`airflow-privacy budget set {dataset} --epsilon E --delta D`") from None


def _finish(op, context, ledger, rid, epsilon, delta, output, rows) -> dict[str, Any]:
    privacy = privacy_summary(op.dataset, rid, epsilon, delta, ledger.status(op.dataset))
    context["ti"].xcom_push(key=PRIVACY_XCOM_KEY, value=privacy)
    op.log.info("Privacy budget of %r: spent epsilon=%.4g of %.4g (remaining %.4g, %s)", op.dataset,
                privacy["spent_epsilon"], privacy["cap_epsilon"], privacy["remaining_epsilon"], privacy["accountant"])
    return {"output": output, "rows": rows, "privacy": privacy}
