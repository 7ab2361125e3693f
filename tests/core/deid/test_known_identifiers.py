"""scrub_pii's ``known`` option: the row's own identifiers are removed from its free text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.deid import deidentify, scrub_pii
from airflow_privacy.core.errors import InvalidParameterError, SchemaError


def test_known_identifiers_are_replaced_per_row():
    df = pd.DataFrame(
        {
            "name": ["Ann Lee", "Bo Chen", None, "Ann Lee"],
            "note": ["Ann Lee called", "saw Ann Lee and Bo Chen", "no name", None],
        }
    )
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


def _reference_known(df: pd.DataFrame, column: str, known: list[str]) -> tuple[list, int]:
    """The specification, row by row: each of the row's known values of two or more
    characters (``str()`` of non-strings) is replaced, in the order of ``known``, by
    ``<COLUMN>``; ``replaced`` counts the (row, column) pairs whose value occurred."""
    texts, replaced = [], 0
    for _, row in df.iterrows():
        text = row[column]
        if pd.isna(text):
            texts.append(None)
            continue
        text = str(text)
        for col in known:
            value = row[col]
            value = None if pd.isna(value) else str(value)
            if value and len(value) > 1 and value in text:
                text = text.replace(value, f"<{col.upper()}>")
                replaced += 1
        texts.append(text)
    return texts, replaced


def _random_frame(rng, rows: int, notes: int, unique: bool) -> pd.DataFrame:
    names = ["Ann Lee", "Bo Chen", "Li", "A", "", "<NAME>", "Ann", "Lee Ann", None]
    mails = ["ann@x.org", "bo@y.org", "x.org", "@", None, "Ann Lee"]
    ids = [12, 7, 123, None, 1234]
    words = [
        "Ann Lee",
        "Bo Chen",
        "ann@x.org",
        "bo@y.org",
        "Li",
        "A",
        "<NAME>",
        "Lee",
        " ",
        "123",
        "12",
        "7",
        "called",
        "Ann",
        "x.org",
        "@",
        "é",
    ]
    pool = ["".join(rng.choice(words, rng.integers(0, 6))) for _ in range(notes)]
    if unique:
        pool = [f"{note} v{k}" for k, note in enumerate(pool)]
    pool.append(None)
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), rows)]  # noqa: E731
    return pd.DataFrame(
        {
            "name": pd.array(pick(names), dtype="str"),
            "email": pick(mails),  # object column: str and None
            "mrn": pd.array(pick(ids), dtype="Int64"),  # non-string known values
            "note": pd.array(pick(pool), dtype="str"),
        }
    )


@pytest.mark.parametrize("unique", [True, False], ids=["distinct-notes", "repeated-notes"])
@pytest.mark.parametrize("seed", range(3))
def test_known_replacement_equals_the_row_by_row_specification(unique, seed):
    """Whether the replacement runs per row (notes mostly distinct) or per distinct
    (note, values) combination (notes repeated), the result is the row-by-row one --
    with null, empty, one-character and non-string values, values that overlap each other
    and a value equal to a placeholder."""
    df = _random_frame(np.random.default_rng(seed), 3000, 4000 if unique else 40, unique)
    mostly_distinct = 2 * df["note"].nunique() >= df["note"].notna().sum()
    assert mostly_distinct == unique
    known = ["name", "email", "mrn"]
    expected, replaced = _reference_known(df, "note", known)
    rules = {"note": {"scrub_pii": {"known": known, "entities": ["EMAIL"]}}}
    out, report = deidentify(df, rules)
    scrubbed, found = scrub_pii(pd.Series(pd.array(expected, dtype="str")), ["EMAIL"])
    assert out["note"].tolist() == scrubbed.tolist()
    assert report["columns"]["note"]["known_replaced"] == replaced
    assert report["columns"]["note"]["found"] == found
