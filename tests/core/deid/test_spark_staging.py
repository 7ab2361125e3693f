"""The staging folder of the Spark engine's released batches (spark_staging): private,
removed at the end, failed or not; a folder left by a driver killed with SIGKILL is swept by
the next release to the same destination, a live driver's is not; a staged batch reads back
exactly and is gone once taken. Real processes, real flocks, no Spark needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pyarrow as pa
import pytest

from airflow_privacy.core.deid.spark_staging import stage, staging, take

HOLD = r"""
import sys, time
from airflow_privacy.core.deid.spark_staging import stage, staging
import pyarrow as pa
with staging(sys.argv[1]) as (fs, folder):
    stage(fs, folder, 0, 0, pa.table({"x": [1, 2, 3]}))
    print(folder, flush=True)
    time.sleep(600)
"""


def _holder(destination: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, destination], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_staged_batch_reads_back_exactly_and_the_folder_is_private_and_removed(tmp_path):
    table = pa.table({"token": ["a", None, "c"], "age": pa.array([30, 40, None], pa.int64())})
    with staging(str(tmp_path / "out.parquet")) as (fs, folder):
        assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
        path = stage(fs, folder, 3, 1, table)
        again = stage(fs, folder, 3, 1, table)  # a second attempt of the same batch: its own file
        assert path != again and take(fs, path).equals(table) and not os.path.exists(path)
    assert list(tmp_path.iterdir()) == []


def test_the_destination_s_folder_is_made_when_missing(tmp_path):
    with staging(str(tmp_path / "new" / "day" / "out.parquet")) as (fs, folder):
        assert os.path.isdir(folder) and os.path.dirname(folder) == str(tmp_path / "new" / "day")
    assert os.listdir(tmp_path / "new" / "day") == []


def test_the_folder_is_removed_when_the_release_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), staging(str(tmp_path / "out.parquet")) as (fs, folder):
        stage(fs, folder, 0, 0, pa.table({"x": [1]}))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_driver_s_folder_is_swept_a_live_one_kept(tmp_path):
    destination = str(tmp_path / "out.parquet")
    killed, stale = _holder(destination)
    live, kept = _holder(destination)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert os.path.isdir(stale) and os.listdir(stale)  # SIGKILL: nothing cleaned up
        other = str(tmp_path / "other.parquet")
        with staging(other):  # another destination's release does not touch them
            assert os.path.isdir(stale)
        with staging(destination) as (_, folder):
            assert not os.path.exists(stale) and os.path.isdir(kept) and folder not in (stale, kept)
    finally:
        live.kill()
        live.wait()
