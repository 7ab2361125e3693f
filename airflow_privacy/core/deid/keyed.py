"""Keyed transforms: HMAC tokens, reversible AES-SIV tokens, per-entity date shifts.

Keys
----
Every key is derived from the key ring's **primary** KEK with HKDF-SHA256 (RFC 5869),
``info`` naming the purpose and the column (so a key for one purpose is never used for
another, and equal values in different columns get unrelated tokens unless asked):

* ``hash``: ``info = "airflow-privacy/deid/hmac/v1" 0x00 domain`` (``domain`` defaults to
  the column name; give two columns the same domain to make their tokens joinable);
  256-bit HMAC-SHA256 key.
* ``shift_dates``: ``info = "airflow-privacy/deid/date-shift/v1" 0x00 by-column`` -- keyed
  by the *entity* column, not the date column, so every date column shifted ``by`` the same
  entity column moves by the same number of days and intervals between a patient's dates
  survive.
* ``tokenize`` gives the tokens :func:`airflow_privacy.core.crypto.encrypt_columns` with
  ``deterministic=True`` gives (AES-256-SIV under its own HKDF subkey; see that module),
  computed once per distinct value. They reveal equality within the column and the
  approximate length of the value (``hash`` tokens have a fixed width).

Derived keys are bound to the primary key: rotating the ring changes hash tokens, date
shifts and tokenize tokens for new batches (old tokens keep decrypting while their key
stays in the ring). The audit report records the key id of every keyed column.

Guarantees
----------
* ``hash`` -- ``h1:<kek id>:<base64url without padding of HMAC-SHA256(key, value)[:length]>``.
  A PRF: without the key, tokens reveal only equality of values within the domain (no
  dictionary attack on low-entropy values such as phone numbers or SSNs, unlike a plain
  hash). Not reversible (use ``tokenize`` to get values back), though a key holder can
  confirm a guessed value. Values are MAC'ed in the typed canonical encoding of
  :mod:`airflow_privacy.core.crypto.values`, so ``7`` and ``"7"`` differ while ``int32``
  7 and ``int64`` 7 agree.
* ``shift_dates`` -- every row of one entity moves by the same ``s`` days, ``s`` uniform
  over ``{-max_days, ..., -1, 1, ..., max_days}`` (never 0), derived as
  ``HMAC(key, entity)`` (first 64 bits) reduced modulo ``2 * max_days`` (bias below
  2^-47). Consistent across batches and across date columns; intervals within an entity
  are preserved exactly in calendar days and wall-clock time (a tz-aware timestamp keeps
  its local time across a DST change; see :func:`shift_dates`), absolute dates are hidden
  up to ``±max_days``. Rows whose entity
  is null cannot be shifted consistently and are released as null (fail closed).
"""

from __future__ import annotations

import hmac
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import (
    infer_dtype,
    is_datetime64_any_dtype,
    is_object_dtype,
    is_string_dtype,
)

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.crypto.columns import deterministic_tokens
from airflow_privacy.core.crypto.values import encode_uniques
from airflow_privacy.core.deid.dedupe import Distinct, distinct, to_series
from airflow_privacy.core.deid.generalize import parse_datetimes
from airflow_privacy.core.deid.memo import Memo, memoized
from airflow_privacy.core.errors import SchemaError

__all__ = ["HASH_VERSION", "date_shifts", "hash_tokens", "shift_dates", "tokenize"]

HASH_VERSION = "h1"
_HMAC_PURPOSE = b"airflow-privacy/deid/hmac/v1\x00"
_SHIFT_PURPOSE = b"airflow-privacy/deid/date-shift/v1\x00"
_B64URL = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
)


def derived_key(ring: KeyRing, purpose: bytes, name: str) -> bytes:
    """HKDF-SHA256 subkey of the ring's primary KEK for ``purpose`` and ``name``."""
    # KeyRing._subkey is the crypto package's one derivation point (HKDF, info=purpose):
    # using it keeps key material inside KeyRing rather than copying it out here.
    return ring._subkey(ring.primary_id, purpose + name.encode("utf-8"), length=32)


# -- hash -----------------------------------------------------------------------------------


def hash_tokens(
    column: Distinct, name: str, ring: KeyRing, *, length: int, domain: str, memo: Memo | None = None
) -> pa.Array:
    """HMAC tokens of ``column``'s distinct values (one per distinct value, in order);
    ``memo`` (:mod:`.memo`) keeps the MACs across the batches of a streamed release."""
    key = derived_key(ring, _HMAC_PURPOSE, domain)
    messages = encode_uniques(column.uniques, name)
    digest = hmac.digest

    def macs_of(fresh: list[bytes]) -> list[bytes]:
        return [digest(key, m, "sha256")[:length] for m in fresh]

    macs = b"".join(memoized(memo, ("hash", ring.primary_id, domain, length), messages, macs_of))
    prefix = f"{HASH_VERSION}:{ring.primary_id}:".encode("ascii")
    return _fixed_width_tokens(np.frombuffer(macs, dtype=np.uint8).reshape(-1, length), prefix)


def _fixed_width_tokens(raw: np.ndarray, prefix: bytes) -> pa.Array:
    """``prefix || base64url(row)`` (no padding) for every row of a uint8 matrix, built as
    one Arrow buffer: no per-token Python work."""
    rows, width = raw.shape
    if rows == 0:
        return pa.array([], pa.large_string())
    chars = -(-width * 4 // 3)
    padded = np.zeros((rows, -(-width // 3) * 3), dtype=np.uint8)
    padded[:, :width] = raw
    triples = padded.reshape(rows, -1, 3).astype(np.uint32)
    word = (triples[..., 0] << 16) | (triples[..., 1] << 8) | triples[..., 2]
    sextets = np.stack([(word >> s) & 63 for s in (18, 12, 6, 0)], axis=-1).reshape(rows, -1)
    encoded = _B64URL[sextets[:, :chars]]
    head = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (rows, len(prefix)))
    data = np.ascontiguousarray(np.concatenate([head, encoded], axis=1))
    step = len(prefix) + chars
    offsets = np.arange(rows + 1, dtype=np.int64) * step
    return pa.Array.from_buffers(
        pa.large_string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


# -- tokenize -------------------------------------------------------------------------------


def tokenize(
    column: Distinct, name: str, ring: KeyRing, memo: Memo | None = None
) -> tuple[pa.Array, dict[str, Any]]:
    """Deterministic AES-SIV tokens of ``column``'s distinct values, in order (reversible with
    ``decrypt_columns`` under the column's name), and the hint ``encrypt_columns`` records.

    The distinct values are encrypted as they are: re-factorizing them here would merge
    values :func:`.dedupe.distinct` keeps apart (``1``, ``1.0``, ``True``). With ``memo``
    (:mod:`.memo`), the values it lacks only: a token is a function of the value's
    encoding, the column and the key (SIV is deterministic)."""
    hint = {"mode": "deterministic", "kek_id": ring.primary_id}
    if memo is None:
        return deterministic_tokens(column.uniques, name, ring), hint
    uniques = column.uniques

    def tokens_of(fresh: list[int]) -> list[str]:
        return deterministic_tokens(uniques.take(fresh), name, ring).to_pylist()

    messages = encode_uniques(uniques, name)
    # the memo's keys are the encodings; ``compute`` gets positions in ``uniques`` instead
    position = {m: i for i, m in enumerate(messages)}
    found = memoized(memo, ("tokenize", ring.primary_id, name), messages,
                     lambda fresh: tokens_of([position[m] for m in fresh]))
    return pa.array(found, pa.large_string()), hint


# -- date shift -----------------------------------------------------------------------------


def date_shifts(
    entities: Distinct, by: str, ring: KeyRing, max_days: int, memo: Memo | None = None
) -> np.ndarray:
    """The shift in days of every distinct entity (``int64``, never 0, |s| <= max_days);
    ``memo`` (:mod:`.memo`) keeps the MACs across the batches of a streamed release."""
    key = derived_key(ring, _SHIFT_PURPOSE, by)
    digest = hmac.digest

    def macs_of(fresh: list[bytes]) -> list[bytes]:
        return [digest(key, m, "sha256")[:8] for m in fresh]

    messages = encode_uniques(entities.uniques, by)
    macs = b"".join(memoized(memo, ("shift", ring.primary_id, by), messages, macs_of))
    words = np.frombuffer(macs, dtype=">u8").astype(np.uint64)
    r = (words % np.uint64(2 * max_days)).astype(np.int64)
    return np.where(r < max_days, r - max_days, r - max_days + 1)


def shift_dates(series: pd.Series, shift: np.ndarray, name: str, dates: pa.Array | None = None) -> pd.Series:
    """``series`` moved by ``shift`` days per row (``int64``; a negative sentinel
    ``np.iinfo(int64).min`` marks rows that must become null).

    Dtypes are kept: ``datetime64`` (naive or tz-aware), Arrow ``date32``/``timestamp``,
    object columns of ``datetime.date`` (object columns of datetimes come back as
    ``datetime64``) and date strings (shifted and written back as ISO 8601 text).

    A shift moves the *calendar* by whole days and keeps the wall-clock time, also in a
    time zone with daylight saving time: 10:00 in Paris on 20 March shifted by 14 days is
    10:00 on 3 April, not 11:00 (14 x 24 h would cross the change to summer time). A
    wall-clock time the target day lacks (inside a spring-forward gap) moves forward to the
    first time that exists (``nonexistent="shift_forward"``); one the target day has twice
    (a fall-back overlap) is the first, summer-time occurrence. Intervals within an entity
    are therefore exact in calendar days and wall-clock time; in elapsed hours they differ
    by the DST offsets crossed.

    :param dates: :func:`date32_source` of ``series``, when there is one: the same dates as
        ``date32``, read instead of converting ``series``' Python objects (which holds the
        GIL: ~1/3 of the ``shift_dates`` rule's time on the bench's object dates).
    """
    drop = shift == _NULL_SHIFT
    dtype = series.dtype
    if dates is not None:
        if dates.null_count == len(dates):
            return series.copy()  # what infer_dtype's "empty" gives below
        moved = _shift_arrow(dates, shift, drop)
        return pd.Series(moved.to_pandas(date_as_object=True).to_numpy(), index=series.index, name=series.name)
    if isinstance(dtype, pd.ArrowDtype) and (
        pa.types.is_date(dtype.pyarrow_dtype) or pa.types.is_timestamp(dtype.pyarrow_dtype)
    ):
        arrow_type = dtype.pyarrow_dtype
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
            zoned = series.astype(pd.DatetimeTZDtype(unit=arrow_type.unit, tz=arrow_type.tz))
            moved = pa.array(shift_dates(zoned, shift, name), type=arrow_type, from_pandas=True)
        else:
            arrow = pa.chunked_array(pa.array(series.array)).combine_chunks()
            moved = _shift_arrow(arrow, shift, drop)
        return pd.Series(pd.arrays.ArrowExtensionArray(moved), index=series.index, name=series.name)
    if is_datetime64_any_dtype(dtype):
        delta = (np.where(drop, 0, shift) * 86_400).astype("m8[s]")
        delta[drop] = np.timedelta64("NaT")
        tz = getattr(dtype, "tz", None)
        if tz is None:
            return series + delta
        wall_clock = series.dt.tz_localize(None) + delta
        return wall_clock.dt.tz_localize(
            tz, ambiguous=np.ones(len(series), dtype=bool), nonexistent="shift_forward"
        )
    if is_string_dtype(dtype) and not is_object_dtype(dtype):
        return _shift_text(series, shift, drop, name)
    kind = infer_dtype(series, skipna=True)
    if kind == "empty":
        return series.copy()
    if kind == "date":
        try:
            arrow = pa.array(series, type=pa.date32(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise SchemaError(f"column {name!r} mixes dates with other values") from None
        moved = _shift_arrow(arrow, shift, drop)
        return pd.Series(moved.to_pandas(date_as_object=True).to_numpy(), index=series.index, name=series.name)
    if kind in ("datetime", "datetime64"):
        try:
            as_datetime = pd.to_datetime(series)
        except (TypeError, ValueError):
            raise SchemaError(f"column {name!r} mixes time zones or types") from None
        return shift_dates(as_datetime, shift, name)
    if kind == "string":
        return _shift_text(series, shift, drop, name)
    raise SchemaError(
        f"column {name!r} holds {kind} values ({dtype}); shift_dates needs dates, timestamps "
        "or date strings"
    )


_NULL_SHIFT = np.iinfo(np.int64).min


def date32_source(series: pd.Series, source: pa.ChunkedArray | None) -> pa.Array | None:
    """``source`` (the Arrow column ``series`` was converted from, :meth:`.rule_base.Batch.arrow`)
    when it is ``date32`` and ``series`` the object column of ``datetime.date`` (and None)
    ``to_pandas`` makes of it -- the dates :func:`shift_dates` would read back from the
    objects with ``pa.array(series, type=pa.date32())``, the same values -- else None."""
    if source is None or not pa.types.is_date32(source.type) or not is_object_dtype(series.dtype):
        return None
    return source.combine_chunks() if isinstance(source, pa.ChunkedArray) else source


def _shift_arrow(arrow: pa.Array, shift: np.ndarray, drop: np.ndarray) -> pa.Array:
    """Dates and naive timestamps (tz-aware ones go through wall-clock time, see above)."""
    null = drop | arrow.is_null().to_numpy(zero_copy_only=False)
    days = np.where(null, 0, shift)
    if pa.types.is_date(arrow.type):
        base = pc.fill_null(arrow.cast(pa.date32()).cast(pa.int32()), 0).to_numpy()
        moved = (base.astype(np.int64) + days).astype(np.int32)
        return pa.array(moved, mask=null).cast(pa.date32())
    delta = pa.array(days * 86_400, mask=null).cast(pa.duration("s"))
    return pc.add(arrow, delta)


def _shift_text(series: pd.Series, shift: np.ndarray, drop: np.ndarray, name: str) -> pd.Series:
    column = distinct(series)
    parsed = parse_datetimes(column.uniques.to_numpy(dtype=object), name, "shift_dates")
    date_only = bool((parsed == parsed.astype("M8[D]")).all())
    micros = parsed.astype(np.int64)
    codes = column.codes
    valid = (codes >= 0) & ~drop
    out = np.zeros(len(codes), dtype=np.int64)
    out[valid] = micros[codes[valid]] + shift[valid] * 86_400_000_000
    moved = distinct(pd.Series(out[valid]))
    unit = "D" if date_only else "us"
    stamps = moved.uniques.to_numpy(dtype=np.int64).view("M8[us]").astype(f"M8[{unit}]")
    labels = pa.array(
        np.datetime_as_string(stamps, unit="D" if date_only else "auto").tolist(), pa.large_string()
    )
    row_codes = np.full(len(codes), -1, dtype=np.intp)
    row_codes[valid] = moved.codes
    return to_series(Distinct(row_codes, moved.uniques).take(labels), series.index, series.name)


def entity_shifts(
    entity: Distinct, by: str, ring: KeyRing, max_days: int, memo: Memo | None = None
) -> np.ndarray:
    """Per-row shift (``_NULL_SHIFT`` where the entity is null)."""
    per_entity = date_shifts(entity, by, ring, max_days, memo)
    codes = entity.codes
    shift = np.full(len(codes), _NULL_SHIFT, dtype=np.int64)
    present = codes >= 0
    shift[present] = per_entity[codes[present]]
    return shift
