"""Reading and writing batches by URI, atomically.

Batches move by reference: a ``file://``, ``s3://``, ``gs://``... URI (anything fsspec
resolves) or a path object exposing ``.fs`` and ``.path`` -- which is what Airflow's
``ObjectStoragePath`` is, so the operator layer passes those in with their connection's
credentials while this module stays free of Airflow imports.

Writes are atomic (:func:`open_atomic`): readers never observe a partial file, and neither a
failed nor a killed task leaves anything behind -- on local file systems the data is
written to an unnamed ``O_TMPFILE`` inode and linked into place; object stores publish a
PUT atomically.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from airflow_privacy.core.errors import InvalidParameterError, SchemaError

BatchTarget = Any  # str | os.PathLike | ObjectStoragePath-like (has .fs and .path)

_FORMATS = ("parquet", "csv")


def resolve(target: BatchTarget) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a URI, a local path or an ObjectStoragePath."""
    fs = getattr(target, "fs", None)
    path = getattr(target, "path", None)
    if fs is not None and isinstance(path, str):
        return fs, path
    if not isinstance(target, (str, os.PathLike)) or not str(target):
        raise InvalidParameterError("path", target, "expected a non-empty URI or path")
    fs, path = fsspec.core.url_to_fs(os.fspath(target))
    return fs, path


def infer_format(target: BatchTarget, fmt: str | None = None) -> str:
    """``parquet`` or ``csv`` from an explicit value or the file suffix (default parquet)."""
    if fmt is not None:
        if fmt not in _FORMATS:
            raise InvalidParameterError("format", fmt, f"expected one of {_FORMATS}")
        return fmt
    _, path = resolve(target)
    name = path.lower()
    for suffix in (".gz", ".enc"):
        name = name.removesuffix(suffix)
    return "csv" if name.endswith(".csv") else "parquet"


def exists(target: BatchTarget) -> bool:
    fs, path = resolve(target)
    return bool(fs.exists(path))


def read_batch(
    target: BatchTarget, *, columns: list[str] | None = None, fmt: str | None = None
) -> pd.DataFrame:
    """Read a Parquet or CSV batch into a DataFrame.

    :param target: URI / path / ObjectStoragePath of the batch.
    :param columns: columns to load (all when None); a missing one is a ``SchemaError``.
    :param fmt: ``parquet`` or ``csv``; inferred from the suffix when None.
    """
    fs, path = resolve(target)
    fmt = infer_format(target, fmt)
    if not fs.exists(path):
        raise FileNotFoundError(f"batch not found: {_display(fs, path)}")
    with fs.open(path, "rb") as fh:
        if fmt == "parquet":
            table = pq.read_table(fh)
        else:
            table = pa_csv.read_csv(fh)
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SchemaError(
                f"batch {_display(fs, path)} lacks column(s) {missing}; it has {table.column_names}"
            )
        table = table.select(columns)
    return table.to_pandas()


def write_batch(df: pd.DataFrame, target: BatchTarget, *, fmt: str | None = None) -> int:
    """Write ``df`` atomically as Parquet (default) or CSV; return the number of rows."""
    fmt = infer_format(target, fmt)
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buf, compression="zstd")
    else:
        pa_csv.write_csv(table, buf)
    write_bytes(buf.getvalue(), target)
    return table.num_rows


def write_bytes(data: bytes, target: BatchTarget) -> None:
    """Write ``data`` to ``target`` atomically."""
    with open_atomic(target) as fh:
        fh.write(data)


def read_bytes(target: BatchTarget) -> bytes:
    fs, path = resolve(target)
    with fs.open(path, "rb") as fh:
        return fh.read()


@contextlib.contextmanager
def open_atomic(
    target: BatchTarget, *, expected_size: int | None = None, mode: int | None = None
) -> Iterator[IO[bytes]]:
    """Open a binary writer whose content appears at ``target`` only if the block succeeds.

    On any exception ``target`` is left untouched and nothing of the block's data stays
    behind. On a local file system the data also never outlives a writer that is killed
    (``kill -9``, OOM, power cut of the worker process), which matters because the data may
    be decrypted plaintext:

    - where the kernel and file system have ``O_TMPFILE`` (Linux >= 3.11 on ext4, XFS,
      btrfs, tmpfs...) the data goes to an *unnamed* inode in the target's directory: a
      killed writer's inode is freed by the kernel, there is no name to leave behind. It is
      published with ``linkat`` through ``/proc/self/fd`` -- straight at ``target`` when
      that does not exist yet, else at a temporary name that is renamed over ``target``
      at once (rename is the only atomic replace), a window of two system calls;
    - elsewhere (NFS, no ``/proc``...) it goes to a named sibling ``.<name>.tmp-<hex>``
      created at mode 0600.

    Every temporary is held under an exclusive ``flock`` by its writer for its whole life,
    and every open of ``target`` first deletes the temporaries of ``target`` that nobody
    holds -- those of a killed writer (and of versions before this one) -- while a live
    concurrent writer's stay. Object stores (``s3://``...) publish a PUT atomically; there
    the temporary sibling is moved into place and a killed writer's complete temporary
    object is not cleaned.

    :param target: URI / path / ObjectStoragePath to publish at.
    :param expected_size: roughly how many bytes the block will write: on a local
        filesystem that much is reserved up front, so ext4 and XFS skip their per-page
        delayed-allocation work (large writes get ~1.2-1.5x faster). The file is then cut
        at the writer's position when the block ends -- the end of what a sequential writer
        wrote; one writing by position (``os.pwrite`` on ``fileno()``) seeks there first --
        so a wrong hint costs nothing but the reservation.
    :param mode: permission bits of the published local file (e.g. ``0o600`` for a key
        ring); default ``0o666`` less the process umask, as ``open()`` creates files.
        Ignored by object stores.
    """
    fs, path = resolve(target)
    if isinstance(fs, LocalFileSystem):
        with _open_atomic_local(path, expected_size, mode) as fh:
            yield fh
        return
    parent, _, name = path.rpartition("/")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/{_temporary_name(name)}" if parent else _temporary_name(name)
    try:
        with fs.open(tmp, "wb") as fh:
            yield fh
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


@contextlib.contextmanager
def _open_atomic_local(
    path: str, expected_size: int | None, mode: int | None
) -> Iterator[IO[bytes]]:
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    dirfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_stale_temporaries(dirfd, name)
        fd, tmp = _create_temporary(dirfd, name)
        try:
            with open(fd, "wb", closefd=False) as fh:
                preallocated = _preallocate(fd, expected_size)
                yield fh
                fh.flush()
                if preallocated:
                    os.ftruncate(fd, fh.tell())
            if tmp is None:
                _link_into_place(fd, dirfd, name)
            else:
                os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            # Only now: a temporary that a kill leaves behind stays 0600.
            os.fchmod(fd, (0o666 & ~_umask()) if mode is None else mode)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dirfd)
            raise
        finally:
            os.close(fd)  # releases the flock
    finally:
        os.close(dirfd)


def _remove_stale_temporaries(dirfd: int, name: str) -> None:
    """Delete the temporaries of ``name`` (in the directory ``dirfd``) no live writer holds.

    A writer holds an exclusive ``flock`` on its temporary until it has published or
    removed it, so one this process can lock belongs to a writer that died (the kernel
    drops a dead process's locks). Only regular files named exactly like our temporaries
    are touched; one owned by another user that we cannot open is left alone.
    """
    prefix = f".{name}{_TEMP_INFIX}"
    for entry in os.listdir(dirfd):
        if not (entry.startswith(prefix) and _TEMP_SUFFIX.fullmatch(entry[len(prefix) :])):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live writer's
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _is_named(dirfd, entry, fd):
                os.unlink(entry, dir_fd=dirfd)
        finally:
            os.close(fd)


_TEMP_INFIX = ".tmp-"
_TEMP_SUFFIX = re.compile(r"[0-9a-f]{32}")


def _temporary_name(name: str) -> str:
    return f".{name}{_TEMP_INFIX}{uuid.uuid4().hex}"


def _create_temporary(dirfd: int, name: str) -> tuple[int, str | None]:
    """A locked descriptor to write into: unnamed (``O_TMPFILE``, name None) where possible."""
    if _HAS_TMPFILE:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        except OSError as exc:
            # Not supported by this file system (EISDIR: a kernel that predates the flag).
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)  # covers the publish window's temporary name
            return fd, None
    while True:
        tmp = _temporary_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dirfd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A cleaner may have locked and deleted it between our create and our lock.
        if _is_named(dirfd, tmp, fd):
            return fd, tmp
        os.close(fd)


def _link_into_place(fd: int, dirfd: int, name: str) -> None:
    """Give the unnamed inode ``fd`` the name ``name``, replacing what is there."""
    source = f"/proc/self/fd/{fd}"
    # dst_dir_fd makes CPython call linkat() with AT_SYMLINK_FOLLOW; plain link() would
    # try to hard-link the /proc symlink itself (EXDEV).
    try:
        os.link(source, name, dst_dir_fd=dirfd, follow_symlinks=True)
        return
    except FileExistsError:
        pass
    tmp = _temporary_name(name)
    os.link(source, tmp, dst_dir_fd=dirfd, follow_symlinks=True)
    try:
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dirfd)
        raise


def _is_named(dirfd: int, name: str, fd: int) -> bool:
    """Whether ``name`` in ``dirfd`` is still the file open as ``fd``."""
    try:
        named = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for all threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


# O_TMPFILE files are published through /proc/self/fd; without /proc use named temporaries.
_HAS_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _preallocate(fd: int, size: int | None) -> bool:
    """Reserve ``size`` bytes for a local file; whether it was done."""
    if not size or size <= 0 or not hasattr(os, "posix_fallocate"):
        return False
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        # Not supported by this filesystem: a hint, not a requirement. Anything else
        # (ENOSPC: the write would fail too) is the caller's error.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        return False
    return True


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else path
