"""Deleting a dataset's budget: only one that never spent, never refused and has no partitions.

A dataset's row is the record of what its people have lost. Deleting one that holds a charge
would erase spend: the next run of its DAG recreates it (``budget_cap``) with a fresh budget
-- the overspend the ledger exists to stop. So :func:`delete_dataset` removes only what a typo
or a mistaken ``budget set`` created, and refuses (``InvalidParameterError`` naming the
dataset and the reason, nothing changed) a dataset with

* **a charge**, charged or released: its spend stays on record (lower or keep its cap instead);
* **a refused release**: nothing was spent, but a DAG released against it -- its next run would
  recreate the dataset with a fresh cap -- and the refusals are that DAG's audit trail, which
  would be left pointing at no dataset. Every refusal counts: telling an "important" one from
  a stray one needs judgement a runbook command should not make;
* **a partition** (a dataset whose ``parent`` it is): the partitions' worst case is bounded by
  this population's cap (:mod:`.populations`); delete them or detach them first.

**Atomic.** The checks and the delete run in one transaction under the lock
:meth:`PrivacyLedger.charge` takes for the dataset's population tree (``BEGIN IMMEDIATE`` on
SQLite; the tree root's row ``FOR UPDATE`` on Postgres, :meth:`PrivacyLedger._lock`). A
charge racing a delete either commits first -- the delete then sees it and refuses -- or waits
and finds no dataset (``KeyError``, nothing charged); likewise a ``budget set --parent`` that
would give it a partition. Never a charge for a deleted dataset.

**Traced.** The schema has no deletion record, and needs none: a deletion is a row of
``privacy_cap_changes`` from the old cap and parent to the cap ``(0, 0)`` -- a cap no dataset
can have (ε > 0) -- with who, when and ``reason = "deleted: <reason>"``. ``budget history``
shows it; creating the dataset again starts a new history after it.
"""

from __future__ import annotations

import sqlalchemy as sa

from airflow_privacy.core.budget.populations import Forest
from airflow_privacy.core.budget.records import CapChange
from airflow_privacy.core.budget.schema import (
    alerts_table,
    cap_changes_table,
    charges_table,
    composed_table,
    datasets_table,
    refusals_table,
    utcnow,
)
from airflow_privacy.core.budget.spend import read_forest
from airflow_privacy.core.errors import InvalidParameterError

DELETED_PREFIX = "deleted: "
"""Start of the ``reason`` of the cap change that records a deletion."""


def deletion_blocker(conn: sa.Connection, forest: Forest, dataset: str) -> str | None:
    """Why ``dataset`` may not be deleted (see the module docstring), or ``None``.

    :raises KeyError: no such dataset.
    """
    if dataset not in forest.nodes:
        raise KeyError(f"dataset {dataset!r} has no privacy budget: nothing to delete")
    charges = conn.execute(sa.select(sa.func.count()).select_from(charges_table)
                           .where(charges_table.c.dataset == dataset)).scalar_one()
    if charges:
        return (f"it holds {charges} charged release(s) -- its spend stays on record (deleted, it would be "
                "recreated with a fresh budget by its DAG's next run); keep or lower its cap instead")
    refused = conn.execute(sa.select(refusals_table.c.dag_id).where(refusals_table.c.dataset == dataset)).scalars().all()
    if refused:
        dags = sorted({d for d in refused if d is not None})
        by = f" by DAG(s) {', '.join(map(repr, dags))}" if dags else ""
        return (f"it has {len(refused)} refused release(s){by} -- a pipeline releases against it (its next run "
                "would recreate it with a fresh cap) and the refusals are that pipeline's audit trail")
    children = forest.children.get(dataset, [])
    if children:
        return (f"it has partition(s) {', '.join(map(repr, children))}, whose worst case its cap bounds; delete "
                "them or detach them (`airflow-privacy budget set NAME --no-parent --reason ...`) first")
    return None


def check_deletable(ledger, dataset: str) -> None:
    """Refuse now (a read, no lock held) what :func:`delete_dataset` would refuse -- so a runbook
    asks for confirmation only of a deletion that can happen.

    :raises KeyError: no such dataset.
    :raises InvalidParameterError: the dataset may not be deleted.
    """
    with ledger.engine.connect() as conn:
        why = deletion_blocker(conn, read_forest(conn), dataset)
    if why is not None:
        raise InvalidParameterError("dataset", dataset, f"cannot delete it: {why}; nothing was deleted")


def delete_dataset(ledger, dataset: str, *, reason: str, deleted_by: str | None = None) -> CapChange:
    """Delete ``dataset``'s budget if it never spent, never refused a release and has no
    partitions; record the deletion as a cap change (module docstring). One transaction under
    the tree's lock: a charge cannot slip in between the checks and the delete.

    :param ledger: the :class:`~airflow_privacy.core.budget.PrivacyLedger`.
    :param reason: why -- required, recorded as ``"deleted: <reason>"``.
    :param deleted_by: who (recorded as ``changed_by``).
    :returns: the recorded deletion.
    :raises InvalidParameterError: no reason, or the dataset may not be deleted (why named).
    :raises KeyError: no such dataset.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidParameterError("reason", reason, f"deleting dataset {dataset!r} needs a reason (recorded with "
                                    "who and when; `budget delete ... --reason TEXT`)")
    with ledger.engine.begin() as conn:
        forest = ledger._lock(conn, dataset)
        why = deletion_blocker(conn, forest, dataset)
        if why is not None:
            raise InvalidParameterError("dataset", dataset, f"cannot delete it: {why}; nothing was deleted")
        node = forest.nodes[dataset]
        for table in (composed_table, alerts_table):  # derived rows; none without a charge
            conn.execute(table.delete().where(table.c.dataset == dataset))
        conn.execute(datasets_table.delete().where(datasets_table.c.name == dataset))
        values = dict(dataset=dataset, changed_at=utcnow(), changed_by=deleted_by, old_epsilon=node.cap_epsilon,
                      old_delta=node.cap_delta, new_epsilon=0.0, new_delta=0.0, old_parent=node.parent,
                      new_parent=None, reason=DELETED_PREFIX + reason.strip())
        conn.execute(cap_changes_table.insert().values(**values))
    return CapChange(**values)
