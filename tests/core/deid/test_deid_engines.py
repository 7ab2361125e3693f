"""engine="duckdb" (streamed record batches, classes counted by DuckDB) releases exactly what
engine="pandas" releases from the same Parquet dataset: same rows in the same order, same
values and types, same audit report -- over several rule sets with k-anonymity and
l-diversity, with batches far smaller than the dataset so that every rule crosses batches."""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify, streaming
from airflow_privacy.core.deid.deidentify import deidentify_dataset
from airflow_privacy.core.deid.loss import InformationLossWarning
from airflow_privacy.demo.data import generate_batch

RING = KeyRing.generate()

# dags/deidentify_daily_batches.py's rules
DAG_RULES = {"name": "drop", "birth_date": "drop", "phone": "redact", "email": {"hash": {}},
             "patient_id": {"tokenize": {}}, "ssn": {"mask": {"keep_last": 4, "char": "*"}},
             "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}},
             "visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}},
             "note": {"scrub_pii": {"known": ["name", "email", "phone", "ssn"]}}}

CASES = {
    "dag rules, k=5 patients, 2-diverse diagnosis": dict(
        rules=DAG_RULES,
        k_anonymity={"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id",
                     "max_suppression": 0.05},
        l_diversity={"sensitive": "diagnosis", "l": 2},
    ),
    "kept and hashed quasi-identifiers, masked sensitive, k=4 rows": dict(
        rules={"name": "drop", "sex": {"hash": {}}, "diagnosis": {"mask": {"keep_first": 1}},
               "note": {"scrub_pii": {}}, "cost": {"bucket": {"width": 250.5}}},
        k_anonymity={"quasi_identifiers": ["age", "zip", "sex"], "k": 4, "max_suppression": 0.1},
        l_diversity={"sensitive": "diagnosis", "l": 2},
    ),
    "l-diversity only, dates by month, capped zip": dict(
        rules={"birth_date": {"generalize": {"date": "month"}}, "zip": {"generalize": {"prefix": 4}},
               "cost": {"bucket": {"edges": [0, 100, 500, 1000, 5000]}}, "email": "redact",
               "diagnosis": "keep"},
        l_diversity={"quasi_identifiers": ["birth_date", "zip"], "sensitive": "diagnosis", "l": 3, "max_suppression": 0.2,
                     "max_generalization": {"zip": 2}},
        unlisted="drop",
    ),
    "no anonymity": dict(
        rules={**DAG_RULES, "cost": {"bucket": {"width": 100, "top": 5000}}},
    ),
}


def write_dataset(root, seed, start, row_group_size=None):
    """Demo batches of 2 days x 3 sites as hive folders (day=...) of 3 files each, with nulls
    planted; the folder's path."""
    rng = np.random.default_rng(seed)
    rows = 0
    for d in range(2):
        day = start + dt.timedelta(days=d)
        for site in ("site_a", "site_b", "site_c"):
            df = generate_batch(site, day)
            for column in ("zip", "diagnosis", "patient_id"):
                df.loc[rng.random(len(df)) < 0.02, column] = None
            df.loc[rng.random(len(df)) < 0.02, "cost"] = np.nan
            folder = root / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            df.to_parquet(folder / f"{site}.parquet", index=False, row_group_size=row_group_size)
            rows += len(df)
    assert rows > 2500
    return str(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """~3,000 demo rows in 2 hive folders of 3 files each, with nulls planted."""
    return write_dataset(tmp_path_factory.mktemp("deid-engines") / "raw", 15, dt.date(2026, 3, 1))


def _run(dataset, out, engine, case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InformationLossWarning)
        _, report = deidentify(dataset, keyring=RING, engine=engine, destination=str(out / f"{engine}.parquet"),
                               report_destination=str(out / f"{engine}.json"), **case)
    return pq.read_table(out / f"{engine}.parquet"), report, json.loads((out / f"{engine}.json").read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_duckdb_engine_releases_what_pandas_releases(dataset, tmp_path, monkeypatch, name):
    monkeypatch.setattr(streaming, "BATCH_ROWS", 400)  # ~8 batches: every rule and class crosses batches
    case = CASES[name]
    expected, expected_report, expected_file = _run(dataset, tmp_path, "pandas", case)
    streamed, report, report_file = _run(dataset, tmp_path, "duckdb", case)
    assert streamed.schema.remove_metadata().equals(expected.schema.remove_metadata())
    assert streamed.num_rows == expected.num_rows > 0
    for column in expected.column_names:
        assert streamed.column(column).equals(expected.column(column)), column
    assert json.loads(json.dumps(report, default=str)) == json.loads(json.dumps(expected_report, default=str))
    assert report_file == expected_file
    if "k_anonymity" in case or "l_diversity" in case:
        assert report["rows_in"] > report["rows_out"] or report["suppressed"] == 0
        assert "information_loss" in report
    print(f"{name}: {report['rows_in']} rows in, {report['rows_out']} out, k {report['k_achieved']}, "
          f"l {report['l_achieved']}, levels {report.get('k_anonymity', report.get('l_diversity', {})).get('levels')}")


def test_engine_is_chosen_by_the_dataset_size(dataset, tmp_path, monkeypatch):
    assert streaming.choose_engine(dataset, None) == "pandas"
    assert streaming.choose_engine(dataset + "/*/*.csv", None) == "pandas"
    monkeypatch.setattr(streaming, "PANDAS_MAX_BYTES", 1000)
    assert streaming.choose_engine(dataset, None) == "duckdb"
    _, report = deidentify_dataset(dataset, str(tmp_path / "auto.parquet"), {"name": "drop"}, keyring=None,
                                   k_anonymity=None, l_diversity=None, unlisted="keep", information_loss=None,
                                   engine=None, report_destination=None, batch_rows=1000)
    assert report["rows_out"] == pq.read_metadata(tmp_path / "auto.parquet").num_rows == report["rows_in"]
