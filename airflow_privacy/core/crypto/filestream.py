"""The segmented body to and from files: one stream, or by position on two threads.

Security guarantee
------------------
Exactly the construction of :mod:`.stream` (same nonces, associated data and last-segment
flag by index), so a file sealed here opens with :func:`.stream.open_bytes` and vice
versa. :func:`open_file` publishes its output atomically
(:func:`airflow_privacy.core.io.open_atomic`) and writes a segment's plaintext only once
its own tag verified: on any failure nothing appears at the destination.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto.stream import (
    MAX_SEGMENTS,
    TAG_BYTES,
    Body,
    Counts,
    SourceChangedError,
    check_count,
    fill,
    open_segment,
    segment_nonce,
    truncated,
)
from airflow_privacy.core.errors import IntegrityError

__all__ = ["open_file", "seal_file"]

_MAX_WORKERS = 2  # past two, the file system's per-file write lock serializes anyway


def seal_file(src: Any, dst: Any, body: Body) -> Counts:
    """Encrypt ``src`` into ``dst`` (header, then segments), published atomically.

    Between two local files two threads read, seal and write every other segment by
    position (memory ~ 4 segments) and ``src`` must not change meanwhile (else
    :class:`SourceChangedError` and no ``dst``); otherwise one front-to-back stream
    (memory ~ 3 segments).
    """
    fs, path = core_io.resolve(src)
    with fs.open(path, "rb") as reader:
        plain = _size_of(reader)
        expected = None if plain is None else body.sealed_size(plain)
        with core_io.open_atomic(dst, expected_size=expected) as writer:
            fds = _local_descriptors(reader, writer)
            if fds is not None and plain is not None:
                counts = _seal_positional(*fds, plain, body)
                writer.seek(counts.ciphertext_bytes)  # what open_atomic keeps
                return counts
            return _seal_stream(reader, writer.write, body)


def open_file(reader: IO[bytes], dst: Any, body: Body) -> Counts:
    """Decrypt the rest of ``reader`` (positioned after the header) into ``dst``, which is
    published only if *every* segment authenticated."""
    sealed = _size_of(reader)
    expected = None if sealed is None else body.plain_size(sealed)
    with core_io.open_atomic(dst, expected_size=expected) as writer:
        fds = _local_descriptors(reader, writer)
        if fds is not None and sealed is not None:
            counts = _open_positional(*fds, sealed, body)
            writer.seek(counts.plaintext_bytes)
            return counts
        return _open_stream(reader, writer.write, body)


# -- front to back ---------------------------------------------------------------------------


def _seal_stream(reader: IO[bytes], write: Callable[[memoryview], Any], body: Body) -> Counts:
    segment_size = body.segment_size
    aead = AESGCM(body.dek)
    write(memoryview(body.head))
    # Three reused buffers (current, look-ahead, sealed output): memory stays ~3 segments
    # and nothing is allocated per segment. Writers copy what they are given (io contract).
    current, ahead = bytearray(segment_size), bytearray(segment_size)
    sealed = memoryview(bytearray(segment_size + TAG_BYTES))
    n_current = fill(reader, current)
    index = 0
    total_in = 0
    total_out = len(body.head)
    while True:
        # One segment of look-ahead tells whether the current one is the last.
        if n_current < segment_size:
            last, n_ahead = True, 0
        else:
            n_ahead = fill(reader, ahead)
            last = n_ahead == 0
        check_count(index + 1, segment_size)
        out = sealed[: n_current + TAG_BYTES]
        nonce = segment_nonce(body.nonce_prefix, index, last)
        aead.encrypt_into(nonce, memoryview(current)[:n_current], body.segment_ad, out)
        write(out)
        total_in += n_current
        total_out += len(out)
        if last:
            break
        current, ahead, n_current = ahead, current, n_ahead
        index += 1
    return Counts(index + 1, total_in, total_out)


def _open_stream(reader: IO[bytes], write: Callable[[memoryview], Any], body: Body) -> Counts:
    aead = AESGCM(body.dek)
    sealed = body.segment_size + TAG_BYTES
    current, ahead = bytearray(sealed), bytearray(sealed)
    opened = memoryview(bytearray(body.segment_size))
    n_current = fill(reader, current)
    index = 0
    total_in = len(body.head)
    total_out = 0
    while True:
        if n_current < sealed:
            last, n_ahead = True, 0
        else:
            n_ahead = fill(reader, ahead)
            last = n_ahead == 0
        if n_current < TAG_BYTES:
            truncated(index)
        if index >= MAX_SEGMENTS:
            raise IntegrityError("ciphertext has more than 2^32 segments: not ours")
        plain = opened[: n_current - TAG_BYTES]
        open_segment(aead, body, index, last, memoryview(current)[:n_current], plain)
        write(plain)
        total_in += n_current
        total_out += len(plain)
        if last:
            break
        current, ahead, n_current = ahead, current, n_ahead
        index += 1
    return Counts(index + 1, total_out, total_in)


# -- by position, between local files -------------------------------------------------------
# Segment i of the plaintext is bytes [i*S, (i+1)*S) and of the body [i*(S+16), ...), so
# segments can be read, sealed and written in any order: two workers take every other
# segment with pread/pwrite, each with its own buffers and AESGCM object. Their cost is
# the kernel's copies (page cache <-> buffers) and AES-GCM, all with the GIL released, so
# they overlap on two cores with no hand-over per segment (a thread wake-up costs ~0.1 ms
# on a VM). The nonce of a segment depends only on its index and on whether it is the
# last, which the size read at open tells; a size that differs at the end means a writer
# raced us, and the result is refused rather than published half old, half new.


def _seal_positional(rfd: int, wfd: int, size: int, body: Body) -> Counts:
    segment = body.segment_size
    count = max(1, -(-size // segment))
    check_count(count, segment)
    head = body.head
    _pwrite_all(wfd, memoryview(head), 0)

    def seal(index: int, work: _Worker) -> None:
        length = min(segment, size - index * segment)
        plain = work.inbuf[:length]
        if _pread_all(rfd, plain, index * segment) < length:
            raise SourceChangedError("the plaintext file shrank while it was being encrypted")
        out = work.outbuf[: length + TAG_BYTES]
        nonce = segment_nonce(body.nonce_prefix, index, index == count - 1)
        work.aead.encrypt_into(nonce, plain, body.segment_ad, out)
        _pwrite_all(wfd, out, len(head) + index * (segment + TAG_BYTES))

    largest = min(segment, size)  # a small file needs no full-segment buffers
    _each_segment(count, seal, body.dek, largest, largest + TAG_BYTES)
    _check_unchanged(rfd, size, "encrypted")
    return Counts(count, size, len(head) + size + count * TAG_BYTES)


def _open_positional(rfd: int, wfd: int, size: int, body: Body) -> Counts:
    segment = body.segment_size
    sealed = segment + TAG_BYTES
    head = len(body.head)
    total = size - head
    count = max(1, -(-total // sealed))
    if total - (count - 1) * sealed < TAG_BYTES:
        truncated(count - 1)
    if count > MAX_SEGMENTS:
        raise IntegrityError("ciphertext has more than 2^32 segments: not ours")

    def open_(index: int, work: _Worker) -> None:
        length = min(sealed, total - index * sealed)
        chunk = work.inbuf[:length]
        if _pread_all(rfd, chunk, head + index * sealed) < length:
            raise SourceChangedError("the ciphertext file shrank while it was being decrypted")
        plain = work.outbuf[: length - TAG_BYTES]
        open_segment(work.aead, body, index, index == count - 1, chunk, plain)
        _pwrite_all(wfd, plain, index * segment)  # authenticated: it may be written

    largest = min(sealed, total)
    _each_segment(count, open_, body.dek, largest, largest - TAG_BYTES)
    _check_unchanged(rfd, size, "decrypted")
    return Counts(count, total - count * TAG_BYTES, size)


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


def _size_of(reader: IO[bytes]) -> int | None:
    """Total size of an fsspec file opened for reading, when it knows it (as of opening:
    the streams read to EOF regardless, the positional path checks it at the end)."""
    size = getattr(reader, "size", None)
    return size if type(size) is int and size >= 0 else None
