"""Benchmark (issue 15): ``dp_aggregate(engine="duckdb")`` over a partitioned Parquet dataset
against DuckDB's own plain ``GROUP BY`` count/sum/avg of the same files, in the same run.

The bench writes ``--rows`` rows (default 20 M) once under ``--dir`` as ``--files`` Parquet
files: ``unit`` (about rows/20 units), ``g`` (1,000 groups of Zipf-like popularity), ``x``
(uniform in [0, 100], 1 % NULL). Each step runs in a fresh subprocess so its peak RSS
(``ru_maxrss``) is its own:

* baseline: ``SELECT g, count(*), sum(x), avg(x) FROM read_parquet(...) GROUP BY g``,
  with the same DuckDB settings (memory_limit, temp_directory) as the engine;
* floor: the one step no user-level bound can skip -- every (unit, group) pair of the data,
  ``SELECT g, unit, count(*), sum(x) ... GROUP BY g, unit`` (counted, not returned): how far
  the release is from the cheapest plan that still knows each unit's groups;
* ours: a full release -- validation, planning, the engine's bounding (L0 = 4, Linf = 5,
  keyed hash), clamping, stochastic rounding and integer sums, then noise and private
  partition selection -- for count, sum(x), mean(x) by g, ε = 1, δ = 1e-6.

Targets (issue 15): peak RSS <= 4 GB and time <= 3x the baseline at 200 M rows.

``python bench/dp_engines.py [--rows 2e7] [--files 16] [--dir /tmp/dp_engines_bench]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def generate(folder: Path, rows: int, files: int) -> None:
    stamp = folder / f"_rows={rows}_files={files}"
    if stamp.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(2026)
    units = max(1, rows // 20)
    weights = 1.0 / np.arange(1, 1001) ** 1.1
    weights /= weights.sum()
    per = rows // files
    for i in range(files):
        n = per if i < files - 1 else rows - per * (files - 1)
        x = rng.uniform(0, 100, n)
        table = pa.table({"unit": rng.integers(0, units, n), "g": rng.choice(1000, n, p=weights).astype(np.int32),
                          "x": pa.array(x, mask=rng.random(n) < 0.01)})
        pq.write_table(table, folder / f"part-{i:04d}.parquet", row_group_size=1 << 20)
    stamp.touch()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def step(name: str, folder: str) -> dict:
    from airflow_privacy.core.dp import dp_aggregate
    from airflow_privacy.core.dp.engines.duckdb_engine import _connect

    files = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    t0, c0 = time.perf_counter(), _cpu_seconds()  # imports excluded: each step times its query only
    listed = ", ".join(f"'{f}'" for f in files)
    if name == "baseline":
        with _connect() as con:
            out = con.execute(f"SELECT g, count(*), sum(x), avg(x) FROM read_parquet([{listed}]) GROUP BY g").fetchall()
        groups = len(out)
    elif name == "floor":
        with _connect() as con:
            groups = con.execute(f"SELECT count(*) FROM (SELECT g, unit, count(*), sum(x) FROM read_parquet([{listed}]) "
                                 "GROUP BY g, unit)").fetchone()[0]
    else:
        res = dp_aggregate(folder, engine="duckdb", epsilon=1.0, delta=1e-6, by=["g"], privacy_unit="unit",
                           metrics={"n": "count", "total": ("sum", "x"), "avg": ("mean", "x")},
                           bounds={"x": (0, 100)}, max_groups_per_unit=4, max_rows_per_group=5)
        groups = len(res.table)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds() - c0, "peak_rss_gb": _peak_gb(),
            "groups": groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/dp_engines_bench")
    ap.add_argument("--step", choices=["baseline", "floor", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.dir)))
        return
    rows = int(args.rows)
    folder = Path(args.dir)
    t0 = time.perf_counter()
    generate(folder, rows, args.files)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    print(f"dataset: {rows:,} rows in {args.files} Parquet files, {size / 2**30:.2f} GiB "
          f"(ready in {time.perf_counter() - t0:.1f} s); DuckDB memory_limit "
          f"{os.environ.get('AIRFLOW_PRIVACY_DUCKDB_MEMORY', '2GB')}")
    figures = {}
    for name in ("baseline", "floor", "ours"):
        out = subprocess.run([sys.executable, __file__, "--step", name, "--dir", str(folder)],
                             check=True, capture_output=True, text=True)
        figures[name] = json.loads(out.stdout.strip().splitlines()[-1])
    b, f, o = figures["baseline"], figures["floor"], figures["ours"]

    def line(label: str, x: dict, what: str) -> None:
        print(f"{label:<36}: {x['seconds']:7.2f} s ({x['cpu_seconds']:7.2f} s CPU), peak RSS "
              f"{x['peak_rss_gb']:.2f} GB, {what}")

    line("DuckDB plain GROUP BY count/sum/avg", b, f"{b['groups']} groups")
    line("DuckDB GROUP BY g, unit (the floor)", f, f"{f['groups']:,} (unit, group) pairs")
    line("dp_aggregate(engine='duckdb')", o, f"{o['groups']} groups released")
    # CPU seconds too: on a shared machine the wall-clock ratio moves with the other load
    print(f"ratio ours / plain GROUP BY: {o['seconds'] / b['seconds']:.1f}x time, {o['cpu_seconds'] / b['cpu_seconds']:.1f}x "
          f"CPU (target <= 3x at 200 M rows); peak RSS {o['peak_rss_gb']:.2f} GB (target <= 4 GB)")
    print(f"ratio floor / plain GROUP BY: {f['seconds'] / b['seconds']:.1f}x time, {f['cpu_seconds'] / b['cpu_seconds']:.1f}x "
          f"CPU; ours / floor: {o['seconds'] / f['seconds']:.1f}x time, {o['cpu_seconds'] / f['cpu_seconds']:.1f}x CPU")


if __name__ == "__main__":
    main()
