"""The privacy budget ledger: every charge against every dataset, in one SQL store.

The ledger is the source of truth for privacy spend (DESIGN §4). It lives in its own
database (any SQLAlchemy URL: SQLite file embedded, Postgres distributed) so it survives
XCom clearing and resets of Airflow's metadata DB.

Guarantees
    * **Never overspent, idempotent, one answer per charge**: see :mod:`.charging`, which
      holds :meth:`PrivacyLedger.charge`, :meth:`~PrivacyLedger.seal_release` and
      :meth:`~PrivacyLedger.mark_released` and states these guarantees.
    * **Governed caps.** Every cap or parent change is recorded with who, when, the old and
      new values and a reason (:meth:`cap_changes`); creating a cap only inserts.

``spent_epsilon`` is the worst-case composed ε of one person of the dataset's population at
the cap's δ (equal to the dataset's own spend when it has no partitions). ``spent_delta`` is
the part of the cap's δ that (ε, δ) mechanisms (e.g. partition selection) consume outright
on that worst path -- the sum of their δ's; composition uses what remains.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import sqlalchemy as sa

from airflow_privacy.core.budget.charging import _check_name, _LedgerCharging
from airflow_privacy.core.budget.populations import Forest
from airflow_privacy.core.budget.records import (
    BudgetStatus,
    CapChange,
    Charge,
    Refusal,
)
from airflow_privacy.core.budget.schema import (
    SCHEMA_VERSION,
    cap_changes_table,
    charges_table,
    datasets_table,
    migrate,
    refusals_table,
    utcnow,
)
from airflow_privacy.core.budget.spend import (
    charge_row,
    dataset_row,
    events_of,
    read_forest,
    refresh,
    status_of,
)
from airflow_privacy.core.dp.accounting import ACCOUNTANTS, is_real_number
from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["SCHEMA_VERSION", "BudgetStatus", "CapChange", "Charge", "PrivacyLedger", "Refusal"]

_KEEP: Any = object()
MAX_CAP_DELTA = 1e-3
"""The largest δ a cap may have: δ near 1/n lets a mechanism publish whole records (Dwork &
Roth 2014, §2.3); caps of real deployments are orders of magnitude below this."""


def _check_alert_share(share: Any) -> None:
    if share is not None and (not is_real_number(share) or not 0 < share <= 1):
        raise InvalidParameterError("alert_share", share, "expected a share of the cap in (0, 1]")


def _check_cap_delta(delta: Any, name: str) -> float:
    delta = check_delta(delta, name)
    if delta > MAX_CAP_DELTA:
        raise InvalidParameterError(name, delta, f"a cap's delta must be at most {MAX_CAP_DELTA:g}")
    return delta  # set_budget(parent=...) not given: keep the current parent



def _with_ancestors(rows: dict[str, Any], dataset: str) -> BudgetStatus:
    """``dataset``'s status with those of the populations it is a partition of, nearest first."""
    chain, seen = [dataset], {dataset}
    while rows[chain[-1]].parent in rows and rows[chain[-1]].parent not in seen:
        chain.append(rows[chain[-1]].parent)
        seen.add(chain[-1])
    statuses = [status_of(rows[name]) for name in chain]
    return BudgetStatus(**{**statuses[0].__dict__, "ancestors": tuple(statuses[1:])})


class PrivacyLedger(_LedgerCharging):
    """Persistent, atomic, idempotent privacy budget per dataset and population tree.

    :param url: SQLAlchemy URL, e.g. ``sqlite:////path/budget.db`` or
        ``postgresql+psycopg2://user:pw@host/privacy``.
    """

    _init_lock = threading.Lock()

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InvalidParameterError("url", url, "expected a SQLAlchemy URL such as sqlite:///budget.db")
        self.url = url
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            engine_kwargs.setdefault("connect_args", {"timeout": 60})
        self.engine = sa.create_engine(url, **engine_kwargs)
        if self._sqlite:
            # pysqlite's implicit BEGIN is DEFERRED; take the write lock at BEGIN instead so a
            # read-compose-insert sequence cannot interleave with another writer.
            @sa.event.listens_for(self.engine, "connect")
            def _no_implicit_begin(dbapi_conn, _record):
                dbapi_conn.isolation_level = None

            @sa.event.listens_for(self.engine, "begin")
            def _begin_immediate(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        self._migrate()

    def __repr__(self) -> str:
        return f"PrivacyLedger({self.engine.url.render_as_string(hide_password=True)!r})"

    def _migrate(self) -> None:
        """Create or upgrade the schema (:mod:`.schema`) in one transaction; safe when many
        workers open a new ledger at once (Postgres: an advisory lock; SQLite: ``BEGIN
        IMMEDIATE``; elsewhere the loser of a race retries once and finds the schema)."""
        try:
            with self._init_lock, self.engine.begin() as conn:
                migrate(conn)
        except sa.exc.DBAPIError:
            time.sleep(0.5)
            with self._init_lock, self.engine.begin() as conn:
                migrate(conn)

    # -- caps -------------------------------------------------------------------------------
    def set_budget(self, dataset: str, *, epsilon: float, delta: float | None = None, accountant: str | None = None,
                   parent: str | None = _KEEP, reason: str | None = None, changed_by: str | None = None,
                   alert_share: float | None = None) -> BudgetStatus:
        """Create a dataset's cap or change it (a deliberate, recorded act).

        :param delta: the δ cap; ``None`` keeps the current one (0 for a new dataset).
        :param accountant: ``None`` keeps the current one (a new dataset: its parent's, or ``pld``).
        :param parent: declare the dataset a partition of ``parent`` (its siblings are disjoint
            from it); ``None`` detaches it; not given keeps the current parent.
        :param reason: why -- required to change an existing dataset; recorded with ``changed_by``.
        :param alert_share: notify when the spend passes this share of the cap (default 0.8).
        :raises InvalidParameterError: a bad value, a missing parent, a cycle, an accountant or
            δ cap that conflicts with the parent's or a partition's, or no reason for a change.
        :raises BudgetExceededError: the new cap (or the parent's, with this dataset's history
            added to it) would not cover what was already spent.
        """
        _check_name(dataset)
        epsilon = check_epsilon(epsilon, maximum=math.inf)  # a cap: no per-release maximum
        if delta is not None:
            delta = _check_cap_delta(delta, "delta")
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise InvalidParameterError("accountant", accountant, f"expected one of {ACCOUNTANTS}")
        if parent is not _KEEP and parent is not None:
            _check_name(parent, "parent")
        _check_alert_share(alert_share)
        with self.engine.begin() as conn:
            forest = self._lock(conn, dataset, parent if parent is not _KEEP else None)
            row = forest.nodes.get(dataset)
            old = dataset_row(conn, dataset) if row else None
            if row is not None and (not isinstance(reason, str) or not reason.strip()):
                raise InvalidParameterError("reason", reason, f"changing the cap of {dataset!r} needs a reason "
                                            "(recorded with who and when; `budget set ... --reason`)")
            new_parent = (row.parent if row else None) if parent is _KEEP else parent
            if delta is None:
                delta = row.cap_delta if row else 0.0
            if accountant is None:
                accountant = row.accountant if row else (forest.nodes[new_parent].accountant
                                                         if new_parent in forest.nodes else "pld")
            if new_parent is not None:
                forest.check_parent(dataset, new_parent, accountant, delta)
            forest.check_children(dataset, accountant, delta)
            now = utcnow()
            share = alert_share if alert_share is not None else (old.alert_share if old is not None else None)
            values = dict(cap_epsilon=epsilon, cap_delta=delta, accountant=accountant, parent=new_parent,
                          alert_share=share, updated_at=now)
            if row is None:
                conn.execute(datasets_table.insert().values(name=dataset, spent_epsilon=0.0, spent_delta=0.0,
                                                            own_epsilon=0.0, releases=0, created_at=now, **values))
            else:
                conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(**values))
            forest = read_forest(conn)  # the changed tree
            touched = [dataset, *forest.ancestors(dataset)]
            if row is not None and row.parent not in (None, new_parent) and row.parent in forest.nodes:
                touched += [row.parent, *forest.ancestors(row.parent)]  # the old tree loses a partition
            refresh(conn, forest, touched, check=[dataset, *forest.ancestors(dataset)])
            conn.execute(cap_changes_table.insert().values(
                dataset=dataset, changed_at=now, changed_by=changed_by, old_epsilon=row.cap_epsilon if row else None,
                old_delta=row.cap_delta if row else None, new_epsilon=epsilon, new_delta=delta,
                old_parent=row.parent if row else None, new_parent=new_parent,
                reason=reason.strip() if isinstance(reason, str) and reason.strip() else "created"))
        return self.status(dataset)

    def ensure_budget(self, dataset: str, *, epsilon: float, delta: float = 0.0, parent: str | None = None,
                      param: str = "budget_cap", changed_by: str | None = None,
                      alert_share: float | None = None) -> BudgetStatus:
        """Create the cap if missing; if it exists it must equal ``(epsilon, delta)`` and ``parent``.

        This is what a DAG may do; changing an existing cap is a deliberate runbook action
        (:meth:`set_budget`, ``airflow-privacy budget set``). Creation only ever *inserts*:
        when two first uses race with different caps, one insert wins and the other finds
        the winner's cap and refuses -- it never takes an update path that would overwrite it.

        :param param: the DAG parameter holding the cap, named in the mismatch message.
        :param alert_share: the alert share given to a dataset this call creates (an existing
            dataset keeps its own; change it with :meth:`set_budget`).
        :raises InvalidParameterError: the dataset exists with another cap or parent (the
            message says which DAG parameter to update, and to what), or the parent is missing.
        """
        _check_name(dataset)
        epsilon = check_epsilon(epsilon, f"{param} epsilon", maximum=math.inf)
        delta = _check_cap_delta(delta, f"{param} delta")
        _check_alert_share(alert_share)
        if parent is not None:
            _check_name(parent, "parent")
        try:
            with self.engine.begin() as conn:
                forest = self._lock(conn, dataset, parent)
                if dataset not in forest.nodes:
                    accountant = forest.nodes[parent].accountant if parent in forest.nodes else "pld"
                    if parent is not None:
                        forest.check_parent(dataset, parent, accountant, delta)
                    now = utcnow()
                    conn.execute(datasets_table.insert().values(
                        name=dataset, cap_epsilon=epsilon, cap_delta=delta, accountant=accountant, parent=parent,
                        spent_epsilon=0.0, spent_delta=0.0, own_epsilon=0.0, releases=0, created_at=now,
                        updated_at=now, alert_share=alert_share))
                    conn.execute(cap_changes_table.insert().values(
                        dataset=dataset, changed_at=now, changed_by=changed_by, new_epsilon=epsilon,
                        new_delta=delta, new_parent=parent, reason=f"created by {param}"))
        except sa.exc.IntegrityError:  # created concurrently (Postgres: the primary key decides)
            pass
        current = self.status(dataset)
        if not (math.isclose(current.cap_epsilon, epsilon) and math.isclose(current.cap_delta, delta)):
            last = self.cap_changes(dataset)[-1]
            raise InvalidParameterError(
                param, (epsilon, delta),
                f"dataset {dataset!r} has cap epsilon={current.cap_epsilon:g}, delta={current.cap_delta:g} (set "
                f"{last.changed_at:%Y-%m-%d %H:%M} UTC by {last.changed_by or 'unknown'}: {last.reason}); update "
                f"the DAG's {param} to ({current.cap_epsilon!r}, {current.cap_delta!r})")
        if parent is not None and current.parent != parent:
            raise InvalidParameterError(
                "parent", parent, f"dataset {dataset!r} is a partition of {current.parent!r}, not {parent!r}; "
                f"update the DAG's parent to {current.parent!r} or re-parent it with `airflow-privacy budget set`")
        return current

    # -- reading ----------------------------------------------------------------------------
    def status(self, dataset: str) -> BudgetStatus:
        """Cap, spend and remaining ε of ``dataset``, with its ancestors' (``KeyError`` if none)."""
        rows = self._dataset_rows()
        if dataset not in rows:
            raise KeyError(f"dataset {dataset!r} has no privacy budget")
        return _with_ancestors(rows, dataset)

    def datasets(self) -> list[BudgetStatus]:
        """Every dataset's status, by name -- from one read of the datasets table."""
        rows = self._dataset_rows()
        return [_with_ancestors(rows, name) for name in sorted(rows)]

    def _dataset_rows(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {r.name: r for r in conn.execute(sa.select(datasets_table)).all()}

    def history(self, dataset: str) -> list[Charge]:
        """The charges of ``dataset``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(charges_table).where(charges_table.c.dataset == dataset)
                                .order_by(charges_table.c.id)).all()
        return [Charge.from_row(r) for r in rows]

    def cap_changes(self, dataset: str) -> list[CapChange]:
        """Every creation and change of ``dataset``'s cap or parent, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cap_changes_table).where(cap_changes_table.c.dataset == dataset)
                                .order_by(cap_changes_table.c.id)).all()
        return [CapChange.from_row(r) for r in rows]

    def refusals(self, dataset: str) -> list[Refusal]:
        """Releases the caps refused (nothing charged), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(refusals_table).where(refusals_table.c.dataset == dataset)
                                .order_by(refusals_table.c.id)).all()
        return [Refusal.from_row(r) for r in rows]

    def get_release(self, dataset: str, release_id: str) -> Charge | None:
        with self.engine.connect() as conn:
            row = charge_row(conn, dataset, release_id)
        return None if row is None else Charge.from_row(row)

    def verify(self) -> list[tuple[str, float, float]]:
        """Recompose every dataset's worst case from its events: ``(dataset, stored, recomposed)``."""
        with self.engine.connect() as conn:
            forest = read_forest(conn)
            events = {name: events_of(conn, name) for name in forest.nodes}
            stored = {r.name: r.spent_epsilon for r in conn.execute(sa.select(datasets_table)).all()}
        return [(name, stored[name], forest.worst_case(name, events)[0]) for name in sorted(forest.nodes)]

    # -- internals --------------------------------------------------------------------------
    def _lock(self, conn: sa.Connection, dataset: str, other: str | None = None) -> Forest:
        """Serialize with every writer of the trees of ``dataset`` (and ``other``): SQLite holds
        the database's write lock already (BEGIN IMMEDIATE); Postgres locks the trees' root rows
        in name order, then re-reads the forest -- if a concurrent re-parenting moved a root
        meanwhile, it locks again."""
        forest = read_forest(conn)
        if self._sqlite:
            return forest
        locked: set[str] = set()
        while True:
            roots = sorted({forest.root(n) for n in (dataset, other) if n is not None and n in forest.nodes} - locked)
            if not roots:
                return forest
            for root in roots:
                conn.execute(sa.select(datasets_table.c.name).where(datasets_table.c.name == root).with_for_update())
                locked.add(root)
            forest = read_forest(conn)
