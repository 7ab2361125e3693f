"""The column token format, and reading tokens back: parsing, authenticating and decrypting
the tokens :mod:`.columns` writes (:func:`_decrypt_series`, :class:`_TokenOpener`).

Token format
------------
``v1:<kek id>:<base64url (RFC 4648 §5, padded) of payload>`` where payload is

* randomized: ``0x01 || salt (16) || nonce (12) || AES-GCM ciphertext || tag (16)``
* deterministic: ``0x02 || AES-SIV synthetic IV (16) || ciphertext``

and the plaintext is the typed value encoding of :mod:`airflow_privacy.core.crypto.values`
(a kind byte, then the value). Associated data: ``"airflow-privacy/v1/column" || mode ||
kek id || 0x00 || column name``.

A token is opened with the column key derived as described in :mod:`.columns` (one cipher
cached per key id and salt); a token that does not parse, is not canonical base64url, or
does not authenticate raises :class:`~airflow_privacy.core.errors.IntegrityError`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import pandas as pd
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from airflow_privacy.core.crypto import values as codec
from airflow_privacy.core.crypto.keyring import KEY_ID_PATTERN, KeyRing
from airflow_privacy.core.errors import IntegrityError

TOKEN_VERSION = "v1"

_RANDOMIZED = 0x01
_DETERMINISTIC = 0x02
_SALT = 16
_NONCE = 12
_TAG = 16
_AD_LABEL = b"airflow-privacy/v1/column"
_GCM_PURPOSE = b"airflow-privacy/v1/column-aes-gcm\x00"
_SIV_PURPOSE = b"airflow-privacy/v1/column-aes-siv\x00"


def _decrypt_series(series: pd.Series, column: str, ring: KeyRing) -> pd.Series:
    if pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype):
        # A token is never empty, so "" can only be a null that went through CSV.
        series = series.mask(series.eq(""))
    codes, uniques = pd.factorize(series)
    col = column.encode("utf-8")
    opener = _TokenOpener(ring, col)
    plaintexts = []
    for position, token in enumerate(uniques.tolist()):
        try:
            plaintexts.append(opener.open(token))
        except IntegrityError as exc:
            row = int(np.flatnonzero(codes == position)[0])
            raise IntegrityError(f"column {column!r}, row {row}: {exc}") from None
    return codec.build_column(plaintexts, codes, series.index).rename(series.name)


class _TokenOpener:
    """Parses and decrypts tokens of one column, caching one cipher per (key, salt)."""

    def __init__(self, ring: KeyRing, column: bytes) -> None:
        self._ring = ring
        self._column = column
        self._ciphers: dict[tuple[str, bytes], Any] = {}

    def open(self, token: Any) -> bytes:
        if not isinstance(token, str):
            raise IntegrityError("value is not an airflow-privacy column token")
        parts = token.split(":", 2)
        if len(parts) != 3 or parts[0] != TOKEN_VERSION or not KEY_ID_PATTERN.fullmatch(parts[1]):
            raise IntegrityError("value is not an airflow-privacy v1 column token")
        kek_id, text = parts[1], parts[2]
        payload = _b64decode(text)
        if not payload:
            raise IntegrityError("token payload is empty")
        mode = payload[0]
        ad_tail = bytes([mode]) + kek_id.encode("ascii") + b"\x00" + self._column
        try:
            if mode == _DETERMINISTIC:
                if len(payload) < 1 + _TAG:
                    raise IntegrityError("token is truncated")
                siv = self._cipher(kek_id, b"")
                return siv.decrypt(payload[1:], [_AD_LABEL + ad_tail])
            if mode == _RANDOMIZED:
                if len(payload) < 1 + _SALT + _NONCE + _TAG:
                    raise IntegrityError("token is truncated")
                salt = payload[1 : 1 + _SALT]
                nonce = payload[1 + _SALT : 1 + _SALT + _NONCE]
                gcm = self._cipher(kek_id, salt)
                return gcm.decrypt(nonce, payload[1 + _SALT + _NONCE :], _AD_LABEL + ad_tail)
        except InvalidTag:
            raise IntegrityError(
                f"token under key {kek_id!r} did not authenticate: altered, copied from "
                "another column, or the ring holds a different key with that id"
            ) from None
        raise IntegrityError(f"unknown token mode {mode}")

    def _cipher(self, kek_id: str, salt: bytes) -> Any:
        cipher = self._ciphers.get((kek_id, salt))
        if cipher is None:
            if salt:
                key = self._ring._subkey(kek_id, _GCM_PURPOSE + self._column, length=32, salt=salt)
                cipher = AESGCM(key)
            else:
                cipher = AESSIV(self._ring._subkey(kek_id, _SIV_PURPOSE + self._column, length=64))
            self._ciphers[(kek_id, salt)] = cipher
        return cipher


def _b64decode(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError("token payload is not base64url") from None
    # Canonical form only: one payload has exactly one spelling (no '+', '/', stray bits).
    if base64.urlsafe_b64encode(raw).decode("ascii") != text:
        raise IntegrityError("token payload is not canonical base64url")
    return raw
