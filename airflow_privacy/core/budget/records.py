"""What the ledger returns: plain, JSON-able records."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_ALERT_SHARE = 0.8


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; the ledger only ever stores UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class BudgetStatus:
    """A dataset's cap and spend.

    ``spent_epsilon`` is the worst-case ε of one person of this population: the dataset's own
    events composed with those of the one partition (child dataset) the person is in,
    maximised over partitions, at the cap's δ -- what the cap bounds. ``own_epsilon`` is the
    composition of the dataset's own events alone; the two are equal for a dataset without
    partitions. ``ancestors`` are the statuses of the populations this one is a partition of,
    nearest first (filled by :meth:`PrivacyLedger.status`).
    """

    dataset: str
    cap_epsilon: float
    cap_delta: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    accountant: str
    releases: int
    parent: str | None = None
    own_epsilon: float | None = None
    alert_share: float = DEFAULT_ALERT_SHARE
    ancestors: tuple[BudgetStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ancestors"] = [a.to_dict() for a in self.ancestors]
        return d


@dataclass(frozen=True)
class Charge:
    """One recorded release; ``replayed`` is True when :meth:`charge` found it already there.

    ``alerts`` lists the ``(dataset, share)`` alert thresholds this charge crossed first (the
    charged dataset's or an ancestor's): the caller notifies them, once."""

    dataset: str
    release_id: str
    epsilon: float
    delta: float
    events: list[dict[str, Any]]
    spent_epsilon: float
    output: str | None
    status: str
    created_at: dt.datetime
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    replayed: bool = False
    output_sha256: str | None = None
    logical_date: dt.datetime | None = None
    alerts: tuple[tuple[str, float], ...] = field(default=())

    @classmethod
    def from_row(cls, row, replayed: bool = False, alerts: tuple = ()) -> Charge:
        return cls(
            dataset=row.dataset, release_id=row.release_id, epsilon=row.epsilon, delta=row.delta,
            events=json.loads(row.events), spent_epsilon=row.spent_epsilon, output=row.output,
            status=row.status, created_at=aware(row.created_at), dag_id=row.dag_id, run_id=row.run_id,
            task_id=row.task_id, map_index=row.map_index, replayed=replayed, output_sha256=row.output_sha256,
            logical_date=aware(row.logical_date), alerts=alerts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = _iso(self.created_at)
        d["logical_date"] = _iso(self.logical_date)
        d["alerts"] = [list(a) for a in self.alerts]
        return d


@dataclass(frozen=True)
class CapChange:
    """One change of a dataset's cap or parent: who, when, from what, to what and why."""

    dataset: str
    changed_at: dt.datetime
    changed_by: str | None
    old_epsilon: float | None
    old_delta: float | None
    new_epsilon: float
    new_delta: float
    old_parent: str | None
    new_parent: str | None
    reason: str

    @classmethod
    def from_row(cls, row) -> CapChange:
        return cls(dataset=row.dataset, changed_at=aware(row.changed_at), changed_by=row.changed_by,
                   old_epsilon=row.old_epsilon, old_delta=row.old_delta, new_epsilon=row.new_epsilon,
                   new_delta=row.new_delta, old_parent=row.old_parent, new_parent=row.new_parent, reason=row.reason)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changed_at"] = _iso(self.changed_at)
        return d


@dataclass(frozen=True)
class Refusal:
    """A release the cap refused: nothing was charged or released."""

    dataset: str
    release_id: str
    epsilon: float
    delta: float
    events: list[dict[str, Any]]
    reason: str
    created_at: dt.datetime
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    logical_date: dt.datetime | None = None

    @classmethod
    def from_row(cls, row) -> Refusal:
        return cls(dataset=row.dataset, release_id=row.release_id, epsilon=row.epsilon, delta=row.delta,
                   events=json.loads(row.events), reason=row.reason, created_at=aware(row.created_at),
                   dag_id=row.dag_id, run_id=row.run_id, task_id=row.task_id, map_index=row.map_index,
                   logical_date=aware(row.logical_date))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = _iso(self.created_at)
        d["logical_date"] = _iso(self.logical_date)
        return d
