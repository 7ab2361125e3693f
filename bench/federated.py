"""Benchmark of the federated round's aggregation, secure vs plain, measured in the same run.

Five sites each submit a ~1 M-parameter model update (``[weight * delta, weight]``, the
layout of ``ClientUpdate.secure_input()``) for an MLP of 999,997 parameters. Timed:

1. plain: :func:`aggregate_plain` (sum of the five vectors) + :func:`server_aggregate`
   (FedAvg step into the next checkpoint);
2. secure: the masking secure sum with *every* party run through the public step
   functions (per site: ``advertise_keys``, ``share_keys``, ``mask_input``,
   ``reveal_shares``; aggregator: ``collect_keys``, ``route_shares``, ``request_unmask``,
   ``unmask_sum``), then ``split_total`` + :func:`server_aggregate`; also with one site
   dropping out after sharing its keys (the recovery path).

In a deployment the five sites mask in parallel on their own workers, so the wall time of a
secure round is about one site's share plus the aggregator's; that figure is printed too.
Target: secure aggregation of 5 x 1 M parameters <= 1 s (all parties, one process).

3. the example DAG ``federated_training`` (3 sites, DP-SGD, masking secure sum, 3 rounds per
   run) under ``dag.test()`` in a throw-away embedded Airflow (its own ``AIRFLOW_HOME``,
   ``airflow db migrate`` in a subprocess, SQLite): the wall time of each round (first task
   of the round started -> its ``aggregate`` ended; every task runs in turn, as ``dag.test()``
   does) and of the whole run. Target: one 3-site round <= 30 s.

Run: ``python bench/federated.py`` (about 1-2 min on 2 cores).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from airflow_privacy.core.federated import (
    FeatureSpec,
    FederatedConfig,
    aggregate_plain,
    init_checkpoint,
    parameter_count,
    secure_sum_config,
    server_aggregate,
    split_total,
)
from airflow_privacy.core.secure_sum import (
    advertise_keys,
    collect_keys,
    mask_input,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    unmask_sum,
)

REPO = Path(__file__).resolve().parent.parent
SITES = [f"site_{c}" for c in "abcde"]
HIDDEN = 83_333  # 10 inputs -> 83,333 hidden -> 1 output: 999,997 parameters
REPEATS = 5


def timings(fn: Callable[[], object], repeats: int = REPEATS) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def fmt(t: list[float]) -> str:
    return f"{min(t) * 1e3:8.1f} ms (median {statistics.median(t) * 1e3:7.1f} ms)"


def secure_round(ss, inputs: dict[str, np.ndarray], drop: str | None = None, timing: dict | None = None):
    """Every party of one masking secure sum; ``timing`` collects per-party seconds."""
    t = timing if timing is not None else {}
    clock = time.perf_counter

    def run(party: str, fn, *args, **kwargs):
        start = clock()
        out = fn(*args, **kwargs)
        t[party] = t.get(party, 0.0) + clock() - start
        return out

    states, adverts = {}, []
    for s in SITES:
        out = run(s, advertise_keys, ss, s)
        states[s] = out.state
        adverts.append(out.message)
    roster = run("aggregator", collect_keys, ss, adverts)
    shares = []
    for s in SITES:
        out = run(s, share_keys, ss, states[s], roster)
        states[s] = out.state
        shares.append(out.message)
    bundles = run("aggregator", route_shares, ss, roster, shares)
    survivors = [s for s in SITES if s != drop]
    masked = []
    for s in survivors:
        out = run(s, mask_input, ss, states[s], bundles[s], inputs[s])
        states[s] = out.state
        masked.append(out.message)
    request = run("aggregator", request_unmask, ss, masked)
    reveals = []
    for s in survivors:
        out = run(s, reveal_shares, ss, states[s], request)
        reveals.append(out.message)
    return run("aggregator", unmask_sum, ss, roster, request, masked, reveals), masked


def main() -> None:
    torch.set_num_threads(1)
    spec = FeatureSpec.build([f"x{i}" for i in range(10)], "y", ranges={f"x{i}": (-1, 1) for i in range(10)})
    config = FederatedConfig(model="mlp", model_kwargs={"hidden": HIDDEN}, secure=True)
    plain_config = FederatedConfig(model="mlp", model_kwargs={"hidden": HIDDEN}, secure=False)
    ckpt = init_checkpoint(spec, config, seed=0)
    plain_ckpt = init_checkpoint(spec, plain_config, seed=0)
    d = parameter_count(ckpt, spec, config)

    rng = np.random.default_rng(0)
    weights = {s: float(rng.integers(500, 5000)) for s in SITES}
    inputs = {s: np.concatenate([weights[s] * rng.normal(0, 0.01, d), [weights[s]]]) for s in SITES}
    reports = [{"site": s, "round": 0, "config_hash": ckpt.config_hash} for s in SITES]
    plain_reports = [{**r, "config_hash": plain_ckpt.config_hash} for r in reports]
    ss = secure_sum_config(config, round_id="bench/round-1", sites=SITES, dimension=d)

    # -- plain ------------------------------------------------------------------------------
    plain_sum_t = timings(lambda: aggregate_plain(inputs, plain_config))
    summed, total_w = aggregate_plain(inputs, plain_config)
    server_t = timings(lambda: server_aggregate(plain_ckpt, summed, total_w, plain_config, spec=spec, reports=plain_reports))

    # -- secure -----------------------------------------------------------------------------
    secure_t, parties = [], []
    for i in range(REPEATS):
        round_cfg = secure_sum_config(config, round_id=f"bench/round-{i}", sites=SITES, dimension=d)
        per_party: dict[str, float] = {}
        start = time.perf_counter()
        result, masked = secure_round(round_cfg, inputs, timing=per_party)
        secure_t.append(time.perf_counter() - start)
        parties.append(per_party)
    drop_t = []
    for i in range(3):
        round_cfg = secure_sum_config(config, round_id=f"bench/drop-{i}", sites=SITES, dimension=d)
        start = time.perf_counter()
        secure_round(round_cfg, inputs, drop="site_e")
        drop_t.append(time.perf_counter() - start)
    secure_sum_vec, secure_w = split_total(result.total)
    end_to_end = [
        s + min(server_t) for s in secure_t
    ]
    best = parties[int(np.argmin(secure_t))]
    slowest_site = max(best[s] for s in SITES)

    err = np.abs(secure_sum_vec / secure_w - summed / total_w).max()
    bound = len(SITES) * 2.0**-config.frac_bits / total_w
    bytes_per_site = len(masked[0])

    print(f"federated aggregation: {len(SITES)} sites x {d:,} parameters (MLP 10-{HIDDEN:,}-1), "
          f"float64 updates, frac_bits {config.frac_bits}, ring 2**64, bounds {ss.bounds}")
    print(f"  plain: aggregate_plain (sum)            {fmt(plain_sum_t)}")
    print(f"  server_aggregate (FedAvg step, ckpt)    {fmt(server_t)}")
    print(f"  plain round total                       {(min(plain_sum_t) + min(server_t)) * 1e3:8.1f} ms")
    print(f"  secure sum, all parties, no dropout     {fmt(secure_t)}")
    print(f"  secure sum, all parties, 1 dropout      {fmt(drop_t)}")
    print(f"    one site (4 steps), slowest           {slowest_site * 1e3:8.1f} ms")
    print(f"    aggregator (4 steps)                  {best['aggregator'] * 1e3:8.1f} ms")
    print(f"    wall time with sites in parallel      {(slowest_site + best['aggregator']) * 1e3:8.1f} ms")
    print(f"  secure round total (+ server_aggregate) {min(end_to_end) * 1e3:8.1f} ms")
    print(f"  secure / plain aggregation time         {min(secure_t) / min(plain_sum_t):8.1f} x")
    print(f"  bytes up per site (masked vector)       {bytes_per_site / 1e6:8.2f} MB "
          f"(plain float64: {inputs[SITES[0]].nbytes / 1e6:.2f} MB)")
    print(f"  max |mean(secure) - mean(plain)|        {err:.2e}  (bound n * 2**-f / W = {bound:.2e})")
    print(f"  target secure aggregation <= 1 s (all parties, one process): "
          f"{'met' if min(secure_t) <= 1.0 else 'NOT met'} ({min(secure_t):.2f} s)")

    dag = dag_round_timings()
    rounds = dag["rounds"]
    print(f"federated_training under dag.test(): 3 sites, {len(rounds)} rounds in one run, "
          f"{dag['rows']} rows per site and day, embedded Airflow (SQLite)")
    print(f"  {'airflow db migrate (once)':<40}{dag['migrate_s']:8.1f} s")
    for name, seconds in rounds.items():
        print(f"  {name + ': first task -> aggregate done':<40}{seconds:8.1f} s")
    print(f"  {'whole dag.test() (sync, init, rounds)':<40}{dag['run_s']:8.1f} s")
    worst = max(rounds.values())
    print(f"  target one 3-site round <= 30 s: {'met' if worst <= 30.0 else 'NOT met'} (slowest {worst:.1f} s)")


# The child process: Airflow reads its configuration when first imported, so the embedded
# instance lives in a process of its own with the throw-away environment.
_DAG_RUN = """
import json, sys, time
import pendulum
from airflow.dag_processing.dagbag import DagBag
from airflow_privacy.core.io import write_batch
from airflow_privacy.demo.data import SITES, demo_root, generate_batch

date = "2026-03-01"
rows = 0
for site in SITES:
    batch = generate_batch(site, date)
    rows = max(rows, len(batch))
    write_batch(batch, f"{demo_root()}/raw/site={site}/date={date}.parquet")
dag = DagBag(dag_folder=sys.argv[1]).get_dag("federated_training")
start = time.perf_counter()
run = dag.test(logical_date=pendulum.parse(date))
elapsed = time.perf_counter() - start
spans = {}
for ti in run.get_task_instances():
    parts = ti.task_id.split(".")
    if ti.start_date and ti.end_date and len(parts) > 2 and parts[1].startswith("round_"):
        lo, hi = spans.get(parts[1], (ti.start_date, ti.end_date))
        spans[parts[1]] = (min(lo, ti.start_date), max(hi, ti.end_date))
print("BENCH " + json.dumps({"state": str(run.state), "run_s": elapsed, "rows": rows,
                             "rounds": {k: (v[1] - v[0]).total_seconds() for k, v in sorted(spans.items())}}))
"""


def dag_round_timings() -> dict:
    """Run ``federated_training`` once under ``dag.test()`` in a throw-away Airflow home."""
    from airflow_privacy.core.crypto import KeyRing

    with tempfile.TemporaryDirectory(prefix="airflow-privacy-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        env.update({
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(64).hex(),
            "AIRFLOW_PRIVACY_DEMO_ROOT": f"file://{home}/demo-data",
        })
        for site in ("site_a", "site_b", "site_c"):
            env[f"AIRFLOW_CONN_PRIVACY_KEYS_{site.upper()}"] = json.dumps(
                {"conn_type": "privacy_keys", "password": KeyRing.generate().to_json()})
        start = time.perf_counter()
        migrate = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                                 env=env, capture_output=True, text=True)
        migrate_s = time.perf_counter() - start
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
        proc = subprocess.run([sys.executable, "-c", _DAG_RUN, str(REPO / "dags")], env=env,
                              capture_output=True, text=True, cwd=home)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("BENCH ")), None)
        result = json.loads(line[len("BENCH "):]) if line else None
        if proc.returncode != 0 or result is None or "success" not in result["state"]:
            raise RuntimeError(f"the dag.test() run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {**result, "migrate_s": migrate_s}


if __name__ == "__main__":
    main()
