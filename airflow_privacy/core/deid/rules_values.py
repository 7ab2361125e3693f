"""Rules on a column's own values: keep, drop, replace, redact, mask."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_privacy.core.deid.dedupe import text_of, to_series
from airflow_privacy.core.deid.rule_base import MISSING, Applied, Batch, Params, Rule
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["Drop", "Keep", "Mask", "Redact", "Replace"]


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
    default: Any = MISSING

    def __init__(self, column: Hashable, params: Params) -> None:
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

    def __init__(self, column: Hashable, params: Params) -> None:
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

