"""The generalization ladder of one column: :class:`Hierarchy`, its :class:`Level` rungs
and the level builders every ladder of :mod:`.generalize` shares.

A :class:`Hierarchy` is the ladder of one column, in the sense of Samarati (2001) and
Sweeney (2002): level 0 is what the column's rule releases, every higher level coarsens
the one below it, and the top level releases ``"*"`` for every non-null value. Levels are
*nested* -- each class of level L+1 is a union of classes of level L -- which is what makes
the k-anonymity search in :mod:`.anonymity` monotone (climbing never splits a class).

Every level is computed on the column's distinct values (:mod:`.dedupe`): a key per
distinct value with numpy / Arrow kernels, labels formatted once per distinct key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from airflow_privacy.core.deid.dedupe import Distinct, to_series

__all__ = ["TOP_LABEL", "ColumnRef", "Hierarchy", "Level", "LevelBuild"]

TOP_LABEL = "*"

LevelBuild = Callable[[], tuple[np.ndarray, pa.Array | None]]


class ColumnRef(NamedTuple):
    """Name and row index of the column a hierarchy releases (a ``pd.Series`` also fits)."""

    name: Any
    index: pd.Index


@dataclass(frozen=True)
class Level:
    """One rung: a description for the audit report and a builder returning, for every
    distinct source value, the code of its class, plus the class labels (None: the source
    values themselves are released unchanged)."""

    description: str
    build: LevelBuild


class Hierarchy:
    """The generalization ladder of one column over its distinct values.

    :param source: the factorized column the levels are computed from.
    :param levels: level 0 first; the last level must be the ``"*"`` top.
    :param base: the released column at level 0 when that level is the identity.
    """

    def __init__(
        self,
        source: Distinct,
        levels: Sequence[Level],
        base: pd.Series | None = None,
        *,
        index: pd.Index,
        name: Any,
    ) -> None:
        self.source = source
        self.index = index
        self.name = name
        self._levels = tuple(levels)
        self._base = base
        self._built: dict[int, tuple[np.ndarray, pa.Array | None]] = {}

    @property
    def top(self) -> int:
        """The highest level (everything ``"*"``)."""
        return len(self._levels) - 1

    def describe(self, level: int) -> str:
        return self._levels[level].description

    def codes(self, level: int) -> np.ndarray:
        """Class code at ``level`` of every distinct source value."""
        return self._get(level)[0]

    def classes(self, level: int) -> int:
        """Number of non-null classes at ``level``."""
        codes = self.codes(level)
        return int(codes.max()) + 1 if len(codes) else 0

    def output(self, level: int, rows: np.ndarray | None = None) -> pd.Series:
        """The released column at ``level``, for the rows at positions ``rows`` (all when
        None)."""
        index = self.index if rows is None else self.index[rows]
        released = self.release(level, self.source.select(rows).codes, index)
        if released is not None:
            return released
        if self._base is None:
            raise AssertionError("identity level without a base column")
        return self._base if rows is None else self._base.take(rows)

    def release(self, level: int, codes: np.ndarray, index: pd.Index) -> pd.Series | None:
        """The labels at ``level`` of rows given by their codes among the source's distinct
        values (-1: null) -- for rows that are not the source's own (a later batch of the
        same column) -- or None when ``level`` releases the values unchanged."""
        classes, labels = self._get(level)
        if labels is None:
            return None
        values = Distinct(codes, self.source.uniques).take(labels.take(pa.array(classes)))
        return to_series(values, index, self.name)

    def _get(self, level: int) -> tuple[np.ndarray, pa.Array | None]:
        built = self._built.get(level)
        if built is None:
            built = self._levels[level].build()
            self._built[level] = built
        return built


# -- level builders -------------------------------------------------------------------------


def _identity(source: Distinct) -> Level:
    return Level("as is", lambda: (np.arange(source.size, dtype=np.intp), None))


def _top(source: Distinct) -> Level:
    return Level(
        TOP_LABEL,
        lambda: (np.zeros(source.size, dtype=np.intp), pa.array([TOP_LABEL], pa.large_string())),
    )


def _keyed(keys: np.ndarray, label: Callable[[Any], str]) -> tuple[np.ndarray, pa.Array]:
    """Codes of per-value ``keys`` and one label per distinct key."""
    codes, uniques = pd.factorize(keys)
    labels = [label(k) for k in np.asarray(uniques).tolist()]
    return np.asarray(codes, dtype=np.intp), pa.array(labels, pa.large_string())
