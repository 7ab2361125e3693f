"""Benchmark of airflow_privacy.core.deid.deidentify, every comparison measured in one run.

1 M demo rows (3 sites x 20 days of ``generate_batch``, resampled with replacement), the
full rule set of issue 5 (drop, HMAC hash, AES-SIV tokenize, mask, redact, ZIP prefix, age
buckets, birth-date truncation, per-patient date shift, PII scrubbing of the note) plus
k-anonymity (k=5 distinct patients over age/zip/sex, max 5 % suppression) and distinct
2-diversity of the diagnosis. Printed next to it, in the same run:

* reading and writing the same Parquet file (the I/O a ``DeidentifyOperator`` task pays
  anyway), and the whole read -> deidentify -> write task;
* the same rules on a high-cardinality variant (every patient renamed per replica: ~190 k
  patients, ~600 k distinct notes), where dedupe-then-map saves little;
* ``scrub_pii`` on notes that are all distinct (the worst case for dedupe-then-map: every
  note goes through the recognizers).

Target: ``deidentify`` >= 1 M rows/s. Run: ``python bench/deidentify.py`` (about 30-60 s on
2 cores). Figures are the best of ``REPEATS`` runs: the cores are shared.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, scrub_pii
from airflow_privacy.demo.data import SITES, generate_batch

T = TypeVar("T")
ROWS = 1_000_000
DAYS = 20
REPEATS = 3
DISTINCT_NOTES = 100_000

RULES = {
    "name": "drop",
    "email": {"hash": {}},
    "patient_id": {"tokenize": {}},
    "ssn": {"mask": {"keep_last": 4, "char": "*"}},
    "phone": "redact",
    "zip": {"generalize": {"prefix": 3}},
    "age": {"bucket": {"width": 10}},
    "birth_date": {"generalize": {"date": "year"}},
    "visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}},
    "note": {"scrub_pii": {"entities": ["EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IP", "DATE"]}},
}
K_ANONYMITY = {
    "quasi_identifiers": ["age", "zip", "sex"],
    "k": 5,
    "entity": "patient_id",
    "max_suppression": 0.05,
}
L_DIVERSITY = {"sensitive": "diagnosis", "l": 2}


def timed(fn: Callable[[], T], repeats: int = REPEATS) -> tuple[float, T]:
    """Fastest of ``repeats`` runs and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def make_batch(rows: int) -> pd.DataFrame:
    start = dt.date(2026, 1, 1)
    days = [
        generate_batch(site, start + dt.timedelta(days=d)) for site in SITES for d in range(DAYS)
    ]
    pool = pd.concat(days, ignore_index=True)
    picks = np.random.default_rng(5).integers(0, len(pool), rows)
    return pool.take(picks).reset_index(drop=True)


def make_distinct_batch(rows: int) -> pd.DataFrame:
    """The same days replicated with every patient renamed per copy: ~190 k patients, ~600 k
    distinct notes -- what dedupe-then-map cannot shrink much."""
    start = dt.date(2026, 1, 1)
    days = [
        generate_batch(site, start + dt.timedelta(days=d)) for site in SITES for d in range(DAYS)
    ]
    pool = pd.concat(days, ignore_index=True)
    copies = []
    for r in range(-(-rows // len(pool))):
        copy = pool.copy()
        copy["patient_id"] = copy["patient_id"] + f"-{r}"
        copy["email"] = f"r{r}." + copy["email"]
        copy["note"] = copy["note"] + f" (copy {r})"
        copies.append(copy)
    return pd.concat(copies, ignore_index=True).iloc[:rows]


def distinct_notes(n: int) -> pd.Series:
    """``n`` different notes with PII planted like the demo's (every one unique)."""
    rng = np.random.default_rng(11)
    i = np.arange(n)
    templates = [
        "Pt seen. Contact p{i}.x@example.org. Follow-up in 2 weeks.",
        "Called ({a}) {b}-{c:04d} to confirm appointment on 2026-{m:02d}-{d:02d}.",
        "SSN {s1:03d}-{s2:02d}-{c:04d} verified at intake. Visit {i}.",
        "Routine visit {i}. Billing card 4111 1111 1111 1111 on file.",
        "Records sent to 10.{o1}.{o2}.{o3} on {m}/{d}/2026, ref {i}.",
        "Stable, visit {i}. Continue current medication.",
    ]
    picks = rng.integers(0, len(templates), n)
    a, b, c = rng.integers(201, 990, n), rng.integers(200, 999, n), rng.integers(1, 9999, n)
    s1, s2 = rng.integers(1, 665, n), rng.integers(1, 99, n)
    m, d = rng.integers(1, 13, n), rng.integers(1, 29, n)
    octets = rng.integers(0, 256, (3, n))
    notes = [
        templates[t].format(
            i=k,
            a=a[k],
            b=b[k],
            c=c[k],
            s1=s1[k],
            s2=s2[k],
            m=m[k],
            d=d[k],
            o1=octets[0, k],
            o2=octets[1, k],
            o3=octets[2, k],
        )
        for k, t in zip(i.tolist(), picks.tolist(), strict=True)
    ]
    return pd.Series(pd.array(notes, dtype="str"), name="note")


def main() -> None:
    ring = KeyRing.generate()
    t_build = time.perf_counter()
    df = make_batch(ROWS)
    t_build = time.perf_counter() - t_build
    cardinality = {c: df[c].nunique() for c in ("patient_id", "email", "note", "visit_date")}

    def run(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        return deidentify(
            frame, RULES, keyring=ring, k_anonymity=K_ANONYMITY, l_diversity=L_DIVERSITY
        )

    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        src, dst = Path(tmp) / "batch.parquet", Path(tmp) / "out.parquet"
        df.to_parquet(src, index=False)

        def read_write() -> None:
            pd.read_parquet(src).to_parquet(dst, index=False)

        def task() -> dict:
            out, report = run(pd.read_parquet(src))
            out.to_parquet(dst, index=False)
            return report

        t_read, frame = timed(lambda: pd.read_parquet(src))
        t_io, _ = timed(read_write)
        t_deid, (out, report) = timed(lambda: run(frame))
        t_task, _ = timed(task)

    wide = make_distinct_batch(ROWS)
    wide_cardinality = {c: wide[c].nunique() for c in ("patient_id", "email", "note")}
    t_wide, (_, wide_report) = timed(lambda: run(wide), repeats=1)

    notes = distinct_notes(DISTINCT_NOTES)
    t_scrub, (_, found) = timed(lambda: scrub_pii(notes), repeats=1)

    assert report["rows_in"] == ROWS and report["k_achieved"] >= 5 and report["l_achieved"] >= 2
    rows = [
        (
            "read + write Parquet (pandas, pyarrow engine)",
            ROWS / t_io,
            "the I/O a task pays anyway",
        ),
        ("  of which read", ROWS / t_read, ""),
        (
            "deidentify, in memory (rules + k=5 + l=2)",
            ROWS / t_deid,
            f"target >= 1,000,000 rows/s; {t_deid / t_io:.2f}x the read+write time",
        ),
        (
            "read -> deidentify -> write (the whole task)",
            ROWS / t_task,
            f"{t_task / t_io:.2f}x read+write",
        ),
        (
            "deidentify, high-cardinality variant (see below)",
            ROWS / t_wide,
            f"{t_wide / t_io:.2f}x the read+write time",
        ),
        (
            f"scrub_pii, {DISTINCT_NOTES:,} all-distinct notes",
            DISTINCT_NOTES / t_scrub,
            "worst case for dedupe",
        ),
    ]
    print(
        f"airflow_privacy.core.deid benchmark: {ROWS:,} rows x {df.shape[1]} columns, "
        f"best of {REPEATS}; batch built in {t_build:.1f} s"
    )
    print("distinct values: " + ", ".join(f"{k} {v:,}" for k, v in cardinality.items()))
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'rows/s':>12}  comparison")
    print("-" * (width + 60))
    for name, rate, note in rows:
        print(f"{name:<{width}}  {rate:>12,.0f}  {note}")
    ka = report["k_anonymity"]
    print(
        f"k-anonymity: levels { ({c: v['description'] for c, v in ka['levels'].items()}) }, "
        f"suppressed {report['suppressed']:,} rows ({report['suppressed'] / ROWS:.2%}), "
        f"k achieved {report['k_achieved']}, l achieved {report['l_achieved']}"
    )
    print(
        "high-cardinality variant: "
        + ", ".join(f"{k} {v:,}" for k, v in wide_cardinality.items())
        + f" distinct; suppressed {wide_report['suppressed']:,}"
    )
    print(f"note PII replaced (1 M rows): {report['columns']['note']['found']}")
    print(f"all-distinct notes PII replaced: {found}")


if __name__ == "__main__":
    main()
