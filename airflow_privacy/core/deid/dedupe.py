"""Dedupe-then-map: run a per-value transform once per *distinct* value of a column.

A column is factorized once (``codes``: position of each row's value among the distinct
non-null values, -1 for a null), the transform runs on the distinct values only, and the
result is mapped back with one ``take``. Batches repeat values heavily (a patient's id on
every visit, a diagnosis code on thousands of rows), so keyed hashes, encryption, regex
scrubbing and label formatting cost one call per distinct value, and nulls stay nulls by
construction (code -1 takes a null).

Equality is the one subtle point for keyed transforms: ``pd.factorize`` treats ``1``,
``1.0`` and ``True`` in an object column as one value, and ``0.0`` and ``-0.0`` as one
float. A keyed token of such a merged group would depend on which spelling came first in
the batch, so the same value could get different tokens in two batches. :func:`distinct`
therefore factorizes floats bit-exactly and mixed-type object columns per type -- with
:func:`airflow_privacy.core.crypto.values.factorize`, which column encryption uses too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import infer_dtype, is_string_dtype

from airflow_privacy.core.crypto.values import factorize

__all__ = ["Distinct", "distinct", "text_of", "to_series"]


@dataclass(frozen=True, eq=False)
class Distinct:
    """A factorized column: ``codes`` (one per row, -1 for null) into ``uniques``."""

    codes: np.ndarray
    uniques: pd.Index

    @property
    def size(self) -> int:
        """Number of distinct non-null values."""
        return len(self.uniques)

    def counts(self) -> np.ndarray:
        """How many rows hold each distinct value."""
        present = self.codes[self.codes >= 0]
        return np.bincount(present, minlength=self.size)

    def select(self, rows: np.ndarray | None) -> Distinct:
        """The same distinct values for a subset of rows (positions)."""
        return self if rows is None else Distinct(self.codes[rows], self.uniques)

    def take(self, values: Any) -> Any:
        """Row values from per-distinct ``values`` (len == :attr:`size`); null where code -1.

        :param values: a pyarrow array, a pandas extension array or a numpy array.
        :return: an array of the same kind, one element per row.
        """
        codes = self.codes
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            if len(values) == len(codes) and not (codes < 0).any() and _is_identity(codes):
                return values
            return values.take(pa.array(codes, mask=codes < 0))
        return pd.api.extensions.take(values, codes, allow_fill=True)


def _is_identity(codes: np.ndarray) -> bool:
    return bool(np.array_equal(codes, np.arange(len(codes))))


def distinct(series: pd.Series) -> Distinct:
    """Factorize ``series`` so that equal values, and only equal values, share a code.

    Floats are compared bit-exactly (``-0.0`` differs from ``0.0``; NaN is null), and an
    object column holding several types (``1`` and ``"1"`` and ``1.0`` and ``True``) is
    factorized per type, so a keyed transform gives every *typed* value one token whatever
    the row order. The factorization is :func:`airflow_privacy.core.crypto.values.factorize`,
    the one column encryption uses.
    """
    codes, uniques = factorize(series)
    return Distinct(codes, uniques if isinstance(uniques, pd.Index) else pd.Index(uniques))


def text_of(uniques: pd.Index) -> pa.Array:
    """The distinct values as an Arrow ``large_string`` array (``str()`` of non-strings)."""
    array = uniques.array
    if is_string_dtype(uniques.dtype) and hasattr(array, "__arrow_array__"):
        arrow = array.__arrow_array__()
        if isinstance(arrow, pa.ChunkedArray):
            arrow = arrow.combine_chunks()
        if pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type):
            return arrow.cast(pa.large_string())
    values = uniques.to_numpy(dtype=object)
    if infer_dtype(values, skipna=False) == "string":
        return pa.array(values, type=pa.large_string())
    return pa.array([str(v) for v in values.tolist()], type=pa.large_string())


def to_series(values: Any, index: pd.Index, name: Any) -> pd.Series:
    """A Series over ``index``; Arrow string arrays become pandas' ``str`` dtype."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)) and (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    ):
        values = pd.array(values, dtype="str")
    return pd.Series(values, index=index, name=name, copy=False)
