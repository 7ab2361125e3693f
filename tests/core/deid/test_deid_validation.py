"""Bad rules, parameters and constraints fail early with an error naming the parameter."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import KEYED_RULES, RULES, deidentify, needs_keyring
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError, SchemaError


@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pid": ["a", "b", "c"],
            "age": [30, 40, 50],
            "zip": ["10001", "10002", "10003"],
            "dx": ["E11", "I10", "E11"],
            "when": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
        }
    )


def test_errors_are_privacy_errors():
    assert issubclass(InvalidParameterError, PrivacyError) and issubclass(SchemaError, PrivacyError)


def test_rule_names_are_public():
    assert set(RULES) == {
        "keep",
        "drop",
        "redact",
        "replace",
        "mask",
        "hash",
        "tokenize",
        "bucket",
        "generalize",
        "shift_dates",
        "scrub_pii",
    }


def test_unknown_column_is_a_schema_error(df):
    with pytest.raises(SchemaError, match="'nope' is not in the batch"):
        deidentify(df, {"nope": "drop"})


@pytest.mark.parametrize(
    ("rules", "name"),
    [
        ({"age": "blur"}, "rules['age']"),
        ({"age": {"blur": {}}}, "rules['age']"),
        ({"age": ["drop"]}, "rules['age']"),
        ({"age": {"drop": None, "keep": None}}, "rules['age']"),
        ({"age": {"mask": 4}}, "rules['age'].mask"),
        ({"age": {"mask": {"keep_lst": 4}}}, "rules['age'].mask.keep_lst"),
        ({"age": {"mask": {"keep_last": -1}}}, "rules['age'].mask.keep_last"),
        ({"age": {"mask": {"keep_last": 2.5}}}, "rules['age'].mask.keep_last"),
        ({"age": {"mask": {"char": "**"}}}, "rules['age'].mask.char"),
        ({"age": {"replace": {}}}, "rules['age'].replace.value"),
        ({"age": {"replace": {"value": None}}}, "rules['age'].replace.value"),
        ({"age": {"redact": {"value": float("nan")}}}, "rules['age'].redact.value"),
        ({"pid": {"hash": {"length": 4}}}, "rules['pid'].hash.length"),
        ({"pid": {"hash": {"length": True}}}, "rules['pid'].hash.length"),
        ({"pid": {"tokenize": {"deterministic": False}}}, "rules['pid'].tokenize.deterministic"),
        ({"age": {"bucket": {"width": 0}}}, "rules['age'].bucket.width"),
        ({"age": {"bucket": {"width": None}}}, "rules['age'].bucket.width"),
        ({"age": {"bucket": {}}}, "rules['age'].bucket.width"),
        ({"age": {"bucket": {"width": 10, "edges": [0, 5]}}}, "rules['age'].bucket.width"),
        ({"age": {"bucket": {"edges": [10, 5]}}}, "rules['age'].bucket.edges"),
        ({"age": {"bucket": {"edges": "0,10"}}}, "rules['age'].bucket.edges"),
        ({"age": {"bucket": {"width": 10, "top": "90"}}}, "rules['age'].bucket.top"),
        ({"zip": {"generalize": {}}}, "rules['zip'].generalize.prefix"),
        ({"zip": {"generalize": {"prefix": 3, "date": "year"}}}, "rules['zip'].generalize.prefix"),
        ({"zip": {"generalize": {"prefix": -1}}}, "rules['zip'].generalize.prefix"),
        ({"zip": {"generalize": {"prefix": 3, "fill": "**"}}}, "rules['zip'].generalize.fill"),
        ({"when": {"generalize": {"date": "week"}}}, "rules['when'].generalize.date"),
        ({"dx": {"generalize": {"map": {}}}}, "rules['dx'].generalize.map"),
        ({"dx": {"generalize": {"map": [{"E11": ["E"]}]}}}, "rules['dx'].generalize.map"),
        (
            {"dx": {"generalize": {"map": {"E11": "E"}, "default": 1}}},
            "rules['dx'].generalize.default",
        ),
        ({"when": {"shift_dates": {}}}, "rules['when'].shift_dates.max_days"),
        ({"when": {"shift_dates": {"max_days": 0}}}, "rules['when'].shift_dates.max_days"),
        ({"when": {"shift_dates": {"max_days": 3}}}, "rules['when'].shift_dates.by"),
        ({"when": {"shift_dates": {"max_days": 3, "by": "when"}}}, "rules['when'].shift_dates.by"),
        ({"when": {"shift_dates": {"max_days": 3, "by": ["pid"]}}}, "rules['when'].shift_dates.by"),
        (
            {"when": {"shift_dates": {"max_days": 3, "by": {"c": 1}}}},
            "rules['when'].shift_dates.by",
        ),
        ({"dx": {"scrub_pii": {"entities": ["NAME"]}}}, "rules['dx'].scrub_pii.entities"),
        ({"dx": {"scrub_pii": {"entities": "EMAIL"}}}, "rules['dx'].scrub_pii.entities"),
    ],
)
def test_bad_rule_or_parameter_names_it(df, rules, name):
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, rules, keyring=KeyRing.generate())
    assert err.value.name == name
    assert name in str(err.value)


def test_rules_must_be_a_mapping(df):
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, ["age"])
    assert err.value.name == "rules"


def test_shift_by_a_missing_column(df):
    with pytest.raises(SchemaError, match=r"shift_dates.by: column 'patient' is not in the batch"):
        deidentify(
            df,
            {"when": {"shift_dates": {"max_days": 3, "by": "patient"}}},
            keyring=KeyRing.generate(),
        )


@pytest.mark.parametrize(
    "rule", [{"hash": {}}, {"tokenize": {}}, {"shift_dates": {"max_days": 3, "by": "pid"}}]
)
def test_keyed_rules_need_a_keyring(df, rule):
    column = "when" if "shift_dates" in rule else "pid"
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, {column: rule})
    assert err.value.name == "keyring" and column in str(err.value)
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, {column: rule}, keyring="not a ring")
    assert err.value.name == "keyring"


@pytest.mark.parametrize(
    ("k_anonymity", "l_diversity", "name"),
    [
        ({"quasi_identifiers": ["age"], "k": 1}, None, "k_anonymity.k"),
        ({"quasi_identifiers": ["age"], "k": True}, None, "k_anonymity.k"),
        ({"quasi_identifiers": ["age"], "k": 5.0}, None, "k_anonymity.k"),
        ({"quasi_identifiers": ["age"]}, None, "k_anonymity.k"),
        ({"quasi_identifiers": "age", "k": 2}, None, "k_anonymity.quasi_identifiers"),
        ({"quasi_identifiers": [], "k": 2}, None, "k_anonymity.quasi_identifiers"),
        ({"quasi_identifiers": ["age", "age"], "k": 2}, None, "k_anonymity.quasi_identifiers"),
        ({"quasi_identifiers": [["age"]], "k": 2}, None, "k_anonymity.quasi_identifiers"),
        ({"quasi_identifiers": [{"age": 1}], "k": 2}, None, "k_anonymity.quasi_identifiers"),
        ({"quasi_identifiers": ["age"], "k": 2, "entity": ["pid"]}, None, "k_anonymity.entity"),
        (
            None,
            {"quasi_identifiers": [["age"]], "l": 2, "sensitive": "dx"},
            "l_diversity.quasi_identifiers",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": ["dx"], "l": 2},
            "l_diversity.sensitive",
        ),
        ({"quasi_identifiers": ["zip"], "k": 2}, None, "k_anonymity.quasi_identifiers"),
        (
            {"quasi_identifiers": ["age"], "k": 2, "max_suppression": 1.0},
            None,
            "k_anonymity.max_suppression",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2, "max_suppression": -0.1},
            None,
            "k_anonymity.max_suppression",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2, "max_suppression": "0.1"},
            None,
            "k_anonymity.max_suppression",
        ),
        ({"quasi_identifiers": ["age"], "k": 2, "entity": "age"}, None, "k_anonymity.entity"),
        ({"quasi_identifiers": ["age"], "k": 2, "kk": 3}, None, "k_anonymity.kk"),
        ("age", None, "k_anonymity"),
        ({"quasi_identifiers": ["age"], "k": 2}, {"sensitive": "dx", "l": 1}, "l_diversity.l"),
        ({"quasi_identifiers": ["age"], "k": 2}, {"sensitive": "dx"}, "l_diversity.l"),
        ({"quasi_identifiers": ["age"], "k": 2}, {"l": 2}, "l_diversity.sensitive"),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": "age", "l": 2},
            "l_diversity.sensitive",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": "zip", "l": 2},
            "l_diversity.sensitive",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": "dx", "l": 2, "quasi_identifiers": ["dx"]},
            "l_diversity.quasi_identifiers",
        ),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": "dx", "l": 2, "max_suppression": 0.1},
            "l_diversity.max_suppression",
        ),
        (None, {"sensitive": "dx", "l": 2}, "l_diversity.quasi_identifiers"),
    ],
)
def test_bad_constraints_name_the_parameter(df, k_anonymity, l_diversity, name):
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, {"zip": "drop"}, k_anonymity=k_anonymity, l_diversity=l_diversity)
    assert err.value.name == name


@pytest.mark.parametrize(
    ("k_anonymity", "l_diversity", "match"),
    [
        (
            {"quasi_identifiers": ["height"], "k": 2},
            None,
            "k_anonymity.quasi_identifiers: column 'height'",
        ),
        ({"quasi_identifiers": ["age"], "k": 2, "entity": "patient"}, None, "k_anonymity.entity"),
        (
            {"quasi_identifiers": ["age"], "k": 2},
            {"sensitive": "outcome", "l": 2},
            "l_diversity.sensitive",
        ),
    ],
)
def test_missing_constraint_columns_are_schema_errors(df, k_anonymity, l_diversity, match):
    with pytest.raises(SchemaError, match=match):
        deidentify(df, {}, k_anonymity=k_anonymity, l_diversity=l_diversity)


def test_frame_level_checks(df):
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df.to_dict(), {})
    assert err.value.name == "df"
    with pytest.raises(SchemaError, match="duplicated column names"):
        deidentify(pd.concat([df, df["age"]], axis=1), {})
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, {}, unlisted="hide")
    assert err.value.name == "unlisted"


def test_error_messages_do_not_quote_key_material(df):
    ring = KeyRing.generate()
    with pytest.raises(InvalidParameterError) as err:
        deidentify(df, {"pid": {"hash": {"length": 99}}}, keyring=ring)
    assert ring.to_json() not in str(err.value)


def test_needs_keyring_sees_both_spellings():
    assert KEYED_RULES == ("hash", "tokenize", "shift_dates")
    assert needs_keyring({"email": "hash"}) and needs_keyring({"d": {"shift_dates": {}}})
    assert not needs_keyring({"name": "drop", "ssn": {"mask": {}}, "x": ["bad"]})


def test_column_names_equal_as_text_are_rejected(df):
    """Keys, report entries and decryption hints go by a column's text: 0 and "0" would
    share keyed tokens and one report entry."""
    clash = df.assign(**{"0": df["pid"]})
    clash.insert(0, 0, df["pid"])
    with pytest.raises(SchemaError, match="equal as text"):
        deidentify(clash, {0: {"tokenize": {}}}, keyring=KeyRing.generate())
    out, report = deidentify(
        df.rename(columns={"pid": 0}), {0: {"tokenize": {}}}, keyring=KeyRing.generate()
    )
    assert report["columns"]["0"]["transform"] == "tokenize"
