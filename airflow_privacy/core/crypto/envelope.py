"""Envelope encryption of blobs and files: segmented streaming AES-256-GCM.

Security guarantee
------------------
:func:`encrypt_bytes` / :func:`encrypt_file` give confidentiality and integrity of the
whole plaintext and of its binding to ``associated_data`` (nOAE security of the STREAM
construction, Hoang, Reyhanitabar, Rogaway & Vizár, "Online Authenticated-Encryption and
its Nonce-Reuse Misuse-Resistance", CRYPTO 2015, §7; the same layout as Tink's
``AesGcmHkdfStreaming``). Decryption either returns exactly the plaintext that was
encrypted, or raises :class:`~airflow_privacy.core.errors.IntegrityError` -- on any bit
flip in header or body, truncation (also at a segment boundary), reordered, dropped,
duplicated or appended segments, wrong ``associated_data``, a key ring lacking the key, or
input that is not ours. :func:`decrypt_file` publishes its output atomically, so a failed
decryption leaves no partial plaintext behind.

Envelope
--------
Every blob gets a fresh random 256-bit data key (DEK). The DEK encrypts the body; the DEK
itself is wrapped with AES-256-GCM under ``HKDF-SHA256(KEK, info="airflow-privacy/v1/
file-dek-wrap")``, a subkey of the ring's primary key-encryption key (KEK). AES-GCM rather
than AES-KW (RFC 3394) because the wrap must authenticate header fields as associated data,
which AES-KW cannot. Rotating keys only re-wraps the DEK (:func:`rewrap`); the body is
never touched.

Format v1 (big-endian)::

    offset  size  field
     0       4    magic  b"APRV"
     4       1    format version = 1
     5       1    algorithm id   = 1 (AES-256-GCM STREAM body, AES-256-GCM DEK wrap)
     6       4    segment size S (plaintext bytes per segment)
    10       7    nonce prefix P (random)
    ---- 17 bytes: the *stable header*, fixed for the life of the blob ----
    17       1    n = length of the KEK id
    18       n    KEK id (ASCII)
    18+n    12    wrap nonce (random)
    30+n    48    wrapped DEK = AES-GCM(wrap subkey; DEK) incl. 16-byte tag
    78+n     ..   segments: AES-GCM(DEK; nonce_i; plaintext_i; AD) = ciphertext_i || tag_i

Segment ``i`` holds ``S`` plaintext bytes (the last one 0..S bytes, so the empty input is one
empty final segment) and uses the 96-bit nonce ``P || uint32(i) || last_flag`` where
``last_flag`` is 1 only on the final segment. Its associated data is
``stable header || SHA-256(associated_data)``.

Why the header is split in two
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The body must stay byte-identical across :func:`rewrap`, yet every header bit must be
authenticated. So the segments bind only the *stable* header (magic, version, algorithm,
segment size, nonce prefix) plus the caller's associated data; the parts that change on
rewrap (KEK id, wrap nonce, wrapped DEK) are authenticated by the wrap itself, an AES-GCM
encryption of the DEK whose associated data is every header byte before the wrap nonce
(stable header, KEK id length and KEK id). A forged or altered wrap fails its own tag;
a wrap lifted from another blob fails too, because its AD holds that blob's random nonce
prefix; and even a wrap that did verify would yield another DEK, under which this body's
segments do not authenticate. The caller's ``associated_data`` is deliberately *not* in the
wrap's AD, so that :func:`rewrap` (a key-management task) needs only the key ring.

Limits: each segment nonce is unique per DEK by construction (counter + last flag) and each
DEK serves one blob, so at most 2^32 segments (4 PiB at 1 MiB) per blob. Wrap nonces are
random 96-bit values under one subkey per KEK: NIST SP 800-38D allows 2^32 such encryptions
per key, and every encryption and every rewrap is one, so rotate the KEK long before that.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto.keyring import KEY_ID_PATTERN, KeyRing
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError

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

MAGIC = b"APRV"
FORMAT_VERSION = 1
ALGORITHM_ID = 1
ALGORITHM_NAME = "AES-256-GCM-STREAM"
KEY_WRAP_NAME = "AES-256-GCM(HKDF-SHA256 subkey of KEK)"
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 64 << 20

_TAG = 16
_DEK_BYTES = 32
_PREFIX_BYTES = 7
_WRAP_NONCE_BYTES = 12
_WRAPPED_DEK_BYTES = _DEK_BYTES + _TAG
_STABLE = struct.Struct(">4sBBI7s")  # magic, version, algorithm, segment size, nonce prefix
_MAX_SEGMENTS = 1 << 32
_WRAP_PURPOSE = b"airflow-privacy/v1/file-dek-wrap"
_COPY_CHUNK = 1 << 20
_MAX_WORKERS = 2  # past two, the file system's per-file write lock serializes anyway
_MAX_HEADER = _STABLE.size + 1 + 255 + _WRAP_NONCE_BYTES + _WRAPPED_DEK_BYTES

Blob = bytes | bytearray | memoryview


class SourceChangedError(OSError):
    """The file being encrypted or decrypted changed size meanwhile (another writer raced
    this one); nothing was published. An ``OSError``, not a
    :class:`~airflow_privacy.core.errors.PrivacyError`: a retry can succeed once the other
    writer is done, so Airflow should retry it."""


@dataclass(frozen=True)
class _Header:
    stable: bytes
    segment_size: int
    nonce_prefix: bytes
    kek_id: str
    wrap_nonce: bytes
    wrapped_dek: bytes

    @property
    def wrap_ad(self) -> bytes:
        kid = self.kek_id.encode("ascii")
        return self.stable + bytes([len(kid)]) + kid

    def to_bytes(self) -> bytes:
        return self.wrap_ad + self.wrap_nonce + self.wrapped_dek

    @property
    def size(self) -> int:
        return len(self.stable) + 1 + len(self.kek_id) + _WRAP_NONCE_BYTES + _WRAPPED_DEK_BYTES


@dataclass(frozen=True)
class RewrapResult:
    """Outcome of :func:`rewrap`.

    :ivar old_kek_id: key id the data key was wrapped under before.
    :ivar new_kek_id: key id it is wrapped under now (the ring's primary).
    :ivar rewrapped: False when it already was under the primary (nothing was written).
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
    ring: KeyRing,
    associated_data: bytes | str | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """Encrypt ``data`` under a fresh data key wrapped by the ring's primary KEK.

    :param data: plaintext bytes.
    :param ring: key ring; its primary key wraps the data key.
    :param associated_data: context bound to the ciphertext but not encrypted (e.g.
        ``b"dataset=patients"``); decryption must pass the same value. ``str`` is UTF-8
        encoded; None equals ``b""``.
    :param segment_size: plaintext bytes per authenticated segment (16 B .. 64 MiB).
    :return: the self-describing ciphertext (format v1, see module docstring).
    """
    view = _check_blob(data, "data")
    header, dek, segment_ad = _begin_encryption(ring, associated_data, segment_size)
    aead = AESGCM(dek)
    head = header.to_bytes()
    count = max(1, -(-len(view) // segment_size))
    # Sealed in place into one preallocated buffer: no per-segment copies.
    out = bytearray(len(head) + len(view) + count * _TAG)
    out[: len(head)] = head
    sink = memoryview(out)
    pos = len(head)
    for index in range(count):
        chunk = view[index * segment_size : (index + 1) * segment_size]
        end = pos + len(chunk) + _TAG
        aead.encrypt_into(
            _nonce(header.nonce_prefix, index, index == count - 1), chunk, segment_ad, sink[pos:end]
        )
        pos = end
    return bytes(out)


def decrypt_bytes(blob: Blob, ring: KeyRing, associated_data: bytes | str | None = None) -> bytes:
    """Authenticate and decrypt a blob made by :func:`encrypt_bytes` or :func:`encrypt_file`.

    :param blob: the ciphertext.
    :param ring: a key ring holding the KEK the blob's data key is wrapped under.
    :param associated_data: the value given at encryption.
    :raises IntegrityError: tampered, truncated, wrong key, wrong associated data, or not ours.
    """
    _check_ring(ring)
    view = _check_blob(blob, "blob")
    header = _read_header(io.BytesIO(view[:_MAX_HEADER]))
    dek, segment_ad = _begin_decryption(header, ring, associated_data)
    aead = AESGCM(dek)
    body = view[header.size :]
    sealed = header.segment_size + _TAG
    count = max(1, -(-len(body) // sealed))
    if len(body) - (count - 1) * sealed < _TAG:
        _truncated(count - 1)
    out = bytearray(len(body) - count * _TAG)
    sink = memoryview(out)
    pos = 0
    for index in range(count):
        chunk = body[index * sealed : (index + 1) * sealed]
        end = pos + len(chunk) - _TAG
        _open_segment(aead, header, index, index == count - 1, chunk, segment_ad, sink[pos:end])
        pos = end
    return bytes(out)


def encrypt_file(
    src: Any,
    dst: Any,
    ring: KeyRing,
    associated_data: bytes | str | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> dict[str, Any]:
    """Encrypt ``src`` into ``dst`` segment by segment, in bounded memory.

    ``dst`` appears atomically (:func:`airflow_privacy.core.io.open_atomic`). Between two
    local files the segments are read and written by position, on two threads (memory ~
    4 segments), and ``src`` must not change meanwhile (else an error and no ``dst``);
    otherwise the file is streamed once, front to back (memory ~ 3 segments).

    :param src: URI, local path or ObjectStoragePath of the plaintext.
    :param dst: where to write the ciphertext.
    :param ring: key ring; its primary key wraps the file's data key.
    :param associated_data: context bound to the ciphertext (see :func:`encrypt_bytes`).
    :param segment_size: plaintext bytes per segment (16 B .. 64 MiB, default 1 MiB).
    :return: JSON-able ``{"kek_id", "segment_size", "segments", "plaintext_bytes",
        "ciphertext_bytes"}``.
    :raises SourceChangedError: ``src`` changed size while it was being encrypted.
    """
    header, dek, segment_ad = _begin_encryption(ring, associated_data, segment_size)
    fs, path = core_io.resolve(src)
    with fs.open(path, "rb") as reader:
        plain = _size_of(reader)
        expected = None
        if plain is not None:
            expected = header.size + plain + max(1, -(-plain // segment_size)) * _TAG
        with core_io.open_atomic(dst, expected_size=expected) as writer:
            fds = _local_descriptors(reader, writer)
            if fds is not None and plain is not None:
                stats = _encrypt_positional(*fds, plain, header, dek, segment_ad)
                writer.seek(stats["ciphertext_bytes"])  # what open_atomic keeps
                return stats
            return _encrypt_stream(reader, writer.write, header, AESGCM(dek), segment_ad)


def decrypt_file(
    src: Any, dst: Any, ring: KeyRing, associated_data: bytes | str | None = None
) -> dict[str, Any]:
    """Decrypt ``src`` into ``dst``; ``dst`` is published only if *every* segment
    authenticated, so on :class:`IntegrityError` no plaintext is left at ``dst``.

    Reads and writes like :func:`encrypt_file` (by position on two threads between local
    files, else one stream); a segment is written only once its own tag verified.

    :param src: URI, local path or ObjectStoragePath of the ciphertext.
    :param dst: where to write the plaintext.
    :param ring: a key ring holding the KEK the file's data key is wrapped under.
    :param associated_data: the value given at encryption.
    :return: JSON-able ``{"kek_id", "segment_size", "segments", "plaintext_bytes",
        "ciphertext_bytes"}``.
    :raises IntegrityError: tampered, truncated, wrong key, wrong associated data, or not ours.
    :raises SourceChangedError: ``src`` changed size while it was being decrypted.
    """
    _check_ring(ring)
    fs, path = core_io.resolve(src)
    with fs.open(path, "rb") as reader:
        header = _read_header(reader)
        dek, segment_ad = _begin_decryption(header, ring, associated_data)
        sealed = _size_of(reader)
        expected = None
        if sealed is not None:
            body = sealed - header.size
            expected = body - max(1, -(-body // (header.segment_size + _TAG))) * _TAG
        with core_io.open_atomic(dst, expected_size=expected) as writer:
            fds = _local_descriptors(reader, writer)
            if fds is not None and sealed is not None:
                stats = _decrypt_positional(*fds, sealed, header, dek, segment_ad)
                writer.seek(stats["plaintext_bytes"])
                return stats
            return _decrypt_stream(reader, writer.write, header, AESGCM(dek), segment_ad)


def rewrap(blob_or_path: Any, ring: KeyRing) -> RewrapResult:
    """Re-wrap the data key under the ring's primary KEK; the body is copied unchanged.

    This is what key rotation costs: no data is decrypted or re-encrypted. Already wrapped
    under the primary: nothing is written (idempotent, safe to retry).

    :param blob_or_path: a ciphertext as bytes, or a URI / path / ObjectStoragePath of an
        encrypted file, which is rewritten atomically.
    :param ring: a ring holding both the old KEK and the new primary.
    :return: :class:`RewrapResult` with old and new key ids (and the new blob for bytes).
    :raises IntegrityError: the header does not authenticate under the ring.
    """
    _check_ring(ring)
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        blob = bytes(blob_or_path)
        header = _read_header(io.BytesIO(blob))
        new_header = _rewrapped_header(header, ring)
        if new_header is None:
            return RewrapResult(header.kek_id, header.kek_id, False, blob)
        data = new_header.to_bytes() + blob[header.size :]
        return RewrapResult(header.kek_id, new_header.kek_id, True, data)

    fs, path = core_io.resolve(blob_or_path)
    with fs.open(path, "rb") as reader:
        header = _read_header(reader)
        new_header = _rewrapped_header(header, ring)
        if new_header is None:
            return RewrapResult(header.kek_id, header.kek_id, False)
        with core_io.open_atomic(blob_or_path) as writer:
            writer.write(new_header.to_bytes())
            while chunk := reader.read(_COPY_CHUNK):
                writer.write(chunk)
    return RewrapResult(header.kek_id, new_header.kek_id, True)


def inspect_header(blob_or_path: Any) -> dict[str, Any]:
    """Parse (without any key) the public header of a blob or file.

    :param blob_or_path: ciphertext bytes, or a URI / path / ObjectStoragePath.
    :return: ``{"magic", "version", "algorithm", "key_wrap", "kek_id", "segment_size",
        "nonce_prefix", "header_size"}`` -- never key material or the wrapped data key.
    :raises IntegrityError: not an airflow-privacy ciphertext.
    """
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        header = _read_header(io.BytesIO(bytes(blob_or_path)))
    else:
        fs, path = core_io.resolve(blob_or_path)
        with fs.open(path, "rb") as reader:
            header = _read_header(reader)
    return {
        "magic": MAGIC.decode("ascii"),
        "version": FORMAT_VERSION,
        "algorithm": ALGORITHM_NAME,
        "key_wrap": KEY_WRAP_NAME,
        "kek_id": header.kek_id,
        "segment_size": header.segment_size,
        "nonce_prefix": header.nonce_prefix.hex(),
        "header_size": header.size,
    }


# -- STREAM ---------------------------------------------------------------------------------


def _encrypt_stream(
    reader: IO[bytes],
    write: Callable[[memoryview], Any],
    header: _Header,
    aead: AESGCM,
    segment_ad: bytes,
) -> dict[str, Any]:
    segment_size = header.segment_size
    write(memoryview(header.to_bytes()))
    # Three reused buffers (current, look-ahead, sealed output): memory stays ~3 segments
    # and nothing is allocated per segment. Writers copy what they are given (io contract).
    current, ahead = bytearray(segment_size), bytearray(segment_size)
    sealed = memoryview(bytearray(segment_size + _TAG))
    n_current = _fill(reader, current)
    index = 0
    total_in = 0
    total_out = header.size
    while True:
        # One segment of look-ahead tells whether the current one is the last.
        if n_current < segment_size:
            last, n_ahead = True, 0
        else:
            n_ahead = _fill(reader, ahead)
            last = n_ahead == 0
        if index >= _MAX_SEGMENTS:
            raise InvalidParameterError(
                "segment_size", segment_size, "input too large: more than 2^32 segments"
            )
        out = sealed[: n_current + _TAG]
        aead.encrypt_into(
            _nonce(header.nonce_prefix, index, last),
            memoryview(current)[:n_current],
            segment_ad,
            out,
        )
        write(out)
        total_in += n_current
        total_out += len(out)
        if last:
            break
        current, ahead, n_current = ahead, current, n_ahead
        index += 1
    return _stats(header, index + 1, total_in, total_out)


def _decrypt_stream(
    reader: IO[bytes],
    write: Callable[[memoryview], Any],
    header: _Header,
    aead: AESGCM,
    segment_ad: bytes,
) -> dict[str, Any]:
    """Body of a file whose header was read (and its data key unwrapped) by the caller."""
    sealed = header.segment_size + _TAG
    current, ahead = bytearray(sealed), bytearray(sealed)
    opened = memoryview(bytearray(header.segment_size))
    n_current = _fill(reader, current)
    index = 0
    total_in = header.size
    total_out = 0
    while True:
        if n_current < sealed:
            last, n_ahead = True, 0
        else:
            n_ahead = _fill(reader, ahead)
            last = n_ahead == 0
        if n_current < _TAG:
            _truncated(index)
        if index >= _MAX_SEGMENTS:
            raise IntegrityError("ciphertext has more than 2^32 segments: not ours")
        plain = opened[: n_current - _TAG]
        _open_segment(aead, header, index, last, memoryview(current)[:n_current], segment_ad, plain)
        write(plain)
        total_in += n_current
        total_out += len(plain)
        if last:
            break
        current, ahead, n_current = ahead, current, n_ahead
        index += 1
    return _stats(header, index + 1, total_out, total_in)


# -- by position, between local files -------------------------------------------------------
# Segment i of the plaintext is bytes [i*S, (i+1)*S) and of the body [i*(S+16), ...), so
# segments can be read, sealed and written in any order: two workers take every other
# segment with pread/pwrite, each with its own buffers and AESGCM object. Their cost is
# the kernel's copies (page cache <-> buffers) and AES-GCM, all with the GIL released, so
# they overlap on two cores with no hand-over per segment (a thread wake-up costs ~0.1 ms
# on a VM). The nonce of a segment depends only on its index and on whether it is the
# last, which the size read at open tells; a size that differs at the end means a writer
# raced us, and the result is refused rather than published half old, half new.


def _encrypt_positional(
    rfd: int, wfd: int, size: int, header: _Header, dek: bytes, segment_ad: bytes
) -> dict[str, Any]:
    segment = header.segment_size
    count = max(1, -(-size // segment))
    if count > _MAX_SEGMENTS:
        raise InvalidParameterError(
            "segment_size", segment, "input too large: more than 2^32 segments"
        )
    head = header.to_bytes()
    _pwrite_all(wfd, memoryview(head), 0)

    def seal(index: int, work: _Worker) -> None:
        length = min(segment, size - index * segment)
        plain = work.inbuf[:length]
        if _pread_all(rfd, plain, index * segment) < length:
            raise SourceChangedError("the plaintext file shrank while it was being encrypted")
        out = work.outbuf[: length + _TAG]
        last = index == count - 1
        work.aead.encrypt_into(_nonce(header.nonce_prefix, index, last), plain, segment_ad, out)
        _pwrite_all(wfd, out, len(head) + index * (segment + _TAG))

    largest = min(segment, size)  # a small file needs no full-segment buffers
    _each_segment(count, seal, dek, largest, largest + _TAG)
    _check_unchanged(rfd, size, "encrypted")
    return _stats(header, count, size, len(head) + size + count * _TAG)


def _decrypt_positional(
    rfd: int, wfd: int, size: int, header: _Header, dek: bytes, segment_ad: bytes
) -> dict[str, Any]:
    segment = header.segment_size
    sealed = segment + _TAG
    body = size - header.size
    count = max(1, -(-body // sealed))
    if body - (count - 1) * sealed < _TAG:
        _truncated(count - 1)
    if count > _MAX_SEGMENTS:
        raise IntegrityError("ciphertext has more than 2^32 segments: not ours")

    def open_(index: int, work: _Worker) -> None:
        length = min(sealed, body - index * sealed)
        chunk = work.inbuf[:length]
        if _pread_all(rfd, chunk, header.size + index * sealed) < length:
            raise SourceChangedError("the ciphertext file shrank while it was being decrypted")
        plain = work.outbuf[: length - _TAG]
        last = index == count - 1
        _open_segment(work.aead, header, index, last, chunk, segment_ad, plain)
        _pwrite_all(wfd, plain, index * segment)  # authenticated: it may be written

    largest = min(sealed, body)
    _each_segment(count, open_, dek, largest, largest - _TAG)
    _check_unchanged(rfd, size, "decrypted")
    return _stats(header, count, body - count * _TAG, size)


@dataclass
class _Worker:
    aead: AESGCM
    inbuf: memoryview
    outbuf: memoryview


def _each_segment(
    count: int, job: Callable[[int, _Worker], None], dek: bytes, in_size: int, out_size: int
) -> None:
    """Run ``job(i, worker)`` for i in 0..count-1 on up to two threads (i mod workers).

    Raises what a sequential pass would have raised first: a worker stops at its first
    failure, the others go on up to that index (so a lower failing index is still found),
    and the lowest failing index wins. The helper thread has always stopped when this
    returns or raises, so no write can land after the caller closed the file.
    """
    workers = min(count, _worker_count())
    failures: dict[int, Exception] = {}
    stop = [count]  # segments from this index on are not started
    lock = threading.Lock()

    def run(first: int) -> None:
        work = _Worker(AESGCM(dek), memoryview(bytearray(in_size)), memoryview(bytearray(out_size)))
        for index in range(first, count, workers):
            if index >= stop[0]:
                return
            try:
                job(index, work)
            except BaseException as exc:
                with lock:
                    failures[index] = exc
                    stop[0] = min(stop[0], index)
                if first == 0 and not isinstance(exc, Exception):
                    raise  # an interrupt of the calling thread goes up as it is
                return

    helpers = [
        threading.Thread(target=run, args=(w,), name="airflow-privacy-segments", daemon=True)
        for w in range(1, workers)
    ]
    for helper in helpers:
        helper.start()
    try:
        run(0)
    except BaseException:
        stop[0] = -1  # interrupted: the helper stops after its current segment
        raise
    finally:
        for helper in helpers:
            helper.join()
    if failures:
        raise failures[min(failures)]


def _worker_count() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


def _local_descriptors(reader: Any, writer: Any) -> tuple[int, int] | None:
    """OS descriptors of two regular local files, when both are (and pread/pwrite exist)."""
    if not (hasattr(os, "preadv") and hasattr(os, "pwrite")):
        return None
    try:
        fds = reader.fileno(), writer.fileno()
        regular = all(stat.S_ISREG(os.fstat(fd).st_mode) for fd in fds)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fds if regular else None


def _pread_all(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or EOF; bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            break
        got += n
    return got


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _check_unchanged(fd: int, size: int, verb: str) -> None:
    now = os.fstat(fd).st_size
    if now != size:
        raise SourceChangedError(
            f"the source file changed size while it was being {verb} ({size} -> {now} "
            "bytes); nothing was published, retry once it is complete"
        )


def _begin_encryption(
    ring: KeyRing, associated_data: bytes | str | None, segment_size: int
) -> tuple[_Header, bytes, bytes]:
    """Fresh DEK and nonce prefix, DEK wrapped under the primary; the per-segment AD."""
    _check_ring(ring)
    ad_digest = _ad_digest(associated_data)
    if type(segment_size) is not int or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise InvalidParameterError(
            "segment_size",
            segment_size,
            f"expected an int in [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]",
        )
    dek = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(_PREFIX_BYTES)
    stable = _STABLE.pack(MAGIC, FORMAT_VERSION, ALGORITHM_ID, segment_size, prefix)
    header = _wrap(stable, ring.primary_id, dek, ring)
    return header, dek, stable + ad_digest


def _begin_decryption(
    header: _Header, ring: KeyRing, associated_data: bytes | str | None
) -> tuple[bytes, bytes]:
    """The unwrapped data key and the per-segment AD."""
    _check_ring(ring)
    ad_digest = _ad_digest(associated_data)
    return _unwrap(header, ring), header.stable + ad_digest


def _open_segment(
    aead: AESGCM,
    header: _Header,
    index: int,
    last: bool,
    sealed: memoryview,
    segment_ad: bytes,
    out: memoryview,
) -> None:
    # ``out`` may hold unauthenticated bytes after a failure; callers never emit it then.
    try:
        aead.decrypt_into(_nonce(header.nonce_prefix, index, last), sealed, segment_ad, out)
    except InvalidTag:
        raise IntegrityError(
            f"segment {index} failed authentication: the ciphertext was tampered with, "
            "truncated, reordered or extended, or associated_data differs from encryption"
        ) from None


def _truncated(index: int) -> None:
    raise IntegrityError(
        f"ciphertext is truncated: segment {index} is missing or shorter than its tag"
    )


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _fill(reader: IO[bytes], buf: bytearray) -> int:
    """Read until ``buf`` is full or EOF (a short read is not EOF on every filesystem)."""
    view = memoryview(buf)
    got = 0
    readinto = getattr(reader, "readinto", None)
    while got < len(buf):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = reader.read(len(buf) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            break
        got += n
    return got


def _size_of(reader: IO[bytes]) -> int | None:
    """Total size of an fsspec file opened for reading, when it knows it (as of opening:
    the streams read to EOF regardless, the positional path checks it at the end)."""
    size = getattr(reader, "size", None)
    return size if type(size) is int and size >= 0 else None


def _stats(header: _Header, segments: int, plaintext: int, ciphertext: int) -> dict[str, Any]:
    return {
        "kek_id": header.kek_id,
        "segment_size": header.segment_size,
        "segments": segments,
        "plaintext_bytes": plaintext,
        "ciphertext_bytes": ciphertext,
    }


# -- header and DEK wrap --------------------------------------------------------------------


def _read_header(reader: IO[bytes]) -> _Header:
    fixed = bytearray(_STABLE.size + 1)
    got = _fill(reader, fixed)
    if got < len(MAGIC) or bytes(fixed[: len(MAGIC)]) != MAGIC:
        raise IntegrityError(
            "input is not an airflow-privacy ciphertext (no 'APRV' magic bytes); "
            "was it encrypted with encrypt_bytes / encrypt_file?"
        )
    if got < len(fixed):
        raise IntegrityError("ciphertext is truncated inside its header")
    magic, version, algorithm, segment_size, prefix = _STABLE.unpack_from(fixed)
    if version != FORMAT_VERSION:
        raise IntegrityError(f"unsupported ciphertext format version {version} (this reads 1)")
    if algorithm != ALGORITHM_ID:
        raise IntegrityError(f"unsupported algorithm id {algorithm} in ciphertext header")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise IntegrityError("ciphertext header has an invalid segment size: tampered or not ours")
    kid_len = fixed[-1]
    rest = bytearray(kid_len + _WRAP_NONCE_BYTES + _WRAPPED_DEK_BYTES)
    if _fill(reader, rest) < len(rest):
        raise IntegrityError("ciphertext is truncated inside its header")
    kid_raw = bytes(rest[:kid_len])
    try:
        kek_id = kid_raw.decode("ascii")
    except UnicodeDecodeError:
        kek_id = ""
    if not KEY_ID_PATTERN.fullmatch(kek_id):
        raise IntegrityError("ciphertext header has a malformed key id: tampered or not ours")
    return _Header(
        stable=bytes(fixed[: _STABLE.size]),
        segment_size=segment_size,
        nonce_prefix=prefix,
        kek_id=kek_id,
        wrap_nonce=bytes(rest[kid_len : kid_len + _WRAP_NONCE_BYTES]),
        wrapped_dek=bytes(rest[kid_len + _WRAP_NONCE_BYTES :]),
    )


def _wrap(stable: bytes, kek_id: str, dek: bytes, ring: KeyRing) -> _Header:
    segment_size, prefix = _STABLE.unpack(stable)[3:]
    draft = _Header(stable, segment_size, prefix, kek_id, b"", b"")
    nonce = os.urandom(_WRAP_NONCE_BYTES)
    wrap_key = ring._subkey(kek_id, _WRAP_PURPOSE, length=32)
    wrapped = AESGCM(wrap_key).encrypt(nonce, dek, draft.wrap_ad)
    return _Header(stable, segment_size, prefix, kek_id, nonce, wrapped)


def _unwrap(header: _Header, ring: KeyRing) -> bytes:
    wrap_key = ring._subkey(header.kek_id, _WRAP_PURPOSE, length=32)
    try:
        return AESGCM(wrap_key).decrypt(header.wrap_nonce, header.wrapped_dek, header.wrap_ad)
    except InvalidTag:
        raise IntegrityError(
            f"the data key did not authenticate under key {header.kek_id!r}: "
            "the header was tampered with or the ring holds a different key with that id"
        ) from None


def _rewrapped_header(header: _Header, ring: KeyRing) -> _Header | None:
    dek = _unwrap(header, ring)  # authenticate before deciding anything
    if header.kek_id == ring.primary_id:
        return None
    return _wrap(header.stable, ring.primary_id, dek, ring)


# -- parameter checks -----------------------------------------------------------------------


def _check_ring(ring: Any) -> None:
    if not isinstance(ring, KeyRing):
        raise InvalidParameterError("ring", type(ring).__name__, "expected a KeyRing")


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
