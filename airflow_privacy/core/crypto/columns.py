"""Column-level encryption of DataFrames into text tokens ``v1:<kek id>:<base64url>``.

Security guarantee
------------------
*Randomized* tokens (``deterministic=False``, the default) are AES-256-GCM ciphertexts with
a fresh random 96-bit nonce per cell: they hide everything about the values except their
approximate length (and nullness: nulls stay nulls), even equality between cells.
*Deterministic* tokens (``deterministic=True``) are AES-256-SIV (RFC 5297) ciphertexts:
deterministic authenticated encryption (Rogaway & Shrimpton, EUROCRYPT 2006), which reveals
**equality** of values within one column under one key -- what makes the tokens joinable
and groupable -- **and their approximate length**. Use them for identifiers that must be
joined, never for low-entropy attributes whose frequencies would give them away.

Length, for both kinds: no padding is added, so a token's length is a function of the
length of the value's encoding (a kind byte, then UTF-8 text, or a fixed-size number):
base64 rounds it to a multiple of 3 bytes, so text values are revealed to within 2 bytes.
Where the length itself is sensitive (names, free text), generalize or hash the column
instead, or pad the values to a common length before encrypting. Both kinds are
authenticated and bound to the column name and key id: a token altered, forged, moved to
another column or decrypted with the wrong key raises
:class:`~airflow_privacy.core.errors.IntegrityError`; nothing is returned as garbage.

What a token does *not* protect: its row. Each cell is authenticated on its own, so
swapping tokens between rows of one column, deleting rows, or replacing a token by a null
is not detected (an empty string in a token column reads as null, since CSV writes nulls
that way). When the batch as a whole must be tamper-evident, also encrypt the file
(:func:`~airflow_privacy.core.crypto.encrypt_file`).

Keys
----
Column keys are derived from the ring's primary KEK with HKDF-SHA256 (RFC 5869):

* randomized: ``HKDF(KEK, salt=16 random bytes per call and column,
  info="airflow-privacy/v1/column-aes-gcm" 0x00 column)`` -> 256-bit AES-GCM key. The salt
  plays the role of the wrapped data key of file mode: it travels inside every token, so
  decryption needs only the ring and the DataFrame (tokens survive CSV, Parquet, joins,
  filters and concatenation; no side-car metadata can get lost).
* deterministic: ``HKDF(KEK, salt=none, info="airflow-privacy/v1/column-aes-siv" 0x00
  column)`` -> 512-bit AES-SIV key, so equal values in *different* columns get different
  tokens, and tokens change when the primary key rotates (old tokens keep decrypting while
  their key stays in the ring). Joins therefore need the same column name and key on both
  sides.

Because column keys are derived rather than wrapped, rotating keys for tokenized columns
means decrypting and re-encrypting them; :func:`~airflow_privacy.core.crypto.rewrap` is
for files and blobs.

The token format (``v1:<kek id>:<base64url>``) and the parsing and decryption of tokens are
in :mod:`.column_tokens`.

Vectorization: each column is factorized once
(:func:`~airflow_privacy.core.crypto.values.factorize`: per type and bit-exact for floats,
so ``1``, ``1.0`` and ``True`` stay three values); the value encoding (and, for deterministic
tokens, the AES-SIV call and base64) runs once per *distinct* value and is mapped back with
the factorize codes. Randomized tokens need one AES-GCM call per cell by definition; their
nonces come from one bulk ``os.urandom`` call.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from pandas.api.extensions import ExtensionDtype

from airflow_privacy.core.crypto import values as codec
from airflow_privacy.core.crypto.column_tokens import (
    _AD_LABEL,
    _DETERMINISTIC,
    _GCM_PURPOSE,
    _NONCE,
    _RANDOMIZED,
    _SALT,
    _SIV_PURPOSE,
    TOKEN_VERSION,
    _decrypt_series,
)
from airflow_privacy.core.crypto.keyring import KeyRing
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

__all__ = [
    "ATTRS_KEY",
    "TOKEN_VERSION",
    "decrypt_columns",
    "deterministic_tokens",
    "encrypt_columns",
]

ATTRS_KEY = "airflow_privacy.crypto"
"""``DataFrame.attrs`` entry holding non-secret per-column hints (original dtype, mode)."""

_URL_SAFE = bytes.maketrans(b"+/", b"-_")
_SAMPLE_ROWS = 20_000


def encrypt_columns(
    df: pd.DataFrame,
    columns: Sequence[Hashable],
    ring: KeyRing,
    deterministic: bool = False,
) -> pd.DataFrame:
    """Replace ``columns`` of ``df`` by text tokens under the ring's primary key.

    Nulls stay nulls; every other value (str, int, float, bool, bytes, date, timestamp,
    timedelta -- also in object or categorical columns) becomes a token. Token columns have
    the pandas string dtype. The original dtypes are recorded as a non-secret hint in
    ``result.attrs["airflow_privacy.crypto"]`` for :func:`decrypt_columns`.

    :param df: the batch; it is not modified.
    :param columns: names of the columns to encrypt.
    :param ring: key ring; its primary key derives the column keys.
    :param deterministic: False (default): randomized AES-GCM tokens that reveal nothing
        but the approximate length of each value. True: AES-SIV tokens, equal values give
        equal tokens (joinable; reveals equality within the column and approximate length).
    :return: a new DataFrame with the columns tokenized.
    :raises SchemaError: a column is missing, duplicated, or holds unsupported values.
    """
    _check_ring(ring)
    if not isinstance(deterministic, bool):
        raise InvalidParameterError("deterministic", deterministic, "expected True or False")
    names = _check_columns(df, columns)
    kek_id = ring.primary_id
    out = df.copy(deep=False)
    hints = dict(df.attrs.get(ATTRS_KEY, {}))
    for name in names:
        series = df[name]
        out[name] = _encrypt_series(series, str(name), ring, kek_id, deterministic)
        hints[str(name)] = {
            "dtype": str(series.dtype),
            "mode": "deterministic" if deterministic else "randomized",
            "kek_id": kek_id,
        }
    out.attrs = {**df.attrs, ATTRS_KEY: hints}
    return out


def decrypt_columns(df: pd.DataFrame, columns: Sequence[Hashable], ring: KeyRing) -> pd.DataFrame:
    """Replace token ``columns`` of ``df`` by the values they encrypt.

    Randomized and deterministic tokens, and tokens under different keys of the ring, may
    be mixed. Nulls stay nulls. Each column gets the canonical dtype of its values' type
    (``int64`` or ``Int64`` with nulls, ``float64``, ``bool`` or ``boolean``, ``str``,
    ``datetime64[us]`` with the original time zone, ``timedelta64[us]`` -- ``[ns]`` when
    sub-microsecond --, ``object`` for dates,
    bytes or mixed types); when ``df.attrs`` carries the hint written by
    :func:`encrypt_columns` the exact original dtype is restored if that is lossless.

    :param df: the batch with token columns; it is not modified.
    :param columns: names of the token columns.
    :param ring: a key ring holding every key the tokens were made under.
    :return: a new DataFrame with the columns decrypted.
    :raises IntegrityError: a value is not a token, was altered, belongs to another column,
        or its key is not in the ring. The message names the column and row position,
        never the value.
    """
    _check_ring(ring)
    names = _check_columns(df, columns)
    out = df.copy(deep=False)
    hints = dict(df.attrs.get(ATTRS_KEY, {}))
    for name in names:
        decoded = _decrypt_series(df[name], str(name), ring)
        hint = hints.pop(str(name), None)
        if isinstance(hint, dict) and isinstance(hint.get("dtype"), str):
            decoded = _restore_dtype(decoded, hint["dtype"])
        out[name] = decoded
    attrs = dict(df.attrs)
    if hints:
        attrs[ATTRS_KEY] = hints
    else:
        attrs.pop(ATTRS_KEY, None)
    out.attrs = attrs
    return out


# -- per column -----------------------------------------------------------------------------


def _encrypt_series(
    series: pd.Series, column: str, ring: KeyRing, kek_id: str, deterministic: bool
) -> pd.Series:
    try:
        codes, uniques = _distinct(series)
    except TypeError:  # unhashable cells (dict, list): not encryptable values either
        kinds = sorted({type(v).__name__ for v in series.dropna().tolist()})
        raise SchemaError(
            f"column {column!r} holds {kinds} values; encryptable values are str, int, "
            "float, bool, bytes, dates, timestamps and timedeltas"
        ) from None
    plaintexts = codec.encode_uniques(uniques, column)
    present = codes >= 0
    if deterministic:
        tokens = _deterministic_tokens(plaintexts, column, ring, kek_id)
        if not (present.all() and len(tokens) == len(codes)):  # else: codes are 0..n-1
            tokens = tokens.take(pa.array(codes, mask=~present))
    else:
        col = column.encode("utf-8")
        kid = kek_id.encode("ascii")
        prefix = f"{TOKEN_VERSION}:{kek_id}:".encode("ascii")
        b64 = binascii.b2a_base64  # standard alphabet here; made url-safe in bulk below
        salt = os.urandom(_SALT)
        gcm = AESGCM(ring._subkey(kek_id, _GCM_PURPOSE + col, length=32, salt=salt))
        ad = _AD_LABEL + bytes([_RANDOMIZED]) + kid + b"\x00" + col
        head = bytes([_RANDOMIZED]) + salt
        seal = gcm.encrypt
        cell_codes = codes[present].tolist()
        pool = os.urandom(_NONCE * len(cell_codes))
        nonces = [pool[i : i + _NONCE] for i in range(0, len(pool), _NONCE)]
        tokens = _token_array(
            [
                prefix + b64(head + n + seal(n, plaintexts[c], ad), newline=False)
                for n, c in zip(nonces, cell_codes, strict=True)
            ]
        )
        if not present.all():
            tokens = tokens.take(pa.array(np.cumsum(present) - 1, mask=~present))
    return pd.Series(pd.array(tokens, dtype="str"), index=series.index, name=series.name)


def deterministic_tokens(uniques: Any, column: str, ring: KeyRing) -> pa.Array:
    """The deterministic token of each of ``uniques`` (distinct non-null values, e.g. from
    :func:`~airflow_privacy.core.crypto.values.factorize`), in order, under the primary key:
    exactly what :func:`encrypt_columns` with ``deterministic=True`` writes for them in column
    ``column``. For callers that have factorized the column already (dedupe-then-map)."""
    _check_ring(ring)
    plaintexts = codec.encode_uniques(uniques, column)
    return _deterministic_tokens(plaintexts, column, ring, ring.primary_id)


def _deterministic_tokens(
    plaintexts: list[bytes], column: str, ring: KeyRing, kek_id: str
) -> pa.Array:
    col = column.encode("utf-8")
    siv = AESSIV(ring._subkey(kek_id, _SIV_PURPOSE + col, length=64))
    ad = [_AD_LABEL + bytes([_DETERMINISTIC]) + kek_id.encode("ascii") + b"\x00" + col]
    seal = siv.encrypt
    prefix = f"{TOKEN_VERSION}:{kek_id}:".encode("ascii")
    head = bytes([_DETERMINISTIC])
    b64 = binascii.b2a_base64  # standard alphabet here; made url-safe in bulk by _token_array
    return _token_array([prefix + b64(head + seal(p, ad), newline=False) for p in plaintexts])


def _token_array(raw: list[bytes]) -> pa.Array:
    """Arrow strings from ``prefix || standard base64`` bytes, translated to base64url in one
    pass over the data buffer (prefixes contain no '+' or '/', see KEY_ID_PATTERN)."""
    arr = pa.array(raw, type=pa.large_binary())
    validity, offsets, data = arr.buffers()
    url_safe = pa.py_buffer(data.to_pybytes().translate(_URL_SAFE) if data is not None else b"")
    return pa.Array.from_buffers(pa.large_string(), len(arr), [validity, offsets, url_safe])




def _distinct(series: pd.Series) -> tuple[np.ndarray, Any]:
    """Codes (-1 for null) into the values to encrypt: deduplicated when that pays.

    Dedupe-then-map saves one AEAD call per repeated value but costs a hash pass (about a
    sixth of an AES-SIV call per row). A random sample of rows decides: if it holds no
    repeated value, the column is (almost) unique and every row is encrypted directly;
    otherwise the column is factorized. The choice changes speed only, never the tokens.
    """
    n = len(series)
    if n >= 4 * _SAMPLE_ROWS:
        rows = np.random.default_rng().choice(n, _SAMPLE_ROWS, replace=False)
        sample = series.iloc[rows].dropna()
        if not sample.duplicated().any():
            present = series.notna().to_numpy()
            values = series.array if isinstance(series.dtype, ExtensionDtype) else series.to_numpy()
            codes = np.full(n, -1, dtype=np.intp)
            codes[present] = np.arange(int(present.sum()), dtype=np.intp)
            return codes, values[present]
    return codec.factorize(series)


def _restore_dtype(decoded: pd.Series, dtype: str) -> pd.Series:
    """Cast to the hinted original dtype only when the cast is lossless."""
    if str(decoded.dtype) == dtype:
        return decoded
    try:
        cast = decoded.astype(dtype)
        if cast.astype(decoded.dtype).equals(decoded):
            return cast
    except (TypeError, ValueError, OverflowError):
        pass
    return decoded


def _check_columns(df: Any, columns: Any) -> list[Hashable]:
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError("df", type(df).__name__, "expected a pandas DataFrame")
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Sequence):
        raise InvalidParameterError(
            "columns", columns, "expected a list of column names, e.g. ['email']"
        )
    names = list(columns)
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise SchemaError(f"columns {missing} are not in the batch; it has {list(df.columns)}")
    duplicated = [c for c in names if (df.columns == c).sum() > 1]
    if duplicated or len(set(names)) != len(names):
        raise SchemaError(f"columns {sorted(set(duplicated) | _repeats(names))} are ambiguous")
    # Column keys, associated data and hints use the name's text, so that tokens survive
    # CSV and Parquet (where a column 0 comes back as "0"); two names with one text in a
    # frame (0 and "0") would share keys, and tokens could move between them unnoticed.
    texts = [str(c) for c in df.columns]
    clashing = [c for c in names if texts.count(str(c)) > 1]
    if clashing:
        raise SchemaError(
            f"columns {clashing!r} share their text with another column of the batch "
            f"({[c for c in df.columns if str(c) in {str(n) for n in clashing}]!r}); "
            "rename one"
        )
    return names


def _repeats(names: list[Hashable]) -> set[Hashable]:
    seen: set[Hashable] = set()
    repeated: set[Hashable] = set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    return repeated


def _check_ring(ring: Any) -> None:
    if not isinstance(ring, KeyRing):
        raise InvalidParameterError("ring", type(ring).__name__, "expected a KeyRing")
