"""Benchmark (issue 15): ``deidentify(engine="duckdb")`` streamed over a large Parquet dataset,
next to DuckDB reading and writing the same files with no transformation, in the same run.

The bench writes ``--rows`` rows (default 50 M) once under ``--dir`` as ``--files`` Parquet
files: rows of the demo's patient batches (3 sites x 20 days, ~30 k rows) drawn with
replacement, the patient id suffixed by the file number so that every file holds its own
~6 k patients (~0.6 M entities over 100 files, each with many visits). Each step runs in a
fresh subprocess so its peak RSS (``ru_maxrss``, DuckDB's memory included) is its own:

* baseline: ``COPY (SELECT * FROM read_parquet([...])) TO '...' (FORMAT parquet, COMPRESSION
  zstd)`` with the engine's DuckDB settings (memory_limit, 2 threads) -- the I/O any
  de-identification of these files pays;
* ours: the whole release -- the ``deidentify_daily_batches`` rules (drop, HMAC hash, AES-SIV
  tokenize, mask, redact, ZIP prefix, age buckets, per-patient date shift, PII scrubbing of
  the note with the row's own identifiers) plus k = 5 distinct patients over age/zip/sex
  (max 5 % suppression) and 2-diversity of the diagnosis -- with ``engine="duckdb"``, written
  atomically to one Parquet file with its report;
* ``--baseline-rows N`` runs the baseline on the first files holding ~N rows only (the
  comparison is then per row), to keep a 50 M-row run within a shared machine's time;
* with ``--pandas-rows N`` also ``engine="pandas"`` on the first files holding ~N rows (the
  in-memory path, for its rate and memory);
* with ``--spark`` also ``engine="spark"`` on ``local[2]`` (all rows) next to Spark's own
  read + write of the same files (zstd part files, in parallel; on the baseline's slice) --
  each with its session started before the clock; CPU time and peak RSS then include the
  JVM and its Python workers (peak RSS as the sum of each process's own peak).

Targets (issue 15): peak RSS <= 4 GB and >= 1 M rows/s at 50 M rows.

``python bench/deid_engines.py [--rows 5e7] [--files 100] [--dir /tmp/deid_engines_bench]
[--baseline-rows 5e6] [--pandas-rows 1e6] [--spark] [--keep]`` -- the generated data is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from deidentify import K_ANONYMITY, L_DIVERSITY, RULES, _demo_pool  # noqa: E402  (the DAG's rules, once)

LABELS = {"baseline": "DuckDB read + write, no transformation", "duckdb": "deidentify(engine='duckdb')",
          "pandas": "deidentify(engine='pandas')", "spark_baseline": "Spark read + write, no transformation",
          "spark": "deidentify(engine='spark')"}


def generate(folder: Path, rows: int, files: int) -> None:
    stamp = folder / f"_rows={rows}_files={files}"
    if stamp.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "raw").mkdir(parents=True)
    pool = pa.Table.from_pandas(_demo_pool(), preserve_index=False)
    rng = np.random.default_rng(2026)
    per = rows // files
    for i in range(files):
        n = per if i < files - 1 else rows - per * (files - 1)
        part = pool.take(rng.integers(0, pool.num_rows, n))
        ids = pc.binary_join_element_wise(part["patient_id"], pa.scalar(f"-{i:04d}", part["patient_id"].type),
                                          pa.scalar("", part["patient_id"].type))
        part = part.set_column(part.schema.get_field_index("patient_id"), "patient_id", ids)
        pq.write_table(part, folder / "raw" / f"part-{i:04d}.parquet", compression="zstd", row_group_size=1 << 17)
    stamp.touch()


def _spark():
    """A ``local[2]`` session as the engine starts it (AIRFLOW_PRIVACY_SPARK_MASTER, default)."""
    os.environ.setdefault("AIRFLOW_PRIVACY_SPARK_MASTER", "local[2]")
    os.environ.setdefault("AIRFLOW_PRIVACY_SPARK_MEMORY", "2g")
    from airflow_privacy.core.dp.engines.spark_session import current

    return current()


def _tree() -> list:
    """This process and its descendants (Spark's JVM, its Python workers)."""
    import psutil

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _peak_gb() -> float:
    """Peak RSS of this process plus each live descendant's own peak (``VmHWM``; the JVM of a
    Spark step) -- an upper bound when their peaks did not coincide."""
    total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for proc in _tree()[1:]:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) * 1024
        except (OSError, StopIteration):
            pass
    return total / 2**30


def _cpu() -> float:
    """CPU seconds of this process and its descendants, reaped ones included."""
    total = 0.0
    for proc in _tree():
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except Exception:  # gone meanwhile
            pass
    return total


def step(name: str, folder: Path, slice_rows: int) -> dict:
    from airflow_privacy.core.crypto import KeyRing
    from airflow_privacy.core.deid import deidentify, duckdb_engine

    files = sorted(str(p) for p in (folder / "raw").glob("*.parquet"))
    if name != "duckdb" and slice_rows:
        sizes = np.cumsum([pq.read_metadata(f).num_rows for f in files])
        files = files[: int(np.searchsorted(sizes, slice_rows)) + 1]
    out = folder / f"out-{name}.parquet"
    spark = _spark() if name.startswith("spark") else None  # started before the clock, as imports
    t0, cpu0 = time.perf_counter(), _cpu()  # imports excluded
    if name == "spark_baseline":
        spark.read.parquet(*files).write.mode("overwrite").option("compression", "zstd").parquet(str(out))
        rows, report = spark.read.parquet(str(out)).count(), None
        shutil.rmtree(out)
    elif name == "baseline":
        import duckdb

        listed = ", ".join(f"'{f}'" for f in files)
        con = duckdb.connect(config={"memory_limit": duckdb_engine.MEMORY_LIMIT, "threads": 2})
        con.execute(f"COPY (SELECT * FROM read_parquet([{listed}])) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        rows, report = pq.read_metadata(out).num_rows, None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, report = deidentify(files, RULES, keyring=KeyRing.generate(), k_anonymity=K_ANONYMITY,
                                   l_diversity=L_DIVERSITY, engine=name, destination=str(out),
                                   report_destination=str(out) + ".json")
        rows = report["rows_in"]
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    out.unlink(missing_ok=True)
    Path(str(out) + ".json").unlink(missing_ok=True)
    summary = None if report is None else {
        "rows_out": report["rows_out"], "k_achieved": report["k_achieved"], "l_achieved": report["l_achieved"],
        "levels": {c: v["description"] for c, v in report["k_anonymity"]["levels"].items()},
        "ncp": report["information_loss"]["ncp"]}
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "peak_rss_gb": _peak_gb(), "report": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=5e7)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--dir", default="/tmp/deid_engines_bench")
    ap.add_argument("--pandas-rows", type=float, default=0)
    ap.add_argument("--baseline-rows", type=float, default=0, help="the baseline on the first files holding "
                    "about this many rows (default: all)")
    ap.add_argument("--slice", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the generated dataset")
    ap.add_argument("--spark", action="store_true", help="also engine='spark' (local[2]) and Spark's own read + "
                    "write of the same files")
    ap.add_argument("--step", choices=list(LABELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.dir)
    if args.step:
        print(json.dumps(step(args.step, folder, int(args.slice))))
        return
    rows = int(args.rows)
    t0 = time.perf_counter()
    try:
        generate(folder, rows, args.files)
        size = sum(p.stat().st_size for p in (folder / "raw").glob("*.parquet"))
        print(f"dataset: {rows:,} rows in {args.files} Parquet files, {size / 2**30:.2f} GiB (ready in "
              f"{time.perf_counter() - t0:.1f} s); DuckDB memory_limit "
              f"{os.environ.get('AIRFLOW_PRIVACY_DEID_DUCKDB_MEMORY', '1GB')}; load average {os.getloadavg()[0]:.1f}", flush=True)
        steps = ["duckdb", "baseline"] + (["pandas"] if args.pandas_rows else []) + (
            ["spark", "spark_baseline"] if args.spark else [])
        figures = {}
        for name in steps:
            out = subprocess.run([sys.executable, __file__, "--step", name, "--dir", str(folder),
                                  "--slice", str(args.pandas_rows if name == "pandas" else
                                                 0 if name == "spark" else args.baseline_rows)],
                                 check=True, capture_output=True, text=True)
            figures[name] = f = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{LABELS[name]:<40}: {f['rows']:>12,} rows {f['seconds']:8.1f} s  {f['rows'] / f['seconds']:>10,.0f} "
                  f"rows/s, CPU {f['cpu_seconds']:7.1f} s ({f['rows'] / f['cpu_seconds']:>10,.0f} rows/CPU-s)  "
                  f"peak RSS {f['peak_rss_gb']:.2f} GB" + (f"  {f['report']}" if f["report"] else ""), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    b, o = figures["baseline"], figures["duckdb"]
    rate = o["rows"] / o["seconds"]
    per_row = (o["seconds"] / o["rows"]) / (b["seconds"] / b["rows"])
    per_cpu = (o["cpu_seconds"] / o["rows"]) / (b["cpu_seconds"] / b["rows"])
    print(f"ours / baseline per row: {per_row:.1f}x wall time, {per_cpu:.1f}x CPU time; rate {rate:,.0f} rows/s (target >= 1,000,000: "
          f"{'met' if rate >= 1e6 else f'MISSED, {1e6 / rate:.1f}x short'}); peak RSS {o['peak_rss_gb']:.2f} GB "
          f"(target <= 4 GB: {'met' if o['peak_rss_gb'] <= 4 else 'MISSED'})")
    if "spark" in figures:
        b, o = figures["spark_baseline"], figures["spark"]
        print(f"spark / Spark read + write per row: {(o['seconds'] / o['rows']) / (b['seconds'] / b['rows']):.1f}x wall "
              f"time, {(o['cpu_seconds'] / o['rows']) / (b['cpu_seconds'] / b['rows']):.1f}x CPU time; rate "
              f"{o['rows'] / o['seconds']:,.0f} rows/s; spark / duckdb engine per row: "
              f"{(o['seconds'] / o['rows']) / (figures['duckdb']['seconds'] / figures['duckdb']['rows']):.1f}x")


if __name__ == "__main__":
    main()
