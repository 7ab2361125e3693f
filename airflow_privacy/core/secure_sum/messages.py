"""Wire format of every secure-sum message and of the site state.

A message is ``MAGIC | version | kind | header length | JSON header | raw payload``:

- ``MAGIC = b"APSS"``, ``version`` (u8), ``kind`` (u8, :class:`Kind`), header length (u32,
  big endian);
- a compact JSON header that always carries ``config`` (hex SHA-256 of the round's
  :class:`SecureSumConfig`) and ``round_id``; binary fields inside it are base64;
- a raw payload (a little-endian numpy buffer for vectors, big-endian integers for Paillier
  ciphertexts), read back zero-copy with ``np.frombuffer``.

Parsing is strict and fails closed: wrong magic, version, kind or configuration, a truncated
buffer, malformed JSON, a missing or mistyped field, or a site outside the cohort all raise
:class:`ProtocolError`. Messages are bytes so that the operator layer can store them as files
between Airflow tasks; they are small except for the vectors themselves.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_privacy.core.errors import ProtocolError
from airflow_privacy.core.secure_sum.config import SecureSumConfig

MAGIC = b"APSS"
VERSION = 1
_PREFIX = struct.Struct(">4sBBI")
_MAX_HEADER = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    """What a message is; a parser accepts exactly one kind."""

    SITE_STATE = 0
    ADVERTISEMENT = 1
    ROSTER = 2
    KEY_SHARES = 3
    SHARE_BUNDLE = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    SHARE_REVEAL = 7
    PAILLIER_INPUT = 8
    PAILLIER_AGGREGATE = 9


@dataclass(frozen=True)
class Envelope:
    kind: Kind
    header: dict[str, Any]
    payload: memoryview


def pack(
    kind: Kind,
    config: SecureSumConfig,
    header: Mapping[str, Any],
    payload: bytes | memoryview = b"",
) -> bytes:
    full = {"config": config.config_id.hex(), "round_id": config.round_id, **header}
    raw = json.dumps(full, separators=(",", ":"), sort_keys=True).encode()
    return b"".join([_PREFIX.pack(MAGIC, VERSION, int(kind), len(raw)), raw, payload])


def unpack(data: Any, kind: Kind, config: SecureSumConfig) -> Envelope:
    """Parse and validate the envelope of a message expected to be of ``kind``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a {kind.name} message as bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX.size:
        raise ProtocolError(f"truncated {kind.name} message ({len(view)} bytes)")
    magic, version, got, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"not a secure-sum message (magic {bytes(magic)!r})")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported secure-sum message version {version} (expected {VERSION})"
        )
    if got != kind:
        name = Kind(got).name if got in Kind._value2member_map_ else str(got)
        raise ProtocolError(f"expected a {kind.name} message, got {name}")
    end = _PREFIX.size + header_len
    if header_len > _MAX_HEADER or end > len(view):
        raise ProtocolError(f"truncated {kind.name} message header")
    try:
        header = json.loads(bytes(view[_PREFIX.size : end]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed {kind.name} message header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"malformed {kind.name} message header: not an object")
    if header.get("config") != config.config_id.hex():
        raise ProtocolError(
            f"{kind.name} message belongs to round {header.get('round_id')!r} or to another "
            f"configuration; expected round {config.round_id!r} with config "
            f"{config.config_id.hex()[:16]}..."
        )
    return Envelope(Kind(got), header, view[end:])


# -- typed header fields (all raise ProtocolError) ------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def get_field(header: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise ProtocolError(f"message header lacks {key!r}")
    value = header[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"message header field {key!r} has the wrong type")
    return value


def as_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be base64 text")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProtocolError(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise ProtocolError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def site(value: Any, config: SecureSumConfig, what: str) -> str:
    if not isinstance(value, str) or value not in config.sites:
        raise ProtocolError(f"{what} {value!r} is not in the cohort {list(config.sites)}")
    return value


def site_list(value: Any, config: SecureSumConfig, what: str) -> list[str]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what} must be a list of sites")
    sites = [site(v, config, what) for v in value]
    if len(set(sites)) != len(sites):
        raise ProtocolError(f"{what} lists a site twice")
    return sorted(sites)


def site_map(value: Any, config: SecureSumConfig, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be an object keyed by site")
    return {site(k, config, what): v for k, v in value.items()}
