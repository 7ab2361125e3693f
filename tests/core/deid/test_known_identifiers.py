"""scrub_pii's ``known`` option: the row's own identifiers are removed from its free text."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_privacy.core.deid import deidentify
from airflow_privacy.core.errors import InvalidParameterError, SchemaError


def test_known_identifiers_are_replaced_per_row():
    df = pd.DataFrame({
        "name": ["Ann Lee", "Bo Chen", None, "Ann Lee"],
        "note": ["Ann Lee called", "saw Ann Lee and Bo Chen", "no name", None],
    })
    out, report = deidentify(df, {"name": "drop", "note": {"scrub_pii": {"known": ["name"]}}})
    # each row's own value only: row 1 names Ann Lee, who is another row's patient
    assert out["note"].tolist()[:3] == ["<NAME> called", "saw Ann Lee and <NAME>", "no name"]
    assert pd.isna(out["note"].iloc[3])
    assert report["columns"]["note"]["params"]["known"] == ["name"]


def test_known_validation():
    df = pd.DataFrame({"note": ["x"]})
    with pytest.raises(InvalidParameterError, match="known"):
        deidentify(df, {"note": {"scrub_pii": {"known": "name"}}})
    with pytest.raises(SchemaError, match="nope"):
        deidentify(df, {"note": {"scrub_pii": {"known": ["nope"]}}})
