"""The two envelope formats behind :mod:`.envelope`, and its parameter checks.

:func:`_begin_encryption` / :func:`_begin_decryption` draw the data key and prefix and build
(or open) the header of format v1 (DEK wrapped under a symmetric
:class:`~airflow_privacy.core.crypto.keyring.KeyRing`'s primary KEK, :mod:`.symmetric`) or
v2 (DEK wrapped to recipients' public keys, :mod:`.hybrid`), returning the
:class:`~airflow_privacy.core.crypto.stream.Body` that seals or opens the segmented body;
the associated data enters as its SHA-256 digest. :func:`_read_header` parses either
format's header, :func:`_rewrapped` re-wraps it (key rotation), :func:`_key_ids` and
:func:`_stats` describe it. :func:`_check_ring`, :func:`_check_blob` and
:func:`_ad_digest` validate the public API's arguments.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from airflow_privacy.core.crypto import hybrid, symmetric
from airflow_privacy.core.crypto.keyring import KeyRing
from airflow_privacy.core.crypto.recipients import PrivateKeyRing, PublicKeyRing
from airflow_privacy.core.crypto.stream import Body, Counts, Prefix
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

Header = symmetric.KekHeader | hybrid.HybridHeader


# -- the two formats --------------------------------------------------------------------------


def _begin_encryption(
    ring: Any, associated_data: Any, segment_size: Any, recipient: Any, producer: Any, signer: Any
) -> tuple[Header, Body]:
    """Fresh DEK and prefix; the header with the DEK wrapped; how to seal the body."""
    if (ring is None) == (recipient is None):
        raise InvalidParameterError(
            "ring",
            type(ring).__name__,
            "give exactly one of ring (a symmetric KeyRing) or recipient (PublicKeyRing)",
        )
    ad_digest = _ad_digest(associated_data)
    dek = os.urandom(symmetric.DEK_BYTES)
    if ring is not None:
        if isinstance(ring, (PublicKeyRing, PrivateKeyRing)):
            raise InvalidParameterError(
                "ring",
                repr(ring),
                "to encrypt to a data holder, pass its public ring as recipient=",
            )
        _check_ring(ring, KeyRing)
        if producer is not None or signer is not None:
            raise InvalidParameterError(
                "producer" if producer is not None else "signer",
                producer or repr(signer),
                "producer ids and signatures are for recipient mode (recipient=...)",
            )
        prefix = Prefix.new(symmetric.VERSION, segment_size)
        header: Header = symmetric.new_header(prefix, ring, dek)
        return header, Body(
            header.to_bytes(), prefix.segment_size, prefix.nonce_prefix, dek, prefix.raw + ad_digest
        )
    rings = hybrid.check_recipients(recipient)
    producer, signer = hybrid.check_producer(producer, signer)
    prefix = Prefix.new(hybrid.VERSION, segment_size)
    header = hybrid.new_header(prefix, dek, rings, producer, signer)
    return header, Body(
        header.to_bytes(),
        prefix.segment_size,
        prefix.nonce_prefix,
        hybrid.DerivedKeys.of(prefix, dek).body,
        header.bound + ad_digest,
    )


def _begin_decryption(
    header: Header, ring: Any, associated_data: Any, senders: Any
) -> tuple[Body, str | None]:
    """How to open the body, and (recipient files) which recipient key opened it."""
    ad_digest = _ad_digest(associated_data)
    prefix = header.prefix
    if isinstance(header, symmetric.KekHeader):
        if not isinstance(ring, KeyRing):
            raise IntegrityError(
                f"this file is encrypted under symmetric key {header.kek_id!r}: decrypting it "
                f"needs that KeyRing, not a {type(ring).__name__}"
            )
        if senders is not None:
            raise InvalidParameterError("senders", repr(senders), "only recipient files are signed")
        dek = symmetric.unwrap(header, ring)
        return Body(
            header.to_bytes(), prefix.segment_size, prefix.nonce_prefix, dek, prefix.raw + ad_digest
        ), None
    key, opened_by = hybrid.open_header(header, ring, senders)
    return Body(
        header.to_bytes(), prefix.segment_size, prefix.nonce_prefix, key, header.bound + ad_digest
    ), opened_by


def _read_header(reader: Any) -> Header:
    prefix = Prefix.read(reader, (symmetric.VERSION, hybrid.VERSION))
    if prefix.version == symmetric.VERSION:
        return symmetric.read_header(prefix, reader)
    return hybrid.read_header(prefix, reader)


def _rewrapped(header: Header, ring: Any, rings: list[PublicKeyRing] | None) -> Header | None:
    if isinstance(header, symmetric.KekHeader):
        if rings is not None:
            raise InvalidParameterError(
                "recipient", "...", "this file is under a symmetric key ring: rewrap it with ring="
            )
        if not isinstance(ring, KeyRing):
            raise IntegrityError(
                f"this file is encrypted under symmetric key {header.kek_id!r}: re-wrapping "
                f"it needs that KeyRing, not a {type(ring).__name__}"
            )
        return symmetric.rewrapped(header, ring)
    return hybrid.rewrapped(header, ring, rings)


def _key_ids(header: Header) -> str:
    if isinstance(header, symmetric.KekHeader):
        return header.kek_id
    return ",".join(r.key_id for r in header.recipients)


def _stats(header: Header, counts: Counts) -> dict[str, Any]:
    if isinstance(header, symmetric.KekHeader):
        out: dict[str, Any] = {"kek_id": header.kek_id}
    else:
        described = header.describe()
        out = {
            "recipients": [r["key_id"] for r in described["recipients"]],
            "producer": described["producer"],
            "signed": described["signed"],
        }
    out.update(segment_size=header.prefix.segment_size, **counts._asdict())
    return out


# -- parameter checks -----------------------------------------------------------------------


def _check_ring(
    ring: Any, kind: type | tuple[type, ...] = (KeyRing, PrivateKeyRing, PublicKeyRing)
) -> None:
    if not isinstance(ring, kind):
        raise InvalidParameterError(
            "ring",
            type(ring).__name__,
            "expected a KeyRing (or, for recipient files, a PrivateKeyRing)",
        )


def _check_blob(value: Any, name: str) -> memoryview:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidParameterError(name, type(value).__name__, "expected bytes")
    return memoryview(value).cast("B")


def _ad_digest(associated_data: bytes | str | None) -> bytes:
    if associated_data is None:
        associated_data = b""
    elif isinstance(associated_data, str):
        associated_data = associated_data.encode("utf-8")
    elif not isinstance(associated_data, (bytes, bytearray, memoryview)):
        raise InvalidParameterError(
            "associated_data", type(associated_data).__name__, "expected bytes, str or None"
        )
    return hashlib.sha256(associated_data).digest()
