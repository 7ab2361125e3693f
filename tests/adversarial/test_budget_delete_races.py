"""``budget delete`` racing charges, on SQLite and on a real PostgreSQL (READ COMMITTED).

Adversary: a DAG's first release of a dataset fires at the instant an operator deletes it (a
dataset with no releases yet is exactly one the guard lets go). The delete's checks and its
DELETE must hold the tree's lock the charge takes, or the charge lands between them: a charge
for a deleted dataset -- spend no cap covers, and a fresh cap when the DAG recreates it.
Prints the outcomes.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest
import sqlalchemy as sa

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.delete import delete_dataset
from airflow_privacy.core.budget.schema import charges_table, datasets_table
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import InvalidParameterError

FORK = mp.get_context("fork")
TRIALS = 30


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("postgres").url(f"ledger_{uuid.uuid4().hex[:12]}")


def _name(t: int) -> str:
    # even trials: a population of its own; odd trials: a partition of "parent" (one shared
    # tree, so on Postgres the lock is the root's row, not the dataset's)
    return f"d{t}"


def _charger(url: str, gate, results) -> None:
    ledger = PrivacyLedger(url)
    for t in range(TRIALS):
        gate.wait()
        try:
            ledger.charge(_name(t), release_id=f"dag/r{t}/task/-1", cost=PrivacyCost(0.1, 0.0, [
                {"kind": "pure", "epsilon": 0.1}]), dag_id="dag")
            results.put((t, "charge", "ok"))
        except KeyError:
            results.put((t, "charge", "no dataset"))


def _deleter(url: str, gate, results) -> None:
    ledger = PrivacyLedger(url)
    for t in range(TRIALS):
        gate.wait()
        try:
            delete_dataset(ledger, _name(t), reason="race", deleted_by="test")
            results.put((t, "delete", "ok"))
        except InvalidParameterError:
            results.put((t, "delete", "refused"))


def test_a_charge_racing_a_delete_never_outlives_its_dataset(ledger_url):
    ledger = PrivacyLedger(ledger_url)
    ledger.set_budget("parent", epsilon=100.0)
    for t in range(TRIALS):
        ledger.set_budget(_name(t), epsilon=1.0, **({"parent": "parent"} if t % 2 else {}))
    ledger.engine.dispose()
    gate, results = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=f, args=(ledger_url, gate, results)) for f in (_charger, _deleter)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in range(2 * TRIALS)]
    for p in procs:
        p.join(timeout=60)
    outcome = {(t, who): what for t, who, what in got}
    with ledger.engine.connect() as conn:
        orphans = conn.execute(sa.select(charges_table.c.dataset).where(
            charges_table.c.dataset.not_in(sa.select(datasets_table.c.name)))).scalars().all()
    names = {s.dataset for s in ledger.datasets()}
    deleted = charged = 0
    for t in range(TRIALS):
        pair = (outcome[t, "charge"], outcome[t, "delete"])
        # exactly one wins: charged then refused to delete, or deleted then nothing to charge
        assert pair in {("ok", "refused"), ("no dataset", "ok")}, (t, pair)
        if pair[1] == "ok":
            deleted += 1
            assert _name(t) not in names and ledger.history(_name(t)) == []
        else:
            charged += 1
            assert _name(t) in names and len(ledger.history(_name(t))) == 1
    print(f"{ledger_url.split(':')[0]}: {TRIALS} charge/delete races: charge first {charged}, delete first "
          f"{deleted}, charges left for a deleted dataset {len(orphans)}")
    assert orphans == []
    # the partitions are disjoint: the parent's worst case is one partition's charge, if any landed
    landed = any(outcome[t, "charge"] == "ok" for t in range(1, TRIALS, 2))
    assert ledger.status("parent").spent_epsilon == pytest.approx(0.1 if landed else 0.0)
