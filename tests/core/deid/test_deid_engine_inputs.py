"""Bad input to deidentify(dataset, engine=...): a clear error naming the parameter, and
nothing written -- neither the batch nor its report."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

RULES = {"name": "drop", "zip": {"generalize": {"prefix": 3}}}
K = {"quasi_identifiers": ["zip"], "k": 2}


def _frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"name": [f"n{i}" for i in range(n)], "zip": [f"{10000 + i % 4}" for i in range(n)],
                         "visit_date": pd.to_datetime("2026-01-01") + pd.to_timedelta(range(n), "D"),
                         "patient_id": [f"p{i % 5}" for i in range(n)]})


def _run(source, tmp_path, **kwargs):
    kwargs = {"engine": "duckdb", "k_anonymity": K, **kwargs}
    try:
        return deidentify(source, kwargs.pop("rules", RULES), destination=str(tmp_path / "out" / "batch.parquet"),
                          report_destination=str(tmp_path / "out" / "batch.json"), **kwargs)
    finally:
        out = tmp_path / "out"
        assert not out.exists() or sorted(p.name for p in out.iterdir()) in ([], ["batch.json", "batch.parquet"])


def _nothing_written(tmp_path) -> bool:
    out = tmp_path / "out"
    return not out.exists() or not any(out.iterdir())


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "raw"
    for part in ("a", "b"):
        (folder / f"site={part}").mkdir(parents=True)
        _frame().to_parquet(folder / f"site={part}" / "batch.parquet", index=False)
    return str(folder)


@pytest.mark.parametrize("engine", ["duckdb", None])
def test_engine_not_installed_names_the_parameter_and_the_package(dataset, tmp_path, monkeypatch, engine):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb raises ImportError
    monkeypatch.setattr("airflow_privacy.core.deid.streaming.PANDAS_MAX_BYTES", 0)  # None picks duckdb
    with pytest.raises(InvalidParameterError, match=r"engine.*duckdb is not installed: pip install duckdb"):
        _run(dataset, tmp_path, engine=engine)
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("engine", ["duckdb", "pandas"])
def test_partitions_with_different_schemas_are_refused(dataset, tmp_path, engine):
    other = _frame().assign(zip=lambda f: f["zip"].astype(int))  # int64 here, text in the others
    (tmp_path / "raw" / "site=c").mkdir()
    other.to_parquet(tmp_path / "raw" / "site=c" / "batch.parquet", index=False)
    with pytest.raises(SchemaError, match=r"source .*the schema of .*site=c/batch.parquet.*zip: int64.*differs.*"
                                          "nothing was written"):
        _run(dataset, tmp_path, engine=engine)
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("engine", ["duckdb", "pandas"])
def test_empty_datasets_are_refused(tmp_path, engine):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidParameterError, match=r"invalid source=.*matches no Parquet file"):
        _run(str(empty), tmp_path, engine=engine)
    _frame(0).to_parquet(empty / "none.parquet", index=False)
    with pytest.raises(InvalidParameterError, match=r"invalid source=.*expected rows; its 1 Parquet file\(s\) hold none"):
        _run(str(empty), tmp_path, engine=engine)
    assert _nothing_written(tmp_path)


def test_other_bad_requests_are_refused_before_anything_is_written(dataset, tmp_path):
    with pytest.raises(InvalidParameterError, match=r"invalid engine='polars'.*'pandas', 'duckdb'"):
        _run(dataset, tmp_path, engine="polars")
    with pytest.raises(InvalidParameterError, match=r"invalid engine='duckdb'.*a pandas DataFrame runs on"):
        deidentify(_frame(), RULES, engine="duckdb")
    with pytest.raises(InvalidParameterError, match=r"invalid destination=None: required"):
        deidentify(dataset, RULES, engine="duckdb")
    with pytest.raises(SchemaError, match=r"k_anonymity.quasi_identifiers: column 'age' is not in the batch"):
        _run(dataset, tmp_path, k_anonymity={"quasi_identifiers": ["age"], "k": 2})
    shifted = {**RULES, "visit_date": {"shift_dates": {"max_days": 5, "by": "patient_id"}}}
    with pytest.raises(InvalidParameterError, match=r"invalid engine='duckdb': column 'visit_date' is a "
                                                    r"quasi-identifier with rule 'shift_dates'.*engine='pandas'"):
        _run(dataset, tmp_path, rules=shifted, k_anonymity={"quasi_identifiers": ["zip", "visit_date"], "k": 2},
             keyring=KeyRing.generate())
    assert _nothing_written(tmp_path)
    _, report = _run(dataset, tmp_path)  # the same dataset, well asked, is released
    assert report["rows_in"] == 40 and report["k_achieved"] >= 2


def test_spill_folders_are_private_removed_and_swept(dataset, tmp_path, monkeypatch):
    """DuckDB's spill folder holds raw rows: it is the run's own (0700), gone after the run,
    and a folder left by a killed worker (its process gone) is swept by the next run."""
    import subprocess
    import tempfile

    from airflow_privacy.core.deid import class_counts

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = root / f"{class_counts.SPILL_PREFIX}{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "duckdb_temp_block-1.block").write_bytes(b"patient rows")
    alive = root / f"{class_counts.SPILL_PREFIX}{os.getppid()}-def"  # a live process's: kept
    alive.mkdir()
    seen = []
    real = class_counts.compress

    def compress(db, *args):
        spill = db.con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0]
        seen.append((spill, oct(os.stat(spill).st_mode & 0o777)))
        return real(db, *args)

    monkeypatch.setattr("airflow_privacy.core.deid.streaming.compress", compress)
    _, report = _run(dataset, tmp_path)
    assert report["rows_out"] > 0 and len(seen) == 1
    spill, mode = seen[0]
    assert mode == "0o700" and spill.startswith(str(root / f"{class_counts.SPILL_PREFIX}{os.getpid()}-"))
    assert sorted(p.name for p in root.iterdir()) == [alive.name]
