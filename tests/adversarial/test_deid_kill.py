"""kill -9 during a streamed de-identification (engine="duckdb"): no partial output, no
report, no temporary left, and a retry releases the whole batch.

Each trial de-identifies a ~20 k-row dataset in 1,000-row record batches in a child process
and SIGKILLs it: from inside (a real ``os.kill(getpid(), SIGKILL)``) after the k-th batch is
written to the Parquet writer, and from outside after varied delays. The output folder is
then scanned: only the previous day's files may be there, untouched. The retry, in the test
process, must succeed and write the same bytes as a run that was never killed.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify
from airflow_privacy.demo.data import generate_batch

pytestmark = pytest.mark.slow

RING = KeyRing.generate()
RULES = {"name": "drop", "email": {"hash": {}}, "patient_id": {"tokenize": {}}, "phone": "redact",
         "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}},
         "note": {"scrub_pii": {"known": ["name", "email"]}}}
K = {"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id", "max_suppression": 0.05}

CHILD = r"""
import os, signal, sys
import pyarrow.parquet as pq
from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, streaming
sys.path.insert(0, sys.argv[4])
from test_deid_kill import RULES, K

src, dst, after = sys.argv[1:4]
streaming.BATCH_ROWS = 1000
if int(after):
    real, calls = pq.ParquetWriter.write_table, [0]
    def write_table(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] >= int(after):
            os.kill(os.getpid(), signal.SIGKILL)
    pq.ParquetWriter.write_table = write_table
ring = KeyRing.from_json(sys.stdin.readline())
print("ready", flush=True)
deidentify(src, RULES, keyring=ring, k_anonymity=K, engine="duckdb", destination=dst + "/batch.parquet",
           report_destination=dst + "/batch.json")
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("deid-kill") / "raw"
    root.mkdir()
    for d in range(14):
        day = dt.date(2026, 4, 1) + dt.timedelta(days=d)
        frames = [generate_batch(site, day) for site in ("site_a", "site_b", "site_c")]
        pd.concat(frames, ignore_index=True).to_parquet(root / f"day={day}.parquet", index=False)
    return str(root)


def _release(dataset: str, folder: Path) -> None:
    deidentify(dataset, RULES, keyring=RING, k_anonymity=K, engine="duckdb",
               destination=str(folder / "batch.parquet"), report_destination=str(folder / "batch.json"))


def test_kill_9_mid_stream_leaves_no_partial_output(dataset, tmp_path, monkeypatch):
    from airflow_privacy.core.deid import streaming

    monkeypatch.setattr(streaming, "BATCH_ROWS", 1000)
    clean = tmp_path / "clean"
    _release(dataset, clean)
    expected = {p.name: p.read_bytes() for p in clean.iterdir()}
    rows = pq.read_metadata(clean / "batch.parquet").num_rows
    assert rows > 15_000
    old = {"batch.parquet": b"yesterday's batch", "batch.json": b"yesterday's report"}
    trials = [("internal", n, None, p) for n in (1, 12) for p in (None, old)]
    trials += [("external", 0, d, p) for d, p in ((0.5, old), (2.0, None))]
    kills = mid_stream = 0
    for kind, after, delay, previous in trials:
        folder = tmp_path / f"{kind}-{after}-{delay}-{previous is not None}"
        folder.mkdir()
        for name, data in (previous or {}).items():
            (folder / name).write_bytes(data)
        child = subprocess.Popen([sys.executable, "-c", CHILD, dataset, str(folder), str(after),
                                  str(Path(__file__).parent)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        child.stdin.write(RING.to_json() + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        if delay is not None:
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=300)
        killed = child.returncode == -signal.SIGKILL
        kills += killed
        left = {p.name: p.read_bytes() for p in folder.iterdir()}
        finished = left.get("batch.parquet") == expected["batch.parquet"]
        mid_stream += killed and not finished
        if not finished:
            assert left == (previous or {}), (kind, after, delay, sorted(left))
        print(f"{kind} after={after} delay={delay} old={previous is not None}: killed={killed}, "
              f"left {sorted(left)}{' (finished before the kill)' if finished else ''}")
        _release(dataset, folder)  # the retry
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == expected
    print(f"{len(trials)} trials, {kills} kills, {mid_stream} before the output was published, "
          f"0 partial outputs or temporaries left, every retry identical to an unkilled run")
    assert mid_stream >= 4  # every internal kill point was reached before publishing
