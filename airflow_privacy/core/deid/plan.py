"""A validated de-identification request bound to a batch's columns, and the audit report's
anonymity sections -- shared by the in-memory path (:mod:`.deidentify`) and the out-of-core
one (:mod:`.streaming`), so both refuse the same requests and report the same way."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid.anonymity import Enforcement
from airflow_privacy.core.deid.rules import Rule, parse_rule
from airflow_privacy.core.deid.spec import Anonymity, Request, check_columns, check_request
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["REPORT_VERSION", "Plan", "anonymity_report", "plan"]

REPORT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Every column's rule (listed or ``unlisted``), and the anonymity constraints."""

    request: Request
    rules: dict[Hashable, Rule]
    anonymity: Anonymity | None


def plan(
    df: pd.DataFrame,
    rules: Mapping[Hashable, Any],
    *,
    keyring: KeyRing | None,
    k_anonymity: Mapping[str, Any] | None,
    l_diversity: Mapping[str, Any] | None,
    unlisted: str,
    information_loss: Mapping[str, Any] | None,
) -> Plan:
    """Validate a request against the columns of ``df`` (its rows are not read).

    :raises InvalidParameterError: a bad rule, parameter or constraint, or no key ring for
        keyed rules.
    :raises SchemaError: a column is missing or duplicated.
    """
    if not df.columns.is_unique:
        duplicated = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise SchemaError(f"the batch has duplicated column names {duplicated}")
    texts = pd.Index([str(c) for c in df.columns])
    if not texts.is_unique:
        # Keys, the report and decryption hints are per column *text* (what survives CSV or
        # Parquet): 0 and "0" would share keyed tokens and one report entry.
        clash = sorted({repr(c) for c in df.columns if (texts == str(c)).sum() > 1})
        raise SchemaError(f"the batch has column names that are equal as text: {clash}")
    request = check_request(rules, k_anonymity=k_anonymity, l_diversity=l_diversity,
                            unlisted=unlisted, information_loss=information_loss)
    check_columns(request, df)
    parsed = dict(request.rules)
    missing = [c for c in df.columns if c not in parsed]
    if missing and unlisted == "error":
        raise SchemaError(f"columns {missing} have no rule (unlisted='error')")
    for column in missing:
        parsed[column] = parse_rule(column, unlisted)
    keyed = [str(c) for c, r in parsed.items() if r.keyed]
    if keyed and not isinstance(keyring, KeyRing):
        raise InvalidParameterError(
            "keyring",
            type(keyring).__name__ if keyring is not None else None,
            f"expected a KeyRing: the rules of columns {keyed} use keys",
        )
    return Plan(request, parsed, request.anonymity)


def report_head(rows_in: int, rows_out: int, result: Enforcement | None) -> dict[str, Any]:
    """The report's counts: rows in and out, suppressed, k and l achieved."""
    return {
        "version": REPORT_VERSION,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "suppressed": rows_in - rows_out,
        "k_achieved": None if result is None else result.k_achieved,
        "l_achieved": None if result is None else result.l_achieved,
    }


def anonymity_report(
    anonymity: Anonymity,
    names: list[str],
    levels: dict[str, dict[str, Any]],
    result: Enforcement,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if anonymity.k is not None:
        report["k_anonymity"] = {
            "quasi_identifiers": names,
            "k": anonymity.k,
            "entity": None if anonymity.entity is None else str(anonymity.entity),
            "max_suppression": anonymity.max_suppression,
            "k_achieved": result.k_achieved,
            "levels": levels,
            "steps": result.steps,
        }
    if anonymity.l_div is not None:
        report["l_diversity"] = {
            "sensitive": str(anonymity.sensitive),
            "l": anonymity.l_div,
            "l_achieved": result.l_achieved,
            "quasi_identifiers": names,
        }
        if anonymity.k is None:
            report["l_diversity"].update(
                {
                    "max_suppression": anonymity.max_suppression,
                    "levels": levels,
                    "steps": result.steps,
                }
            )
    return report
