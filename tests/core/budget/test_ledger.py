from __future__ import annotations

import math
import multiprocessing as mp
import threading

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost, compose_epsilon
from airflow_privacy.core.dp.accounting import validate_events
from airflow_privacy.core.errors import (
    BudgetExceededError,
    InvalidParameterError,
    ReleaseConflictError,
)


def _cost(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "discrete_laplace", "parameter": eps, "sensitivity": 1}])


@pytest.fixture
def ledger(tmp_path) -> PrivacyLedger:
    led = PrivacyLedger(f"sqlite:///{tmp_path}/budget.db")
    led.set_budget("patients", epsilon=1.0, delta=1e-6)
    return led


def test_charge_status_history(ledger):
    c = ledger.charge("patients", release_id="d/r1/t/-1", cost=_cost(0.25), dag_id="d", run_id="r1")
    assert not c.replayed and c.status == "charged"
    st = ledger.status("patients")
    assert st.spent_epsilon == pytest.approx(0.25, rel=1e-4) and st.remaining_epsilon == pytest.approx(0.75, rel=1e-4)
    assert st.releases == 1
    ledger.charge("patients", release_id="d/r2/t/-1", cost=_cost(0.25))
    assert [h.release_id for h in ledger.history("patients")] == ["d/r1/t/-1", "d/r2/t/-1"]


def test_idempotent_on_release_id(ledger):
    first = ledger.charge("patients", release_id="x", cost=_cost(0.5), output="file:///o.parquet")
    again = ledger.charge("patients", release_id="x", cost=_cost(0.5))
    assert again.replayed and again.output == "file:///o.parquet" and again.created_at == first.created_at
    assert ledger.status("patients").spent_epsilon == pytest.approx(0.5, rel=1e-4)


def test_over_cap_raises_and_changes_nothing(ledger):
    ledger.charge("patients", release_id="a", cost=_cost(0.75))
    with pytest.raises(BudgetExceededError, match=r"patients.*0\.5.*0\.25"):
        ledger.charge("patients", release_id="b", cost=_cost(0.5))
    assert ledger.status("patients").releases == 1
    assert ledger.get_release("patients", "b") is None


def test_spent_is_pld_composition_of_all_events(tmp_path):
    led = PrivacyLedger(f"sqlite:///{tmp_path}/b.db")
    led.set_budget("d", epsilon=10.0, delta=1e-6)
    events = []
    for i in range(40):
        c = _cost(0.2)
        led.charge("d", release_id=str(i), cost=c)
        events += c.events
    assert led.status("d").spent_epsilon == pytest.approx(compose_epsilon(events, 1e-6, "pld"), rel=1e-9)
    assert led.status("d").spent_epsilon < 40 * 0.2  # tighter than summing epsilons
    led.set_budget("r", epsilon=5.0, delta=1e-6, accountant="rdp")
    led.charge("r", release_id="1", cost=_cost(0.2))
    assert led.status("r").accountant == "rdp"


def test_cap_changes(ledger):
    ledger.charge("patients", release_id="a", cost=_cost(0.75))
    with pytest.raises(BudgetExceededError):
        ledger.set_budget("patients", epsilon=0.5, delta=1e-6, reason="lower")
    assert ledger.set_budget("patients", epsilon=2.0, delta=1e-6, reason="raise").remaining_epsilon == pytest.approx(1.25, rel=1e-4)
    with pytest.raises(InvalidParameterError, match="budget_cap"):
        ledger.ensure_budget("patients", epsilon=3.0, delta=1e-6)
    assert ledger.ensure_budget("patients", epsilon=2.0, delta=1e-6).cap_epsilon == 2.0
    assert ledger.ensure_budget("new", epsilon=1.0).cap_epsilon == 1.0


def test_validation(ledger):
    with pytest.raises(InvalidParameterError, match="epsilon"):
        ledger.set_budget("x", epsilon=0)
    with pytest.raises(InvalidParameterError, match="dataset"):
        ledger.set_budget("", epsilon=1)
    with pytest.raises(KeyError, match="no privacy budget"):
        ledger.charge("unknown", release_id="a", cost=_cost(0.1))
    with pytest.raises(InvalidParameterError, match="url"):
        PrivacyLedger("budget.db")


def test_concurrent_threads_never_exceed_cap(ledger):
    errors, ok = [], []

    def worker(i):
        try:
            ok.append(ledger.charge("patients", release_id=f"t{i}", cost=_cost(0.1)))
        except BudgetExceededError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 10 and len(errors) == 15
    assert ledger.status("patients").spent_epsilon <= 1.0 + 1e-9


def _charge_in_process(url: str, i: int, q) -> None:
    led = PrivacyLedger(url)
    try:
        led.charge("patients", release_id=f"p{i}", cost=_cost(0.1))
        q.put("ok")
    except BudgetExceededError:
        q.put("over")


def test_concurrent_processes_never_exceed_cap(ledger):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_charge_in_process, args=(ledger.url, i, q)) for i in range(14)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results.count("ok") == 10 and results.count("over") == 4
    assert ledger.status("patients").releases == 10


def test_v1_ledger_is_migrated_and_releases_are_sealed_once(tmp_path):
    """A ledger created by schema v1 (no output hash) gains the column; a sealed release's
    hash cannot be replaced by another (one charge, one answer)."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE privacy_schema (version INTEGER PRIMARY KEY, applied_at DATETIME NOT NULL)")
        conn.exec_driver_sql("INSERT INTO privacy_schema VALUES (1, '2026-01-01 00:00:00')")
        conn.exec_driver_sql(
            "CREATE TABLE privacy_datasets (name VARCHAR(200) PRIMARY KEY, cap_epsilon FLOAT NOT NULL, "
            "cap_delta FLOAT NOT NULL, accountant VARCHAR(16) NOT NULL, spent_epsilon FLOAT NOT NULL, "
            "spent_delta FLOAT NOT NULL, releases INTEGER NOT NULL, created_at DATETIME NOT NULL, "
            "updated_at DATETIME NOT NULL)")
        conn.exec_driver_sql(
            "CREATE TABLE privacy_charges (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset VARCHAR(200) NOT NULL, "
            "release_id VARCHAR(1000) NOT NULL, epsilon FLOAT NOT NULL, delta FLOAT NOT NULL, events TEXT NOT NULL, "
            "spent_epsilon FLOAT NOT NULL, dag_id VARCHAR(250), run_id VARCHAR(250), task_id VARCHAR(250), "
            "map_index INTEGER, output TEXT, status VARCHAR(16) NOT NULL, created_at DATETIME NOT NULL, "
            "UNIQUE (dataset, release_id))")
    engine.dispose()
    led = PrivacyLedger(url)
    led.set_budget("patients", epsilon=1.0, delta=1e-6)
    led.charge("patients", release_id="r", cost=_cost(0.25))
    assert led.get_release("patients", "r").output_sha256 is None
    led.seal_release("patients", "r", output="file:///o.parquet", sha256="a" * 64)
    led.seal_release("patients", "r", output="file:///o.parquet", sha256="a" * 64)  # same answer: fine
    with pytest.raises(ReleaseConflictError, match="already sealed"):
        led.seal_release("patients", "r", output="file:///o.parquet", sha256="b" * 64)
    with pytest.raises(InvalidParameterError, match="sha256"):
        led.seal_release("patients", "r", output="file:///o.parquet", sha256="xyz")
    assert led.get_release("patients", "r").output_sha256 == "a" * 64
    assert PrivacyLedger(url).get_release("patients", "r").output == "file:///o.parquet"  # reopening: no-op


@pytest.mark.parametrize("cost, match", [
    (PrivacyCost(100.0, 0.0, []), "events"),  # no mechanism: would have spent nothing
    (PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": "0.5"}]), r"events\[0\]\.epsilon"),
    (PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": True}]), r"events\[0\]\.epsilon"),
    (PrivacyCost(0.5, 0.0, [{"kind": "discrete_laplace", "parameter": 0.5, "sensitivity": 1.5}]), "sensitivity"),
    (PrivacyCost(0.5, 0.0, [{"kind": "laplace", "epsilon": 0.5}]), "kind"),
    (PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": 0.5, "count": 0}]), "count"),
    (PrivacyCost(0.5, 0.0, ["pure"]), "kind"),
    (PrivacyCost(0.1, 0.0, [{"kind": "pure", "epsilon": 0.5}]), "cost.epsilon"),  # understated claim
    (PrivacyCost(0.5, 0.0, [{"kind": "approx", "epsilon": 0.5, "delta": 1e-7}]), "cost.epsilon"),  # δ understated
    (PrivacyCost(math.nan, 0.0, [{"kind": "pure", "epsilon": 0.5}]), "cost.epsilon"),
    (PrivacyCost(0.5, -1e-9, [{"kind": "pure", "epsilon": 0.5}]), "cost.delta"),
])
def test_malformed_or_understated_costs_are_refused_and_spend_nothing(ledger, cost, match):
    with pytest.raises(InvalidParameterError, match=match):
        ledger.charge("patients", release_id="bad", cost=cost)
    assert ledger.status("patients").releases == 0 and ledger.get_release("patients", "bad") is None


def test_delta_is_checked_against_the_cap_and_named_when_binding(ledger):
    # A release claiming more delta than the whole cap allows.
    with pytest.raises(BudgetExceededError, match="delta is the binding constraint.*delta=0.5"):
        ledger.charge("patients", release_id="d", cost=PrivacyCost(0.5, 0.5, [{"kind": "pure", "epsilon": 0.1}]))
    # (ε, δ) events consume δ outright: two of 6e-7 need 1.2e-6 > the cap's 1e-6, though ε is ample.
    approx = PrivacyCost(0.01, 6e-7, [{"kind": "approx", "epsilon": 0.01, "delta": 6e-7}])
    ledger.charge("patients", release_id="a1", cost=approx)
    assert ledger.status("patients").spent_delta == pytest.approx(6e-7)
    with pytest.raises(BudgetExceededError, match="delta is the binding constraint"):
        ledger.charge("patients", release_id="a2", cost=approx)
    st = ledger.status("patients")
    assert st.releases == 1 and st.spent_delta == pytest.approx(6e-7) and st.spent_delta <= st.cap_delta
    # Mechanisms accounted at the cap's δ consume none of it outright.
    ledger.charge("patients", release_id="lap", cost=_cost(0.1))
    assert ledger.status("patients").spent_delta == pytest.approx(6e-7)


def test_replay_with_a_different_cost_is_refused(ledger):
    ledger.charge("patients", release_id="r", cost=_cost(0.25))
    assert ledger.charge("patients", release_id="r", cost=_cost(0.25)).replayed
    with pytest.raises(InvalidParameterError, match="release_id.*different cost"):
        ledger.charge("patients", release_id="r", cost=_cost(0.5))
    with pytest.raises(InvalidParameterError, match="release_id.*different cost"):  # same events, other claim
        ledger.charge("patients", release_id="r", cost=PrivacyCost(0.3, 0.0, _cost(0.25).events))
    assert ledger.status("patients").releases == 1


def test_events_are_normalized_and_unstated_claims_computed(ledger):
    import numpy as np

    ev = {"kind": "discrete_laplace", "parameter": np.float32(0.25), "sensitivity": np.int64(2)}
    c = ledger.charge("patients", release_id="np", cost=PrivacyCost(np.float64(0.5), 0.0, [ev]))
    assert c.events == [{"kind": "discrete_laplace", "parameter": 0.25, "sensitivity": 2, "count": 1}]
    # epsilon = delta = 0 states no claim (what the federated operators pass): the ledger
    # records the events' own ε at the cap's δ.
    zcdp = [{"kind": "zcdp", "rho": 0.001}]
    u = ledger.charge("patients", release_id="z", cost=PrivacyCost(0.0, 0.0, zcdp))
    assert u.delta == 1e-6 and u.epsilon == pytest.approx(compose_epsilon(validate_events(zcdp), 1e-6, "pld"))
    assert u.epsilon > 0.001


def test_caps_take_any_real_number_and_have_no_per_release_maximum(ledger):
    import numpy as np

    assert ledger.set_budget("long_lived", epsilon=np.float32(250.0), delta=np.float64(1e-6)).cap_epsilon == 250.0
    with pytest.raises(InvalidParameterError, match="epsilon"):
        ledger.set_budget("long_lived", epsilon=True)
