"""Key rings: named 256-bit key-encryption keys (KEKs), one of them primary.

Security guarantee
------------------
A :class:`KeyRing` holds secret key material and never lets it leak by accident:
``repr``/``str`` show only key ids, error messages never contain key bytes (nor any
unvalidated text from a key-ring JSON document, which could be a key pasted in the wrong
field), and the only way to get the bytes out is the explicit :meth:`KeyRing.to_json`.

Rotation (:meth:`KeyRing.rotate`) returns a *new* ring whose primary is a fresh key; the
older keys stay in the ring so existing ciphertexts still decrypt. New encryptions always
use the primary. Removing a key (:meth:`KeyRing.without`) makes everything still wrapped or
tokenized under it undecryptable with that ring.

KEKs are never used directly as cipher keys: every use derives a purpose-bound subkey with
HKDF-SHA256 (RFC 5869) whose ``info`` names the purpose, so a key used to wrap file data
keys and the same key used for column tokens can never be played against each other.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

__all__ = ["IdRing", "KeyRing", "KEY_BYTES", "KEY_ID_PATTERN"]

KEY_BYTES = 32
"""Every KEK is 256 bits."""

KEY_ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,63}")
"""Key ids: 1-64 ASCII characters, no ``:`` (tokens use it as a separator)."""

_FORMAT_VERSION = 1
_REDACTED = "<redacted>"


@dataclass(frozen=True)
class _Key:
    key_id: str
    material: bytes = field(repr=False)
    created: str


class IdRing:
    """What every key ring shares: immutable entries by id, one of them primary, and a
    ``repr`` that shows ids only."""

    __slots__ = ("_keys", "_primary")
    _keys: dict[str, Any]
    _primary: str

    def _store(self, entries: Iterable[Any], primary_id: str) -> None:
        """Keep ``entries`` (objects with a ``key_id``) by id: unique, non-empty, the
        primary among them."""
        by_id: dict[str, Any] = {}
        for entry in entries:
            if entry.key_id in by_id:
                raise InvalidParameterError("key_id", entry.key_id, "key ids must be unique")
            by_id[entry.key_id] = entry
        if not by_id:
            raise InvalidParameterError("keys", "[]", "a key ring needs at least one key")
        if primary_id not in by_id:
            raise InvalidParameterError(
                "primary_id", primary_id, f"must be one of the ring's ids {sorted(by_id)}"
            )
        object.__setattr__(self, "_keys", by_id)
        object.__setattr__(self, "_primary", primary_id)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; its methods return new rings")

    @property
    def primary_id(self) -> str:
        """Id of the key that new encryptions (and re-wraps) use."""
        return self._primary

    @property
    def ids(self) -> tuple[str, ...]:
        """All key ids, oldest first."""
        return tuple(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(primary_id={self._primary!r}, ids={self.ids!r})"

    __str__ = __repr__
    __hash__ = None  # type: ignore[assignment]


class KeyRing(IdRing):
    """An immutable set of KEKs with ids, one of which is the primary.

    Build one with :meth:`generate` or :meth:`from_json`; derive new rings with
    :meth:`rotate` and :meth:`without`. Instances are never modified in place.

    JSON form (what :meth:`to_json` writes and :meth:`from_json` accepts, e.g. in the
    password field of a ``privacy_keys`` Airflow connection)::

        {"version": 1, "primary": "3f9a0c12",
         "keys": [{"id": "3f9a0c12", "key": "<base64 of 32 bytes>",
                   "created": "2025-01-31T09:00:00+00:00"}]}
    """

    __slots__ = ()

    def __init__(self, keys: Iterable[_Key], primary_id: str) -> None:
        """Internal: use :meth:`generate`, :meth:`from_json`, :meth:`rotate`.

        :param keys: the key entries, oldest first.
        :param primary_id: id of the key new encryptions use; must be one of ``keys``.
        """
        entries = tuple(keys)
        for entry in entries:
            if not isinstance(entry, _Key):
                raise InvalidParameterError("keys", type(entry).__name__, "expected key entries")
            _check_key_id(entry.key_id, "key_id")
            if len(entry.material) != KEY_BYTES:
                raise InvalidParameterError("key", _REDACTED, f"expected {KEY_BYTES} bytes")
        self._store(entries, primary_id)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def generate(cls, *, key_id: str | None = None) -> KeyRing:
        """A ring with one fresh random 256-bit key (from ``os.urandom``), which is primary.

        :param key_id: id of the new key; a random 8-hex-digit id when None.
        """
        entry = _new_key(key_id, taken=())
        return cls((entry,), entry.key_id)

    def rotate(self, *, key_id: str | None = None) -> KeyRing:
        """A new ring: a fresh random key becomes primary; existing keys stay (decrypt only).

        :param key_id: id of the new key; a random unused 8-hex-digit id when None.
        """
        entry = _new_key(key_id, taken=self._keys)
        return KeyRing((*self._keys.values(), entry), entry.key_id)

    def without(self, key_id: str) -> KeyRing:
        """A new ring lacking ``key_id`` (retire a key once nothing is wrapped under it).

        :param key_id: id of a non-primary key of this ring.
        """
        if key_id not in self._keys:
            raise InvalidParameterError("key_id", key_id, f"not in this ring {list(self.ids)}")
        if key_id == self._primary:
            raise InvalidParameterError(
                "key_id", key_id, "the primary key cannot be removed; rotate() first"
            )
        return KeyRing((k for k in self._keys.values() if k.key_id != key_id), self._primary)

    # -- inspection (never secrets) --------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able summary without key material: ``[{"id", "created", "primary"}]``."""
        return [
            {"id": k.key_id, "created": k.created, "primary": k.key_id == self._primary}
            for k in self._keys.values()
        ]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return (
            self._primary == other._primary
            and self.ids == other.ids
            and all(
                hmac.compare_digest(k.material, other._keys[k.key_id].material)
                and k.created == other._keys[k.key_id].created
                for k in self._keys.values()
            )
        )

    # -- serialization -----------------------------------------------------------------------

    def to_json(self) -> str:
        """The ring as a compact JSON string. **Contains the key material**: store it as a
        secret (connection password, secrets backend), never in XCom or logs."""
        doc = {
            "version": _FORMAT_VERSION,
            "primary": self._primary,
            "keys": [
                {
                    "id": k.key_id,
                    "key": base64.b64encode(k.material).decode("ascii"),
                    "created": k.created,
                }
                for k in self._keys.values()
            ],
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRing:
        """Parse and strictly validate a ring written by :meth:`to_json`.

        Unknown or duplicate fields, a wrong version, a key that is not base64 of exactly
        32 bytes, duplicate ids, an unparseable ``created`` or a primary that is not in the
        ring raise :class:`InvalidParameterError`. Messages name the offending field but
        never quote its content.

        :param text: the JSON document (``str`` or UTF-8 ``bytes``).
        """
        doc = parse_ring_json(text)
        _expect_fields(doc, "keyring", {"version", "primary", "keys"})
        version = doc["version"]
        if type(version) is not int or version != _FORMAT_VERSION:
            shown = version if type(version) is int else type(version).__name__
            raise InvalidParameterError("keyring.version", shown, f"expected {_FORMAT_VERSION}")
        raw_keys = doc["keys"]
        if not isinstance(raw_keys, list) or not raw_keys:
            raise InvalidParameterError(
                "keyring.keys", _REDACTED, "expected a non-empty list of keys"
            )
        entries = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_keys):
            where = f"keyring.keys[{i}]"
            _expect_fields(raw, where, {"id", "key", "created"})
            key_id = raw["id"]
            if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
                raise InvalidParameterError(
                    f"{where}.id", _REDACTED, "expected 1-64 characters [0-9A-Za-z_.-]"
                )
            if key_id in seen:
                raise InvalidParameterError(f"{where}.id", key_id, "key ids must be unique")
            seen.add(key_id)
            material = _decode_key(raw["key"], f"{where}.key")
            created = raw["created"]
            if not isinstance(created, str) or not _is_iso_timestamp(created):
                raise InvalidParameterError(
                    f"{where}.created", _REDACTED, "expected an ISO-8601 timestamp string"
                )
            entries.append(_Key(key_id, material, created))
        primary = doc["primary"]
        if not isinstance(primary, str) or primary not in seen:
            raise InvalidParameterError(
                "keyring.primary", _REDACTED, f"expected one of the ring's ids {sorted(seen)}"
            )
        return cls(entries, primary)

    # -- internal: key material for the cipher modules -------------------------------------

    def _subkey(
        self, key_id: str, purpose: bytes, *, length: int, salt: bytes | None = None
    ) -> bytes:
        """HKDF-SHA256 subkey of KEK ``key_id`` for ``purpose``; unknown id -> IntegrityError."""
        entry = self._keys.get(key_id)
        if entry is None:
            raise IntegrityError(
                f"no key with id {key_id!r} in the key ring (it holds {list(self.ids)}); "
                "the data was encrypted under a key that was removed or belongs to another ring"
            )
        return HKDF(hashes.SHA256(), length, salt, purpose).derive(entry.material)


def parse_ring_json(text: Any) -> Any:
    """The JSON document of a key ring (str or UTF-8 bytes), duplicate fields refused;
    errors never quote the text, which may hold keys."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameterError("keyring", _REDACTED, "not UTF-8 text") from None
    if not isinstance(text, str):
        raise InvalidParameterError(
            "keyring", type(text).__name__, "expected the key-ring JSON as str or bytes"
        )
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_fields)
    except _DuplicateField as exc:
        raise InvalidParameterError(
            "keyring", _REDACTED, f"duplicate field {exc.args[0]!r} in key-ring JSON"
        ) from None
    except ValueError as exc:
        # JSONDecodeError carries the whole document in .doc: never chain it.
        where = f"line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise InvalidParameterError(
            "keyring", _REDACTED, f"not valid JSON ({where})".replace(" ()", "")
        ) from None


class _DuplicateField(Exception):
    pass


def _reject_duplicate_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _DuplicateField(name if KEY_ID_PATTERN.fullmatch(name) else _REDACTED)
        out[name] = value
    return out


def _expect_fields(obj: Any, where: str, fields: set[str]) -> None:
    if not isinstance(obj, dict):
        raise InvalidParameterError(where, type(obj).__name__, "expected a JSON object")
    missing = fields - obj.keys()
    if missing:
        raise InvalidParameterError(where, _REDACTED, f"missing field(s) {sorted(missing)}")
    extra = obj.keys() - fields
    if extra:
        safe = sorted(e if KEY_ID_PATTERN.fullmatch(e) else _REDACTED for e in extra)
        raise InvalidParameterError(where, _REDACTED, f"unknown field(s) {safe}")


def _decode_key(value: Any, where: str) -> bytes:
    allowed = f"expected standard base64 of exactly {KEY_BYTES} bytes"
    if not isinstance(value, str):
        raise InvalidParameterError(where, type(value).__name__, allowed)
    try:
        material = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidParameterError(where, _REDACTED, allowed) from None
    if len(material) != KEY_BYTES:
        raise InvalidParameterError(where, _REDACTED, allowed)
    return material


def _is_iso_timestamp(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _check_key_id(key_id: Any, name: str) -> None:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise InvalidParameterError(name, key_id, "expected 1-64 characters [0-9A-Za-z_.-]")


def _new_key(key_id: str | None, taken: Iterable[str]) -> _Key:
    taken = set(taken)
    if key_id is None:
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
    else:
        _check_key_id(key_id, "key_id")
        if key_id in taken:
            raise InvalidParameterError("key_id", key_id, "already in the ring")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return _Key(key_id, secrets.token_bytes(KEY_BYTES), created)
