"""Engines: where the data-heavy part of a DP release runs.

One relational plan -- contribution bounding (<= L0 groups per unit, <= Linf rows per
(unit, group)), clamping, unbiased stochastic rounding to the fixed-point grid, the integer
group sums and the unit counts partition selection needs -- behind one seam:
:func:`bounded_aggregates`. Each engine is one module (:mod:`.pandas_engine`,
:mod:`.duckdb_engine`) with the same two functions, ``inspect`` (schema facts and checks,
reading no rows) and ``aggregate`` (the plan, returning :class:`BoundedAggregates`). Only that
small table returns to :func:`..aggregate.dp_aggregate`, where noise, partition selection and
accounting run unchanged for every engine.

Choosing the engine when it is not given (:func:`choose_engine`): a pandas DataFrame or a CSV
source runs on ``"pandas"``; a Parquet dataset (path, glob, folder, URI) runs on ``"pandas"``
when its files total at most :data:`PANDAS_MAX_BYTES` (256 MiB of Parquet, ~ 1-2 GB in memory
as a frame), else on ``"duckdb"`` (out of core, bounded memory).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.engines.keyed import ReleaseKey
from airflow_privacy.core.errors import InvalidParameterError

ENGINES = ("pandas", "duckdb", "spark")
"""Engines that run a release; ``engine=None`` picks one by :func:`choose_engine`."""
PANDAS_MAX_BYTES = 256 << 20
_EXTRAS = {"duckdb": ("duckdb", "pip install duckdb (a dependency of airflow-privacy)"),
           "spark": ("pyspark", "pip install 'airflow-privacy[spark]' (and a Java 17 runtime)")}


@dataclass(frozen=True)
class SumQuery:
    """One fixed-point sum: ``kind`` is ``"sum"`` (clamped values), ``"normsum"`` (centred on
    the bounds' midpoint) or ``"normsq"`` (centred and squared, less ``offset``); each value
    divided by the grid step ``gamma``, stochastically rounded, clipped to ±``steps``."""

    kind: str
    column: str
    lo: float
    hi: float
    gamma: float
    offset: float
    steps: int

    @property
    def domain(self) -> str:
        """The keyed-hash domain of this query's rounding bits (independent per query)."""
        return f"round:{self.kind}:{self.column}"


@dataclass(frozen=True)
class AggregateRequest:
    """What the engine computes; parameters only, no data.

    :ivar key: the keyed-hash randomness (:mod:`.keyed`); ``None`` lets the pandas engine draw
        its choices from the release's random source instead (the DuckDB engine always keys).
    """

    by: tuple[str, ...]
    privacy_unit: str | None
    public_groups: pd.DataFrame | None
    l0: int
    linf: int
    private_selection: bool
    count_columns: tuple[str, ...] = ()
    sums: tuple[SumQuery, ...] = ()
    key: ReleaseKey | None = None


@dataclass
class BoundedAggregates:
    """The pre-noise integer aggregates of a release, one entry per group.

    ``groups`` are the public groups (all of them, in their order) or, under private
    selection, only the groups that still hold a unit after bounding.

    :ivar rows: bounded row count per group.
    :ivar units: distinct units per group after bounding.
    :ivar values: per count column, its rows holding a value (not NULL/NaN).
    :ivar sums: per :class:`SumQuery`, the int64 fixed-point sum.
    :ivar column: the kept rows' values of a column (float64) and ``gcodes`` their group
        indices -- for quantiles, pandas engine only (``None`` elsewhere).
    """

    groups: pd.DataFrame
    rows: np.ndarray
    units: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[SumQuery, np.ndarray] = field(default_factory=dict)
    column: Callable[[str], np.ndarray] | None = None
    gcodes: np.ndarray | None = None


def is_dataset(data: Any) -> bool:
    """A reference to a Parquet dataset (path, glob, folder, URI, or a list of them)."""
    return isinstance(data, str) or (isinstance(data, (list, tuple)) and all(isinstance(s, str) for s in data))


def choose_engine(data: Any, engine: str | None) -> str:
    """The engine for ``data``: ``engine`` when given (checked), else the documented rule
    (module docstring)."""
    if engine is not None:
        if engine not in ENGINES:
            raise InvalidParameterError("engine", engine, f"expected one of {ENGINES} or None (chosen by input size)")
        if isinstance(data, pd.DataFrame) and engine != "pandas":
            raise InvalidParameterError("engine", engine, "a pandas DataFrame runs on engine='pandas'; pass a "
                                        "Parquet dataset (path, glob, folder or URI) for an out-of-core engine")
        return engine
    if isinstance(data, pd.DataFrame) or any(str(u).lower().endswith(".csv") for u in _uris(data)):
        return "pandas"
    from airflow_privacy.core.dp.engines.dataset import dataset_bytes

    return "pandas" if dataset_bytes(data) <= PANDAS_MAX_BYTES else "duckdb"


def _uris(data: Any) -> list[str]:
    return [data] if isinstance(data, str) else list(data) if is_dataset(data) else []


def load_engine(name: str) -> ModuleType:
    """The engine module, or an error naming the package to install."""
    if name in _EXTRAS:
        package, how = _EXTRAS[name]
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise InvalidParameterError("engine", name, f"{package} is not installed: {how}") from exc
    return importlib.import_module(f"airflow_privacy.core.dp.engines.{name}_engine")


def collect_table(table: pd.DataFrame, r: AggregateRequest, g: list[str]) -> BoundedAggregates:
    """:class:`BoundedAggregates` from an engine's per-group result (group columns ``g``,
    then ``rows``, ``units``, ``n_<column>``, ``s_<i>`` for the i-th sum query): public groups
    in their order with zeros where no row fell, else the groups sorted by key."""
    if r.public_groups is not None:
        pub = r.public_groups.reset_index(drop=True)
        keys = pub.copy()
        keys.columns = g
        table = keys.merge(table, on=g, how="left", sort=False)
        groups = pub
    elif g:
        table = table.sort_values(g, kind="stable").reset_index(drop=True)
        groups = table[g].copy()
        groups.columns = list(r.by)
    else:
        groups = pd.DataFrame(index=[0])

    def ints(col: str) -> np.ndarray:
        if len(table) == 0:
            return np.zeros(len(groups), dtype=np.int64)
        return table[col].fillna(0).to_numpy().astype(np.int64)

    return BoundedAggregates(groups=groups, rows=ints("rows"), units=ints("units"),
                             values={c: ints("n_" + c) for c in r.count_columns},
                             sums={q: ints(f"s_{i}") for i, q in enumerate(r.sums)})

