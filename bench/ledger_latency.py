"""Charge latency against history length (issue 16): stored composed state vs recomposition.

For each history length n, a ledger holds n releases (one discrete Laplace and one discrete
Gaussian each; bulk-inserted with the composed state those events give), then ``--timed``
further releases are charged through :class:`PrivacyLedger` and their median is printed. The
baseline, measured in the same run, is what a charge did before schema v5: recompose the n
releases' events with PLD (``compose_epsilon``), every release's parameters distinct.

    .venv/bin/python bench/ledger_latency.py                      # SQLite, n = 10 .. 10,000
    .venv/bin/python bench/ledger_latency.py --url postgresql://...  # an empty Postgres database
    .venv/bin/python bench/ledger_latency.py --max-recompose 10000   # baseline at 10,000 too (minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import sqlalchemy as sa

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.composed import ComposedState
from airflow_privacy.core.budget.schema import charges_table, datasets_table, utcnow
from airflow_privacy.core.budget.spend import store_state
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.dp.accounting import compose_epsilon, validate_events


def release(rng: np.random.Generator) -> list[dict]:
    return validate_events([
        {"kind": "discrete_laplace", "parameter": float(rng.uniform(0.01, 0.026)), "sensitivity": 1},
        {"kind": "discrete_gaussian", "sigma": float(rng.uniform(150, 400)), "sensitivity": 1,
         "epsilon": 0.1, "delta": 1e-9}])


def state_path(url: str, n: int, timed: int, releases: list[list[dict]]) -> tuple[float, float, float]:
    """Median and 90th percentile wall seconds, and median CPU seconds of this process, of
    ``timed`` charges after ``n`` bulk-inserted releases (on a machine shared with other
    work the CPU time is the steadier figure)."""
    led = PrivacyLedger(url)
    name = f"bench_{n}"
    led.set_budget(name, epsilon=1e6, delta=1e-6, changed_by="bench")
    history = releases[:n]
    state = ComposedState("pld")
    for r in history:
        state = state.add(r)
    with led.engine.begin() as conn:
        conn.execute(charges_table.insert(), [dict(
            dataset=name, release_id=f"bulk-{i}", epsilon=0.0, delta=1e-6, events=json.dumps(r), spent_epsilon=0.0,
            status="released", created_at=utcnow()) for i, r in enumerate(history)])
        last = conn.execute(sa.select(sa.func.max(charges_table.c.id)).where(charges_table.c.dataset == name)).scalar()
        store_state(conn, name, state, last)
        conn.execute(datasets_table.update().where(datasets_table.c.name == name).values(releases=n))
    wall, cpu = [], []
    for i in range(timed):
        start, start_cpu = time.perf_counter(), time.process_time()
        led.charge(name, release_id=f"t{i}", cost=PrivacyCost(0, 0, releases[n + i]))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    led.engine.dispose()
    return statistics.median(wall), statistics.quantiles(wall, n=10)[-1], statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an empty ledger database (default: a temporary SQLite file)")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--timed", type=int, default=21)
    parser.add_argument("--max-recompose", type=int, default=1000, help="largest n for the baseline")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(16)
    releases = [release(rng) for _ in range(max(sizes) + args.timed)]
    url = args.url or f"sqlite:///{tempfile.mkdtemp()}/ledger_latency.db"
    print(f"ledger {url.split(':')[0]}; p50 of {args.timed} charges after n releases "
          "(Laplace + Gaussian, parameters varying)")
    state_path(url, 1, 3, releases)  # warm-up: imports, the ledger's first open, PLD caches
    print(f"{'n':>7} {'p50 wall':>10} {'p90 wall':>10} {'p50 CPU':>10} {'recompose (pre-v5)':>20}")
    for n in sizes:
        p50, p90, cpu = state_path(url, n, args.timed, releases)
        base = "-"
        if n <= args.max_recompose:
            events = [ev for r in releases[:n + 1] for ev in r]
            start = time.perf_counter()
            compose_epsilon(events, 1e-6, "pld")
            base = f"{(time.perf_counter() - start) * 1e3:.1f} ms"
        print(f"{n:>7} {p50 * 1e3:>7.1f} ms {p90 * 1e3:>7.1f} ms {cpu * 1e3:>7.1f} ms {base:>20}", flush=True)


if __name__ == "__main__":
    main()
