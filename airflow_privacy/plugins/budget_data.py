"""What the dashboard's routes (:mod:`.budget_api`) show, filtered for the requesting user.

* :class:`_DagReadAccess` -- per request, whether the user may read a DAG's runs (the
  auth manager's ``is_authorized_dag``); releases, refusals and federated rounds of DAGs the
  user may not read are left out (see "Security" in :mod:`.budget_api`);
* URLs -- the Airflow UI root as seen by the request, links to a release's DAG, run and task
  instance, and the dashboard's dataset pages;
* data -- the visible releases, the worst-case-ε series (:class:`.budget_chart.SpendSeries`),
  the refused releases, pages of releases with their ``error_bars``, and the federated
  rounds read from the ``return_value`` XCom of ``FederatedRoundOperator`` tasks.

Airflow's API modules, ``sqlalchemy`` and ``airflow_privacy.core.dp.accuracy`` are imported
on the first request, not with the module. Errors are logged under the
``airflow_privacy.plugins.budget_api`` logger, as they were before this module was split out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request

from airflow_privacy.plugins import budget_chart
from airflow_privacy.plugins.budget_urls import URL_PREFIX

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

    from airflow_privacy.core.budget import BudgetStatus, CapChange, Charge, PrivacyLedger

log = logging.getLogger("airflow_privacy.plugins.budget_api")

FEDERATED_OPERATOR = "FederatedRoundOperator"
_FEDERATED_SCAN_LIMIT = 1000  # most recent round results read from XCom


class _DagReadAccess:
    """Per-request cache of ``is_authorized_dag(GET, RUN)`` answers for one user."""

    def __init__(self, user: BaseUser) -> None:
        self.user = user
        self._answers: dict[str, bool] = {}

    def __call__(self, dag_id: str | None) -> bool:
        if dag_id is None:  # a charge recorded outside Airflow (notebook, CLI): no DAG to protect
            return True
        if dag_id not in self._answers:
            from airflow.api_fastapi.app import get_auth_manager
            from airflow.api_fastapi.auth.managers.models.resource_details import (
                DagAccessEntity,
                DagDetails,
            )

            self._answers[dag_id] = get_auth_manager().is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=self.user)
        return self._answers[dag_id]


# -- URLs -------------------------------------------------------------------------------------
def _airflow_base(request: Request) -> str:
    """Path of the Airflow UI root as seen by this request (the mount point minus ``/privacy``)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""


def _local_path(request: Request) -> str:
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _q(value: Any) -> str:
    return quote(str(value), safe="")


def _ui_urls(base: str, charge: Charge) -> dict[str, str | None]:
    if not (charge.dag_id and charge.run_id and charge.task_id):
        return {"dag_url": None, "run_url": None, "ti_url": None}
    dag = f"{base}/dags/{_q(charge.dag_id)}"
    run = f"{dag}/runs/{_q(charge.run_id)}"
    ti = f"{run}/tasks/{_q(charge.task_id)}"
    if charge.map_index is not None and charge.map_index >= 0:
        ti += f"/mapped/{charge.map_index}"
    return {"dag_url": dag, "run_url": run, "ti_url": ti}


def _page_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}/dashboard/datasets/{_q(name)}"


# -- data -------------------------------------------------------------------------------------
def _visible(history: list[Charge], can_read: _DagReadAccess) -> list[Charge]:
    """The releases of ``history`` (oldest first) whose DAG the user may read."""
    return [c for c in history if can_read(c.dag_id)]


def _series(s: BudgetStatus, visible: list[Charge], changes: list[CapChange] = ()) -> budget_chart.SpendSeries:
    """Worst-case ε after each visible release, and the cap as it was; the legend shows the
    dataset's whole spend."""
    return budget_chart.SpendSeries(s.dataset, s.cap_epsilon, tuple((c.created_at, c.spent_epsilon) for c in visible),
                                   spent_epsilon=s.spent_epsilon,
                                   caps=tuple((c.changed_at, c.new_epsilon) for c in changes))


def _refusals(ledger: PrivacyLedger, name: str, can_read: _DagReadAccess) -> dict[str, Any]:
    """The refused releases the user may see (newest first), the others only counted."""
    refused = ledger.refusals(name)
    shown = [r.to_dict() for r in refused if can_read(r.dag_id)][::-1]
    return {"refusals": shown, "hidden_refusals": len(refused) - len(shown)}


def _release(base: str, c: Charge) -> dict[str, Any]:
    """One release; ``error_bars``: per metric, from its recorded events alone
    (:func:`airflow_privacy.core.dp.accuracy.ledger_error_bars`)."""
    # numpy/pandas: imported on the first request, not with the plugin
    from airflow_privacy.core.dp.accuracy import ledger_error_bars

    return {
        "release_id": c.release_id, "dag_id": c.dag_id, "run_id": c.run_id, "task_id": c.task_id,
        "map_index": c.map_index, "epsilon": c.epsilon, "delta": c.delta, "spent_epsilon": c.spent_epsilon,
        "status": c.status, "output": c.output, "created_at": c.created_at.isoformat(),
        "error_bars": ledger_error_bars(c.events), **_ui_urls(base, c),
    }


def _releases(request: Request, name: str, history: list[Charge], visible: list[Charge],
              limit: int, offset: int) -> dict[str, Any]:
    """A page of the visible releases, newest first; the others are only counted."""
    newest_first = visible[::-1]
    base = _airflow_base(request)
    return {
        "dataset": name,
        "releases": [_release(base, c) for c in newest_first[offset: offset + limit]],
        "total_entries": len(visible),
        "hidden_entries": len(history) - len(visible),
    }


def _first_number(sources: tuple[dict[str, Any], ...], *keys: str) -> float | None:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def _federated_rounds(request: Request, user: BaseUser) -> list[dict[str, Any]]:
    """Federated rounds per DAG (oldest round first) from ``FederatedRoundOperator`` results.

    Reads the ``return_value`` XCom of those tasks: ``round``; accuracy from ``accuracy`` or
    ``eval_accuracy``; spent ε from ``privacy.spent_epsilon`` (DESIGN §4) or ``epsilon`` -- each
    looked up at the top level, then under ``metrics`` (a round's history entry of
    :func:`airflow_privacy.core.federated.server_aggregate`). Anything else -- no such task, a
    value kept by a custom XCom backend, a missing field -- yields no row or an empty cell.
    """
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import and_, select

        stmt = (
            select(XComModel.dag_id, XComModel.run_id, XComModel.task_id, XComModel.map_index,
                   XComModel.value, XComModel.timestamp)
            .join(TaskInstance, and_(TaskInstance.dag_id == XComModel.dag_id, TaskInstance.run_id == XComModel.run_id,
                                     TaskInstance.task_id == XComModel.task_id,
                                     TaskInstance.map_index == XComModel.map_index))
            .where(XComModel.key == "return_value", TaskInstance.operator == FEDERATED_OPERATOR)
            .order_by(XComModel.timestamp.desc())
            .limit(_FEDERATED_SCAN_LIMIT)
        )
        with create_session(scoped=False) as session:
            rows = session.execute(stmt).all()
    except Exception:
        log.exception("Cannot read federated round results from the metadata database")
        return []

    can_read = _DagReadAccess(user)
    base = _airflow_base(request)
    models: dict[str, dict[tuple[str, str, int], dict[str, Any]]] = {}
    for row in rows:
        if not can_read(row.dag_id):
            continue
        value = XComModel.deserialize_value(row)
        if not isinstance(value, dict):
            continue
        metrics = value.get("metrics") if isinstance(value.get("metrics"), dict) else {}
        privacy = value.get("privacy") if isinstance(value.get("privacy"), dict) else {}
        round_ = _first_number((value, metrics), "round")
        if round_ is None:
            continue
        accuracy = _first_number((value, metrics), "accuracy", "eval_accuracy")
        epsilon = _first_number((privacy,), "spent_epsilon")
        if epsilon is None:
            epsilon = _first_number((value, metrics), "epsilon")
        key = (row.run_id, row.task_id, row.map_index)  # one result per task instance
        models.setdefault(row.dag_id, {}).setdefault(key, {
            "round": int(round_), "accuracy": accuracy, "epsilon": epsilon,
            "run_id": row.run_id, "task_id": row.task_id,
            "timestamp": row.timestamp.isoformat() if row.timestamp else None,
            "url": f"{base}/dags/{_q(row.dag_id)}/runs/{_q(row.run_id)}/tasks/{_q(row.task_id)}",
        })
    return [
        {"dag_id": dag_id, "rounds": sorted(rounds.values(), key=lambda r: r["round"])}
        for dag_id, rounds in sorted(models.items())
    ]
