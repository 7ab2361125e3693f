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
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import is_not
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import keyed
from airflow_privacy.core.deid.dedupe import Distinct, distinct, text_of, to_series
from airflow_privacy.core.deid.generalize import (
    DATE_LEVELS,
    ColumnRef,
    Hierarchy,
    bucket_hierarchy,
    date_hierarchy,
    map_hierarchy,
    prefix_hierarchy,
)
from airflow_privacy.core.deid.pii import ENTITIES, check_entities, scrub_distinct
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["KEYED_RULES", "RULES", "Batch", "Rule", "check_rule_columns", "needs_keyring", "parse_rules"]

_MISSING: Any = object()


class Batch:
    """The input frame (or a subset of its rows), the key ring, and the factorized columns
    shared by every rule.

    :param rows: positions of the rows to release (all when None). Rules read their input
        through :meth:`series` / :meth:`distinct`, so suppressing rows costs a ``take`` of
        integer codes rather than a copy of every column.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        keyring: KeyRing | None,
        rows: np.ndarray | None = None,
        shared: dict[Hashable, Distinct] | None = None,
    ) -> None:
        self.df = df
        self.keyring = keyring
        self.rows = rows
        self.index = df.index if rows is None else df.index[rows]
        self._full: dict[Hashable, Distinct] = {} if shared is None else shared

    def __len__(self) -> int:
        return len(self.df) if self.rows is None else len(self.rows)

    def select(self, rows: np.ndarray | None) -> Batch:
        """The same batch restricted to the rows at positions ``rows``."""
        return self if rows is None else Batch(self.df, self.keyring, rows, self._full)

    def series(self, column: Hashable) -> pd.Series:
        series = self.df[column]
        return series if self.rows is None else series.take(self.rows)

    def full_distinct(self, column: Hashable) -> Distinct:
        """The factorized column over *all* rows of the frame."""
        found = self._full.get(column)
        if found is None:
            found = distinct(self.df[column])
            self._full[column] = found
        return found

    def distinct(self, column: Hashable) -> Distinct:
        return self.full_distinct(column).select(self.rows)

    def notna(self, column: Hashable) -> np.ndarray:
        present = self.df[column].notna().to_numpy()
        return present if self.rows is None else present[self.rows]

    def ring(self) -> KeyRing:
        assert self.keyring is not None, "validated by deidentify"
        return self.keyring


@dataclass
class Applied:
    """A rule's output column (None: dropped) and what the audit report should record."""

    series: pd.Series | None
    report: dict[str, Any] = field(default_factory=dict)


class _Params:
    def __init__(self, column: Hashable, rule: str, params: Any) -> None:
        self.column = column
        self.rule = rule
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"rules[{column!r}].{rule}", params, "expected a mapping of parameters"
            )
        self.raw = dict(params)
        self._used: set[str] = set()

    def where(self, name: str) -> str:
        return f"rules[{self.column!r}].{self.rule}.{name}"

    def get(self, name: str, default: Any = _MISSING) -> Any:
        self._used.add(name)
        if name in self.raw:
            return self.raw[name]
        if default is _MISSING:
            raise InvalidParameterError(self.where(name), None, "this parameter is required")
        return default

    def integer(self, name: str, default: Any, lo: int, hi: int | None = None) -> int:
        value = self.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise InvalidParameterError(self.where(name), value, f"expected {bound}")
        return int(value)

    def number(self, name: str, default: Any, *, positive: bool = False) -> float | None:
        value = self.get(name, default)
        if value is None and default is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
            or (positive and value <= 0)
        ):
            what = "a positive finite number" if positive else "a finite number"
            raise InvalidParameterError(self.where(name), value, f"expected {what}")
        return float(value)

    def text(self, name: str, default: Any, *, single_char: bool = False) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or (single_char and len(value) != 1):
            what = "a single character" if single_char else "a string"
            raise InvalidParameterError(self.where(name), value, f"expected {what}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self._used, key=str)
        if unknown:
            raise InvalidParameterError(
                self.where(str(unknown[0])),
                self.raw[unknown[0]],
                f"unknown parameter; {self.rule} accepts {sorted(self._used) or 'none'}",
            )


class Rule:
    """Base class: ``name`` is the rule's spelling in the rules mapping."""

    name: ClassVar[str]
    keyed: ClassVar[bool] = False
    generalizing: ClassVar[bool] = False

    def __init__(self, column: Hashable, params: _Params) -> None:
        self.column = column
        self.params: dict[str, Any] = {}

    def apply(self, batch: Batch) -> Applied:
        raise NotImplementedError

    def hierarchy(self, batch: Batch) -> Hierarchy:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"transform": self.name}
        if self.params:
            entry["params"] = self.params
        return entry


class Keep(Rule):
    name = "keep"

    def apply(self, batch: Batch) -> Applied:
        return Applied(batch.series(self.column))


class Drop(Rule):
    name = "drop"

    def apply(self, batch: Batch) -> Applied:
        return Applied(None)


class Replace(Rule):
    name = "replace"
    default: Any = _MISSING

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        value = params.get("value", self.default)
        if (
            isinstance(value, float)
            and not math.isfinite(value)
            or not isinstance(value, (str, int, float, bool))
        ):
            raise InvalidParameterError(
                params.where("value"), value, "expected a string, number or boolean"
            )
        self.value = value
        self.params = {"value": value}

    def apply(self, batch: Batch) -> Applied:
        present = batch.notna(self.column)
        if isinstance(self.value, str):
            constant = pa.array([self.value], pa.large_string())
            values = constant.take(pa.array(np.zeros(len(present), dtype=np.int64), mask=~present))
        else:
            values = pd.array([self.value]).take(np.where(present, 0, -1), allow_fill=True)
        return Applied(to_series(values, batch.index, self.column))


class Redact(Replace):
    name = "redact"
    default = "<REDACTED>"


class Mask(Rule):
    name = "mask"

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        self.keep_last = params.integer("keep_last", 0, 0)
        self.keep_first = params.integer("keep_first", 0, 0)
        self.char = params.text("char", "*", single_char=True)
        self.preserve = params.text("preserve", "")
        self.params = {
            "keep_last": self.keep_last,
            "keep_first": self.keep_first,
            "char": self.char,
            "preserve": self.preserve,
        }

    def apply(self, batch: Batch) -> Applied:
        column = batch.distinct(self.column)
        text = text_of(column.uniques)
        escaped = "".join("\\" + c if c in "\\]^-[" else c for c in self.preserve)
        anything = f"[^{escaped}]" if escaped else "."
        replacement = "\\\\" if self.char == "\\" else self.char
        hidden = pc.replace_substring_regex(text, f"(?s){anything}", replacement)
        first, last = self.keep_first, self.keep_last
        if first or last:
            head = pc.utf8_slice_codeunits(text, 0, first)
            middle = pc.utf8_slice_codeunits(
                hidden, first, -last if last else np.iinfo(np.int64).max
            )
            tail = pc.utf8_slice_codeunits(text, -last) if last else pa.scalar("", text.type)
            joined = pc.binary_join_element_wise(head, middle, tail, pa.scalar("", text.type))
            # A value no longer than what is kept would be shown whole: mask it entirely.
            short = pc.less_equal(pc.utf8_length(text), first + last)
            hidden = pc.if_else(short, hidden, joined)
        return Applied(to_series(column.take(hidden), batch.index, self.column))


class Hash(Rule):
    name = "hash"
    keyed = True

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        self.length = params.integer("length", 16, 8, 32)
        self.domain = params.text("domain", str(column))
        self.params = {"length": self.length, "domain": self.domain}

    def apply(self, batch: Batch) -> Applied:
        ring = batch.ring()
        column = batch.distinct(self.column)
        tokens = keyed.hash_tokens(
            column, str(self.column), ring, length=self.length, domain=self.domain
        )
        series = to_series(column.take(tokens), batch.index, self.column)
        return Applied(series, {"key_id": ring.primary_id, "algorithm": "HMAC-SHA256"})


class Tokenize(Rule):
    name = "tokenize"
    keyed = True

    def apply(self, batch: Batch) -> Applied:
        ring = batch.ring()
        column = batch.distinct(self.column)
        tokens, hint = keyed.tokenize(column, str(self.column), ring)
        hint["dtype"] = str(batch.df[self.column].dtype)
        series = to_series(column.take(tokens), batch.index, self.column)
        return Applied(
            series, {"key_id": ring.primary_id, "algorithm": "AES-256-SIV", "_hint": hint}
        )


class Bucket(Rule):
    name = "bucket"
    generalizing = True

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        has_width, has_edges = "width" in params.raw, "edges" in params.raw
        if has_width == has_edges:
            raise InvalidParameterError(
                params.where("width"), params.raw.get("width"), "give exactly one of width or edges"
            )
        self.width = self.edges = None
        if has_width:
            self.width = params.number("width", _MISSING, positive=True)
            self.origin = params.number("origin", 0)
            self.top = params.number("top", None)
            self.params = {"width": self.width, "origin": self.origin, "top": self.top}
        else:
            edges = params.get("edges")
            if (
                isinstance(edges, (str, bytes))
                or not isinstance(edges, Sequence)
                or len(edges) < 2
                or any(
                    isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e)
                    for e in edges
                )
                or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
            ):
                raise InvalidParameterError(
                    params.where("edges"), edges, "expected >= 2 strictly increasing numbers"
                )
            self.edges = [float(e) for e in edges]
            self.origin, self.top = 0.0, None
            self.params = {"edges": list(edges)}
        self.params = {k: _plain(v) for k, v in self.params.items() if v is not None}

    def hierarchy(self, batch: Batch) -> Hierarchy:
        return bucket_hierarchy(
            batch.distinct(self.column),
            _header(batch, self.column),
            width=self.width,
            edges=self.edges,
            origin=self.origin,
            top=self.top,
        )

    def apply(self, batch: Batch) -> Applied:
        return Applied(self.hierarchy(batch).output(0))


class Generalize(Rule):
    name = "generalize"
    generalizing = True

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        kinds = [k for k in ("prefix", "date", "map") if k in params.raw]
        if len(kinds) != 1:
            raise InvalidParameterError(
                params.where("prefix"), kinds or None, "give exactly one of prefix, date or map"
            )
        self.kind = kinds[0]
        if self.kind == "prefix":
            self.prefix = params.integer("prefix", None, 0)
            self.fill = params.text("fill", "*")
            if len(self.fill) > 1:
                raise InvalidParameterError(
                    params.where("fill"), self.fill, "expected one character or ''"
                )
            self.params = {"prefix": self.prefix, "fill": self.fill}
        elif self.kind == "date":
            self.date = params.get("date")
            if self.date not in DATE_LEVELS:
                raise InvalidParameterError(
                    params.where("date"), self.date, f"expected one of {list(DATE_LEVELS)}"
                )
            self.params = {"date": self.date}
        else:
            raw = params.get("map")
            maps = [raw] if isinstance(raw, Mapping) else raw
            if (
                isinstance(maps, (str, bytes))
                or not isinstance(maps, Sequence)
                or not maps
                or not all(isinstance(m, Mapping) and m for m in maps)
                or not all(
                    isinstance(v, (str, int, float)) and not isinstance(v, bool)
                    for m in maps
                    for v in m.values()
                )
            ):
                raise InvalidParameterError(
                    params.where("map"),
                    raw,
                    "expected a non-empty mapping value -> label, or a list of them (one per "
                    "hierarchy level)",
                )
            self.maps = list(maps)
            default = params.get("default", None)
            if default is not None and not isinstance(default, str):
                raise InvalidParameterError(params.where("default"), default, "expected a string")
            self.default = default
            self.params = {"map_levels": len(self.maps), "map_entries": [len(m) for m in maps]}
            if default is not None:
                self.params["default"] = default

    def hierarchy(self, batch: Batch) -> Hierarchy:
        source = batch.distinct(self.column)
        name = _header(batch, self.column)
        if self.kind == "prefix":
            return prefix_hierarchy(source, name, prefix=self.prefix, fill=self.fill)
        if self.kind == "date":
            return date_hierarchy(source, name, start=self.date)
        return map_hierarchy(source, name, maps=self.maps, default=self.default)

    def apply(self, batch: Batch) -> Applied:
        return Applied(self.hierarchy(batch).output(0))


class ShiftDates(Rule):
    name = "shift_dates"
    keyed = True

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        self.max_days = params.integer("max_days", _MISSING, 1, 36_500)
        # Required: one shift for a whole column keeps every interval between all its rows,
        # so a single date known from outside (one admission in the news) undoes it for all.
        self.by = params.get("by")
        if self.by is None or not is_column_name(self.by):
            raise InvalidParameterError(
                params.where("by"),
                self.by,
                "expected the name of the entity column (e.g. 'patient_id') whose dates move "
                "together",
            )
        if self.by == column:
            # Keyed by the date itself, equal dates stay equal and all others scatter: the
            # intervals within an entity -- the reason to shift -- are destroyed.
            raise InvalidParameterError(
                params.where("by"),
                self.by,
                "must be the entity column (e.g. 'patient_id'), not the date column itself",
            )
        self.params = {"max_days": self.max_days, "by": self.by}

    def check(self, df: pd.DataFrame) -> None:
        if self.by not in df.columns:
            raise SchemaError(
                f"rules[{self.column!r}].shift_dates.by: column {self.by!r} is not in the batch"
            )

    def apply(self, batch: Batch) -> Applied:
        ring = batch.ring()
        series = batch.series(self.column)
        entity = batch.distinct(self.by)
        shift = keyed.entity_shifts(entity, str(self.by), ring, self.max_days)
        out = keyed.shift_dates(series, shift, str(self.column))
        report: dict[str, Any] = {"key_id": ring.primary_id, "algorithm": "HMAC-SHA256"}
        lost = int(((entity.codes < 0) & batch.notna(self.column)).sum())
        if lost:
            report["nulled_without_entity"] = lost
        return Applied(out, report)


class ScrubPII(Rule):
    name = "scrub_pii"

    def __init__(self, column: Hashable, params: _Params) -> None:
        super().__init__(column, params)
        raw = params.get("entities", list(ENTITIES))
        self.entities = check_entities(raw, params.where("entities"))
        known = params.get("known", [])
        if isinstance(known, str) or not isinstance(known, Sequence) or not all(isinstance(c, str) for c in known):
            raise InvalidParameterError(params.where("known"), known, "expected a list of column names")
        self.known = list(known)
        self.params = {"entities": list(self.entities), "known": self.known}

    def check(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.known if c not in df.columns]
        if missing:
            raise SchemaError(
                f"rules[{self.column!r}].scrub_pii.known: columns {missing} are not in the batch"
            )

    def apply(self, batch: Batch) -> Applied:
        """Known identifiers first, then the regex recognizers.

        ``known`` lists columns of the same row whose values (a patient's name, e-mail...)
        are replaced verbatim in the text by ``<COLUMN>``: the row-context deny list that
        catches names no regex can, without an NER model. The replacement runs once per
        distinct combination of (text, known values), found from the columns' factorize
        codes -- or once per row when the texts are mostly distinct anyway -- and the
        recognizers then run once per distinct *replaced* text (the same template around
        different names), so regex work scales with distinct templates, not rows.
        ``known_replaced`` in the report counts (row, known column) pairs replaced.
        """
        if not self.known:
            scrubbed, found = scrub_distinct(batch.distinct(self.column), self.entities)
            return Applied(to_series(scrubbed, batch.index, self.column), {"found": found})
        text = batch.distinct(self.column)
        known = [batch.distinct(c) for c in self.known]
        # The replacement runs once per *unit*: a distinct (text, known values) combination,
        # or simply a row when the text alone is mostly distinct (then combinations cannot
        # save much -- there are at least as many as distinct texts -- and finding them
        # costs more than the replacements they would save).
        present = np.flatnonzero(text.codes >= 0)
        if 2 * text.size >= len(present):
            unit = np.full(len(text.codes), -1, dtype=np.intp)
            unit[present] = np.arange(len(present))
            first, weights = present, np.ones(len(present), dtype=np.int64)
        else:
            unit = _combinations(text, known)
            first = _first_rows(unit)
            weights = np.bincount(unit[unit >= 0], minlength=len(first))
        text_values = text_of(text.uniques)
        texts = text_values.to_numpy(zero_copy_only=False)[text.codes[first]]
        # Stands in for a value not looked for: longer than any text, so never found.
        longest = pc.max(pc.utf8_length(text_values)).as_py() if len(text_values) else 0
        absent = "\ufffe" * ((longest or 0) + 1)
        replaced = 0
        for col, column in zip(self.known, known, strict=True):
            values = text_of(column.uniques)
            # only values of two or more characters: a one-letter initial would shred text
            usable = pc.fill_null(pc.greater(pc.utf8_length(values), 1), False)
            needles = np.empty(len(values) + 1, dtype=object)  # [-1]: a null known value
            needles[:-1] = values.to_numpy(zero_copy_only=False)
            needles[np.append(~usable.to_numpy(zero_copy_only=False), True)] = absent
            needles = needles[column.codes[first]]
            after = np.fromiter(
                map(str.replace, texts, needles, repeat(f"<{str(col).upper()}>")),
                object,
                len(texts),
            )
            # str.replace returns the very same object when the value does not occur
            hit = np.fromiter(map(is_not, after, texts), bool, len(texts))
            texts = after
            replaced += int(weights[hit].sum())
        # Once the row's own identifiers are replaced, most texts are equal again (the same
        # template around different names): the recognizers run once per distinct text.
        codes, uniques = pd.factorize(texts)
        rows = Distinct(np.append(codes, -1)[unit], pd.Index(uniques, dtype=object))
        scrubbed, found = scrub_distinct(rows, self.entities)
        return Applied(
            to_series(scrubbed, batch.index, self.column),
            {"found": found, "known_replaced": replaced},
        )


def _combinations(text: Distinct, known: list[Distinct]) -> np.ndarray:
    """Per row, a code of its distinct (text, known values) combination (-1: null text),
    numbered by ``pd.factorize`` in order of first appearance. Several columns share one
    factorization while the mixed-radix key fits in int64."""
    present = text.codes >= 0
    keys, bound = text.codes.astype(np.int64), text.size
    for column in known:
        radix = column.size + 1
        if bound * radix >= 2**63:
            combo = _factorized(keys, present)
            keys, bound = combo.astype(np.int64), int(combo.max(initial=-1)) + 1
        keys = keys * radix + column.codes + 1  # a null known value (code -1) is digit 0
        bound *= radix
    return _factorized(keys, present)


def _factorized(keys: np.ndarray, present: np.ndarray) -> np.ndarray:
    combo = np.full(len(keys), -1, dtype=np.intp)
    combo[present] = pd.factorize(keys[present])[0]
    return combo


def _first_rows(combo: np.ndarray) -> np.ndarray:
    """Position of the first row of each code of ``combo`` (-1: no code), for codes that
    ``pd.factorize`` numbered in order of first appearance: a row is the first of its code
    exactly when its code exceeds every code before it."""
    rows = np.flatnonzero(combo >= 0)
    codes = combo[rows]
    if len(codes) == 0:
        return rows
    new = np.empty(len(codes), dtype=bool)
    new[0] = True
    np.greater(codes[1:], np.maximum.accumulate(codes)[:-1], out=new[1:])
    return rows[new]


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


def is_column_name(value: Any) -> bool:
    """Whether ``value`` can name a column: hashable, so ``value in df.columns`` and sets of
    names cannot raise a bare TypeError (a list or dict where a name was meant)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _header(batch: Batch, column: Hashable) -> ColumnRef:
    return ColumnRef(column, batch.index)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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
    params = _Params(column, name, raw)
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
