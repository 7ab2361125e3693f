from __future__ import annotations

import pandas as pd
import pytest

from airflow_privacy.core.errors import InvalidParameterError, SchemaError
from airflow_privacy.core.io import exists, open_atomic, read_batch, write_batch


def test_parquet_and_csv_round_trip(tmp_path):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "é", None]})
    for name in ("x.parquet", "x.csv"):
        uri = f"file://{tmp_path}/sub/{name}"
        assert write_batch(df, uri) == 3
        back = read_batch(uri)
        assert back["a"].tolist() == [1, 2, 3]
        assert back["b"].iloc[1] == "é"


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with open_atomic(str(target)) as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_untouched_by_failed_overwrite(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with open_atomic(str(target)) as fh:
            fh.write(b"new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"


def test_missing_column_and_file_errors(tmp_path):
    uri = str(tmp_path / "x.parquet")
    write_batch(pd.DataFrame({"a": [1]}), uri)
    with pytest.raises(SchemaError, match="lacks column"):
        read_batch(uri, columns=["a", "nope"])
    with pytest.raises(FileNotFoundError):
        read_batch(str(tmp_path / "missing.parquet"))
    assert exists(uri) and not exists(str(tmp_path / "missing.parquet"))


def test_bad_target_and_format():
    with pytest.raises(InvalidParameterError, match="path"):
        read_batch("")
    with pytest.raises(InvalidParameterError, match="format"):
        write_batch(pd.DataFrame({"a": [1]}), "/tmp/x", fmt="xlsx")
