"""Recipient key pairs: producers encrypt to a data holder and can never decrypt.

Security guarantee
------------------
A :class:`PrivateKeyRing` holds private keys (the data holder's decryption keys, or a
producer's signing key); like :class:`~airflow_privacy.core.crypto.keyring.KeyRing` it never
shows key bytes in ``repr``, ``str`` or error messages, and only :meth:`PrivateKeyRing.to_json`
lets them out. Its :meth:`~PrivateKeyRing.public_ring` is a :class:`PublicKeyRing`: public
halves, ids and fingerprints, safe to hand to every producer. A public ring can wrap data
keys to the holder (and verify producers' signatures) but holds nothing that decrypts:
whoever holds only the public ring cannot read what it, or anyone else, wrote.

Rotation: :meth:`PrivateKeyRing.rotate` adds a fresh key pair as primary and keeps the old
private keys so older files still open; republish :meth:`~PrivateKeyRing.public_ring` and
producers wrap to the new key. :func:`~airflow_privacy.core.crypto.envelope.rewrap` moves
existing files to it without touching their bodies.

JSON (``kind`` tells the two apart, and from a symmetric key ring)::

    {"version": 1, "kind": "private", "primary": "holder-1",
     "keys": [{"id": "holder-1", "suite": "hpke-x25519-sha256-aes256gcm",
               "private": "<base64>", "created": "2026-01-31T09:00:00+00:00"}]}
    {"version": 1, "kind": "public", "primary": "holder-1",
     "keys": [{"id": "holder-1", "suite": "hpke-x25519-sha256-aes256gcm",
               "public": "<base64>", "fingerprint": "sha256:<hex>", "created": "..."}]}

All keys of one ring share a role: recipient keys (``hpke-x25519-sha256-aes256gcm``,
``rsa-oaep-3072-sha256``) or producer signing keys (``ed25519``, whose key id is the
producer's id).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_privacy.core.crypto.keyring import (
    KEY_ID_PATTERN,
    IdRing,
    KeyRing,
    _expect_fields,
    _is_iso_timestamp,
    parse_ring_json,
)
from airflow_privacy.core.crypto.suites import HPKE_X25519, Suite, suite_named
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["PrivateKeyRing", "PublicKeyRing", "load_key_material"]

_VERSION = 1
_REDACTED = "<redacted>"


@dataclass(frozen=True)
class PublicKey:
    """One public key of a :class:`PublicKeyRing` (nothing here is secret)."""

    key_id: str
    suite: Suite
    key: Any = field(repr=False, compare=False)
    raw: bytes = field(repr=False)
    created: str

    @property
    def fingerprint(self) -> str:
        return self.suite.fingerprint(self.raw)


@dataclass(frozen=True)
class _PrivateKey:
    key_id: str
    suite: Suite
    key: Any = field(repr=False, compare=False)
    created: str

    def public(self) -> PublicKey:
        pub = self.key.public_key()
        return PublicKey(self.key_id, self.suite, pub, self.suite.public_bytes(pub), self.created)


class _Ring(IdRing):
    """Shared shape of the two rings: entries by id, one primary, one role."""

    __slots__ = ()
    _kind = ""

    def __init__(self, keys: Iterable[Any], primary_id: str) -> None:
        entries = tuple(keys)
        if len({e.suite.role for e in entries}) > 1:
            raise InvalidParameterError(
                "keys",
                sorted(e.suite.name for e in entries),
                "one ring holds either recipient keys or signing keys, not both",
            )
        self._store(entries, primary_id)

    @property
    def role(self) -> str:
        """``"encrypt"`` (recipient keys) or ``"sign"`` (producer signing keys)."""
        return self._keys[self._primary].suite.role

    def _doc(self, entries: list[dict[str, Any]]) -> str:
        doc = {"version": _VERSION, "kind": self._kind, "primary": self._primary, "keys": entries}
        return json.dumps(doc, separators=(",", ":"))


class PublicKeyRing(_Ring):
    """Public halves of a holder's recipient keys (or of producers' signing keys).

    Producers wrap each file's data key to :attr:`primary` (``encrypt_file(...,
    recipient=ring)``); a holder verifies producer signatures with a ring of ``ed25519``
    keys (``decrypt_file(..., senders=ring)``). Build with :meth:`from_json` or
    :meth:`PrivateKeyRing.public_ring`.
    """

    _kind = "public"

    @property
    def primary(self) -> PublicKey:
        return self._keys[self._primary]

    def get(self, key_id: str) -> PublicKey | None:
        return self._keys.get(key_id)

    def describe(self) -> list[dict[str, Any]]:
        """``[{"id", "suite", "fingerprint", "created", "primary"}]``."""
        return [
            {
                "id": k.key_id,
                "suite": k.suite.name,
                "fingerprint": k.fingerprint,
                "created": k.created,
                "primary": k.key_id == self._primary,
            }
            for k in self._keys.values()
        ]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKeyRing):
            return NotImplemented
        return self._primary == other._primary and self._keys == other._keys

    def to_json(self) -> str:
        """The ring as JSON (public: fine in a Variable, a repository or a connection)."""
        return self._doc(
            [
                {
                    "id": k.key_id,
                    "suite": k.suite.name,
                    "public": base64.b64encode(k.raw).decode("ascii"),
                    "fingerprint": k.fingerprint,
                    "created": k.created,
                }
                for k in self._keys.values()
            ]
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicKeyRing:
        """Parse and strictly validate; every key's ``fingerprint`` must match its bytes (a
        key altered on its way to a producer is refused)."""
        doc = _parse(text, "public")
        entries = []
        for where, raw in _entries(doc, {"id", "suite", "public", "fingerprint", "created"}):
            suite = suite_named(raw["suite"], f"{where}.suite")
            public = _b64(raw["public"], f"{where}.public")
            entry = PublicKey(
                raw["id"],
                suite,
                suite.load_public(public, f"{where}.public"),
                public,
                raw["created"],
            )
            if raw["fingerprint"] != entry.fingerprint:
                raise InvalidParameterError(
                    f"{where}.fingerprint",
                    raw["fingerprint"],
                    f"does not match the public key (its fingerprint is {entry.fingerprint})",
                )
            entries.append(entry)
        return cls(entries, doc["primary"])


class PrivateKeyRing(_Ring):
    """A holder's private recipient keys, or a producer's Ed25519 signing key; one primary.

    :meth:`generate` makes one, :meth:`rotate` adds a key pair, :meth:`public_ring` is what
    producers get. Secret: keep its JSON in the ``privacy_keys`` connection of the holder's
    (or the producer's) worker only.
    """

    _kind = "private"

    @classmethod
    def generate(
        cls, *, suite: str = HPKE_X25519.name, key_id: str | None = None
    ) -> PrivateKeyRing:
        """A ring with one fresh key pair.

        :param suite: ``hpke-x25519-sha256-aes256gcm`` (default), ``rsa-oaep-3072-sha256``,
            or ``ed25519`` for a producer's signing key.
        :param key_id: the key's id (for ``ed25519``: the producer's id); random 8 hex
            digits when None.
        """
        entry = _new_key(suite_named(suite), key_id, taken=())
        return cls((entry,), entry.key_id)

    def rotate(self, *, key_id: str | None = None) -> PrivateKeyRing:
        """A new ring whose primary is a fresh key pair of the primary's suite; older keys
        stay, so files wrapped to them still open."""
        entry = _new_key(self._keys[self._primary].suite, key_id, taken=self._keys)
        return PrivateKeyRing((*self._keys.values(), entry), entry.key_id)

    def public_ring(self) -> PublicKeyRing:
        """The public halves, ids and fingerprints, same primary: hand this to producers."""
        return PublicKeyRing((k.public() for k in self._keys.values()), self._primary)

    def describe(self) -> list[dict[str, Any]]:
        """Without key material: ``[{"id", "suite", "fingerprint", "created", "primary"}]``."""
        return self.public_ring().describe()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKeyRing):
            return NotImplemented
        return self.to_json() == other.to_json()

    def to_json(self) -> str:
        """The ring as JSON. **Contains the private keys**: store it as a secret
        (connection password, secrets backend), never in XCom or logs."""
        return self._doc(
            [
                {
                    "id": k.key_id,
                    "suite": k.suite.name,
                    "private": base64.b64encode(k.suite.private_bytes(k.key)).decode("ascii"),
                    "created": k.created,
                }
                for k in self._keys.values()
            ]
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PrivateKeyRing:
        """Parse and strictly validate; messages name fields, never quote key material."""
        doc = _parse(text, "private")
        entries = []
        for where, raw in _entries(doc, {"id", "suite", "private", "created"}):
            suite = suite_named(raw["suite"], f"{where}.suite")
            key = suite.load_private(_b64(raw["private"], f"{where}.private"), f"{where}.private")
            entries.append(_PrivateKey(raw["id"], suite, key, raw["created"]))
        return cls(entries, doc["primary"])

    # -- internal: for the envelope ---------------------------------------------------------

    def _entry(self, key_id: str) -> _PrivateKey | None:
        return self._keys.get(key_id)

    def _primary_entry(self) -> _PrivateKey:
        return self._keys[self._primary]


def load_key_material(
    text: str | bytes, where: str = "keyring"
) -> KeyRing | PrivateKeyRing | PublicKeyRing:
    """Whatever a ``privacy_keys`` connection holds: a symmetric :class:`KeyRing`, or (by
    its ``kind``) a :class:`PrivateKeyRing` or :class:`PublicKeyRing`."""
    try:
        kind = json.loads(text).get("kind")
    except (ValueError, TypeError, AttributeError):
        kind = None  # the ring's own parser explains what is wrong, without echoing it
    if kind == "private":
        return PrivateKeyRing.from_json(text)
    if kind == "public":
        return PublicKeyRing.from_json(text)
    if kind is not None:
        raise InvalidParameterError(f"{where}.kind", _REDACTED, "expected 'private' or 'public'")
    return KeyRing.from_json(text)


def _parse(text: Any, kind: str) -> dict[str, Any]:
    doc = parse_ring_json(text)
    _expect_fields(doc, "keyring", {"version", "kind", "primary", "keys"})
    if doc["kind"] != kind:
        shown = doc["kind"] if doc["kind"] in ("private", "public") else _REDACTED
        raise InvalidParameterError("keyring.kind", shown, f"expected {kind!r}")
    if type(doc["version"]) is not int or doc["version"] != _VERSION:
        raise InvalidParameterError("keyring.version", _REDACTED, f"expected {_VERSION}")
    if not isinstance(doc["keys"], list) or not doc["keys"]:
        raise InvalidParameterError("keyring.keys", _REDACTED, "expected a non-empty list of keys")
    ids = [k.get("id") for k in doc["keys"] if isinstance(k, dict)]
    if not isinstance(doc["primary"], str) or doc["primary"] not in ids:
        raise InvalidParameterError("keyring.primary", _REDACTED, "expected one of the ring's ids")
    return doc


def _entries(doc: dict[str, Any], fields: set[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    for i, raw in enumerate(doc["keys"]):
        where = f"keyring.keys[{i}]"
        _expect_fields(raw, where, fields)
        if not isinstance(raw["id"], str) or not KEY_ID_PATTERN.fullmatch(raw["id"]):
            raise InvalidParameterError(
                f"{where}.id", _REDACTED, "expected 1-64 characters [0-9A-Za-z_.-]"
            )
        if not isinstance(raw["created"], str) or not _is_iso_timestamp(raw["created"]):
            raise InvalidParameterError(
                f"{where}.created", _REDACTED, "expected an ISO-8601 timestamp"
            )
        yield where, raw


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (AttributeError, binascii.Error, UnicodeEncodeError):
        raise InvalidParameterError(where, _REDACTED, "expected standard base64") from None


def _new_key(suite: Suite, key_id: str | None, taken: Iterable[str]) -> _PrivateKey:
    taken = set(taken)
    if key_id is None:
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
    elif not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise InvalidParameterError("key_id", key_id, "expected 1-64 characters [0-9A-Za-z_.-]")
    elif key_id in taken:
        raise InvalidParameterError("key_id", key_id, "already in the ring")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return _PrivateKey(key_id, suite, suite.generate(), created)
