"""Where Spark's executors leave released batches for the driver: a staging folder beside
the destination (:func:`staging`), one Arrow IPC file per batch (:func:`stage`,
:func:`take`).

Why files and not the job's results: a released batch of 256 Ki rows is ~30-40 MB; carried
as a binary column through Spark (Python worker -> JVM rows -> ``toArrow``) the JVM copies
and re-encodes every byte, and at 2e7 rows it took more CPU than the rules themselves
(``bench/deid_engines.py --spark``). A file written by the task and read back by the driver
costs one LZ4 frame each way. What the folder holds is released data only -- the same rows
that are about to be published -- never raw rows.

The folder is ``.<destination name>.spark-staging-<hex>`` in the destination's folder, so it
is on storage both the executors and the driver reach (they already share the source and
the destination) and on the destination's file system. It is removed when the release ends,
failed or not. On a local file system the driver holds an exclusive ``flock`` on the folder
for its whole life, and every release to the same destination first removes the staging
folders nobody holds -- those of a driver killed with SIGKILL -- while a live concurrent
release's stays (the same rule as :func:`airflow_privacy.core.io.open_atomic`'s
temporaries). A task's attempt writes files of its own name (a retried or speculative
attempt never overwrites another's), and the driver reads only the files the successful
attempt reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from airflow_privacy.core import io

__all__ = ["stage", "staging", "take"]

_INFIX = ".spark-staging-"
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


@contextlib.contextmanager
def staging(destination: str) -> Iterator[tuple[Any, str]]:
    """A new staging folder for ``destination``: ``(file system, path)``, removed on exit."""
    fs, path = io.resolve(destination)
    parent, name = posixpath.split(path)
    folder = posixpath.join(parent, f".{name}{_INFIX}{uuid.uuid4().hex}")
    if not isinstance(fs, LocalFileSystem):
        fs.makedirs(folder, exist_ok=False)
        try:
            yield fs, folder
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(folder, recursive=True)
        return
    os.makedirs(parent, exist_ok=True)  # as open_atomic will for the destination
    _sweep(parent, name)
    os.mkdir(folder, 0o700)
    held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield fs, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(held)


def _sweep(parent: str, name: str) -> None:
    """Remove the staging folders of ``name`` in ``parent`` that no live driver holds."""
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.startswith(f".{name}{_INFIX}") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live release's
            continue
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


def stage(fs: Any, folder: str, unit: int, seq: int, table: pa.Table) -> str:
    """On an executor: ``table`` written to a new file of ``folder``; its path."""
    path = posixpath.join(folder, f"{unit:07d}-{seq:05d}-{uuid.uuid4().hex[:12]}.arrow")
    with fs.open(path, "wb") as fh, pa.ipc.new_file(fh, table.schema, options=_OPTIONS) as writer:
        writer.write_table(table)
    return path


def take(fs: Any, path: str) -> pa.Table:
    """On the driver: the table staged at ``path``, which is then removed."""
    with fs.open(path, "rb") as fh:
        table = pa.ipc.open_file(fh).read_all()
    fs.rm(path)
    return table
