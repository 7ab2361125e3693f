"""The forecast's Airflow side: which DAGs spend each dataset, and when they will run next.

The arithmetic is :mod:`airflow_privacy.core.budget.forecast` (its docstring states the
assumptions). Here, for every ``dag_id`` found on a dataset's charges:

* its coming run dates come from the Airflow metadata DB -- a paused or stale DAG runs
  never; an active one runs at its serialized timetable's dates
  (``SerializedDAG.iter_dagrun_infos_between``, the scheduler's own arithmetic);
* a DAG the metadata DB does not know (no DB configured, a ledger shared with another
  deployment, a charge from a notebook) is assumed to keep the cadence of its logical dates
  in the ledger (:func:`~airflow_privacy.core.budget.forecast.cadence`); so is every DAG when
  the caller says schedules are unknown (``schedules=False``: Airflow is not even imported --
  ``budget show --url`` on a machine without Airflow set up);
* its ε per run is the largest increase of the dataset's own ε over its last runs
  (:func:`~airflow_privacy.core.budget.forecast.epsilon_per_run`).

Used by ``airflow-privacy budget show`` and the dashboard.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from airflow_privacy.core.budget.forecast import (
    DEFAULT_HORIZON,
    Spender,
    cadence,
    epsilon_per_run,
    exhaustion_dates,
)

if TYPE_CHECKING:
    from airflow_privacy.core.budget import Charge, PrivacyLedger

log = logging.getLogger(__name__)


def forecast(ledger: PrivacyLedger, *, now: dt.datetime | None = None,
             histories: dict[str, list[Charge]] | None = None,
             schedules: bool = True) -> dict[str, dt.datetime | None]:
    """Projected date each dataset's cap is reached (``None``: never), keyed by dataset.

    :param histories: the datasets' charges if the caller has read them already.
    :param schedules: look the DAGs' timetables up in Airflow's metadata DB; ``False``: do not
        import Airflow, every DAG keeps the cadence of its logical dates.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    statuses = ledger.datasets()
    if histories is None:
        histories = {s.dataset: ledger.history(s.dataset) for s in statuses}
    parents = {s.dataset: s.parent for s in statuses}
    dags: dict[str, object] = {}
    spenders = []
    for s in statuses:
        history = histories[s.dataset]
        for dag_id in dict.fromkeys(c.dag_id for c in history if c.dag_id is not None):
            if dag_id not in dags:
                dags[dag_id] = _scheduled_dag(dag_id) if schedules else _UNKNOWN
            dag = dags[dag_id]
            if dag is _UNKNOWN:
                runs = cadence((c.logical_date for h in histories.values() for c in h
                                if c.dag_id == dag_id and c.logical_date is not None), now)
            else:
                runs = _run_dates(dag, now)
            partitions = [histories[c] for c, parent in parents.items() if parent == s.dataset]
            spenders.append(Spender(dag_id, s.dataset, epsilon_per_run(history, dag_id, partitions=partitions), runs))
    return exhaustion_dates(parents,
                            {s.dataset: s.cap_epsilon - s.spent_epsilon for s in statuses}, spenders, now=now)


TIMETABLE_RUNS = 500
"""How many coming runs are read from a timetable before its spacing is extrapolated."""
_UNKNOWN = object()  # the metadata DB does not know the DAG: use its observed cadence


def _scheduled_dag(dag_id: str):
    """The DAG as the scheduler has it (serialized); ``None`` if it is paused or stale (it will
    not run); ``_UNKNOWN`` when the metadata DB does not know it or cannot be reached."""
    try:
        from airflow.models.dag import DagModel
        from airflow.models.serialized_dag import SerializedDagModel
        from airflow.utils.session import create_session

        with create_session(scoped=False) as session:
            model = session.get(DagModel, dag_id)
            if model is None:
                return _UNKNOWN
            if model.is_paused or model.is_stale:
                return None
            dag = SerializedDagModel.get_dag(dag_id, session=session)
        return _UNKNOWN if dag is None else dag
    except Exception:  # no metadata DB here (a runbook shell, another deployment's ledger)
        log.debug("No Airflow schedule for DAG %s; using its observed cadence", dag_id, exc_info=True)
        return _UNKNOWN


def _run_dates(dag, now: dt.datetime) -> Iterator[dt.datetime]:
    """Coming run dates by the DAG's timetable (none for a paused DAG or one without a schedule);
    lazy, so a forecast reached early reads few of them. Past :data:`TIMETABLE_RUNS` runs the
    median spacing of those runs is repeated: ten years of an hourly timetable would cost the
    dashboard seconds per request."""
    if dag is None:
        return
    seen: list[dt.datetime] = []
    for info in dag.iter_dagrun_infos_between(now, now + DEFAULT_HORIZON):
        if info.run_after is not None:
            seen.append(info.run_after)
            yield info.run_after
            if len(seen) >= TIMETABLE_RUNS:
                yield from cadence(seen, seen[-1] + dt.timedelta(microseconds=1))
                return
