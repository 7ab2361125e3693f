"""Parquet datasets as engine input: a file, a glob, a (hive-partitioned) folder, any fsspec
URI, or a list of them -- resolved to a sorted list of files whose schemas agree.

The files' sorted order defines each row's *position* (the rows of the first file, then the
second, ...): the engines key their random choices by it (:mod:`.keyed`), so every engine
reading the same dataset makes the same choices. Reading the schemas touches only the footers,
so a bad dataset fails before anything is charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from airflow_privacy.core.errors import InvalidParameterError, SchemaError

_GLOB = ("*", "?", "[")


@dataclass(frozen=True)
class ParquetDataset:
    """Resolved files (sorted, with their protocol) and the common schema."""

    protocol: str
    filesystem: Any
    files: tuple[str, ...]
    base: str
    schema: pa.Schema
    rows: int
    partition_keys: tuple[str, ...] = ()
    offsets: tuple[int, ...] = ()
    """The position of each file's first row (the rows of the files before it)."""

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names) + [k for k in self.partition_keys if k not in self.schema.names]

    def check_columns(self, needed: set[str], value_cols: set[str], kinds: dict[str, list[str]]) -> None:
        """The columns a release names exist; its value columns are numeric."""
        missing = sorted(c for c in needed if c not in self.columns)
        if missing:
            raise SchemaError(f"input lacks column(s) {missing}; it has {self.columns}")
        for col in value_cols:
            t = self.schema.field(col).type if col in self.schema.names else pa.string()
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
                raise SchemaError(f"column {col!r} must be numeric for {kinds[col]}, got {t}")

    def uris(self) -> list[str]:
        if self.protocol in ("file", "local"):
            return list(self.files)
        return [f"{self.protocol}://{f}" for f in self.files]

    def to_pandas(self, columns: list[str]):
        """The rows, in position order, as a DataFrame (hive partition keys as columns)."""
        ds = pads.dataset(list(self.files), filesystem=self.filesystem, format="parquet",
                          partitioning="hive", partition_base_dir=self.base)
        return ds.to_table(columns=columns).to_pandas()


def _files_of(uri: str) -> tuple[str, Any, list[str], str]:
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(ch in path for ch in _GLOB):
        files = fs.glob(path)
        base = path.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        files = [f for f in fs.find(path) if f.endswith(".parquet")]
        base = path
    else:
        files = [path] if fs.exists(path) else []
        base = path.rsplit("/", 1)[0]
    return protocol, fs, files, base


def resolve(source: Any) -> ParquetDataset:
    """The dataset ``source`` names; errors name the parameter ``source``.

    :raises InvalidParameterError: no file matches, or the files hold no rows.
    :raises SchemaError: the files' schemas differ (names the first differing file).
    """
    uris = [source] if isinstance(source, str) else list(source)
    protocol = fs = None
    files: list[str] = []
    base = ""
    for uri in uris:
        p, f, found, b = _files_of(uri)
        if protocol is not None and p != protocol:
            raise InvalidParameterError("source", source, "all parts of one dataset must use one filesystem")
        protocol, fs, base = p, f, base or b
        files += found
    files = sorted(set(files))
    if not files:
        raise InvalidParameterError("source", source, "expected a Parquet file, glob or folder; it matches no Parquet file")
    first = None
    rows = 0
    offsets = []
    for name in files:
        try:
            meta = pq.read_metadata(name, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise SchemaError(f"source {source!r}: {name!r} is not a readable Parquet file ({exc}) -- nothing "
                              "was charged") from exc
        schema = meta.schema.to_arrow_schema().remove_metadata()
        offsets.append(rows)
        rows += meta.num_rows
        if first is None:
            first = (name, schema)
        elif not schema.equals(first[1]):
            raise SchemaError(f"source {source!r}: the schema of {name!r} ({_fields(schema)}) differs from that of "
                              f"{first[0]!r} ({_fields(first[1])}); every partition must have the same columns and "
                              "types -- nothing was charged")
    if rows == 0:
        raise InvalidParameterError("source", source, f"expected rows; its {len(files)} Parquet file(s) hold none")
    relative = files[0][len(base):].strip("/").split("/")[:-1]
    keys = tuple(part.split("=", 1)[0] for part in relative if "=" in part)
    return ParquetDataset(protocol, fs, tuple(files), base, first[1], rows, keys, tuple(offsets))


def refuse_missing(bad: dict[str, int], privacy_unit: str | None) -> None:
    """Raise for the missing-value counts an engine found (``"privacy_unit"``: the unit column;
    else value columns under ``missing_values="refuse"``); nothing has been charged yet."""
    if bad.pop("privacy_unit", 0):
        raise SchemaError(f"privacy_unit column {privacy_unit!r} has missing values; every row must belong to "
                          "a known unit -- fill or drop those rows before the release")
    if bad:
        raise SchemaError(f"missing_values='refuse' but value column(s) hold NaN/NULL (count per column: {bad}); "
                          "nothing was charged -- fill or drop them, or use missing_values='skip'")


def _fields(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def dataset_bytes(source: Any) -> int:
    """Total size of the dataset's files (for :func:`..choose_engine`)."""
    total = 0
    for uri in [source] if isinstance(source, str) else list(source):
        _, fs, files, _ = _files_of(uri)
        total += sum(fs.size(f) for f in files)
    return total
