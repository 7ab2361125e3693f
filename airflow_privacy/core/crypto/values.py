"""Typed, canonical byte encoding of cell values, so column tokens decrypt to the right type.

Each plaintext is ``kind byte || payload``. The kind is a *logical* type, not a pandas dtype:
an ``int32``, ``int64`` or nullable ``Int64`` value 7 all encode to the same bytes, and a
timestamp encodes as nanoseconds since the epoch whatever its resolution. That keeps
deterministic tokens joinable across tables whose dtypes differ only in width or
nullability. Decoding rebuilds the canonical dtype of the kind (``int64``/``Int64``,
``float64``, ``bool``/``boolean``, ``str``, ``datetime64[us(, tz)]``, ...); the exact
original dtype is restored by the caller from a non-secret hint when one is available.

The kind byte is inside the authenticated plaintext, so a token cannot be re-typed.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import (
    infer_dtype,
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_float_dtype,
    is_integer_dtype,
    is_object_dtype,
    is_string_dtype,
    is_timedelta64_dtype,
)

from airflow_privacy.core.errors import IntegrityError, SchemaError

STR, INT, FLOAT, BOOL, DATETIME, DATE, BYTES, TIMEDELTA = range(1, 9)
_DOUBLE = struct.Struct(">d")
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1)
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_INT64 = (-(2**63), 2**63 - 1)


def factorize(series: pd.Series) -> tuple[np.ndarray, Any]:
    """Codes (one per row, -1 for null) into the distinct non-null values of ``series``,
    such that cells of different types or different float bits never share a code.

    ``pd.factorize`` alone merges values that compare equal but encode differently: ``1``,
    ``1.0`` and ``True`` in an object column, or ``0.0`` and ``-0.0``. The distinct value kept
    would be the first spelling in the batch, so a merged cell would decrypt to another type
    and its deterministic token or keyed hash would depend on row order. Floats are therefore
    factorized on their bits, and object columns holding several types (or floats) per type.
    This is the one factorization behind column tokens and every dedupe-then-map transform
    of :mod:`airflow_privacy.core.deid`.

    :return: ``(codes, uniques)``; ``uniques`` is an Index or array without nulls, in order
        of first appearance within each type.
    :raises TypeError: a cell is unhashable (dict, list).
    """
    dtype = series.dtype
    if is_float_dtype(dtype):
        return _float_codes(series.to_numpy(dtype=np.float64, na_value=np.nan))
    if is_object_dtype(dtype) and _mixes_types(infer_dtype(series, skipna=True)):
        return _factorize_per_type(series.to_numpy(dtype=object))
    codes, uniques = pd.factorize(series)
    return np.asarray(codes, dtype=np.intp), uniques


def _mixes_types(kind: str) -> bool:
    # "floating": Python floats in an object column, where pd.factorize merges -0.0 and 0.0.
    return kind.startswith("mixed") or kind == "floating"


def _float_codes(values: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    present = ~np.isnan(values)
    codes = np.full(len(values), -1, dtype=np.intp)
    sub, bits = pd.factorize(values[present].view(np.int64))
    codes[present] = sub
    return codes, pd.Index(np.asarray(bits, dtype=np.int64).view(np.float64))


def _factorize_per_type(values: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    present = ~pd.isna(values)
    codes = np.full(len(values), -1, dtype=np.intp)
    positions = np.flatnonzero(present)
    kinds = np.array([type(v) for v in values[positions]], dtype=object)
    uniques: list[Any] = []
    for kind in pd.unique(kinds):
        rows = positions[kinds == kind]
        if issubclass(kind, (float, np.floating)):
            sub, vals = _float_codes(values[rows].astype(np.float64))
        else:
            sub, vals = pd.factorize(pd.Series(values[rows], dtype=object))
        codes[rows] = sub + len(uniques)
        uniques.extend(vals.tolist())
    # A trailing None keeps numpy from reading equal-length tuples as a second dimension.
    return codes, pd.Index(np.array(uniques + [None], dtype=object)[:-1], dtype=object)


def encode_uniques(uniques: Any, column: str) -> list[bytes]:
    """Encode the distinct non-null values of one column (as returned by :func:`factorize`).

    :param uniques: the ``uniques`` of :func:`factorize` (Index / array; no nulls).
    :param column: column name, for error messages.
    """
    dtype = getattr(uniques, "dtype", None)
    if isinstance(dtype, pd.CategoricalDtype):
        uniques = np.asarray(uniques, dtype=object)
        dtype = uniques.dtype
    if dtype is not None and not (isinstance(dtype, np.dtype) and dtype.kind == "O"):
        if is_bool_dtype(dtype):
            return [b"\x04\x01" if v else b"\x04\x00" for v in uniques.tolist()]
        if is_integer_dtype(dtype):
            return [_int(INT, v) for v in uniques.tolist()]
        if is_float_dtype(dtype):
            return [b"\x03" + _DOUBLE.pack(v) for v in uniques.tolist()]
        if is_datetime64_any_dtype(dtype):
            index = pd.DatetimeIndex(uniques)
            factor = _NS_PER_UNIT[index.unit]
            tz = _tz_name(index.tz).encode("utf-8")
            return [_int(DATETIME, v * factor, tz) for v in index.asi8.tolist()]
        if is_timedelta64_dtype(dtype):
            index = pd.TimedeltaIndex(uniques)
            factor = _NS_PER_UNIT[index.unit]
            return [_int(TIMEDELTA, v * factor) for v in index.asi8.tolist()]
        if is_string_dtype(dtype):
            arrow = _arrow_strings(uniques)
            if arrow is not None:  # pyarrow-backed strings (pandas' default): one bulk kernel
                kind = pa.scalar(b"\x01", pa.large_binary())
                empty = pa.scalar(b"", pa.large_binary())
                joined = pc.binary_join_element_wise(kind, arrow.cast(pa.large_binary()), empty)
                return joined.to_pylist()
            try:
                return [b"\x01" + v.encode("utf-8") for v in uniques.tolist()]
            except (UnicodeEncodeError, AttributeError):
                pass  # fall through to the per-value path for a precise error
    return [_encode_one(v, column) for v in np.asarray(uniques, dtype=object).tolist()]


def _arrow_strings(uniques: Any) -> pa.Array | None:
    array = getattr(uniques, "array", uniques)
    if not hasattr(array, "__arrow_array__"):
        return None
    arrow = array.__arrow_array__()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        return None
    return arrow


def _encode_one(value: Any, column: str) -> bytes:
    # str first (the common case); bool before int (bool is an int subclass); datetime
    # before date (same reason).
    if isinstance(value, str):
        try:
            return b"\x01" + value.encode("utf-8")
        except UnicodeEncodeError:
            raise SchemaError(
                f"column {column!r} holds a string that is not valid Unicode (lone surrogate)"
            ) from None
    if isinstance(value, (bool, np.bool_)):
        return b"\x04\x01" if value else b"\x04\x00"
    if isinstance(value, (int, np.integer)):
        return _int(INT, int(value))
    if isinstance(value, (float, np.floating)):
        return b"\x03" + _DOUBLE.pack(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\x07" + bytes(value)
    if isinstance(value, pd.Timestamp):
        raw = value.asm8
        ns = int(raw.astype(np.int64)) * _NS_PER_UNIT[np.datetime_data(raw.dtype)[0]]
        return _int(DATETIME, ns, _tz_name(value.tz).encode("utf-8"))
    if isinstance(value, np.datetime64):
        unit = np.datetime_data(value.dtype)[0]
        if unit not in _NS_PER_UNIT:
            value = value.astype("datetime64[ns]")
            unit = "ns"
        return _int(DATETIME, int(value.astype(np.int64)) * _NS_PER_UNIT[unit], b"")
    if isinstance(value, dt.datetime):
        offset = value.utcoffset()  # None for naive datetimes
        naive = value.replace(tzinfo=None) - (offset or dt.timedelta(0))
        delta = naive - _EPOCH
        ns = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
        tz = _tz_name(value.tzinfo) if offset is not None else ""
        return _int(DATETIME, ns, tz.encode("utf-8"))
    if isinstance(value, dt.date):
        return _int(DATE, value.toordinal() - _EPOCH_ORDINAL)
    if isinstance(value, pd.Timedelta):
        return _int(TIMEDELTA, int(value.value))
    if isinstance(value, dt.timedelta):
        return _int(
            TIMEDELTA, (value.days * 86_400 + value.seconds) * 10**9 + value.microseconds * 1000
        )
    raise SchemaError(
        f"column {column!r} holds a {type(value).__name__} value; encryptable values are "
        "str, int, float, bool, bytes, dates, timestamps and timedeltas"
    )


def _int(kind: int, value: int, suffix: bytes = b"") -> bytes:
    # Minimal two's-complement big-endian, length-prefixed so a suffix (tz name) can follow.
    body = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
    if len(body) > 255:
        raise SchemaError(f"integer of {value.bit_length()} bits is too large to encrypt")
    return bytes((kind, len(body))) + body + suffix


def _tz_name(tz: Any) -> str:
    if tz is None:
        return ""
    if isinstance(tz, dt.timezone):
        if tz == dt.timezone.utc:
            return "UTC"
        offset = tz.utcoffset(None)
        minutes = int(offset.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return str(tz)


# -- decoding -------------------------------------------------------------------------------


def build_column(plaintexts: Sequence[bytes], codes: np.ndarray, index: pd.Index) -> pd.Series:
    """Rebuild a column from the decrypted distinct values and the factorize codes.

    :param plaintexts: decrypted encodings of the distinct tokens.
    :param codes: for every row, the position in ``plaintexts``; -1 for a null.
    :param index: the frame's index.
    """
    has_null = bool((codes < 0).any())
    if not plaintexts:
        return pd.Series(np.full(len(codes), None, dtype=object), index=index)
    kinds = {p[0] if p else 0 for p in plaintexts}
    if len(kinds) == 1:
        (kind,) = kinds
        arr = _build_single(kind, plaintexts, codes, has_null)
        if arr is not None:
            return pd.Series(arr, index=index)
    return pd.Series(
        _objects([_decode_one(p) for p in plaintexts], codes), index=index, dtype=object
    )


def _objects(values: list[Any], codes: np.ndarray) -> np.ndarray:
    """``values[codes]`` as an object array with None (not NaN) where ``codes`` is -1."""
    distinct = np.empty(len(values) + 1, dtype=object)
    distinct[:-1] = values
    return distinct[codes]  # code -1 picks the trailing None


def _build_single(kind: int, plaintexts: Sequence[bytes], codes: np.ndarray, has_null: bool) -> Any:
    take = pd.api.extensions.take
    if kind == STR:
        arr = pd.array([_utf8(p) for p in plaintexts], dtype="str")
        return arr.take(codes, allow_fill=True)
    if kind == FLOAT:
        floats = np.array([_double(p) for p in plaintexts], dtype=np.float64)
        return take(floats, codes, allow_fill=True)
    if kind == BOOL:
        bools = np.array([_bool(p) for p in plaintexts], dtype=bool)
        if has_null:
            return pd.array(bools, dtype="boolean").take(codes, allow_fill=True)
        return bools[codes]
    if kind == INT:
        ints = [_unint(p)[0] for p in plaintexts]
        lo, hi = min(ints), max(ints)
        if lo >= _INT64[0] and hi <= _INT64[1]:
            np_ints, nullable = np.array(ints, dtype=np.int64), "Int64"
        elif lo >= 0 and hi < 2**64:
            np_ints, nullable = np.array(ints, dtype=np.uint64), "UInt64"
        else:
            return None
        if has_null:
            return pd.array(np_ints, dtype=nullable).take(codes, allow_fill=True)
        return np_ints[codes]
    if kind == DATETIME:
        decoded = [_unint(p) for p in plaintexts]
        tzs = {suffix for _, suffix in decoded}
        if len(tzs) != 1:
            return None
        raw = _resolution([v for v, _ in decoded], "M8")
        if raw is None:
            return None
        index = pd.DatetimeIndex(raw)
        tz = _utf8_raw(tzs.pop())
        if tz:
            index = index.tz_localize("UTC").tz_convert(tz)
        return index.array.take(codes, allow_fill=True)
    if kind == TIMEDELTA:
        raw = _resolution([_unint(p)[0] for p in plaintexts], "m8")
        if raw is None:
            return None
        return pd.TimedeltaIndex(raw).array.take(codes, allow_fill=True)
    if kind in (DATE, BYTES):
        return _objects([_decode_one(p) for p in plaintexts], codes)
    _malformed()
    return None


def _resolution(ns: list[int], kind: str) -> np.ndarray | None:
    """Microseconds (pandas' default resolution) when exact, else nanoseconds."""
    try:
        exact = np.array(ns, dtype=np.int64)
    except OverflowError:  # beyond datetime64[ns]: only representable in coarser units
        if any(v % 1000 for v in ns) or min(ns) // 1000 < _INT64[0] or max(ns) // 1000 > _INT64[1]:
            return None
        return np.array([v // 1000 for v in ns], dtype=np.int64).view(f"{kind}[us]")
    if not (exact % 1000).any():
        return (exact // 1000).view(f"{kind}[us]")
    return exact.view(f"{kind}[ns]")


def _decode_one(p: bytes) -> Any:
    kind = p[0] if p else 0
    if kind == STR:
        return _utf8(p)
    if kind == INT:
        return _unint(p)[0]
    if kind == FLOAT:
        return _double(p)
    if kind == BOOL:
        return _bool(p)
    if kind == BYTES:
        return p[1:]
    if kind == DATE:
        return dt.date.fromordinal(_unint(p)[0] + _EPOCH_ORDINAL)
    if kind == TIMEDELTA:
        return pd.Timedelta(_unint(p)[0], unit="ns")
    if kind == DATETIME:
        ns, tz = _unint(p)
        ts = pd.Timestamp(ns, unit="ns")
        name = _utf8_raw(tz)
        return ts.tz_localize("UTC").tz_convert(name) if name else ts
    _malformed()


def _utf8(p: bytes) -> str:
    return _utf8_raw(p[1:])


def _utf8_raw(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _malformed()
        raise


def _double(p: bytes) -> float:
    if len(p) != 9:
        _malformed()
    return _DOUBLE.unpack_from(p, 1)[0]


def _bool(p: bytes) -> bool:
    if len(p) != 2 or p[1] > 1:
        _malformed()
    return p[1] == 1


def _unint(p: bytes) -> tuple[int, bytes]:
    if len(p) < 2 or len(p) < 2 + p[1]:
        _malformed()
    end = 2 + p[1]
    return int.from_bytes(p[2:end], "big", signed=True), p[end:]


def _malformed() -> None:
    # Only reachable with a valid tag, i.e. by a holder of the key: still fail closed.
    raise IntegrityError("a token decrypted to a malformed value encoding: not ours")
