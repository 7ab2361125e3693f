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


def test_known_replacement_is_per_row_over_distinct_combinations():
    """Rows repeating a (note, identifiers) combination are replaced alike and counted per
    row; equal notes of different patients each lose their own identifiers only."""
    note = "Pt Ann Lee, mail ann@x.org; also Bo Chen"
    df = pd.DataFrame(
        {
            "name": ["Ann Lee", "Ann Lee", "Bo Chen", "Ann Lee", None],
            "email": ["ann@x.org", "ann@x.org", "bo@y.org", None, "ann@x.org"],
            "note": [note, note, note, note, note],
        }
    )
    rules = {"note": {"scrub_pii": {"known": ["name", "email"], "entities": ["PHONE"]}}}
    out, report = deidentify(df, rules)
    assert out["note"].tolist() == [
        "Pt <NAME>, mail <EMAIL>; also Bo Chen",
        "Pt <NAME>, mail <EMAIL>; also Bo Chen",
        "Pt Ann Lee, mail ann@x.org; also <NAME>",
        "Pt <NAME>, mail ann@x.org; also Bo Chen",
        "Pt Ann Lee, mail <EMAIL>; also Bo Chen",
    ]
    assert report["columns"]["note"]["known_replaced"] == 2 + 2 + 1 + 1 + 1
    sub, _ = deidentify(df.iloc[[3, 0]], rules)  # a subset of rows, in another order
    assert sub["note"].tolist() == [out["note"][3], out["note"][0]]
