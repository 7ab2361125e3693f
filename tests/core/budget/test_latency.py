"""A charge's latency does not depend on the history (issue 16: p50 <= 20 ms at 10,000 releases).

Before schema v5 each charge recomposed the dataset's whole history under its lock (2.35 s at
release #200 of this very history; ``bench/ledger_latency.py`` prints the curve of both). The
history here is 10,000 releases of one discrete Laplace and one discrete Gaussian each, with
parameters varying over 20 x 20 values; it is bulk-inserted (rows and the composed state that
those events give, built by grouping equal events), then further releases are charged through
the ledger and timed, on SQLite and on Postgres.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import sqlalchemy as sa

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.composed import ComposedState
from airflow_privacy.core.budget.schema import charges_table, datasets_table, utcnow
from airflow_privacy.core.budget.spend import store_state
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.dp.accounting import compose_epsilon, validate_events

HISTORY = 10_000
TIMED = 41
_LAPLACE = [0.01 + 0.0008 * i for i in range(20)]
_SIGMA = [150.0 + 12.5 * i for i in range(20)]


def _release(i: int) -> list[dict]:
    return validate_events([{"kind": "discrete_laplace", "parameter": _LAPLACE[i % 20], "sensitivity": 1},
                            {"kind": "discrete_gaussian", "sigma": _SIGMA[(7 * i) % 20], "sensitivity": 1,
                             "epsilon": 0.1, "delta": 1e-9}])


def _bulk_history(led: PrivacyLedger, dataset: str) -> None:
    grouped: dict[str, dict] = {}
    for i in range(HISTORY):
        for ev in _release(i):
            key = json.dumps(ev, sort_keys=True)
            grouped.setdefault(key, dict(ev, count=0))["count"] += 1
    state = ComposedState("pld").add(list(grouped.values()))
    now = utcnow()
    with led.engine.begin() as conn:
        conn.execute(charges_table.insert(), [dict(
            dataset=dataset, release_id=f"bulk-{i}", epsilon=0.0, delta=1e-6, events=json.dumps(_release(i)),
            spent_epsilon=0.0, status="released", created_at=now) for i in range(HISTORY)])
        store_state(conn, dataset, state, conn.execute(sa.select(sa.func.max(charges_table.c.id))).scalar())
        conn.execute(datasets_table.update().where(datasets_table.c.name == dataset).values(
            releases=HISTORY, spent_epsilon=state.epsilon(1e-6),
            own_epsilon=state.epsilon(1e-6)))


def _p50_of_charges(url: str) -> tuple[float, float]:
    led = PrivacyLedger(url)
    led.set_budget("events", epsilon=1000.0, delta=1e-6, changed_by="test")
    _bulk_history(led, "events")
    timings = []
    for i in range(HISTORY, HISTORY + TIMED):
        start = time.perf_counter()
        led.charge("events", release_id=f"r{i}", cost=PrivacyCost(0, 0, _release(i)))
        timings.append(time.perf_counter() - start)
    status = led.status("events")
    assert status.releases == HISTORY + TIMED
    led.engine.dispose()
    return statistics.median(timings), status.spent_epsilon


def _recomposition_of_200() -> float:
    """What one charge cost before v5 at release #200 (in this run, on this box), with every
    release's parameters distinct as real releases' are (equal events are grouped, which
    would flatter the baseline)."""
    rng = np.random.default_rng(200)
    events = validate_events([ev for _ in range(200) for ev in (
        {"kind": "discrete_laplace", "parameter": float(rng.uniform(0.01, 0.026)), "sensitivity": 1},
        {"kind": "discrete_gaussian", "sigma": float(rng.uniform(150, 400)), "sensitivity": 1,
         "epsilon": 0.1, "delta": 1e-9})])
    start = time.perf_counter()
    compose_epsilon(events, 1e-6, "pld")
    return time.perf_counter() - start


def _check(backend: str, p50: float, spent: float) -> None:
    baseline = _recomposition_of_200()
    print(f"{backend}: {TIMED} charges after {HISTORY} releases: p50 {p50 * 1e3:.1f} ms (goal 20 ms); "
          f"recomposing 200 releases, as each charge did at #200 before v5: {baseline * 1e3:.0f} ms; "
          f"spent eps {spent:.4f}")
    # Before v5 a charge at #10,000 recomposed 50x the history of #200 (~160 s on this box).
    assert p50 < baseline / 3


@pytest.mark.slow
def test_charge_p50_with_10000_releases_on_sqlite(tmp_path):
    _check("sqlite", *_p50_of_charges(f"sqlite:///{tmp_path}/latency.db"))


@pytest.mark.slow
def test_charge_p50_with_10000_releases_on_postgres(postgres):
    _check("postgres", *_p50_of_charges(postgres.url("ledger_latency")))
