"""engine="spark" of deidentify: Spark SQL counts the classes, Spark's executors release the
batches, this process writes them in order -- and the file, its schema metadata (the
decryption hints) and the audit report are those of engine="duckdb" (itself equal to
"pandas", test_deid_engines), over every rule set of test_deid_engines, with row groups,
Spark tasks and batches far smaller than the dataset so that every rule, class and report
count crosses them. Real Spark (local[2]), real Parquet."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, spark_engine, streaming
from airflow_privacy.core.deid.release import Release
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.demo.data import generate_batch
from tests.core.deid.test_deid_engines import CASES, RING, _run, write_dataset


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    import os

    os.environ.setdefault("AIRFLOW_PRIVACY_SPARK_MASTER", "local[2]")
    session = spark_engine._session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """~3,000 demo rows in 2 hive folders of 3 files each, row groups of 128 rows, nulls
    planted."""
    return write_dataset(tmp_path_factory.mktemp("deid-spark") / "raw", 16, dt.date(2026, 4, 1), row_group_size=128)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_spark_engine_releases_what_duckdb_releases(spark, dataset, tmp_path, monkeypatch, name):
    monkeypatch.setattr(streaming, "BATCH_ROWS", 200)  # batches of a few row groups
    monkeypatch.setattr(spark_engine, "UNIT_ROWS", 300)  # Spark tasks of 2 row groups: ~14 per file
    case = CASES[name]
    expected, expected_report, expected_file = _run(dataset, tmp_path, "duckdb", case)
    released, report, report_file = _run(dataset, tmp_path, "spark", case)
    assert released.schema.equals(expected.schema, check_metadata=True)  # the decryption hints too
    assert released.num_rows == expected.num_rows > 0
    for column in expected.column_names:
        assert released.column(column).equals(expected.column(column)), column
    assert json.loads(json.dumps(report, default=str)) == json.loads(json.dumps(expected_report, default=str))
    assert report_file == expected_file
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()  # combos and the results: released
    print(f"{name}: {report['rows_in']} rows in, {report['rows_out']} out, k {report['k_achieved']}")


@pytest.mark.slow
def test_units_keep_the_input_order_and_cover_every_row_group(dataset):
    ds, arrow = streaming.open_dataset(dataset)
    cut = spark_engine.units(arrow, unit_rows=300)
    groups = [(f.path, f.row_groups[0].id) for unit in cut for f in unit.get_fragments()]
    expected = [(f.path, rg.id) for f in arrow.get_fragments() for rg in f.split_by_row_group()
                for rg in rg.row_groups]
    assert groups == expected and len(cut) > len(list(arrow.get_fragments()))
    assert sum(unit.to_table().num_rows for unit in cut) == ds.rows


@pytest.mark.slow
def test_a_quasi_identifier_reading_other_columns_is_refused_naming_spark(spark, dataset, tmp_path):
    with pytest.raises(InvalidParameterError, match=r"invalid engine='spark'.*'visit_date' is a quasi-identifier "
                                                    r"with rule 'shift_dates'"):
        deidentify(dataset, {"visit_date": {"shift_dates": {"max_days": 9, "by": "patient_id"}}}, keyring=RING,
                   engine="spark", destination=str(tmp_path / "out.parquet"),
                   k_anonymity={"quasi_identifiers": ["visit_date"], "k": 2})
    assert not (tmp_path / "out.parquet").exists()


def test_release_ships_the_ring_as_json_and_never_shows_it():
    """Spark pickles the release into its tasks: a KeyRing refuses pickling, the release
    carries the ring's JSON and rebuilds it; its repr holds no key."""
    ring = KeyRing.generate()
    release = Release(ring, {}, {}, None, [])
    again = pickle.loads(pickle.dumps(release))
    assert again.keyring.to_json() == ring.to_json() and again.memo is not release.memo
    assert pickle.loads(pickle.dumps(release)) is again  # the next task of the release in this worker
    other = pickle.loads(pickle.dumps(Release(ring, {}, {}, None, [])))
    assert other is not again and pickle.loads(pickle.dumps(release)) is not again  # only the last one kept
    secret = json.loads(ring.to_json())["keys"][0]["key"]
    assert secret not in repr(release) and secret not in repr(again)
    assert pickle.loads(pickle.dumps(Release(None, {}, {}, None, []))).keyring is None


def test_spark_not_installed_is_named_with_its_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark raises ImportError
    with pytest.raises(InvalidParameterError, match=r"invalid engine='spark': pyspark is not installed: pip install "
                                                    r"'airflow-privacy\[spark\]'"):
        streaming.choose_engine(str(tmp_path), "spark")


def test_an_empty_dataset_is_refused_before_spark_starts(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    generate_batch("site_a", "2026-04-01").head(0).to_parquet(folder / "part.parquet", index=False)
    with pytest.raises(InvalidParameterError, match="source"):
        deidentify(str(folder), {"name": "drop"}, engine="spark", destination=str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()
    assert pq.read_metadata(folder / "part.parquet").num_rows == 0


@pytest.mark.slow
def test_files_listed_from_sibling_hive_folders_are_read_as_they_are(spark, tmp_path):
    """The demo's layout (raw/site=<site>/date=<day>.parquet, each file holding its site in
    a column ``site``) named file by file, as the example DAGs do: no engine adds (or
    clashes with) a partition column; all three release the same file and report."""
    sources = []
    for site in ("site_a", "site_b", "site_c"):
        folder = tmp_path / "raw" / f"site={site}"
        folder.mkdir(parents=True)
        generate_batch(site, "2026-04-03").to_parquet(folder / "date=2026-04-03.parquet", index=False)
        sources.append(str(folder / "date=2026-04-03.parquet"))
    case = {"rules": {"name": "drop", "email": {"hash": {}}, "zip": {"generalize": {"prefix": 3}}},
            "k_anonymity": {"quasi_identifiers": ["zip", "sex"], "k": 3, "entity": "patient_id"}}
    out = {}
    for engine in ("pandas", "duckdb", "spark"):
        _, report = deidentify(sources, keyring=RING, engine=engine, destination=str(tmp_path / f"{engine}.parquet"),
                               **case)
        out[engine] = (pq.read_table(tmp_path / f"{engine}.parquet"), json.loads(json.dumps(report, default=str)))
    assert "site" in out["pandas"][0].column_names and out["pandas"][0].num_rows > 0
    for engine in ("duckdb", "spark"):
        assert out[engine][0].equals(out["pandas"][0]) and out[engine][1] == out["pandas"][1], engine


@pytest.mark.slow
def test_the_class_counts_session_sizes_its_shuffle_and_leaves_the_caller_s_alone(spark):
    before = spark.conf.get("spark.sql.shuffle.partitions")
    slots = spark.sparkContext.defaultParallelism
    with spark_engine._own_session(3_000) as own:  # a small batch: two partitions per slot
        assert own is not spark and own.conf.get("spark.sql.shuffle.partitions") == str(2 * slots)
        assert own.conf.get("spark.sql.session.timeZone") == "UTC"
    with spark_engine._own_session(10**12) as own:  # huge: the session's own setting caps it
        assert own.conf.get("spark.sql.shuffle.partitions") == before
    assert spark.conf.get("spark.sql.shuffle.partitions") == before


@pytest.mark.slow
def test_hostile_column_names_are_quoted_in_spark_sql(spark, tmp_path):
    """Quasi-identifier, entity and sensitive columns whose names hold a backtick, a quote, a
    space and SQL: quoted in every query, and the release equals DuckDB's."""
    import pandas as pd

    rng = np.random.default_rng(5)
    n = 600
    names = {"zip": "zip` OR 1=1 --", "patient_id": 'patient "id"', "diagnosis": "diagnosis; DROP TABLE x"}
    frame = pd.DataFrame({names["zip"]: rng.choice(["10001", "10002", "10003"], n),
                          names["patient_id"]: [f"p{i % 150}" for i in range(n)],
                          names["diagnosis"]: rng.choice(["a", "b", "c"], n), "age": rng.integers(20, 80, n)})
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    case = {"rules": {names["zip"]: {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}}},
            "k_anonymity": {"quasi_identifiers": [names["zip"], "age"], "k": 3, "entity": names["patient_id"]},
            "l_diversity": {"sensitive": names["diagnosis"], "l": 2}}
    out = {}
    for engine in ("duckdb", "spark"):
        _, report = deidentify(str(tmp_path / "in.parquet"), engine=engine,
                               destination=str(tmp_path / f"{engine}.parquet"), **case)
        out[engine] = (pq.read_table(tmp_path / f"{engine}.parquet"), json.loads(json.dumps(report, default=str)))
    assert out["spark"][0].equals(out["duckdb"][0]) and out["spark"][1] == out["duckdb"][1]
    assert out["spark"][0].num_rows > 0


@pytest.mark.slow
def test_the_key_ring_never_reaches_a_debug_log(spark, tmp_path, caplog):
    """py4j logs each command to the JVM at DEBUG, arguments included: the pickled release
    task (key ring inside) was in the log whenever the level was DEBUG."""
    import base64
    import logging
    import re

    import pandas as pd

    ring = KeyRing.generate()
    key = json.loads(ring.to_json())["keys"][0]["key"].encode()
    pd.DataFrame({"email": [f"a{i}@x.org" for i in range(50)]}).to_parquet(tmp_path / "in.parquet")
    with caplog.at_level(logging.DEBUG):
        deidentify(str(tmp_path / "in.parquet"), {"email": {"hash": {}}}, keyring=ring, engine="spark",
                   destination=str(tmp_path / "out.parquet"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 50
    assert not [r for r in caplog.records if r.name.startswith(("py4j", "pyspark")) and r.levelno < logging.INFO]
    chunks = re.findall(r"[A-Za-z0-9+/]{64,}", text)  # base64 of any payload, at any alignment
    decoded = [base64.b64decode(c[off:][: (len(c) - off) // 4 * 4]) for c in chunks for off in range(4)]
    assert key not in text.encode() and not any(key in raw for raw in decoded)
