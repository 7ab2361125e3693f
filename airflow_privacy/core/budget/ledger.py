"""The privacy budget ledger: every charge against every dataset, in one SQL store.

The ledger is the source of truth for privacy spend (DESIGN §4). It lives in its own
database (any SQLAlchemy URL: SQLite file embedded, Postgres distributed) so it survives
XCom clearing and resets of Airflow's metadata DB.

Guarantees
    * **Never overspent, at any level.** A dataset may be a partition of a parent population
      (:mod:`.populations`). :meth:`PrivacyLedger.charge` composes, for the charged dataset
      and for every ancestor, one person's worst-case history plus the new events with the
      tree's accountant (PLD by default) at that node's δ, and inserts the charge only if
      every one fits its cap -- in one transaction that holds the tree's lock (``BEGIN
      IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` of the tree's root on Postgres), so
      concurrent charges anywhere in one tree serialize.
    * **Idempotent.** A charge is keyed by ``(dataset, release_id)``; charging an id again
      returns the stored charge (``replayed=True``) and spends nothing.
    * Callers charge *before* drawing noise; if the charge fails nothing may be released.
      A refused charge leaves a ``refused`` record (:meth:`refusals`) and spends nothing.
    * **One answer per charge.** Before a release is written, its SHA-256 is sealed in the
      charge (:meth:`seal_release`, a conditional update); a retry finding a sealed charge
      must return exactly that output and never draw fresh noise.
    * **Governed caps.** Every cap or parent change is recorded with who, when, the old and
      new values and a reason (:meth:`cap_changes`); creating a cap only inserts.

``spent_epsilon`` is the worst-case composed ε of one person of the dataset's population at
the cap's δ (equal to the dataset's own spend when it has no partitions). ``spent_delta`` is
the part of the cap's δ that (ε, δ) mechanisms (e.g. partition selection) consume outright
on that worst path -- the sum of their δ's; composition uses what remains.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from typing import Any

import sqlalchemy as sa

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
    TOLERANCE,
    charge_row,
    dataset_row,
    events_of,
    exceeded,
    read_forest,
    record_alerts,
    refresh,
    status_of,
)
from airflow_privacy.core.dp.accounting import (
    ACCOUNTANTS,
    PrivacyCost,
    compose_epsilon,
    is_real_number,
    unlabelled,
    validate_events,
)
from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.errors import (
    BudgetExceededError,
    InvalidParameterError,
    ReleaseConflictError,
)

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


def _check_name(dataset: str, name: str = "dataset") -> str:
    if not isinstance(dataset, str) or not dataset.strip() or len(dataset) > 200:
        raise InvalidParameterError(name, dataset, "expected a non-empty name of at most 200 characters")
    return dataset


def _with_ancestors(rows: dict[str, Any], dataset: str) -> BudgetStatus:
    """``dataset``'s status with those of the populations it is a partition of, nearest first."""
    chain, seen = [dataset], {dataset}
    while rows[chain[-1]].parent in rows and rows[chain[-1]].parent not in seen:
        chain.append(rows[chain[-1]].parent)
        seen.add(chain[-1])
    statuses = [status_of(rows[name]) for name in chain]
    return BudgetStatus(**{**statuses[0].__dict__, "ancestors": tuple(statuses[1:])})


class PrivacyLedger:
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

    # -- charging ---------------------------------------------------------------------------
    def charge(self, dataset: str, *, release_id: str, cost: PrivacyCost, output: str | None = None,
               dag_id: str | None = None, run_id: str | None = None, task_id: str | None = None,
               map_index: int | None = None, logical_date: Any = None) -> Charge:
        """Record a release's cost if it fits under its dataset's cap and every ancestor's cap;
        idempotent on ``release_id``.

        The spend is computed from ``cost.events`` -- the mechanisms that actually run --
        never from the claimed ``cost.epsilon``, so the events must be present and valid.
        The claim ``(cost.epsilon, cost.delta)`` must not understate them: the events must
        compose (PLD, the tightest accountant) to at most ``cost.epsilon`` at ``cost.delta``,
        and ``cost.delta`` may not exceed the cap's δ. A cost of ``epsilon = delta = 0``
        states no claim; the charge then records the events' own ε at the cap's δ (under the
        dataset's accountant) and the cap's δ.

        Charging a ``release_id`` again with the same cost returns the stored charge
        (``replayed=True``) and spends nothing; with a different cost it is refused.

        :raises InvalidParameterError: malformed or empty events, a claim below what the
            events compose to, or a replay of ``release_id`` with a different cost.
        :raises BudgetExceededError: the composed spend would exceed the cap of the dataset or
            of an ancestor population (named in the message); a refusal is recorded, nothing
            is charged.
        :raises KeyError: the dataset has no cap.
        """
        _check_name(dataset)
        if not isinstance(release_id, str) or not release_id:
            raise InvalidParameterError("release_id", release_id, "expected a non-empty string")
        if not isinstance(cost, PrivacyCost):
            raise InvalidParameterError("cost", type(cost).__name__, "expected a PrivacyCost")
        events = validate_events(cost.events)
        claim_eps, claim_delta = cost.epsilon, cost.delta
        if not is_real_number(claim_eps) or not math.isfinite(claim_eps) or claim_eps < 0:
            raise InvalidParameterError("cost.epsilon", claim_eps, "expected a finite number >= 0")
        if not is_real_number(claim_delta) or not 0 <= claim_delta < 1:
            raise InvalidParameterError("cost.delta", claim_delta, "expected a number in [0, 1)")
        claim_eps, claim_delta = float(claim_eps), float(claim_delta)
        stated = claim_eps > 0 or claim_delta > 0
        if stated:
            tight = compose_epsilon(events, claim_delta, "pld")
            if not tight <= claim_eps * (1 + TOLERANCE):
                raise InvalidParameterError(
                    "cost.epsilon", claim_eps,
                    f"the cost's {len(events)} event(s) compose to epsilon={tight:.6g} at delta={claim_delta:.3g} "
                    "(PLD); a cost may not claim less than its mechanisms spend (or pass epsilon=delta=0 to let "
                    "the ledger compute it)")
        if logical_date is not None and not isinstance(logical_date, dt.datetime):
            raise InvalidParameterError("logical_date", logical_date, "expected a datetime or None")
        who = dict(release_id=release_id, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                   logical_date=logical_date)
        refused = None
        with self.engine.begin() as conn:
            forest = self._lock(conn, dataset)
            if dataset not in forest.nodes:
                raise KeyError(f"dataset {dataset!r} has no privacy budget; create one with "
                               f"`airflow-privacy budget set {dataset} --epsilon E --delta D`")
            node = forest.nodes[dataset]
            existing = charge_row(conn, dataset, release_id)
            if existing is not None:
                same = unlabelled(validate_events(json.loads(existing.events))) == unlabelled(events) and (
                    not stated or (math.isclose(existing.epsilon, claim_eps, rel_tol=1e-12)
                                   and math.isclose(existing.delta, claim_delta, rel_tol=1e-12)))
                if not same:
                    raise InvalidParameterError(
                        "release_id", release_id,
                        f"dataset {dataset!r} already holds this release with a different cost (epsilon="
                        f"{existing.epsilon:.6g}, delta={existing.delta:.3g}, events {existing.events}); a retry "
                        "must replay the same cost -- a different release needs a new release_id")
                return Charge.from_row(existing, replayed=True)
            if not stated:
                claim_eps, claim_delta = compose_epsilon(events, node.cap_delta, node.accountant), node.cap_delta
            if claim_delta > node.cap_delta * (1 + TOLERANCE):
                refused = (dataset, f"{exceeded(node, dataset)}: delta is the binding constraint -- this "
                           f"release needs delta={claim_delta:.3g}, more than the cap delta={node.cap_delta:.3g} "
                           "allows; nothing was released")
            else:
                refused = refresh(conn, forest, [dataset, *forest.ancestors(dataset)], extra=(dataset, events),
                                        needs=(claim_eps, claim_delta), check="all")
            if refused is not None:
                conn.execute(refusals_table.insert().values(
                    dataset=dataset, epsilon=claim_eps, delta=claim_delta, events=json.dumps(events),
                    reason=refused[1], created_at=utcnow(), **who))
            else:
                conn.execute(charges_table.insert().values(
                    dataset=dataset, epsilon=claim_eps, delta=claim_delta, events=json.dumps(events),
                    spent_epsilon=dataset_row(conn, dataset).spent_epsilon, output=output, status="charged",
                    created_at=utcnow(), **who))
                conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(
                    releases=datasets_table.c.releases + 1))
                alerts = record_alerts(conn, [dataset, *forest.ancestors(dataset)])
                return Charge.from_row(charge_row(conn, dataset, release_id), alerts=alerts)
        raise BudgetExceededError(refused[1])

    def seal_release(self, dataset: str, release_id: str, *, output: str, sha256: str) -> None:
        """Fix a charged release's answer before it is written: where it goes and its SHA-256.

        From here on the release's answer is this output and no other: a retry must return
        it (:meth:`get_release` gives the hash to verify it against) and must not draw new
        noise, even if the file is missing -- it may have been published and then lost.

        Sealing is a single conditional update (``WHERE output_sha256 IS NULL``) checked by
        its row count, so of two live tries of one task (a retry started while the first
        worker still runs) exactly one seals; the other gets :class:`ReleaseConflictError`
        and must publish nothing. Sealing again with the same hash is a no-op.

        :raises KeyError: no such charge.
        :raises InvalidParameterError: ``sha256`` is not 64 hex digits.
        :raises ReleaseConflictError: the charge is already sealed with a different hash.
        """
        if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidParameterError("sha256", sha256, "expected 64 lowercase hex digits")
        this = (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id)
        with self.engine.begin() as conn:
            # A conditional update, checked by its row count -- not read-then-write: under READ
            # COMMITTED two tries could both read NULL and the second would overwrite the first's
            # hash (two answers under one charge). Postgres re-evaluates the WHERE clause on the
            # row version the first committer left, so exactly one conditional update matches.
            sealed = conn.execute(charges_table.update().where(this & charges_table.c.output_sha256.is_(None))
                                  .values(output=output, output_sha256=sha256)).rowcount
            if sealed == 1:
                return
            row = charge_row(conn, dataset, release_id)
        if row is None:
            raise KeyError(f"dataset {dataset!r} has no charge {release_id!r} to seal")
        if row.output_sha256 != sha256:
            raise ReleaseConflictError(
                f"release {release_id!r} of dataset {dataset!r} is already sealed with another answer (sha256 "
                f"{row.output_sha256}, output {row.output}); one charge has one answer -- this try publishes nothing")

    def mark_released(self, dataset: str, release_id: str, output: str | None = None) -> None:
        """Record that a charged release was published (and where)."""
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"status": "released"}
            if output is not None:
                values["output"] = output
            conn.execute(charges_table.update().where(
                (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id)).values(**values))

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
