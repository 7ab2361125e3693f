"""The equivalence classes of k-anonymity / l-diversity counted in SQL, out of core.

The SQL is the same for every engine; ``db`` runs it: :class:`DuckSql` (DuckDB, embedded)
or :class:`.spark_engine.SparkSql` (Spark SQL) -- ``register`` an Arrow table, ``query``,
``create`` a table from a query, ``quote`` a column, ``scan`` the dataset.

:func:`compress` reduces a Parquet dataset to one row per distinct (quasi-identifier codes,
entity, sensitive code) with its row count -- a temporary table DuckDB keeps within its
``memory_limit``, spilling beyond it (Spark: a table cached in executor memory).
:class:`ClassCount` answers each state of the search of
:mod:`.anonymity` (levels -> per class: rows, distinct entities, distinct sensitive values)
with one ``GROUP BY`` over it, the classes being the quasi-identifiers' codes mapped through
their ladders' level tables; :class:`Violating` then tells, per row of a record batch,
whether its class is suppressed. Used by :mod:`.streaming`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from airflow_privacy.core.deid.anonymity import Classes, judge
from airflow_privacy.core.deid.generalize import Hierarchy

__all__ = ["ClassCount", "DuckSql", "Violating", "compress", "connect", "quote"]

SPILL_PREFIX = "airflow_privacy_deid_spill-"

Coded = tuple[Hashable, pa.Array, np.ndarray]
"""A column, its distinct values as DuckDB read them, and each one's code (-1: null)."""


@contextlib.contextmanager
def connect(duckdb: Any, memory_limit: str) -> Iterator[Any]:
    """A DuckDB connection spilling to a folder of its own (``mkdtemp``: mode 0700, named
    after this process), removed on close. Spilled blocks hold input rows in the clear (raw
    entities, quasi-identifiers), and a worker killed with SIGKILL cannot remove its own: the
    folders of processes that no longer run are swept first."""
    root = tempfile.gettempdir()
    for entry in os.scandir(root):
        pid = entry.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(SPILL_PREFIX) or not pid.isdigit():
            continue
        if entry.stat(follow_symlinks=False).st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass
    spill = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=root)
    try:
        con = duckdb.connect(config={"memory_limit": memory_limit, "threads": 2, "preserve_insertion_order": False,
                                     "temp_directory": spill})
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def quote(name: Hashable) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def compress(db: Any, quasi_identifiers: Sequence[Coded], entity: Hashable | None, sensitive: Coded | None) -> None:
    """Create the temporary table ``combos(q0.., e?, s?, w)``: the rows of ``db.scan``
    grouped by their quasi-identifier codes, raw entity and sensitive code, ``w`` rows each.
    ``db`` is the engine's SQL (:class:`DuckSql`, or :class:`.spark_engine.SparkSql`)."""
    select, joins = [], []
    coded = [(f"q{j}", f"m{j}", c) for j, c in enumerate(quasi_identifiers)]
    if sensitive is not None:
        coded.append(("s", "ms", sensitive))
    for alias, table, (column, values, codes) in coded:
        db.register(table, pa.table({"v": values, "c": pa.array(codes, pa.int64())}))
        select.append(f"coalesce({table}.c, -1) AS {alias}")
        joins.append(f"LEFT JOIN {table} ON src.{db.quote(column)} = {table}.v")
    if entity is not None:
        select.append(f"src.{db.quote(entity)} AS e")
    db.create("combos", f"SELECT {', '.join(select)}, count(*) AS w FROM {db.scan} AS src {' '.join(joins)} "
              "GROUP BY ALL")


class DuckSql:
    """The SQL this module runs, on DuckDB: ``scan`` is the dataset's ``read_parquet(...)``;
    tables are registered Arrow tables, ``combos`` a temporary table (spilled beyond the
    connection's ``memory_limit``)."""

    quote = staticmethod(quote)

    def __init__(self, con: Any, scan: str) -> None:
        self.con, self.scan = con, scan

    def register(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)

    def query(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def create(self, name: str, select: str) -> None:
        self.con.execute(f"CREATE TEMP TABLE {name} AS {select}")


class Violating:
    """The classes to suppress, looked up per row by one integer key: the classes' codes per
    quasi-identifier (-1: null) in mixed radix -- a table lookup when the key space is small
    (it is the product of the classes per quasi-identifier), else a sorted search."""

    def __init__(self, keys: np.ndarray, classes: Sequence[int]) -> None:
        self.radix = [c + 1 for c in classes]
        self.span = int(np.prod(self.radix, dtype=object))
        self.empty = len(keys) == 0
        if self.span >= 2**62:  # pragma: no cover - needs > 2^62 classes
            self.index = pd.MultiIndex.from_arrays(list(keys.T))
            return
        found = self._key(list(keys.T))
        if self.span <= 1 << 24:
            self.table = np.zeros(self.span, dtype=bool)
            self.table[found] = True
        else:
            self.sorted = np.sort(found)

    def _key(self, codes: Sequence[np.ndarray]) -> np.ndarray:
        key = np.zeros(len(codes[0]) if len(codes) else 0, dtype=np.int64)
        for column, radix in zip(codes, self.radix, strict=True):
            key = key * radix + (np.asarray(column, dtype=np.int64) + 1)
        return key

    def holds(self, codes: Sequence[np.ndarray]) -> np.ndarray:
        """Per row (classes' codes per quasi-identifier), whether its class is suppressed."""
        n = len(codes[0]) if len(codes) else 0
        if self.empty:
            return np.zeros(n, dtype=bool)
        if self.span >= 2**62:  # pragma: no cover
            return np.asarray(pd.MultiIndex.from_arrays(list(codes)).isin(self.index))
        key = self._key(codes)
        if hasattr(self, "table"):
            return self.table[key]
        at = np.searchsorted(self.sorted, key).clip(max=len(self.sorted) - 1)
        return self.sorted[at] == key


class ClassCount:
    """The search's evaluation (levels -> :class:`.anonymity.Classes`) as one ``GROUP BY``
    over the compressed table ``combos`` (``db`` as for :func:`compress`)."""

    def __init__(self, db: Any, hierarchies: Sequence[Hierarchy], k: int | None, l_div: int | None,
                 entity: bool, sensitive: bool) -> None:
        self.db, self.hierarchies, self.k, self.l_div = db, hierarchies, k, l_div
        self.entity, self.sensitive = entity, sensitive
        self._registered: set[tuple[int, int]] = set()

    def _level_table(self, j: int, level: int) -> str:
        name = f"l{j}_{level}"
        if (j, level) not in self._registered:
            codes = np.asarray(self.hierarchies[j].codes(level), dtype=np.int64)
            self.db.register(name, pa.table({"c": np.arange(-1, len(codes), dtype=np.int64),
                                              "g": np.append(-1, codes)}))
            self._registered.add((j, level))
        return name

    def evaluate(self, levels: Sequence[int]) -> Classes:
        tables = [self._level_table(j, lv) for j, lv in enumerate(levels)]
        keys = ", ".join(f"{t}.g AS k{j}" for j, t in enumerate(tables))
        joins = " ".join(f"JOIN {t} ON combos.q{j} = {t}.c" for j, t in enumerate(tables))
        entities = ("count(DISTINCT e) + max(CASE WHEN e IS NULL THEN 1 ELSE 0 END)" if self.entity
                    else "sum(w)")
        diversity = "count(DISTINCT CASE WHEN s >= 0 THEN s END)" if self.sensitive else "0"
        table = self.db.query(f"SELECT {keys}, sum(w)::BIGINT AS r, ({entities})::BIGINT AS n, "
                              f"({diversity})::BIGINT AS d FROM combos {joins} GROUP BY ALL")
        rows = table.column("r").to_numpy()
        key_matrix = np.column_stack([table.column(f"k{j}").to_numpy() for j in range(len(levels))])
        return judge(rows, table.column("n").to_numpy(), table.column("d").to_numpy() if self.sensitive else None,
                     self.k, self.l_div, keys=key_matrix.reshape(len(rows), len(levels)))

    def kept_counts(self, levels: Sequence[int], bad: Violating) -> list[np.ndarray]:
        """Per quasi-identifier, the released rows holding each of its distinct values."""
        q = len(levels)
        table = self.db.query(f"SELECT {', '.join(f'q{j}' for j in range(q))}, sum(w)::BIGINT AS r FROM combos "
                              "GROUP BY ALL")
        codes = [table.column(f"q{j}").to_numpy() for j in range(q)]
        weights = table.column("r").to_numpy()
        classes = [np.append(np.asarray(h.codes(lv), dtype=np.int64), -1)[c]
                   for h, lv, c in zip(self.hierarchies, levels, codes, strict=True)]
        kept = ~bad.holds(classes)
        return [np.bincount(c[kept & (c >= 0)], weights=weights[kept & (c >= 0)], minlength=h.source.size)
                .astype(np.int64) for c, h in zip(codes, self.hierarchies, strict=True)]
