"""The checks of a de-identification request that need no data.

:func:`check_request` validates the rules, ``k_anonymity``, ``l_diversity``, ``unlisted``
and the ``information_loss`` policy -- everything a DAG can verify when its file is parsed
(a misspelt rule, ``k_anonymity`` without ``k``) -- and :func:`check_columns` then checks
the names they use against a batch. :func:`~airflow_privacy.core.deid.deidentify` runs
both, so the parse-time check and the run can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.deid.rules import (
    Drop,
    Rule,
    check_rule_columns,
    is_column_name,
    parse_rules,
)
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["DEFAULT_LOSS_POLICY", "Anonymity", "LossPolicy", "Request", "check_columns", "check_request"]

UNLISTED = ("keep", "drop", "error")
ON_EXCEED = ("warn", "fail")


@dataclass(frozen=True)
class Anonymity:
    quasi_identifiers: list[Hashable]
    k: int | None
    entity: Hashable | None
    max_suppression: float
    sensitive: Hashable | None
    l_div: int | None
    max_levels: dict[Hashable, int] = field(default_factory=dict)  # per quasi-identifier


@dataclass(frozen=True)
class LossPolicy:
    """When a release loses too much: NCP (0..1) above ``max_ncp``, or normalized
    discernibility (0..1) above ``max_discernibility``, warns or fails per ``on_exceed``."""

    max_ncp: float | None = 0.5
    max_discernibility: float | None = None
    on_exceed: str = "warn"


DEFAULT_LOSS_POLICY = LossPolicy()
"""Warn when more than half the information in the quasi-identifiers is lost (NCP > 0.5)."""


@dataclass(frozen=True)
class Request:
    rules: dict[Hashable, Rule]  # the listed columns' rules
    unlisted: str
    anonymity: Anonymity | None
    loss_policy: LossPolicy


def check_request(
    rules: Any,
    *,
    k_anonymity: Any = None,
    l_diversity: Any = None,
    unlisted: Any = "keep",
    information_loss: Any = None,
) -> Request:
    """Validate a request without data (parameters as in
    :func:`~airflow_privacy.core.deid.deidentify`).

    :raises InvalidParameterError: a bad rule, parameter or constraint, named.
    """
    if unlisted not in UNLISTED:
        raise InvalidParameterError("unlisted", unlisted, f"expected one of {list(UNLISTED)}")
    parsed = parse_rules(rules)
    anonymity = _anonymity(k_anonymity, l_diversity, parsed, unlisted)
    return Request(parsed, unlisted, anonymity, _loss_policy(information_loss, anonymity))


def check_columns(request: Request, df: pd.DataFrame) -> None:
    """The columns ``request`` names are in ``df``.

    :raises SchemaError: naming the parameter and the missing column.
    """
    check_rule_columns(request.rules, df)
    anonymity = request.anonymity
    if anonymity is None:
        return
    where = "k_anonymity" if anonymity.k is not None else "l_diversity"
    for qi in anonymity.quasi_identifiers:
        if qi not in df.columns:
            raise SchemaError(
                f"{where}.quasi_identifiers: column {qi!r} is not in the batch; it has "
                f"{list(df.columns)}"
            )
    if anonymity.entity is not None and anonymity.entity not in df.columns:
        raise SchemaError(f"k_anonymity.entity: column {anonymity.entity!r} is not in the batch")
    if anonymity.sensitive is not None and anonymity.sensitive not in df.columns:
        raise SchemaError(f"l_diversity.sensitive: column {anonymity.sensitive!r} is not in the batch")


def _dropped(column: Hashable, rules: Mapping[Hashable, Rule], unlisted: str) -> bool:
    return isinstance(rules[column], Drop) if column in rules else unlisted == "drop"


def _anonymity(
    k_anonymity: Any, l_diversity: Any, rules: Mapping[Hashable, Rule], unlisted: str
) -> Anonymity | None:
    if k_anonymity is None and l_diversity is None:
        return None
    common = {"quasi_identifiers", "max_suppression", "max_generalization"}
    k_spec = _mapping(k_anonymity, "k_anonymity", common | {"k", "entity"})
    l_spec = _mapping(l_diversity, "l_diversity", common | {"sensitive", "l"})
    if k_anonymity is not None:
        if "quasi_identifiers" in l_spec and l_spec["quasi_identifiers"] != k_spec.get(
            "quasi_identifiers"
        ):
            raise InvalidParameterError(
                "l_diversity.quasi_identifiers",
                l_spec["quasi_identifiers"],
                "must equal k_anonymity.quasi_identifiers (or be omitted)",
            )
        for key in ("max_suppression", "max_generalization"):
            if key in l_spec:
                raise InvalidParameterError(
                    f"l_diversity.{key}", l_spec[key], f"set {key} in k_anonymity when both are given"
                )
        qi_spec, where = k_spec, "k_anonymity"
    else:
        qi_spec, where = l_spec, "l_diversity"
    qis = qi_spec.get("quasi_identifiers")
    if isinstance(qis, (str, bytes)) or not isinstance(qis, Sequence) or not qis:
        raise InvalidParameterError(
            f"{where}.quasi_identifiers", qis, "expected a non-empty list of column names"
        )
    qis = list(qis)
    unnamed = [q for q in qis if not is_column_name(q)]
    if unnamed:
        raise InvalidParameterError(
            f"{where}.quasi_identifiers", unnamed[0], "expected column names, not lists or dicts"
        )
    if len(set(qis)) != len(qis):
        raise InvalidParameterError(f"{where}.quasi_identifiers", qis, "names must be unique")
    for qi in qis:
        if _dropped(qi, rules, unlisted):
            raise InvalidParameterError(
                f"{where}.quasi_identifiers",
                qi,
                "this column is dropped by its rule; a quasi-identifier must be released",
            )
    suppression = qi_spec.get("max_suppression", 0.0)
    if (
        isinstance(suppression, bool)
        or not isinstance(suppression, (int, float))
        or not math.isfinite(suppression)
        or not 0 <= suppression < 1
    ):
        raise InvalidParameterError(
            f"{where}.max_suppression", suppression, "expected a fraction of rows in [0, 1)"
        )
    max_levels = _max_levels(qi_spec.get("max_generalization"), qis, f"{where}.max_generalization")
    k = entity = None
    if k_anonymity is not None:
        k = _at_least_two(k_spec.get("k"), "k_anonymity.k")
        entity = k_spec.get("entity")
        if entity is not None:
            if not is_column_name(entity):
                raise InvalidParameterError("k_anonymity.entity", entity, "expected a column name")
            if entity in qis:
                raise InvalidParameterError(
                    "k_anonymity.entity", entity, "must not be one of the quasi-identifiers"
                )
    sensitive = l_div = None
    if l_diversity is not None:
        l_div = _at_least_two(l_spec.get("l"), "l_diversity.l")
        sensitive = l_spec.get("sensitive")
        if sensitive is None:
            raise InvalidParameterError("l_diversity.sensitive", None, "a column is required")
        if not is_column_name(sensitive):
            raise InvalidParameterError(
                "l_diversity.sensitive", sensitive, "expected a column name"
            )
        if sensitive in qis:
            raise InvalidParameterError(
                "l_diversity.sensitive", sensitive, "must not be one of the quasi-identifiers"
            )
        if _dropped(sensitive, rules, unlisted):
            raise InvalidParameterError(
                "l_diversity.sensitive", sensitive, "this column is dropped by its rule"
            )
    return Anonymity(qis, k, entity, float(suppression), sensitive, l_div, max_levels)


def _max_levels(spec: Any, qis: list[Hashable], name: str) -> dict[Hashable, int]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise InvalidParameterError(name, spec, "expected {quasi-identifier: highest level}")
    out = {}
    for column, level in spec.items():
        if column not in qis:
            raise InvalidParameterError(name, column, f"not one of the quasi-identifiers {qis}")
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
            raise InvalidParameterError(
                f"{name}[{column!r}]", level, "expected an integer level >= 0 (0: as its rule releases it)"
            )
        out[column] = int(level)
    return out


def _loss_policy(spec: Any, anonymity: Anonymity | None) -> LossPolicy:
    if spec is None:
        return DEFAULT_LOSS_POLICY
    spec = _mapping(spec, "information_loss", {"max_ncp", "max_discernibility", "on_exceed"})
    if anonymity is None:
        raise InvalidParameterError(
            "information_loss", spec, "only meaningful with k_anonymity or l_diversity"
        )
    limits = {}
    for key in ("max_ncp", "max_discernibility"):
        value = spec[key] if key in spec else getattr(DEFAULT_LOSS_POLICY, key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value <= 1
        ):
            raise InvalidParameterError(f"information_loss.{key}", value, "expected a fraction in [0, 1] or None")
        limits[key] = None if value is None else float(value)
    on_exceed = spec.get("on_exceed", DEFAULT_LOSS_POLICY.on_exceed)
    if on_exceed not in ON_EXCEED:
        raise InvalidParameterError("information_loss.on_exceed", on_exceed, f"expected one of {list(ON_EXCEED)}")
    return LossPolicy(limits["max_ncp"], limits["max_discernibility"], on_exceed)


def _mapping(spec: Any, name: str, allowed: set[str]) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise InvalidParameterError(name, type(spec).__name__, "expected a mapping")
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise InvalidParameterError(
            f"{name}.{unknown[0]}", spec[unknown[0]], f"unknown key; expected {sorted(allowed)}"
        )
    return dict(spec)


def _at_least_two(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise InvalidParameterError(name, value, "expected an integer >= 2")
    return int(value)
