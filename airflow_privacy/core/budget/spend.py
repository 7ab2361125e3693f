"""Composing and storing the spend of a population tree, inside the ledger's transaction.

:func:`refresh` composes one person's worst case (:meth:`.populations.Forest.worst_case_of_states`)
for the datasets a charge or a cap change touches from each dataset's stored composition
(:mod:`.composed`, updated with the charge in the same transaction: no history is
recomposed), checks their caps and stores the result;
:func:`record_alerts` notes the alert thresholds a charge crossed first.
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa

from airflow_privacy.core.budget.composed import ComposedState
from airflow_privacy.core.budget.populations import Forest, Node, within
from airflow_privacy.core.budget.records import DEFAULT_ALERT_SHARE, BudgetStatus
from airflow_privacy.core.budget.schema import (
    alerts_table,
    charges_table,
    composed_table,
    datasets_table,
    utcnow,
)
from airflow_privacy.core.dp.accounting import compose_epsilon
from airflow_privacy.core.errors import BudgetExceededError

TOLERANCE = 1e-9  # relative slack for float round-off in the cap comparison
CHECKPOINT = 4  # releases folded into a dataset's stored state at once (see state_of)


def refresh(conn, forest: Forest, names: list[str], *, check: Any = (), extra: tuple | None = None,
             needs: tuple[float, float] | None = None) -> tuple[str, str] | None:
    """Compose the worst case of ``names`` from the stored states (with ``extra = (dataset, events)`` added) and
    store it; returns ``(dataset, message)`` for the first checked node over its cap (then
    nothing is stored), or raises :class:`BudgetExceededError` from a cap change."""
    names = list(dict.fromkeys(names))
    states = {n: state_of(conn, n, forest.nodes[n].accountant, extra[1] if extra is not None and extra[0] == n else [])
              for n in {m for name in names for m in forest.subtree(name)}}
    loaded: dict[str, list[dict[str, Any]]] = {}

    def events(name: str) -> list[dict[str, Any]]:  # only for paths holding zCDP-type events
        if name not in loaded:
            loaded[name] = events_of(conn, name) + (extra[1] if extra is not None and extra[0] == name else [])
        return loaded[name]

    worst = {name: forest.worst_case_of_states(name, states, events) for name in names}
    for name in (names if check == "all" else check):
        node, (eps, outright) = forest.nodes[name], worst[name]
        if within(eps, node.cap_epsilon, TOLERANCE):
            continue
        whose = "" if extra is None or name == extra[0] else f" -- {extra[0]!r} is a partition of it"
        if not math.isfinite(eps):
            why = (f"delta is the binding constraint -- the (epsilon, delta) mechanisms spend delta="
                   f"{outright:.3g} outright on one person's worst path, which leaves no room for composition "
                   f"within the cap delta={node.cap_delta:.3g}")
        else:
            why = f"one person's worst-case epsilon would be {eps:.6g} at delta={node.cap_delta:.3g}"
            if needs is not None:
                why = (f"this release needs epsilon={needs[0]:.6g} (delta={needs[1]:.3g}) but only "
                       f"{max(node.cap_epsilon - dataset_row(conn, name).spent_epsilon, 0):.6g} of the cap "
                       f"remains; {why}")
        message = f"{exceeded(node, name)}{whose}: {why}; nothing was released"
        if extra is None:
            raise BudgetExceededError(message.replace("nothing was released", "the cap was not changed"))
        return name, message
    for name in names:
        delta, accountant = forest.nodes[name].cap_delta, forest.nodes[name].accountant
        own = (worst[name][0] if not forest.children[name]
               else compose_epsilon(events(name), delta, accountant) if states[name].fallback
               else states[name].epsilon(delta))
        conn.execute(datasets_table.update().where(datasets_table.c.name == name).values(
            spent_epsilon=worst[name][0], spent_delta=worst[name][1], own_epsilon=own, updated_at=utcnow()))
    return None

def exceeded(node: Node, name: str) -> str:
    # Runbooks and alerts match the message's start: "privacy budget of dataset 'x' exceeded".
    return (f"privacy budget of dataset {name!r} exceeded (cap epsilon={node.cap_epsilon:.6g}, "
            f"delta={node.cap_delta:.3g}, {node.accountant})")

def record_alerts(conn, names: list[str]) -> tuple[tuple[str, float], ...]:
    """Alert thresholds first crossed now (recorded, so each is notified once per cap)."""
    crossed = []
    for name in names:
        row = dataset_row(conn, name)
        share = row.alert_share if row.alert_share is not None else DEFAULT_ALERT_SHARE
        if row.spent_epsilon < share * row.cap_epsilon:
            continue
        done = conn.execute(sa.select(alerts_table.c.dataset).where(
            (alerts_table.c.dataset == name) & (alerts_table.c.share == share)
            & (alerts_table.c.cap_epsilon == row.cap_epsilon))).first()
        if done is None:
            conn.execute(alerts_table.insert().values(dataset=name, share=share, cap_epsilon=row.cap_epsilon,
                                                      spent_epsilon=row.spent_epsilon, created_at=utcnow()))
            crossed.append((name, share))
    return tuple(crossed)

def read_forest(conn: sa.Connection) -> Forest:
    rows = conn.execute(sa.select(datasets_table.c.name, datasets_table.c.parent, datasets_table.c.cap_epsilon,
                                  datasets_table.c.cap_delta, datasets_table.c.accountant)).all()
    return Forest(Node(r.name, r.parent, r.cap_epsilon, r.cap_delta, r.accountant) for r in rows)

def dataset_row(conn: sa.Connection, dataset: str):
    return conn.execute(sa.select(datasets_table).where(datasets_table.c.name == dataset)).first()


def state_of(conn: sa.Connection, dataset: str, accountant: str, extra: list[dict[str, Any]]) -> ComposedState:
    """The composition of ``dataset``'s own events followed by ``extra``.

    The ledger stores a checkpoint: the composition of the dataset's charges up to the
    charge id ``through``. The releases charged since (fewer than :data:`CHECKPOINT`) and
    ``extra`` are composed among themselves (small PLDs) and kept beside the checkpoint as a
    second factor: the ε of the two is read without convolving them
    (:func:`~airflow_privacy.core.dp.pld_product.epsilon_of_composition`). When
    :data:`CHECKPOINT` releases are pending, they are folded into the checkpoint (one FFT of
    the history) and it is stored, in the charge's transaction -- so a charge convolves and
    writes the (megabytes of) state once in :data:`CHECKPOINT` charges; the others compose a
    few small PLDs and read ε by dot products. Without a checkpoint, or with one
    of another accountant (a cap change), the state is rebuilt from every event. Charges of a
    tree are serialised under its lock until commit, so no charge below ``through`` can
    appear later.
    """
    row = conn.execute(sa.select(composed_table.c.state, composed_table.c.through)
                       .where(composed_table.c.dataset == dataset)).first()
    stored = ComposedState.from_bytes(row.state) if row is not None else None
    through = row.through if stored is not None and stored.accountant == accountant else 0
    if not through:
        stored = ComposedState(accountant)
    pending = conn.execute(sa.select(charges_table.c.id, charges_table.c.events).where(
        (charges_table.c.dataset == dataset) & (charges_table.c.id > through)).order_by(charges_table.c.id)).all()
    events = [ev for r in pending for ev in json.loads(r.events)]
    if len(pending) >= CHECKPOINT or (pending and row is not None and not through):
        stored = stored.add(events)
        store_state(conn, dataset, stored, pending[-1].id)
        events = []
    return stored.compose(ComposedState(accountant).add(events + list(extra)))


def store_state(conn: sa.Connection, dataset: str, state: ComposedState, through: int) -> None:
    """Store ``state`` as the composition of ``dataset``'s charges up to id ``through``."""
    values = dict(state=state.to_bytes(), through=through)
    if conn.execute(composed_table.update().where(composed_table.c.dataset == dataset).values(**values)).rowcount == 0:
        conn.execute(composed_table.insert().values(dataset=dataset, **values))


def status_of(row) -> BudgetStatus:
    return BudgetStatus(
        dataset=row.name, cap_epsilon=row.cap_epsilon, cap_delta=row.cap_delta,
        spent_epsilon=row.spent_epsilon, spent_delta=row.spent_delta,
        remaining_epsilon=max(row.cap_epsilon - row.spent_epsilon, 0.0),
        accountant=row.accountant, releases=row.releases, parent=row.parent,
        own_epsilon=row.own_epsilon if row.own_epsilon is not None else row.spent_epsilon,
        alert_share=row.alert_share if row.alert_share is not None else DEFAULT_ALERT_SHARE)

def charge_row(conn: sa.Connection, dataset: str, release_id: str):
    return conn.execute(sa.select(charges_table).where(
        (charges_table.c.dataset == dataset) & (charges_table.c.release_id == release_id))).first()

def events_of(conn: sa.Connection, dataset: str) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(charges_table.c.events).where(charges_table.c.dataset == dataset)
                        .order_by(charges_table.c.id)).scalars()
    return [ev for text in rows for ev in json.loads(text)]

