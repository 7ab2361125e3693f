"""``deidentify``: per-column rules, then k-anonymity / l-diversity enforcement.

Guarantee
    The returned frame contains no dropped column, and every ruled column holds only its
    rule's output (:mod:`.rules`). When ``k_anonymity`` is given, every equivalence class
    of the returned rows over the quasi-identifiers holds at least ``k`` distinct entities;
    with ``l_diversity``, at least ``l`` distinct non-null sensitive values (definitions,
    citations and the search in :mod:`.anonymity`); the report's ``k_achieved`` and
    ``l_achieved`` are measured on the returned rows. When the constraints cannot hold
    within ``max_suppression``, nothing is returned and
    :class:`~airflow_privacy.core.errors.PrivacyError` says which constraint fails and by
    how much. These are syntactic guarantees about this release only -- not differential
    privacy, and not robust to composition with other releases of the same people.

Audit report (JSON-able, no data values, no key material)::

    {"version", "rows_in", "rows_out", "suppressed", "k_achieved", "l_achieved",
     "columns": {column: {"transform", "params"?, "key_id"?, "algorithm"?,
                          "found"? (scrub_pii matches per entity),
                          "known_replaced"? (scrub_pii: rows x known columns replaced),
                          "nulled_without_entity"? (shift_dates rows without an entity),
                          "generalization"?: {"level", "description"}}},
     "k_anonymity"?: {"quasi_identifiers", "k", "entity", "max_suppression", "k_achieved",
                      "levels": {qi: {"level", "description", "max_level"?}}, "steps": [...]},
     "l_diversity"?: {"sensitive", "l", "l_achieved"},
     "information_loss"?: {"ncp", "ncp_by_column", "discernibility",
                           "discernibility_normalized", "policy", "exceeded"}}

Information loss (:mod:`.loss`, with k-anonymity or l-diversity): NCP and discernibility of
the release; above the ``information_loss`` policy's threshold a warning, or (``"on_exceed":
"fail"``) :class:`~.loss.InformationLossError` and nothing returned.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core import io
from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.crypto.columns import ATTRS_KEY
from airflow_privacy.core.deid import loss as loss_measure
from airflow_privacy.core.deid import streaming
from airflow_privacy.core.deid.anonymity import enforce
from airflow_privacy.core.deid.dedupe import distinct
from airflow_privacy.core.deid.generalize import Hierarchy, default_hierarchy
from airflow_privacy.core.deid.plan import REPORT_VERSION, anonymity_report, plan, report_head
from airflow_privacy.core.deid.rules import Batch, Keep, Rule
from airflow_privacy.core.deid.spec import check_request
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["REPORT_VERSION", "deidentify"]


def deidentify(
    df: pd.DataFrame | str | list[str],
    rules: Mapping[Hashable, Any],
    *,
    keyring: KeyRing | None = None,
    k_anonymity: Mapping[str, Any] | None = None,
    l_diversity: Mapping[str, Any] | None = None,
    unlisted: str = "keep",
    information_loss: Mapping[str, Any] | None = None,
    engine: str | None = None,
    destination: str | None = None,
    report_destination: str | None = None,
) -> tuple[pd.DataFrame | str, dict[str, Any]]:
    """De-identify a batch with per-column rules and optional k-anonymity / l-diversity.

    Example::

        out, report = deidentify(
            df,
            {"name": "drop", "email": {"hash": {}}, "patient_id": {"tokenize": {}},
             "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}},
             "visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}},
             "note": {"scrub_pii": {}}},
            keyring=ring,
            k_anonymity={"quasi_identifiers": ["age", "zip", "sex"], "k": 5,
                         "entity": "patient_id", "max_suppression": 0.05},
            l_diversity={"sensitive": "diagnosis", "l": 2},
        )

    :param df: the batch; it is not modified. Output rows keep their index labels. Or a
        Parquet dataset (a file, glob, hive-partitioned folder or fsspec URI, or a list of
        them; files in sorted order, with the same schema), de-identified into
        ``destination`` on the ``engine`` chosen.
    :param rules: column name -> rule (see :mod:`airflow_privacy.core.deid.rules`).
    :param keyring: key ring whose primary key derives the keys of ``hash``, ``tokenize``
        and ``shift_dates``; required when one of them is used.
    :param k_anonymity: ``{"quasi_identifiers": [...], "k": int >= 2, "entity": column
        (optional: count distinct entities rather than rows), "max_suppression": fraction
        of rows in [0, 1) that may be removed (default 0), "max_generalization":
        {quasi-identifier: highest level} (optional; level 0 is what the column's rule
        releases, the report's ``levels`` name each level -- e.g. ``{"age": 2}`` keeps ages
        out of ``"*"``)}``.
    :param l_diversity: ``{"sensitive": column, "l": int >= 2}``; its classes are those of
        ``k_anonymity``'s quasi-identifiers (or its own ``"quasi_identifiers"``, and then
        its own ``"max_suppression"`` and ``"max_generalization"``, when there is no
        ``k_anonymity``).
    :param unlisted: what happens to columns without a rule: ``"keep"`` (default),
        ``"drop"``, or ``"error"`` (every column must have a rule).
    :param information_loss: policy on the report's information loss (:mod:`.loss`):
        ``{"max_ncp": fraction or None (default 0.5), "max_discernibility": fraction or None
        (default None), "on_exceed": "warn" (default, :class:`~.loss.InformationLossWarning`)
        or "fail" (:class:`~.loss.InformationLossError`, nothing returned)}``.
    :param engine: for a dataset: ``"pandas"`` (in memory), ``"duckdb"`` (streamed in record
        batches, classes counted by DuckDB: memory does not grow with the table) or
        ``"spark"`` (classes counted and rules run on the Spark session of
        :mod:`airflow_privacy.core.dp.engines.spark_session`; :mod:`.spark_engine`) -- the
        same rows, values and report on each; None picks pandas or DuckDB by size
        (:mod:`.streaming`). A DataFrame always runs on ``"pandas"``.
    :param destination: for a dataset: URI of the de-identified Parquet file (required),
        written atomically -- nothing appears there unless the whole release succeeds.
    :param report_destination: for a dataset: URI of the JSON audit report, written
        atomically just before ``destination`` (optional).
    :return: the de-identified frame (for a dataset: ``destination``) and the JSON-able
        audit report.
    :raises InvalidParameterError: a bad rule, parameter or constraint.
    :raises SchemaError: a column is missing, duplicated or of the wrong type for its rule.
    :raises PrivacyError: k-anonymity / l-diversity cannot hold within ``max_suppression``
        (and ``max_generalization``), or the information loss fails the policy.
    """
    if not isinstance(df, pd.DataFrame):
        if not (isinstance(df, str) or (isinstance(df, (list, tuple)) and df and all(isinstance(u, str) for u in df))):
            raise InvalidParameterError("df", type(df).__name__, "expected a pandas DataFrame or a Parquet dataset "
                                        "(path, glob, folder or URI, or a list of them)")
        if destination is None:
            raise InvalidParameterError("destination", None, "required when the input is a Parquet dataset "
                                        "(path, glob, folder or URI), not a DataFrame")
        return deidentify_dataset(df, destination, rules, keyring=keyring, k_anonymity=k_anonymity,
                                  l_diversity=l_diversity, unlisted=unlisted, information_loss=information_loss,
                                  engine=engine, report_destination=report_destination)
    if engine not in (None, "pandas"):
        raise InvalidParameterError("engine", engine, "a pandas DataFrame runs on engine='pandas'; pass a Parquet "
                                    "dataset (path, glob, folder or URI) for engine='duckdb'")
    if destination is not None or report_destination is not None:
        raise InvalidParameterError("destination", destination, "only for a Parquet dataset input; a DataFrame "
                                    "is returned")
    checked = plan(df, rules, keyring=keyring, k_anonymity=k_anonymity, l_diversity=l_diversity,
                   unlisted=unlisted, information_loss=information_loss)
    request, parsed, anonymity = checked.request, dict(checked.rules), checked.anonymity
    batch = Batch(df, keyring)
    columns_report = {str(c): rule.report() for c, rule in parsed.items()}
    released: dict[Hashable, pd.Series] = {}
    extra: dict[Hashable, dict[str, Any]] = {}
    sections: dict[str, Any] = {}
    rows = None
    result = None
    if anonymity is not None:
        # Phase 1, on all rows: what enforcement needs -- the released values of
        # quasi-identifiers whose rule does not generalize, and of the sensitive column.
        early = [
            c
            for c in anonymity.quasi_identifiers
            if not parsed[c].generalizing and not isinstance(parsed[c], Keep)
        ]
        if anonymity.sensitive is not None and not isinstance(parsed[anonymity.sensitive], Keep):
            early.append(anonymity.sensitive)
        for column in early:
            applied = parsed[column].apply(batch)
            assert applied.series is not None
            released[column] = applied.series
            extra[column] = applied.report
        hierarchies = [
            _hierarchy(parsed[c], c, batch, released) for c in anonymity.quasi_identifiers
        ]
        names = [str(c) for c in anonymity.quasi_identifiers]
        result = enforce(
            hierarchies,
            names,
            k=anonymity.k,
            l_div=anonymity.l_div,
            entity=(
                batch.distinct(anonymity.entity).codes if anonymity.entity is not None else None
            ),
            sensitive=_sensitive_codes(anonymity.sensitive, parsed, batch, released),
            max_suppression=anonymity.max_suppression,
            entity_name=None if anonymity.entity is None else str(anonymity.entity),
            sensitive_name=None if anonymity.sensitive is None else str(anonymity.sensitive),
            max_levels=[anonymity.max_levels.get(c) for c in anonymity.quasi_identifiers],
        )
        if result.keep is not None:
            rows = np.flatnonzero(result.keep)
        levels: dict[str, dict[str, Any]] = {}
        for column, name, h, level in zip(
            anonymity.quasi_identifiers, names, hierarchies, result.levels, strict=True
        ):
            released[column] = h.output(level, rows)
            levels[name] = {"level": level, "description": h.describe(level)}
            if column in anonymity.max_levels:
                levels[name]["max_level"] = anonymity.max_levels[column]
            columns_report[name]["generalization"] = levels[name]
        for column in early:
            if column not in anonymity.quasi_identifiers and rows is not None:
                released[column] = released[column].take(rows)
            if rows is not None and {"found", "nulled_without_entity"} & set(extra[column]):
                # counts were taken before suppression: recount on the released rows
                extra[column] = parsed[column].apply(batch.select(rows)).report
        sections = anonymity_report(anonymity, names, levels, result)
        # before phase 2: a release the policy refuses costs no more work and returns nothing
        loss = loss_measure.information_loss(
            hierarchies, names, result.levels, [loss_measure.kept_counts(h, result.keep) for h in hierarchies],
            len(df), result.class_rows)
        loss_measure.apply_policy(loss, request.loss_policy, levels)
        sections["information_loss"] = loss

    # Phase 2, on the released rows only: every other column.
    kept = batch.select(rows)
    hints: dict[str, Any] = {}
    outputs: dict[Hashable, pd.Series] = {}
    for column, rule in parsed.items():
        if column in released:
            series, report = released[column], extra.get(column, {})
        else:
            applied = rule.apply(kept)
            series, report = applied.series, applied.report
        hint = report.pop("_hint", None)
        if hint:
            hints[str(column)] = hint
        columns_report[str(column)].update(report)
        if series is not None:
            outputs[column] = series

    out = pd.DataFrame(
        {c: outputs[c] for c in df.columns if c in outputs}, index=kept.index, copy=False
    )
    attrs = dict(df.attrs)
    if hints:
        attrs[ATTRS_KEY] = {**attrs.get(ATTRS_KEY, {}), **hints}
    out.attrs = attrs
    report = {**report_head(len(df), len(out), result), "columns": columns_report, **sections}
    return out, report


def _hierarchy(
    rule: Rule, column: Hashable, batch: Batch, outputs: Mapping[Hashable, pd.Series]
) -> Hierarchy:
    if rule.generalizing:
        return rule.hierarchy(batch)
    if isinstance(rule, Keep):
        return default_hierarchy(batch.series(column), batch.distinct(column))
    return default_hierarchy(outputs[column])


def _sensitive_codes(
    column: Hashable | None,
    rules: Mapping[Hashable, Rule],
    batch: Batch,
    outputs: Mapping[Hashable, pd.Series],
) -> np.ndarray | None:
    # Diversity is counted on the values released, i.e. after the column's own rule.
    if column is None:
        return None
    if isinstance(rules[column], Keep):
        return batch.distinct(column).codes
    return distinct(outputs[column]).codes


def deidentify_dataset(
    source: str | list[str],
    destination: str,
    rules: Mapping[Hashable, Any],
    *,
    engine: str | None,
    report_destination: str | None,
    batch_rows: int | None = None,
    **options: Any,
) -> tuple[str, dict[str, Any]]:
    """:func:`deidentify` of a Parquet dataset into ``destination`` on the engine chosen
    (:mod:`.streaming`); ``options`` are :func:`deidentify`'s keyring, k_anonymity,
    l_diversity, unlisted and information_loss. Everything is checked -- the request, the
    engine, the files and their schemas, the columns named -- before a row is read; nothing
    is written unless the whole release succeeds (the report just before the batch, each
    atomically)."""
    check_request(rules, **{k: v for k, v in options.items() if k != "keyring"})
    chosen = streaming.choose_engine(source, engine)
    ds, arrow = streaming.open_dataset(source)
    checked = plan(arrow.schema.empty_table().to_pandas(), rules, **options)
    if chosen != "pandas":
        report = streaming.stream(ds, arrow, checked, keyring=options.get("keyring"), destination=destination,
                                  report_destination=report_destination, write_report=_write_report,
                                  batch_rows=batch_rows or streaming.BATCH_ROWS, engine=chosen)
        return destination, report
    out, report = deidentify(arrow.to_table().to_pandas(), rules, **options)
    _write_report(report, report_destination)
    io.write_batch(out, destination)
    return destination, report


def _write_report(report: dict[str, Any], destination: str | None) -> None:
    if destination is not None:
        io.write_bytes(json.dumps(report, indent=2, default=str).encode(), destination)
