"""open_atomic on a local file system: no name while writing, stale temporaries cleaned,
live writers' temporaries kept, modes as asked."""

from __future__ import annotations

import fcntl
import os
import stat

import pytest

from airflow_privacy.core import io as core_io
from airflow_privacy.core.io import open_atomic

STALE = ".out.bin.tmp-" + "ab" * 16  # the name open_atomic gives its temporaries


@pytest.fixture(params=["tmpfile", "named"])
def kind(request, monkeypatch):
    """Both ways open_atomic writes locally: an unnamed O_TMPFILE inode, or a named sibling."""
    if request.param == "named":
        monkeypatch.setattr(core_io, "_HAS_TMPFILE", False)
    elif not core_io._HAS_TMPFILE:
        pytest.skip("no O_TMPFILE here")
    return request.param


def test_nothing_but_the_target_is_ever_named_with_tmpfile(tmp_path, kind):
    target = tmp_path / "out.bin"
    with open_atomic(str(target)) as fh:
        fh.write(b"secret")
        names = os.listdir(tmp_path)
        if kind == "tmpfile":
            assert names == []  # the data lives in an unnamed inode
        else:
            assert len(names) == 1 and names[0].startswith(".out.bin.tmp-")
            assert stat.S_IMODE(os.stat(tmp_path / names[0]).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["out.bin"]
    assert target.read_bytes() == b"secret"


def test_replacing_an_existing_target_leaves_no_temporary(tmp_path, kind):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with open_atomic(str(target)) as fh:
        fh.write(b"new")
    assert os.listdir(tmp_path) == ["out.bin"]
    assert target.read_bytes() == b"new"


def test_failure_leaves_nothing_in_either_mode(tmp_path, kind):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), open_atomic(str(target)) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_a_dead_writers_temporary_is_removed_by_the_next_write(tmp_path, kind):
    # Exactly what the code before this fix left after a kill -9: unlocked, named, 0644.
    (tmp_path / STALE).write_bytes(b"partial plaintext")
    unrelated = [
        ".out.bin.tmp-notours",
        ".other.bin.tmp-" + "cd" * 16,
        ".out.bin.tmp-x.tmp-" + "ef" * 16,
    ]
    for name in unrelated:
        (tmp_path / name).write_bytes(b"keep")
    with open_atomic(str(tmp_path / "out.bin")) as fh:
        fh.write(b"done")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.bin", *unrelated])


def test_a_live_writers_temporary_is_kept(tmp_path, kind):
    live = tmp_path / STALE
    live.write_bytes(b"being written")
    # flock belongs to an open file description: this one conflicts with the cleaner's.
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with open_atomic(str(tmp_path / "out.bin")) as fh:
            fh.write(b"done")
        assert live.read_bytes() == b"being written"
    with open_atomic(str(tmp_path / "out.bin")) as fh:
        fh.write(b"again")  # the holder is gone now
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_symlink_named_like_a_temporary_is_not_followed(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / STALE)
    with open_atomic(str(tmp_path / "out.bin")) as fh:
        fh.write(b"x")
    assert victim.read_bytes() == b"keep"


def test_mode(tmp_path, kind):
    with open_atomic(str(tmp_path / "ring.json"), mode=0o600) as fh:
        fh.write(b"{}")
    assert stat.S_IMODE(os.stat(tmp_path / "ring.json").st_mode) == 0o600
    old = os.umask(0o027)
    try:
        with open_atomic(str(tmp_path / "batch.parquet")) as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "batch.parquet").st_mode) == 0o640


def test_preallocation_is_cut_to_what_was_written(tmp_path, kind):
    target = tmp_path / "out.bin"
    with open_atomic(str(target), expected_size=1 << 20) as fh:
        os.pwrite(fh.fileno(), b"abc", 0)
        fh.seek(3)
    assert target.read_bytes() == b"abc"
