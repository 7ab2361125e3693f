"""``scrub_pii``: the row's own known identifiers, then the regex recognizers of :mod:`.pii`."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import repeat
from operator import is_not

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from airflow_privacy.core.deid.dedupe import Distinct, text_of, to_series
from airflow_privacy.core.deid.pii import ENTITIES, check_entities, scrub_distinct
from airflow_privacy.core.deid.rule_base import Applied, Batch, Params, Rule
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = ["ScrubPII"]


class ScrubPII(Rule):
    name = "scrub_pii"

    def __init__(self, column: Hashable, params: Params) -> None:
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

