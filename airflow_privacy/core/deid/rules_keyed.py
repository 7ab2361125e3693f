"""Keyed rules (:mod:`.keyed`): HMAC ``hash``, AES-SIV ``tokenize``, per-entity ``shift_dates``."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pandas as pd

from airflow_privacy.core.deid import keyed
from airflow_privacy.core.deid.dedupe import to_series
from airflow_privacy.core.deid.rule_base import (
    MISSING,
    Applied,
    Batch,
    Params,
    Rule,
    is_column_name,
)
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["Hash", "ShiftDates", "Tokenize"]


class Hash(Rule):
    name = "hash"
    keyed = True

    def __init__(self, column: Hashable, params: Params) -> None:
        super().__init__(column, params)
        self.length = params.integer("length", 16, 8, 32)
        self.domain = params.text("domain", str(column))
        self.params = {"length": self.length, "domain": self.domain}

    def apply(self, batch: Batch) -> Applied:
        ring = batch.ring()
        column = batch.distinct(self.column)
        tokens = keyed.hash_tokens(
            column, str(self.column), ring, length=self.length, domain=self.domain, memo=batch.memo
        )
        series = to_series(column.take(tokens), batch.index, self.column)
        return Applied(series, {"key_id": ring.primary_id, "algorithm": "HMAC-SHA256"})


class Tokenize(Rule):
    name = "tokenize"
    keyed = True

    def apply(self, batch: Batch) -> Applied:
        ring = batch.ring()
        column = batch.distinct(self.column)
        tokens, hint = keyed.tokenize(column, str(self.column), ring, batch.memo)
        hint["dtype"] = str(batch.df[self.column].dtype)
        series = to_series(column.take(tokens), batch.index, self.column)
        return Applied(
            series, {"key_id": ring.primary_id, "algorithm": "AES-256-SIV", "_hint": hint}
        )


class ShiftDates(Rule):
    name = "shift_dates"
    keyed = True

    def __init__(self, column: Hashable, params: Params) -> None:
        super().__init__(column, params)
        self.max_days = params.integer("max_days", MISSING, 1, 36_500)
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
        shift = keyed.entity_shifts(entity, str(self.by), ring, self.max_days, batch.memo)
        dates = keyed.date32_source(series, batch.arrow(self.column))
        out = keyed.shift_dates(series, shift, str(self.column), dates)
        report: dict[str, Any] = {"key_id": ring.primary_id, "algorithm": "HMAC-SHA256"}
        present = batch.notna(self.column) if dates is None else dates.is_valid().to_numpy(zero_copy_only=False)
        lost = int(((entity.codes < 0) & present).sum())
        if lost:
            report["nulled_without_entity"] = lost
        return Applied(out, report)

