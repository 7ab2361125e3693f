"""The privacy budget ledger: every charge against every dataset, in one SQL store.

The ledger is the source of truth for privacy spend (DESIGN §4). It lives in its own
database (any SQLAlchemy URL: SQLite file embedded, Postgres distributed) so it survives
XCom clearing and resets of Airflow's metadata DB.

Guarantees
    * **Never overspent.** :meth:`PrivacyLedger.charge` composes the dataset's recorded
      mechanism events plus the new ones with the dataset's accountant (PLD by default) at
      the cap's δ and inserts the charge only if the result is within the cap -- in one
      transaction that holds the dataset's write lock (``BEGIN IMMEDIATE`` on SQLite,
      ``SELECT ... FOR UPDATE`` on Postgres), so concurrent charges serialize.
    * **Idempotent.** A charge is keyed by ``(dataset, release_id)``; charging an id again
      returns the stored charge (``replayed=True``) and spends nothing.
    * Callers charge *before* drawing noise; if the charge fails nothing may be released.
    * **One answer per charge.** Before a release is written, its SHA-256 is sealed in the
      charge (:meth:`seal_release`); a retry finding a sealed charge must return exactly that
      output (verified by the hash) and never draw fresh noise -- two independent noisy
      answers under one charge would spend the budget twice.

``spent_epsilon`` is the composed ε of every recorded event at the cap's δ: the whole
history is (spent_epsilon, cap δ)-DP. ``spent_delta`` is the part of the cap's δ that
(ε, δ) mechanisms (e.g. partition selection) consume outright -- the sum of their δ's; it
must stay below the cap's δ, and composition uses what remains. DP-SGD, Gaussian and zCDP
events carry no δ of their own and consume none outright: their δ is the cap's, at which
they are composed. (Ledgers before schema v3 summed each release's declared δ instead; v3
recomputes it.)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from airflow_privacy.core.dp.accounting import (
    ACCOUNTANTS,
    PrivacyCost,
    compose_epsilon,
    is_real_number,
    outright_delta,
    validate_events,
)
from airflow_privacy.core.dp.calibration import check_delta, check_epsilon
from airflow_privacy.core.errors import (
    BudgetExceededError,
    InvalidParameterError,
    PrivacyError,
    ReleaseConflictError,
)

SCHEMA_VERSION = 3
_TOLERANCE = 1e-9  # relative slack for float round-off in the cap comparison

metadata = sa.MetaData()
schema_table = sa.Table(
    "privacy_schema", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)
datasets_table = sa.Table(
    "privacy_datasets", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("cap_epsilon", sa.Float, nullable=False),
    sa.Column("cap_delta", sa.Float, nullable=False),
    sa.Column("accountant", sa.String(16), nullable=False),
    sa.Column("spent_epsilon", sa.Float, nullable=False, default=0.0),
    sa.Column("spent_delta", sa.Float, nullable=False, default=0.0),
    sa.Column("releases", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
charges_table = sa.Table(
    "privacy_charges", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), sa.ForeignKey("privacy_datasets.name"), nullable=False),
    sa.Column("release_id", sa.String(1000), nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
    sa.Column("spent_epsilon", sa.Float, nullable=False),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("map_index", sa.Integer),
    sa.Column("output", sa.Text),
    sa.Column("output_sha256", sa.String(64)),  # schema v2
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("dataset", "release_id", name="uq_privacy_charge_release"),
)



def _add_output_sha256(conn: sa.Connection) -> None:
    """v2: the SHA-256 of each release's published output (v1 created tables lack it)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("privacy_charges")}
    if "output_sha256" not in columns:
        conn.execute(sa.text("ALTER TABLE privacy_charges ADD COLUMN output_sha256 VARCHAR(64)"))


def _recompute_spent_delta(conn: sa.Connection) -> None:
    """v3: ``spent_delta`` is the δ consumed outright by (ε, δ) events (was: sum of declared δ)."""
    names = conn.execute(sa.select(datasets_table.c.name)).scalars().all()
    for name in names:
        texts = conn.execute(sa.select(charges_table.c.events).where(charges_table.c.dataset == name)).scalars()
        events = [ev for text in texts for ev in json.loads(text)]
        conn.execute(datasets_table.update().where(datasets_table.c.name == name).values(
            spent_delta=outright_delta(events)))


# v1 creates the tables from the current definitions; later steps bring tables created by an
# older package up to date and are no-ops on tables v1 has just created.
_MIGRATIONS: dict[int, Any] = {1: lambda conn: metadata.create_all(conn), 2: _add_output_sha256,
                               3: _recompute_spent_delta}
_MIGRATION_LOCK_KEY = 0x70726976  # "priv": the advisory lock id of ledger migrations (Postgres)


@dataclass(frozen=True)
class BudgetStatus:
    dataset: str
    cap_epsilon: float
    cap_delta: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    accountant: str
    releases: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Charge:
    """One recorded release; ``replayed`` is True when :meth:`charge` found it already there."""

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        return d


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _check_name(dataset: str) -> str:
    if not isinstance(dataset, str) or not dataset.strip() or len(dataset) > 200:
        raise InvalidParameterError("dataset", dataset, "expected a non-empty name of at most 200 characters")
    return dataset


class PrivacyLedger:
    """Persistent, atomic, idempotent privacy budget per dataset.

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

    # -- schema -----------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Create or upgrade the schema; safe when many workers open a new ledger at once.

        Postgres: a transaction-level advisory lock serializes the migrations (concurrent
        CREATE TABLE statements otherwise fail with DuplicateTable); SQLite: ``BEGIN
        IMMEDIATE``; any other database: a migration that lost such a race is retried once,
        and then finds the schema the winner created.
        """
        try:
            self._migrate_once()
        except sa.exc.DBAPIError:
            time.sleep(0.5)
            self._migrate_once()

    def _migrate_once(self) -> None:
        with self._init_lock, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            insp = sa.inspect(conn)
            current = 0
            if insp.has_table("privacy_schema"):
                current = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise PrivacyError(f"ledger schema v{current} is newer than this package (v{SCHEMA_VERSION}); upgrade airflow-privacy")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[version](conn)
                conn.execute(schema_table.insert().values(version=version, applied_at=_now()))

    # -- caps -------------------------------------------------------------------------------
    def set_budget(self, dataset: str, *, epsilon: float, delta: float = 0.0, accountant: str | None = None) -> BudgetStatus:
        """Create a dataset's cap or change it. A new cap must still cover what was spent."""
        _check_name(dataset)
        epsilon, delta = check_epsilon(epsilon, maximum=math.inf), check_delta(delta)  # a cap: no per-release maximum
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise InvalidParameterError("accountant", accountant, f"expected one of {ACCOUNTANTS}")
        with self.engine.begin() as conn:
            row = self._lock_dataset(conn, dataset)
            now = _now()
            if row is None:
                conn.execute(datasets_table.insert().values(
                    name=dataset, cap_epsilon=epsilon, cap_delta=delta, accountant=accountant or "pld",
                    spent_epsilon=0.0, spent_delta=0.0, releases=0, created_at=now, updated_at=now))
            else:
                acc = accountant or row.accountant
                events = self._events(conn, dataset)
                spent = compose_epsilon(events, delta, acc)
                if not math.isfinite(spent):
                    raise BudgetExceededError(
                        f"cannot set the cap of dataset {dataset!r} to epsilon={epsilon}, delta={delta}: delta is the "
                        f"binding constraint -- its (epsilon, delta) mechanisms already spent delta="
                        f"{outright_delta(events):.3g} outright")
                if spent > epsilon * (1 + _TOLERANCE):
                    raise BudgetExceededError(
                        f"cannot set the cap of dataset {dataset!r} to epsilon={epsilon}, delta={delta}: "
                        f"already spent epsilon={spent:.6g} at that delta")
                conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(
                    cap_epsilon=epsilon, cap_delta=delta, accountant=acc, spent_epsilon=spent, updated_at=now))
        return self.status(dataset)

    def ensure_budget(self, dataset: str, *, epsilon: float, delta: float = 0.0) -> BudgetStatus:
        """Create the cap if missing; if it exists it must equal ``(epsilon, delta)``.

        This is what a DAG may do; raising an existing cap is a deliberate runbook action
        (:meth:`set_budget`, ``airflow-privacy budget set``). Creation only ever *inserts*:
        when two first uses race with different caps, one insert wins and the other finds
        the winner's cap and refuses -- it never takes an update path that would overwrite it.

        :raises InvalidParameterError: the dataset exists with another cap.
        """
        _check_name(dataset)
        epsilon = check_epsilon(epsilon, "budget_cap epsilon", maximum=math.inf)
        delta = check_delta(delta, "budget_cap delta")
        try:
            with self.engine.begin() as conn:
                if self._lock_dataset(conn, dataset) is None:
                    now = _now()
                    conn.execute(datasets_table.insert().values(
                        name=dataset, cap_epsilon=epsilon, cap_delta=delta, accountant="pld",
                        spent_epsilon=0.0, spent_delta=0.0, releases=0, created_at=now, updated_at=now))
        except sa.exc.IntegrityError:  # created concurrently (Postgres: the primary key decides)
            pass
        current = self.status(dataset)
        if not (math.isclose(current.cap_epsilon, epsilon) and math.isclose(current.cap_delta, delta)):
            raise InvalidParameterError(
                "budget_cap", (epsilon, delta),
                f"dataset {dataset!r} already has cap epsilon={current.cap_epsilon}, delta={current.cap_delta}; "
                "change it deliberately with `airflow-privacy budget set`")
        return current

    # -- charging ---------------------------------------------------------------------------
    def charge(
        self,
        dataset: str,
        *,
        release_id: str,
        cost: PrivacyCost,
        output: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int | None = None,
    ) -> Charge:
        """Record a release's cost if it fits under the cap; idempotent on ``release_id``.

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
        :raises BudgetExceededError: the composed spend would exceed the cap -- the message
            says whether ε or δ is the binding constraint (nothing written).
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
            if not tight <= claim_eps * (1 + _TOLERANCE):
                raise InvalidParameterError(
                    "cost.epsilon", claim_eps,
                    f"the cost's {len(events)} event(s) compose to epsilon={tight:.6g} at delta={claim_delta:.3g} "
                    "(PLD); a cost may not claim less than its mechanisms spend (or pass epsilon=delta=0 to let "
                    "the ledger compute it)")
        with self.engine.begin() as conn:
            row = self._lock_dataset(conn, dataset)
            if row is None:
                raise KeyError(f"dataset {dataset!r} has no privacy budget; create one with "
                               f"`airflow-privacy budget set {dataset} --epsilon E --delta D`")
            existing = self._charge_row(conn, dataset, release_id)
            if existing is not None:
                same = validate_events(json.loads(existing.events)) == events and (
                    not stated or (math.isclose(existing.epsilon, claim_eps, rel_tol=1e-12)
                                   and math.isclose(existing.delta, claim_delta, rel_tol=1e-12)))
                if not same:
                    raise InvalidParameterError(
                        "release_id", release_id,
                        f"dataset {dataset!r} already holds this release with a different cost (epsilon="
                        f"{existing.epsilon:.6g}, delta={existing.delta:.3g}, events {existing.events}); a retry "
                        "must replay the same cost -- a different release needs a new release_id")
                return self._to_charge(existing, replayed=True)
            # Runbooks and alerts match the message's start: "privacy budget of dataset 'x' exceeded".
            where = f"privacy budget of dataset {dataset!r} exceeded (cap epsilon={row.cap_epsilon:.6g}, " \
                    f"delta={row.cap_delta:.3g}, {row.accountant})"
            if claim_delta > row.cap_delta * (1 + _TOLERANCE):
                raise BudgetExceededError(
                    f"{where}: delta is the binding constraint -- this release needs delta={claim_delta:.3g}, "
                    f"more than the cap delta={row.cap_delta:.3g} allows; nothing was released")
            history = self._events(conn, dataset) + events
            spent = compose_epsilon(history, row.cap_delta, row.accountant)
            outright = outright_delta(history)
            if not math.isfinite(spent):
                raise BudgetExceededError(
                    f"{where}: delta is the binding constraint -- with this release the (epsilon, delta) "
                    f"mechanisms of the dataset spend delta={outright:.3g} outright, which leaves no room for "
                    f"composition within the cap delta={row.cap_delta:.3g}; nothing was released")
            if spent > row.cap_epsilon * (1 + _TOLERANCE):
                remaining = max(row.cap_epsilon - row.spent_epsilon, 0.0)
                needs = claim_eps if stated else compose_epsilon(events, row.cap_delta, row.accountant)
                raise BudgetExceededError(
                    f"{where}: this release needs epsilon={needs:.6g} (delta={claim_delta:.3g}) but only "
                    f"{remaining:.6g} of the cap epsilon={row.cap_epsilon:.6g} (delta={row.cap_delta:.3g}, "
                    f"{row.accountant}) remains; nothing was released")
            if not stated:
                claim_eps, claim_delta = compose_epsilon(events, row.cap_delta, row.accountant), row.cap_delta
            now = _now()
            conn.execute(charges_table.insert().values(
                dataset=dataset, release_id=release_id, epsilon=claim_eps, delta=claim_delta,
                events=json.dumps(events), spent_epsilon=spent, dag_id=dag_id, run_id=run_id,
                task_id=task_id, map_index=map_index, output=output, status="charged", created_at=now))
            conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(
                spent_epsilon=spent, spent_delta=outright, releases=row.releases + 1, updated_at=now))
            return self._to_charge(self._charge_row(conn, dataset, release_id), replayed=False)

    def seal_release(self, dataset: str, release_id: str, *, output: str, sha256: str) -> None:
        """Fix a charged release's answer before it is written: where it goes and its SHA-256.

        From here on the release's answer is this output and no other: a retry must return
        it (:meth:`get_release` gives the hash to verify it against) and must not draw new
        noise, even if the file is missing -- it may have been published and then lost.
        Sealing twice with a different hash is refused.

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
            row = self._charge_row(conn, dataset, release_id)
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
        """Cap, spend and remaining ε of ``dataset`` (``KeyError`` if it has no cap)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(datasets_table).where(datasets_table.c.name == dataset)).first()
        if row is None:
            raise KeyError(f"dataset {dataset!r} has no privacy budget")
        return BudgetStatus(
            dataset=row.name, cap_epsilon=row.cap_epsilon, cap_delta=row.cap_delta,
            spent_epsilon=row.spent_epsilon, spent_delta=row.spent_delta,
            remaining_epsilon=max(row.cap_epsilon - row.spent_epsilon, 0.0),
            accountant=row.accountant, releases=row.releases)

    def datasets(self) -> list[BudgetStatus]:
        with self.engine.connect() as conn:
            names = conn.execute(sa.select(datasets_table.c.name).order_by(datasets_table.c.name)).scalars().all()
        return [self.status(n) for n in names]

    def history(self, dataset: str) -> list[Charge]:
        """The charges of ``dataset``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(charges_table).where(charges_table.c.dataset == dataset)
                                .order_by(charges_table.c.id)).all()
        return [self._to_charge(r) for r in rows]

    def get_release(self, dataset: str, release_id: str) -> Charge | None:
        with self.engine.connect() as conn:
            row = self._charge_row(conn, dataset, release_id)
        return None if row is None else self._to_charge(row)

    # -- internals --------------------------------------------------------------------------
    def _lock_dataset(self, conn: sa.Connection, dataset: str):
        query = sa.select(datasets_table).where(datasets_table.c.name == dataset)
        if not self._sqlite:  # SQLite already holds the database write lock (BEGIN IMMEDIATE)
            query = query.with_for_update()
        return conn.execute(query).first()

    @staticmethod
    def _charge_row(conn: sa.Connection, dataset: str, release_id: str):
        return conn.execute(sa.select(charges_table).where(
            (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id))).first()

    @staticmethod
    def _events(conn: sa.Connection, dataset: str) -> list[dict[str, Any]]:
        rows = conn.execute(sa.select(charges_table.c.events).where(charges_table.c.dataset == dataset)).scalars()
        return [ev for text in rows for ev in json.loads(text)]

    @staticmethod
    def _to_charge(row, replayed: bool = False) -> Charge:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=dt.timezone.utc)
        return Charge(
            dataset=row.dataset, release_id=row.release_id, epsilon=row.epsilon, delta=row.delta,
            events=json.loads(row.events), spent_epsilon=row.spent_epsilon, output=row.output,
            status=row.status, created_at=created, dag_id=row.dag_id, run_id=row.run_id,
            task_id=row.task_id, map_index=row.map_index, replayed=replayed, output_sha256=row.output_sha256)
