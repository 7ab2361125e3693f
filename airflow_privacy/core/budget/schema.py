"""The ledger's tables and their migrations (schema v1 .. v6).

Every migration of one open runs in a single transaction (DDL is transactional in SQLite
and in Postgres), so a migration killed midway leaves the previous schema intact and the
next open applies it again: a ledger is never half-migrated.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from airflow_privacy.core.dp.accounting import outright_delta

SCHEMA_VERSION = 6

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
    # worst-case ε of one person of this population (own events + those of the partition the
    # person is in, maximised over partitions); equals the own spend when it has no partitions
    sa.Column("spent_epsilon", sa.Float, nullable=False, default=0.0),
    sa.Column("spent_delta", sa.Float, nullable=False, default=0.0),
    sa.Column("releases", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("parent", sa.String(200)),  # schema v4: this population is a partition of `parent`
    sa.Column("own_epsilon", sa.Float),  # schema v4: the composition of this dataset's own events
    sa.Column("alert_share", sa.Float),  # schema v4: notify when spent passes this share of the cap
)
# schema v5: the composition of each dataset's charges up to id `through`
# (composed.ComposedState.to_bytes; spend.state_of), so that no charge recomposes the history;
# no row: build from the events. A table of its own: the state can be megabytes, and SQLite
# rewrites a whole row on update.
composed_table = sa.Table(
    "privacy_composed", metadata,
    sa.Column("dataset", sa.String(200), sa.ForeignKey("privacy_datasets.name"), primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("through", sa.Integer, nullable=False),
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
    sa.Column("logical_date", sa.DateTime(timezone=True)),  # schema v4
    sa.UniqueConstraint("dataset", "release_id", name="uq_privacy_charge_release"),
)
# schema v6: a charge reads the dataset's charges after its stored composition
# (spend.state_of: dataset = ? AND id > through) by a range scan, not the dataset's whole history
charges_by_dataset = sa.Index("ix_privacy_charges_dataset_id", charges_table.c.dataset, charges_table.c.id)
# schema v4: who changed which cap, when, from what to what, and why.
cap_changes_table = sa.Table(
    "privacy_cap_changes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("changed_by", sa.String(250)),
    sa.Column("old_epsilon", sa.Float),
    sa.Column("old_delta", sa.Float),
    sa.Column("new_epsilon", sa.Float, nullable=False),
    sa.Column("new_delta", sa.Float, nullable=False),
    sa.Column("old_parent", sa.String(200)),
    sa.Column("new_parent", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
)
# schema v4: releases a cap refused -- nothing charged, but the attempt is on record.
refusals_table = sa.Table(
    "privacy_refusals", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("release_id", sa.String(1000), nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("map_index", sa.Integer),
    sa.Column("logical_date", sa.DateTime(timezone=True)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
# schema v4: alert thresholds already notified (once per dataset, share and cap).
alerts_table = sa.Table(
    "privacy_alerts", metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("share", sa.Float, primary_key=True),
    sa.Column("cap_epsilon", sa.Float, primary_key=True),
    sa.Column("spent_epsilon", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def _add_columns(conn: sa.Connection, table: str, columns: dict[str, str]) -> None:
    present = _columns(conn, table)
    for name, ddl in columns.items():
        if name not in present:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _v2(conn: sa.Connection) -> None:
    """v2: the SHA-256 of each release's published output (v1 created tables lack it)."""
    _add_columns(conn, "privacy_charges", {"output_sha256": "VARCHAR(64)"})


def _v3(conn: sa.Connection) -> None:
    """v3: ``spent_delta`` is the δ consumed outright by (ε, δ) events (was: sum of declared δ)."""
    names = conn.execute(sa.select(datasets_table.c.name)).scalars().all()
    for name in names:
        texts = conn.execute(sa.select(charges_table.c.events).where(charges_table.c.dataset == name)).scalars()
        events = [ev for text in texts for ev in json.loads(text)]
        conn.execute(datasets_table.update().where(datasets_table.c.name == name).values(
            spent_delta=outright_delta(events)))


def _v4(conn: sa.Connection) -> None:
    """v4: populations (``parent``), own spend, alert share, logical dates of charges, cap
    changes, refusals and alerts. A dataset without a parent keeps its figures: with no
    partitions its worst-case spend *is* its own spend."""
    _add_columns(conn, "privacy_datasets", {"parent": "VARCHAR(200)", "own_epsilon": "FLOAT",
                                            "alert_share": "FLOAT"})
    _add_columns(conn, "privacy_charges", {"logical_date": "TIMESTAMP"})
    for table in (cap_changes_table, refusals_table, alerts_table):
        table.create(conn, checkfirst=True)
    conn.execute(datasets_table.update().where(datasets_table.c.own_epsilon.is_(None))
                 .values(own_epsilon=datasets_table.c.spent_epsilon))


def _v5(conn: sa.Connection) -> None:
    """v5: each dataset's composed state, recomposed once from its events (:mod:`.composed`)."""
    from airflow_privacy.core.budget.composed import ComposedState

    composed_table.create(conn, checkfirst=True)
    rows = conn.execute(sa.select(datasets_table.c.name, datasets_table.c.accountant)).all()
    for name, accountant in rows:
        rows = conn.execute(sa.select(charges_table.c.id, charges_table.c.events)
                            .where(charges_table.c.dataset == name).order_by(charges_table.c.id)).all()
        if rows:
            state = ComposedState(accountant).add([ev for r in rows for ev in json.loads(r.events)])
            conn.execute(composed_table.delete().where(composed_table.c.dataset == name))
            conn.execute(composed_table.insert().values(dataset=name, state=state.to_bytes(), through=rows[-1].id))


def _v6(conn: sa.Connection) -> None:
    """v6: the (dataset, id) index of charges (:data:`charges_by_dataset`)."""
    charges_by_dataset.create(conn, checkfirst=True)


# v1 creates the tables from the current definitions; later steps bring tables created by an
# older package up to date and are no-ops on tables v1 has just created.
MIGRATIONS: dict[int, Any] = {1: lambda conn: metadata.create_all(conn), 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6}
MIGRATION_LOCK_KEY = 0x70726976  # "priv": the advisory lock id of ledger migrations (Postgres)


def migrate(conn: sa.Connection, after_step: Any = None) -> int:
    """Apply every missing migration in ``conn``'s transaction; returns the version before.

    ``after_step(version)`` is called after each step (the kill-midway test hooks it)."""
    from airflow_privacy.core.errors import PrivacyError

    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    current = 0
    if sa.inspect(conn).has_table("privacy_schema"):
        current = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        raise PrivacyError(f"ledger schema v{current} is newer than this package (v{SCHEMA_VERSION}); upgrade airflow-privacy")
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(schema_table.insert().values(version=version, applied_at=utcnow()))
        if after_step is not None:
            after_step(version)
    return current
