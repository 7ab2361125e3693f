"""Declarative per-column rules: parsing, validation and application.

A rule is written as a name (``"drop"``) or a one-key mapping ``{name: {params}}``
(``{"mask": {"keep_last": 4}}``). Every parameter is validated before any data is touched;
errors name the parameter as ``rules['<column>'].<rule>.<param>``.

=============  ======================================================  =======================
rule           parameters (defaults)                                    output
=============  ======================================================  =======================
keep           --                                                       the column unchanged
drop           --                                                       column removed
redact         ``value`` ("<REDACTED>")                                 constant text
replace        ``value`` (required: str, int, float or bool)            constant
mask           ``keep_last`` (0), ``keep_first`` (0), ``char`` ("*"),   masked text
               ``preserve`` ("": characters never masked, e.g. "-")
hash           ``length`` (16 bytes, 8-32), ``domain`` (column name)    ``h1:<kek>:<b64url>``
tokenize       --                                                       ``v1:<kek>:<b64url>``
bucket         ``width`` | ``edges``; ``origin`` (0), ``top`` (none)    ``"40-49"``, ``"90+"``
generalize     ``prefix`` (+ ``fill`` "*") | ``date`` (day, month,        text labels
               quarter, year, decade) | ``map`` (dict or list of
               dicts, + ``default``)
shift_dates    ``max_days`` (required, >= 1), ``by`` (required: entity    same date type
               column, not the date column itself)
scrub_pii      ``entities`` (all of ENTITIES)                           text with ``<EMAIL>``..
=============  ======================================================  =======================

Nulls stay nulls under every rule; ``keep`` and ``drop`` aside, every rule runs once per
distinct value (:mod:`.dedupe`). ``hash``, ``tokenize`` and ``shift_dates`` need a key ring
(:mod:`.keyed`).

The rules live per family (:mod:`.rules_values`, :mod:`.rules_keyed`,
:mod:`.rules_generalizing`, :mod:`.rules_text`) on the shared base of :mod:`.rule_base`;
this module parses a rules mapping into them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import pandas as pd

from airflow_privacy.core.deid.rule_base import Applied, Batch, Params, Rule, is_column_name
from airflow_privacy.core.deid.rules_generalizing import Bucket, Generalize
from airflow_privacy.core.deid.rules_keyed import Hash, ShiftDates, Tokenize
from airflow_privacy.core.deid.rules_text import ScrubPII
from airflow_privacy.core.deid.rules_values import Drop, Keep, Mask, Redact, Replace
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = [
    "KEYED_RULES",
    "RULES",
    "Applied",
    "Batch",
    "Drop",
    "Keep",
    "Rule",
    "check_rule_columns",
    "is_column_name",
    "needs_keyring",
    "parse_rule",
    "parse_rules",
]


_RULE_TYPES: dict[str, type[Rule]] = {
    r.name: r
    for r in (
        Keep,
        Drop,
        Redact,
        Replace,
        Mask,
        Hash,
        Tokenize,
        Bucket,
        Generalize,
        ShiftDates,
        ScrubPII,
    )
}
RULES: tuple[str, ...] = tuple(_RULE_TYPES)
"""Every rule name :func:`~airflow_privacy.core.deid.deidentify` accepts."""


KEYED_RULES: tuple[str, ...] = tuple(name for name, r in _RULE_TYPES.items() if r.keyed)
"""Rules that derive keys from a key ring: ``hash``, ``tokenize``, ``shift_dates``."""


def needs_keyring(rules: Mapping[Hashable, Any]) -> bool:
    """Whether any rule of ``rules`` (in either spelling) needs a key ring -- so a caller can
    skip fetching keys. Malformed specs count as not keyed; :func:`deidentify` rejects them.
    """
    for spec in rules.values():
        name = spec if isinstance(spec, str) else None
        if isinstance(spec, Mapping) and len(spec) == 1:
            name = next(iter(spec))
        if name in KEYED_RULES:
            return True
    return False


def parse_rule(column: Hashable, spec: Any) -> Rule:
    """One rule from its spelling (``"drop"`` or ``{"mask": {...}}``)."""
    if isinstance(spec, str):
        name, raw = spec, None
    elif isinstance(spec, Mapping) and len(spec) == 1:
        ((name, raw),) = spec.items()
    else:
        raise InvalidParameterError(
            f"rules[{column!r}]",
            spec,
            "expected a rule name such as 'drop' or a one-key mapping such as "
            "{'mask': {'keep_last': 4}}",
        )
    rule_type = _RULE_TYPES.get(name) if isinstance(name, str) else None
    if rule_type is None:
        raise InvalidParameterError(
            f"rules[{column!r}]", name, f"unknown rule; expected one of {list(RULES)}"
        )
    params = Params(column, name, raw)
    rule = rule_type(column, params)
    params.finish()
    return rule


def parse_rules(rules: Any) -> dict[Hashable, Rule]:
    """Validate the whole rules mapping without data (what a DAG can check when parsed)."""
    if not isinstance(rules, Mapping):
        raise InvalidParameterError(
            "rules", type(rules).__name__, "expected a mapping of column name to rule"
        )
    return {column: parse_rule(column, spec) for column, spec in rules.items()}


def check_rule_columns(parsed: Mapping[Hashable, Rule], df: pd.DataFrame) -> None:
    """The columns the rules name (their own, ``shift_dates.by``, ``scrub_pii.known``) are in
    the batch."""
    for column, rule in parsed.items():
        if column not in df.columns:
            raise SchemaError(
                f"rules: column {column!r} is not in the batch; it has {list(df.columns)}"
            )
        if isinstance(rule, (ShiftDates, ScrubPII)):
            rule.check(df)
