"""De-identification out of core: a Parquet dataset streamed through record batches, the
equivalence classes of k-anonymity / l-diversity counted by an engine's SQL.

Engines (``engine=`` of :func:`~airflow_privacy.core.deid.deidentify` and
``DeidentifyOperator``):

* ``"pandas"`` -- the whole batch in memory (:mod:`.deidentify`).
* ``"duckdb"`` -- this module with :mod:`.duckdb_engine`; memory bounded by the record batch
  size and DuckDB's ``memory_limit`` (:data:`.duckdb_engine.MEMORY_LIMIT`; DuckDB spills to
  disk beyond it), not by the table.
* ``"spark"`` -- this module with :mod:`.spark_engine`: the SQL runs on Spark, the second
  pass on its executors; only chosen when asked for.

Each out-of-core engine is one module behind :func:`backend`; this module holds what they
share (the ladders, the level search, the report, the writing of the file).

When ``engine`` is not given (:func:`choose_engine`): a DataFrame or a CSV file runs on
``"pandas"``; a Parquet dataset runs on ``"pandas"`` when its files total at most
:data:`PANDAS_MAX_BYTES` (64 MiB of Parquet: about a million rows of the demo's patient
batches, 1-2 GB as frames while rules run), else on ``"duckdb"``.

How (same output as ``"pandas"``, row for row, value for value, and the same audit report):

1. Every column whose release depends on the whole column gets its ladder
   (:mod:`.generalize`) over the column's *distinct* values, read with ``SELECT DISTINCT``:
   generalizing rules (a bucket's labels depend on whether every value is an integer, its
   ladder on the range) and the quasi-identifiers. A quasi-identifier whose rule does not
   generalize (``keep``, ``mask``, ``hash``...) is released through that rule first, applied
   to the distinct values -- which is why such a rule must be one value at a time
   (not ``shift_dates``, nor ``scrub_pii`` with ``known``: those read other columns).
2. With k-anonymity or l-diversity, the engine (:mod:`.class_counts`) compresses the dataset
   to one row per distinct (quasi-identifier codes, entity, sensitive code) with its row
   count, and answers each
   state of the search of :mod:`.anonymity` with one ``GROUP BY`` over the classes at
   those levels: rows, ``count(DISTINCT entity)`` (null entities count as one),
   ``count(DISTINCT sensitive)`` over non-null values. :func:`.anonymity.climb` drives it
   exactly as it drives the in-memory search, so both pick the same levels and fail with
   the same message. The information loss (:mod:`.loss`) is computed, and its policy
   applied, before anything is written.
3. A second pass streams the dataset in its order (files sorted, as
   :mod:`airflow_privacy.core.dp.engines.dataset` orders them) in batches of up to
   :data:`BATCH_ROWS` rows, drops the rows of violating classes, and applies every rule per
   batch: row-wise and keyed rules are stateless per value or entity (an HMAC token, an
   AES-SIV token, a date shift keyed by the entity), so a batch gives what the whole table
   gives. Report counts (``found``, ``known_replaced``, ``nulled_without_entity``) are
   summed over the batches, in their order (:func:`.release.fold`).

   On DuckDB the pass is a bounded, ordered pipeline (:mod:`.pipeline`): the calling thread reads one
   Parquet row group at a time, only the columns the release needs, and gathers batches;
   two threads release batches (Arrow kernels, the Parquet encoder and pandas' hash tables
   release the GIL, so both cores work); one thread writes the released frames in the
   input's order. Keyed results (HMAC MACs, AES-SIV tokens) are kept across batches in a
   bounded :mod:`.memo`, so a patient's id seen in ten batches is encrypted once. Measured
   with ``bench/deid_engines.py`` (2 cores): the sequential pass took 3.4x the wall time per
   row of DuckDB reading and writing the same files (0.57 M rows/s at 2e6 rows, idle
   machine); the pipeline 1.2-1.5x at 2e7-5e7 rows (1.25-1.28 M rows/s, peak RSS 1.27 GB)
   and 1.4-2.3x at 2e6 rows (0.6-1.07 M rows/s), where the first pass and the pipeline's
   start and end weigh more -- on a host shared with other benchmarks. On Spark the
   executors release the batches (:mod:`.spark_engine`) and this process writes them.

The output is one Parquet file written through :func:`airflow_privacy.core.io.open_atomic`:
killed or failing at any point, the task leaves no partial output.
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.crypto.columns import ATTRS_KEY
from airflow_privacy.core.deid import loss as loss_measure
from airflow_privacy.core.deid.anonymity import climb, outcome
from airflow_privacy.core.deid.class_counts import ClassCount, Violating, compress
from airflow_privacy.core.deid.dedupe import Distinct, distinct
from airflow_privacy.core.deid.generalize import default_hierarchy
from airflow_privacy.core.deid.pipeline import ParquetSink, read_columns
from airflow_privacy.core.deid.plan import Plan, anonymity_report, report_head
from airflow_privacy.core.deid.release import Ladder, Release, fold
from airflow_privacy.core.deid.rules import Batch, Keep, Rule
from airflow_privacy.core.deid.rules_keyed import ShiftDates
from airflow_privacy.core.deid.rules_text import ScrubPII
from airflow_privacy.core.dp.engines.dataset import ParquetDataset, dataset_bytes, resolve
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["ENGINES", "PANDAS_MAX_BYTES", "choose_engine", "open_dataset", "stream"]

ENGINES = ("pandas", "duckdb", "spark")
"""Engines of ``deidentify``; ``engine=None`` picks one by :func:`choose_engine`."""
PANDAS_MAX_BYTES = 64 << 20
BATCH_ROWS = 1 << 18
"""Rows per batch of the second pass at most (:func:`.pipeline.batches` says why)."""


def choose_engine(source: Any, engine: str | None) -> str:
    """``engine`` when given (checked), else the rule of the module docstring."""
    if engine is not None:
        if engine not in ENGINES:
            raise InvalidParameterError("engine", engine, f"expected one of {list(ENGINES)} or None (chosen by "
                                        "input size)")
        if engine != "pandas":
            backend(engine).check()
        return engine
    uris = [source] if isinstance(source, str) else list(source)
    if any(str(u).lower().endswith(".csv") for u in uris):
        return "pandas"
    return "pandas" if dataset_bytes(source) <= PANDAS_MAX_BYTES else "duckdb"


def backend(engine: str) -> ModuleType:
    """The module running an out-of-core engine's passes (:mod:`.duckdb_engine`,
    :mod:`.spark_engine`): ``check()`` (the engine is installed, else an error naming
    ``engine``), ``counts(ds)`` (a context manager: the SQL of :mod:`.class_counts` over the
    dataset) and ``released(ds, arrow, release, batch_rows=, columns=, destination=)`` (the
    released batches in the input's order)."""
    return importlib.import_module(f"airflow_privacy.core.deid.{engine}_engine")


def open_dataset(source: Any) -> tuple[ParquetDataset, pads.Dataset]:
    """The dataset ``source`` names, resolved (footers only) and opened for streaming.

    :raises InvalidParameterError: naming ``source``: no Parquet file, or no rows.
    :raises SchemaError: the files' schemas differ.
    """
    try:
        ds = resolve(source)
    except SchemaError as exc:  # its message speaks of DP charges; here nothing is written
        raise SchemaError(str(exc).replace("nothing was charged", "nothing was written")) from None
    # hive partition values only when the source names a partitioned folder: files listed
    # from sibling folders (site=a/x.parquet, site=b/x.parquet) are read as they are, as
    # DuckDB's scan reads them (their paths may repeat a column: site=a holding column site)
    arrow = pads.dataset(list(ds.files), filesystem=ds.filesystem, format="parquet",
                         partitioning="hive" if ds.partition_keys else None, partition_base_dir=ds.base)
    return ds, arrow


def stream(
    ds: ParquetDataset,
    arrow: pads.Dataset,
    checked: Plan,
    *,
    keyring: KeyRing | None,
    destination: str,
    report_destination: str | None,
    write_report: Any,
    batch_rows: int = BATCH_ROWS,
    engine: str = "duckdb",
) -> dict[str, Any]:
    """De-identify ``ds`` into ``destination`` (one Parquet file, atomically) on ``engine``
    and return the report; ``write_report(report, report_destination)`` runs just before the
    output is published. Parameters were checked by :func:`.plan.plan`."""
    from airflow_privacy.core import io

    run = backend(engine)
    parsed, anonymity = checked.rules, checked.anonymity
    columns_report = {str(c): rule.report() for c, rule in parsed.items()}
    with run.counts(ds) as db:
        qis = list(anonymity.quasi_identifiers) if anonymity is not None else []
        ladders = {c: _ladder(db, arrow.schema, c, r, keyring, c in qis, engine)
                   for c, r in parsed.items() if r.generalizing or c in qis}
        bad, sections, result = None, {}, None
        if anonymity is not None:
            result, bad, sections = _enforce(db, arrow.schema, checked, ladders, keyring, ds.rows, engine)
            for name, entry in sections["_levels"].items():
                columns_report[name]["generalization"] = entry
    for ladder in ladders.values():  # state built lazily, built here before the worker threads share it:
        ladder.hierarchy.codes(ladder.level)  # the level's classes and labels
        # pandas' hash table of the distinct values: filled on the first lookup (not one of
        # the index itself, which takes a shortcut), with the GIL released for numbers -- a
        # second thread could look up a half-filled table
        ladder.raw.uniques.get_indexer(ladder.raw.uniques[:1])
    release = Release(keyring, parsed, ladders, bad, qis)
    hints: dict[str, Any] = {}
    rows_out = 0
    with io.open_atomic(destination) as fh, ParquetSink(fh) as sink:
        for released in run.released(ds, arrow, release, batch_rows=batch_rows,
                                     columns=read_columns(arrow.schema, checked), destination=destination):
            if released is None:
                continue
            out, reports, attrs = released  # a frame (this process's threads) or an Arrow table (Spark's)
            for column, entry in reports:  # folded in the input's order: the sequential report
                hint = entry.pop("_hint", None)
                if hint:
                    hints[str(column)] = hint
                fold(columns_report[str(column)], entry)
            sink.write(out, {**attrs, ATTRS_KEY: dict(hints)} if hints else None)
            rows_out += len(out)
        written = sink.close()
        assert written, "at least one row is released (max_suppression < 1)"
        report = {**report_head(ds.rows, rows_out, result), "columns": columns_report,
                  **{k: v for k, v in sections.items() if k != "_levels"}}
        write_report(report, report_destination)
    return report


def _distinct_values(db: Any, schema: pa.Schema, column: Hashable) -> tuple[pa.Array, pd.Series]:
    """The column's distinct values as the engine returns them (to join on) and as pandas
    reads them from Parquet (to build ladders on: same dtype as the in-memory engine's frame)."""
    values = db.query(f"SELECT DISTINCT {db.quote(column)} AS v FROM {db.scan}").column(0).combine_chunks()
    typed = values.cast(schema.field(str(column)).type)
    return values, pa.table({str(column): typed}).to_pandas()[str(column)].rename(column)


def _ladder(db: Any, schema: pa.Schema, column: Hashable, rule: Rule, keyring: KeyRing | None,
            qi: bool, engine: str) -> Ladder:
    values, series = _distinct_values(db, schema, column)
    raw = distinct(series)
    frame = Batch(pd.DataFrame({column: series}), keyring)
    if rule.generalizing:
        return Ladder(raw, _first_codes(raw, raw), rule.hierarchy(frame), None, values)
    if isinstance(rule, Keep):
        return Ladder(raw, _first_codes(raw, raw), default_hierarchy(series, raw), None, values)
    assert qi
    _one_value_at_a_time(column, rule, "a quasi-identifier", engine)
    applied = rule.apply(frame)
    assert applied.series is not None
    hierarchy = default_hierarchy(applied.series)
    return Ladder(raw, _first_codes(raw, hierarchy.source), hierarchy, rule, values)


def _first_codes(raw: Distinct, released: Distinct) -> np.ndarray:
    """Per raw distinct value, the code of its released value (both factorize the same rows:
    the distinct values)."""
    out = np.full(raw.size, -1, dtype=np.int64)
    present = raw.codes >= 0
    out[raw.codes[present]] = released.codes[present]
    return out


def _one_value_at_a_time(column: Hashable, rule: Rule, role: str, engine: str) -> None:
    if isinstance(rule, ShiftDates) or (isinstance(rule, ScrubPII) and rule.known):
        raise InvalidParameterError(
            "engine", engine, f"column {column!r} is {role} with rule {rule.name!r}, which reads other columns; "
            "out of core only rules that release one value at a time are supported there -- use engine='pandas'")


def _enforce(db: Any, schema: pa.Schema, checked: Plan, ladders: dict[Hashable, Ladder],
             keyring: KeyRing | None, rows_in: int, engine: str) -> tuple[Any, Violating, dict[str, Any]]:
    """Steps 2 of the module docstring: levels, the violating classes, the report sections."""
    anonymity = checked.anonymity
    assert anonymity is not None
    qis = list(anonymity.quasi_identifiers)
    names = [str(c) for c in qis]
    columns = []
    for column in qis:
        ladder = ladders[column]
        columns.append((column, ladder.values, np.append(ladder.to_code, -1)[ladder.raw.codes]))
    entity, sensitive = anonymity.entity, anonymity.sensitive
    coded_sensitive = None
    if sensitive is not None:
        rule = checked.rules[sensitive]
        raw_values, series = _distinct_values(db, schema, sensitive)
        if isinstance(rule, Keep):
            codes = distinct(series).codes
        else:
            _one_value_at_a_time(sensitive, rule, "the sensitive column", engine)
            applied = rule.apply(Batch(pd.DataFrame({sensitive: series}), keyring))
            assert applied.series is not None
            codes = distinct(applied.series).codes
        coded_sensitive = (sensitive, raw_values, codes)
    compress(db, columns, entity, coded_sensitive)
    hierarchies = [ladders[c].hierarchy for c in qis]
    count = ClassCount(db, hierarchies, anonymity.k, anonymity.l_div, entity is not None, sensitive is not None)
    levels, state, steps = climb(
        count.evaluate, hierarchies, names, rows_in=rows_in, k=anonymity.k, l_div=anonymity.l_div,
        max_suppression=anonymity.max_suppression,
        entity_name=None if entity is None else str(entity),
        sensitive_name=None if sensitive is None else str(sensitive),
        max_levels=[anonymity.max_levels.get(c) for c in qis],
    )
    result = outcome(levels, state, steps, None)
    assert state.keys is not None
    bad = Violating(state.keys[state.bad], [h.classes(lv) for h, lv in zip(hierarchies, levels, strict=True)])
    report_levels: dict[str, dict[str, Any]] = {}
    for column, name, h, level in zip(qis, names, hierarchies, levels, strict=True):
        ladders[column].level = level
        report_levels[name] = {"level": level, "description": h.describe(level)}
        if column in anonymity.max_levels:
            report_levels[name]["max_level"] = anonymity.max_levels[column]
    sections = anonymity_report(anonymity, names, report_levels, result)
    loss = loss_measure.information_loss(hierarchies, names, levels, count.kept_counts(levels, bad), rows_in,
                                         result.class_rows)
    loss_measure.apply_policy(loss, checked.request.loss_policy, report_levels)
    sections["information_loss"] = loss
    sections["_levels"] = report_levels
    return result, bad, sections


