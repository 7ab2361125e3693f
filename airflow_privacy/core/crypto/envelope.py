"""Envelope encryption of blobs and files: to a symmetric key ring, or to a recipient.

Security guarantee
------------------
:func:`encrypt_bytes` / :func:`encrypt_file` give confidentiality and integrity of the
whole plaintext and of its binding to ``associated_data``: a fresh random 256-bit data key
(DEK) per blob seals the body in the segmented AES-256-GCM STREAM construction
(:mod:`.stream`; nOAE, Hoang-Reyhanitabar-Rogaway-Vizár, CRYPTO 2015). The DEK is wrapped

* under a symmetric :class:`~airflow_privacy.core.crypto.keyring.KeyRing`'s primary KEK
  (``ring=``, format v1, :mod:`.symmetric`): whoever holds the ring encrypts and decrypts;
* or to one or more recipients' public keys (``recipient=``, format v2, :mod:`.hybrid`;
  HPKE RFC 9180 or RSA-OAEP-3072): the producer, holding only a
  :class:`~airflow_privacy.core.crypto.recipients.PublicKeyRing`, can encrypt but never
  decrypt; only the recipient's :class:`~airflow_privacy.core.crypto.recipients.PrivateKeyRing`
  opens the file. The recipient key id, suite and producer id are bound to the wrap, and
  a producer may sign the header (``signer=``, checked with ``senders=``).

Decryption either returns exactly the plaintext that was encrypted, or raises
:class:`~airflow_privacy.core.errors.IntegrityError` -- on any bit flip in header or body,
truncation (also at a segment boundary or inside a wrapped key), reordered, dropped,
duplicated or appended segments, a header swapped from another file, wrong
``associated_data``, a ring lacking the key (wrong recipient), a public ring, or input
that is not ours. :func:`decrypt_file` publishes its output atomically, so a failed
decryption leaves no partial plaintext behind. Key rotation re-wraps the DEK without
touching the body (:func:`rewrap`).

The two formats (header construction, parsing and re-wrapping) and the parameter checks
are in :mod:`.formats`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto import hybrid, symmetric
from airflow_privacy.core.crypto.filestream import open_file, seal_file
from airflow_privacy.core.crypto.formats import Header as Header  # re-export
from airflow_privacy.core.crypto.formats import (
    _begin_decryption,
    _begin_encryption,
    _check_blob,
    _check_ring,
    _key_ids,
    _read_header,
    _rewrapped,
    _stats,
)
from airflow_privacy.core.crypto.keyring import KeyRing
from airflow_privacy.core.crypto.recipients import PrivateKeyRing, PublicKeyRing
from airflow_privacy.core.crypto.stream import (
    ALGORITHM_NAME,
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    SourceChangedError,
    open_bytes,
    seal_bytes,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAGIC",
    "RewrapResult",
    "SourceChangedError",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "inspect_header",
    "rewrap",
]

_COPY_CHUNK = 1 << 20
_HEADER_LIMIT = 1 << 14  # a v2 header with 16 RSA recipients is ~7.4 KiB

Blob = bytes | bytearray | memoryview
AnyRing = KeyRing | PrivateKeyRing | PublicKeyRing


@dataclass(frozen=True)
class RewrapResult:
    """Outcome of :func:`rewrap`.

    :ivar old_kek_id: key id the data key was wrapped under before (recipient files: the
        recipient key ids, comma-separated).
    :ivar new_kek_id: key id(s) it is wrapped under now.
    :ivar rewrapped: False when nothing changed (nothing was written).
    :ivar data: the re-wrapped blob when a blob was given; None for a path.
    """

    old_kek_id: str
    new_kek_id: str
    rewrapped: bool
    data: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (for XCom): key ids and whether anything changed."""
        return {
            "old_kek_id": self.old_kek_id,
            "new_kek_id": self.new_kek_id,
            "rewrapped": self.rewrapped,
        }


# -- public API -----------------------------------------------------------------------------


def encrypt_bytes(
    data: Blob,
    ring: KeyRing | None = None,
    associated_data: bytes | str | None = None,
    *,
    recipient: PublicKeyRing | list[PublicKeyRing] | None = None,
    producer: str | None = None,
    signer: PrivateKeyRing | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """Encrypt ``data`` under a fresh data key wrapped by the ring's primary KEK, or to the
    recipient(s)' public key.

    :param data: plaintext bytes.
    :param ring: symmetric key ring whose primary key wraps the data key (give this or
        ``recipient``).
    :param associated_data: context bound to the ciphertext but not encrypted (e.g.
        ``b"dataset=patients"``); decryption must pass the same value. ``str`` is UTF-8
        encoded; None equals ``b""``.
    :param recipient: a recipient's :class:`PublicKeyRing` (or a list, e.g. the holder and
        an escrow key): the data key is wrapped to each ring's primary; only their private
        rings decrypt.
    :param producer: recipient mode: the producer id recorded (and bound) in the header.
    :param signer: recipient mode: the producer's ``ed25519`` :class:`PrivateKeyRing`; signs
        the header (producer id = its key id).
    :param segment_size: plaintext bytes per authenticated segment (16 B .. 64 MiB).
    :return: the self-describing ciphertext.
    """
    view = _check_blob(data, "data")
    header, body = _begin_encryption(
        ring, associated_data, segment_size, recipient, producer, signer
    )
    return seal_bytes(view, body)


def decrypt_bytes(
    blob: Blob,
    ring: AnyRing,
    associated_data: bytes | str | None = None,
    *,
    senders: PublicKeyRing | None = None,
) -> bytes:
    """Authenticate and decrypt a blob made by :func:`encrypt_bytes` or :func:`encrypt_file`.

    :param blob: the ciphertext.
    :param ring: the symmetric ring holding the file's KEK, or for a recipient file the
        recipient's :class:`PrivateKeyRing`.
    :param associated_data: the value given at encryption.
    :param senders: recipient files: the producers' ``ed25519`` :class:`PublicKeyRing`;
        when given, the file must carry a valid signature of the producer it names.
    :raises IntegrityError: tampered, truncated, wrong key or recipient, a public ring,
        wrong associated data, an unverified sender, or not ours.
    """
    _check_ring(ring)
    view = _check_blob(blob, "blob")
    header = _read_header(io.BytesIO(view[:_HEADER_LIMIT]))
    body, _ = _begin_decryption(header, ring, associated_data, senders)
    return open_bytes(view[len(body.head) :], body)


def encrypt_file(
    src: Any,
    dst: Any,
    ring: KeyRing | None = None,
    associated_data: bytes | str | None = None,
    *,
    recipient: PublicKeyRing | list[PublicKeyRing] | None = None,
    producer: str | None = None,
    signer: PrivateKeyRing | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> dict[str, Any]:
    """Encrypt ``src`` into ``dst`` segment by segment, in bounded memory.

    ``dst`` appears atomically (:func:`airflow_privacy.core.io.open_atomic`). Between two
    local files the segments are read and written by position, on two threads (memory ~
    4 segments), and ``src`` must not change meanwhile (else an error and no ``dst``);
    otherwise the file is streamed once, front to back (memory ~ 3 segments). In recipient
    mode the data key is wrapped once per file (per recipient), not per segment.

    :param src: URI, local path or ObjectStoragePath of the plaintext.
    :param dst: where to write the ciphertext.
    :param ring, associated_data, recipient, producer, signer, segment_size: as in
        :func:`encrypt_bytes`.
    :return: JSON-able ``{"segment_size", "segments", "plaintext_bytes",
        "ciphertext_bytes"}`` and ``"kek_id"`` (ring mode) or ``"recipients"``,
        ``"producer"``, ``"signed"`` (recipient mode).
    :raises SourceChangedError: ``src`` changed size while it was being encrypted.
    """
    header, body = _begin_encryption(
        ring, associated_data, segment_size, recipient, producer, signer
    )
    return _stats(header, seal_file(src, dst, body))


def decrypt_file(
    src: Any,
    dst: Any,
    ring: AnyRing,
    associated_data: bytes | str | None = None,
    *,
    senders: PublicKeyRing | None = None,
) -> dict[str, Any]:
    """Decrypt ``src`` into ``dst``; ``dst`` is published only if the header and *every*
    segment authenticated, so on :class:`IntegrityError` no plaintext is left at ``dst``.

    :param src: URI, local path or ObjectStoragePath of the ciphertext.
    :param dst: where to write the plaintext.
    :param ring, associated_data, senders: as in :func:`decrypt_bytes`.
    :return: as :func:`encrypt_file`, plus for recipient files ``"recipient_key_id"`` (the
        key that opened it) and ``"sender_verified"``.
    :raises IntegrityError: see :func:`decrypt_bytes`.
    :raises SourceChangedError: ``src`` changed size while it was being decrypted.
    """
    _check_ring(ring)
    fs, path = core_io.resolve(src)
    with fs.open(path, "rb") as reader:
        header = _read_header(reader)
        body, opened_by = _begin_decryption(header, ring, associated_data, senders)
        stats = _stats(header, open_file(reader, dst, body))
    if opened_by is not None:
        stats.update(recipient_key_id=opened_by, sender_verified=senders is not None)
    return stats


def rewrap(
    blob_or_path: Any,
    ring: KeyRing | PrivateKeyRing,
    *,
    recipient: PublicKeyRing | list[PublicKeyRing] | None = None,
) -> RewrapResult:
    """Re-wrap the data key; the body is copied unchanged (never decrypted).

    Symmetric files: under the ring's primary KEK (key rotation). Recipient files, on the
    holder: with ``ring`` the holder's :class:`PrivateKeyRing`, the wrap it opens moves to
    the ring's primary key pair (other recipients are kept); with ``recipient`` the file is
    wrapped to exactly those public rings' primaries instead. Nothing to change: nothing
    is written (idempotent, safe to retry).

    :param blob_or_path: a ciphertext as bytes, or a URI / path / ObjectStoragePath of an
        encrypted file, which is rewritten atomically.
    :param ring: a ring that opens the file's data key (and holds the new primary).
    :param recipient: recipient files only: the public ring(s) to wrap to.
    :return: :class:`RewrapResult` with old and new key ids (and the new blob for bytes).
    :raises IntegrityError: the header does not authenticate under the ring.
    """
    _check_ring(ring)
    rings = None if recipient is None else hybrid.check_recipients(recipient)
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        blob = bytes(blob_or_path)
        header = _read_header(io.BytesIO(blob))
        new = _rewrapped(header, ring, rings)
        size = len(header.to_bytes())
        data = blob if new is None else new.to_bytes() + blob[size:]
        return RewrapResult(_key_ids(header), _key_ids(new or header), new is not None, data)

    fs, path = core_io.resolve(blob_or_path)
    with fs.open(path, "rb") as reader:
        header = _read_header(reader)
        new = _rewrapped(header, ring, rings)
        if new is not None:
            with core_io.open_atomic(blob_or_path) as writer:
                writer.write(new.to_bytes())
                while chunk := reader.read(_COPY_CHUNK):
                    writer.write(chunk)
    return RewrapResult(_key_ids(header), _key_ids(new or header), new is not None)


def inspect_header(blob_or_path: Any) -> dict[str, Any]:
    """Parse (without any key) the public header of a blob or file.

    :param blob_or_path: ciphertext bytes, or a URI / path / ObjectStoragePath.
    :return: ``{"magic", "version", "algorithm", "key_wrap", "segment_size",
        "nonce_prefix", "header_size"}`` and ``"kek_id"`` (symmetric) or ``"recipients"``
        (key ids and suites), ``"producer"``, ``"signed"`` (recipient files) -- never key
        material or wrapped data keys.
    :raises IntegrityError: not an airflow-privacy ciphertext.
    """
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        header = _read_header(io.BytesIO(bytes(blob_or_path[:_HEADER_LIMIT])))
    else:
        fs, path = core_io.resolve(blob_or_path)
        with fs.open(path, "rb") as reader:
            header = _read_header(reader)
    out: dict[str, Any] = {
        "magic": MAGIC.decode("ascii"),
        "version": header.prefix.version,
        "algorithm": ALGORITHM_NAME,
    }
    if isinstance(header, symmetric.KekHeader):
        out.update(key_wrap=symmetric.KEY_WRAP_NAME, kek_id=header.kek_id)
    else:
        out.update(key_wrap="public key (recipients)", **header.describe())
    out.update(
        segment_size=header.prefix.segment_size,
        nonce_prefix=header.prefix.nonce_prefix.hex(),
        header_size=len(header.to_bytes()),
    )
    return out
