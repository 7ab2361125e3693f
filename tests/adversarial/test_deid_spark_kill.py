"""kill -9 of a Spark executor's Python worker while it releases batches (engine="spark").

The second pass of the Spark engine runs the rules in Python workers forked by Spark's
``pyspark.daemon``. A child process drives ``deidentify(engine="spark")`` on its own
``local`` master while a watcher thread SIGKILLs the first forked worker it sees -- workers
exist only while release tasks run (the class counts are SQL, no Python on the executors).

* ``local[2,3]`` (up to 3 tries per task, as a cluster retries): the lost task runs again,
  and the file, its schema metadata and the report are exactly those of ``engine="duckdb"``
  on the same data and key ring -- no batch lost, none doubled, no report count doubled.
* ``local[2]`` (one try): the release fails, and no output, no report, no temporary file is
  left in the output folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, streaming

pytestmark = pytest.mark.slow

RULES = {"name": "drop", "email": {"hash": {}}, "patient_id": {"tokenize": {}}, "phone": "redact",
         "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}},
         "note": {"scrub_pii": {"known": ["name", "email"]}}}
K = {"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id", "max_suppression": 0.05}

CHILD = r"""
import json, os, sys, threading, time
os.environ["AIRFLOW_PRIVACY_SPARK_MASTER"] = sys.argv[1]
import psutil
from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, spark_engine, streaming

streaming.BATCH_ROWS = 500
spark_engine.UNIT_ROWS = 1000  # many small tasks
spark_engine.JOB_ROWS = 2000
source, out, ring, rules, k = sys.argv[2], sys.argv[3], KeyRing.from_json(sys.argv[4]), json.loads(sys.argv[5]), json.loads(sys.argv[6])
killed = []

def watch():
    me = psutil.Process()
    while not killed:
        for proc in me.children(recursive=True):
            try:
                parent = proc.parent()
                if parent is not None and "pyspark.daemon" in " ".join(parent.cmdline()) and \
                        "pyspark.daemon" in " ".join(proc.cmdline()):
                    proc.kill()
                    killed.append(proc.pid)
                    return
            except psutil.Error:
                pass
        time.sleep(0.005)

threading.Thread(target=watch, daemon=True).start()
try:
    _, report = deidentify(source, rules, keyring=ring, engine="spark", destination=out,
                           report_destination=out + ".json", k_anonymity=k)
    result = {"ok": True, "rows_out": report["rows_out"]}
except Exception as exc:
    result = {"ok": False, "error": str(exc)[:300]}
print("RESULT " + json.dumps({**result, "killed": killed}), flush=True)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    pytest.importorskip("pyspark")
    import datetime as dt

    from tests.core.deid.test_deid_engines import write_dataset

    return write_dataset(tmp_path_factory.mktemp("deid-spark-kill") / "raw", 17, dt.date(2026, 5, 1),
                         row_group_size=250)


def _child(master: str, source: str, out: Path, ring: KeyRing) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, master, source, str(out), ring.to_json(), json.dumps(RULES),
                           json.dumps(K)], capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_a_killed_worker_s_task_is_retried_and_the_release_is_exact(dataset, tmp_path, monkeypatch):
    ring = KeyRing.generate()
    monkeypatch.setattr(streaming, "BATCH_ROWS", 500)
    deidentify(dataset, RULES, keyring=ring, engine="duckdb", destination=str(tmp_path / "duckdb.parquet"),
               report_destination=str(tmp_path / "duckdb.parquet.json"), k_anonymity=K)
    result = _child("local[2,3]", dataset, tmp_path / "spark.parquet", ring)
    assert result["ok"] and len(result["killed"]) == 1, result
    released, expected = pq.read_table(tmp_path / "spark.parquet"), pq.read_table(tmp_path / "duckdb.parquet")
    assert released.schema.equals(expected.schema, check_metadata=True)
    assert released.equals(expected) and result["rows_out"] == expected.num_rows > 0
    assert (json.loads((tmp_path / "spark.parquet.json").read_text())
            == json.loads((tmp_path / "duckdb.parquet.json").read_text()))


def test_a_killed_worker_without_retries_fails_the_release_and_leaves_nothing(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = _child("local[2]", dataset, out / "spark.parquet", KeyRing.generate())
    assert not result["ok"] and len(result["killed"]) == 1, result
    assert list(out.iterdir()) == []
