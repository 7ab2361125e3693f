"""Column tokens: round trips with dtypes and nulls, determinism, rotation, tampering."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core import io as core_io
from airflow_privacy.core.crypto import KeyRing, decrypt_columns, encrypt_columns
from airflow_privacy.core.crypto import columns as columns_module
from airflow_privacy.core.errors import IntegrityError, InvalidParameterError, SchemaError

TOKEN = re.compile(r"v1:[0-9a-f]{8}:[A-Za-z0-9_-]+={0,2}")


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def frame() -> pd.DataFrame:
    """One column per supported type, each with a null where the dtype allows one."""
    return pd.DataFrame(
        {
            "email": ["ana@example.org", "bó@例え.jp", None, "ana@example.org"],
            "ssn": ["123-45-6789", "987-65-4321", "123-45-6789", "000-00-0000"],
            "age": [34, 51, 34, 7],
            "age32": np.array([34, 51, 34, 7], dtype=np.int32),
            "visits": pd.array([1, None, 3, 1], dtype="Int64"),
            "score": [1.5, np.nan, -0.0, 0.0],
            "smoker": [True, False, True, True],
            "flag": pd.array([True, None, False, True], dtype="boolean"),
            "admitted": pd.to_datetime(
                ["2024-01-01 08:00", "2024-01-02 09:30", None, "2024-01-01 08:00"]
            ),
            "seen_utc": pd.to_datetime(
                ["2024-03-01 10:00", None, "2024-03-02 11:00", "2024-03-01 10:00"]
            ).tz_localize("UTC"),
            "birth": [dt.date(1990, 5, 17), None, dt.date(1899, 12, 31), dt.date(1990, 5, 17)],
            "stay": pd.to_timedelta([3600, None, 60, 3600], unit="s"),
            "ward": pd.Categorical(["a", "b", "a", None]),
            "mixed": pd.Series(["x", 1, b"\x00\xff", None], dtype=object),
        }
    )


@pytest.mark.parametrize("deterministic", [False, True])
def test_round_trip_restores_values_dtypes_and_nulls(ring, frame, deterministic):
    original = frame.copy()
    enc = encrypt_columns(frame, list(frame.columns), ring, deterministic=deterministic)
    pd.testing.assert_frame_equal(frame, original)  # input untouched
    for name in frame.columns:
        tokens = enc[name]
        assert tokens.isna().tolist() == frame[name].isna().tolist()
        assert all(TOKEN.fullmatch(t) for t in tokens.dropna())
    dec = decrypt_columns(enc, list(frame.columns), ring)
    pd.testing.assert_frame_equal(dec, frame)
    assert np.signbit(dec["score"][2]) and not np.signbit(dec["score"][3])
    assert "airflow_privacy.crypto" not in dec.attrs


def test_without_dtype_hint_values_come_back_in_canonical_dtypes(ring, frame):
    enc = encrypt_columns(frame, list(frame.columns), ring)
    enc.attrs = {}  # e.g. a CSV round trip loses DataFrame.attrs
    dec = decrypt_columns(enc, list(frame.columns), ring)
    assert {c: str(t) for c, t in dec.dtypes.items()} == {
        "email": "str",
        "ssn": "str",
        "age": "int64",
        "age32": "int64",
        "visits": "Int64",
        "score": "float64",
        "smoker": "bool",
        "flag": "boolean",
        "admitted": "datetime64[us]",
        "seen_utc": "datetime64[us, UTC]",
        "birth": "object",
        "stay": "timedelta64[us]",
        "ward": "str",
        "mixed": "object",
    }
    for name in frame.columns:
        assert dec[name].isna().tolist() == frame[name].isna().tolist()
        left = frame[name].dropna().astype(object).tolist()
        right = dec[name].dropna().astype(object).tolist()
        assert left == right, name


def test_tokens_survive_parquet_and_csv(ring, frame, tmp_path):
    cols = ["email", "age", "score", "smoker", "admitted", "visits"]
    enc = encrypt_columns(frame[cols], cols, ring, deterministic=True)
    core_io.write_batch(enc, tmp_path / "t.parquet")
    back = decrypt_columns(core_io.read_batch(tmp_path / "t.parquet"), cols, ring)
    pd.testing.assert_frame_equal(back, frame[cols])  # Parquet keeps the dtype hint

    core_io.write_batch(enc, tmp_path / "t.csv")
    from_csv = decrypt_columns(core_io.read_batch(tmp_path / "t.csv"), cols, ring)
    for name in cols:
        assert from_csv[name].isna().tolist() == frame[name].isna().tolist()
        assert from_csv[name].dropna().tolist() == frame[name].dropna().tolist(), name


def test_deterministic_tokens_reveal_equality_only_within_a_column(ring):
    df = pd.DataFrame({"patient_id": ["p1", "p2", "p1"], "other_id": ["p1", "p1", "p2"]})
    enc = encrypt_columns(df, ["patient_id", "other_id"], ring, deterministic=True)
    a = enc["patient_id"].tolist()
    assert a[0] == a[2] != a[1]
    assert enc["other_id"][0] != a[0]  # same value, different column: different token
    again = encrypt_columns(df, ["patient_id"], ring, deterministic=True)
    assert again["patient_id"].tolist() == a  # stable across calls under one key


def test_deterministic_tokens_change_with_rotation_and_old_ones_still_decrypt(ring):
    df = pd.DataFrame({"patient_id": ["p1", "p2", "p1"]})
    old = encrypt_columns(df, ["patient_id"], ring, deterministic=True)
    rotated = ring.rotate()
    new = encrypt_columns(df, ["patient_id"], rotated, deterministic=True)
    assert set(old["patient_id"]).isdisjoint(set(new["patient_id"]))
    assert all(t.startswith(f"v1:{rotated.primary_id}:") for t in new["patient_id"])
    mixed = pd.concat([old, new], ignore_index=True)
    dec = decrypt_columns(mixed, ["patient_id"], rotated)
    assert dec["patient_id"].tolist() == ["p1", "p2", "p1"] * 2
    with pytest.raises(IntegrityError, match="no key with id"):
        decrypt_columns(old, ["patient_id"], rotated.without(ring.primary_id))


def test_randomized_tokens_hide_equality(ring):
    df = pd.DataFrame({"email": ["a@x.org"] * 5})
    first = encrypt_columns(df, ["email"], ring)["email"]
    second = encrypt_columns(df, ["email"], ring)["email"]
    assert first.nunique() == 5
    assert set(first).isdisjoint(second)
    assert decrypt_columns(first.to_frame(), ["email"], ring)["email"].tolist() == ["a@x.org"] * 5


def test_dedupe_encrypts_each_distinct_value_once(ring, monkeypatch):
    calls = []
    real_siv = columns_module.AESSIV

    class CountingSIV:
        def __init__(self, key):
            self._siv = real_siv(key)

        def encrypt(self, data, ad):
            calls.append(data)
            return self._siv.encrypt(data, ad)

    monkeypatch.setattr(columns_module, "AESSIV", CountingSIV)
    df = pd.DataFrame({"code": np.repeat(["a", "b", "c"], 1000)})
    encrypt_columns(df, ["code"], ring, deterministic=True)
    assert len(calls) == 3


def test_sampled_unique_path_gives_the_same_tokens(ring, monkeypatch):
    unique = pd.DataFrame({"id": [f"id-{i}" for i in range(500)] + [None, "id-7"]})
    reference = encrypt_columns(unique, ["id"], ring, deterministic=True)
    monkeypatch.setattr(columns_module, "_SAMPLE_ROWS", 10)
    for _ in range(5):  # whichever path the sample picks
        assert encrypt_columns(unique, ["id"], ring, deterministic=True).equals(reference)
    assert decrypt_columns(reference, ["id"], ring).equals(unique)


def test_empty_and_all_null_columns(ring):
    empty = pd.DataFrame({"a": pd.Series([], dtype="str"), "b": pd.Series([], dtype="int64")})
    pd.testing.assert_frame_equal(
        decrypt_columns(encrypt_columns(empty, ["a", "b"], ring), ["a", "b"], ring), empty
    )
    nulls = pd.DataFrame({"a": [None, None]}, dtype=object)
    enc = encrypt_columns(nulls, ["a"], ring)
    assert enc["a"].isna().all()
    assert decrypt_columns(enc, ["a"], ring)["a"].isna().all()


@pytest.mark.parametrize("deterministic", [False, True])
def test_tampered_or_misplaced_tokens_are_rejected(ring, deterministic):
    df = pd.DataFrame({"email": ["alice@example.org", "bob@example.org"], "ssn": ["1", "2"]})
    enc = encrypt_columns(df, ["email", "ssn"], ring, deterministic=deterministic)
    token = enc["email"][1]
    prefix, payload = token.rsplit(":", 1)
    for position in range(len(payload)):
        swapped = "A" if payload[position] != "A" else "B"
        bad = enc.copy()
        bad.loc[1, "email"] = f"{prefix}:{payload[:position]}{swapped}{payload[position + 1 :]}"
        with pytest.raises(IntegrityError, match="column 'email', row 1"):
            decrypt_columns(bad, ["email"], ring)

    moved = enc.copy()
    moved.loc[0, "ssn"] = enc["email"][0]
    with pytest.raises(IntegrityError, match="column 'ssn', row 0"):
        decrypt_columns(moved, ["ssn"], ring)

    relabeled = enc.copy()
    relabeled.loc[0, "email"] = enc["email"][0].replace(ring.primary_id, "deadbeef")
    with pytest.raises(IntegrityError, match="no key with id 'deadbeef'"):
        decrypt_columns(relabeled, ["email"], ring)

    with pytest.raises(IntegrityError, match="did not authenticate"):
        decrypt_columns(
            enc,
            ["email"],
            KeyRing.from_json(ring.to_json().replace(_key_b64(ring), "A" * 43 + "=")),
        )


def _key_b64(ring: KeyRing) -> str:
    import json

    return json.loads(ring.to_json())["keys"][0]["key"]


def test_plaintext_given_to_decrypt_is_rejected_without_echoing_it(ring):
    df = pd.DataFrame({"email": ["v1:" + "0" * 8 + ":AAAA", "alice@example.org"]})
    with pytest.raises(IntegrityError) as info:
        decrypt_columns(df.iloc[[1]], ["email"], ring)
    assert "alice" not in str(info.value) and "row 0" in str(info.value)
    with pytest.raises(IntegrityError):
        decrypt_columns(pd.DataFrame({"n": [1, 2]}), ["n"], ring)
    for text in [
        "v1:abc:",
        "v2:abcdef12:AQID",
        "v1:ab:cd:AQID",
        "v1:abcdef12:AQ",
        "v1:abcdef12:A+8=",
    ]:
        with pytest.raises(IntegrityError):
            decrypt_columns(pd.DataFrame({"c": [text]}), ["c"], ring)


def test_parameter_and_schema_errors(ring, frame):
    with pytest.raises(SchemaError, match="nope"):
        encrypt_columns(frame, ["nope"], ring)
    with pytest.raises(InvalidParameterError, match="columns"):
        encrypt_columns(frame, "email", ring)
    with pytest.raises(InvalidParameterError, match="deterministic"):
        encrypt_columns(frame, ["email"], ring, deterministic="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="ring"):
        decrypt_columns(frame, ["email"], "ring")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="ambiguous"):
        encrypt_columns(frame, ["email", "email"], ring)
    with pytest.raises(SchemaError, match="dict"):
        encrypt_columns(pd.DataFrame({"j": [{"a": 1}]}), ["j"], ring)


def test_error_messages_never_carry_key_material(ring, frame):
    enc = encrypt_columns(frame, ["email"], ring)
    bad = enc.copy()
    bad.loc[0, "email"] = bad["email"][0][:-6] + "AAAAAA"
    with pytest.raises(IntegrityError) as info:
        decrypt_columns(bad, ["email"], ring)
    key = _key_b64(ring)
    assert key not in str(info.value) and key not in repr(info.value)


@pytest.mark.parametrize("deterministic", [False, True])
def test_values_that_compare_equal_keep_their_type(ring, deterministic):
    """pd.factorize treats 1, True and 1.0 as one value, and 0.0 and -0.0 as one float."""
    values = [1, True, 1.0, "1", 0, False, 0.0, -0.0, None, 1]
    df = pd.DataFrame({"a": pd.Series(values, dtype=object)})
    enc = encrypt_columns(df, ["a"], ring, deterministic=deterministic)
    back = decrypt_columns(enc, ["a"], ring)["a"].tolist()
    assert [(type(v), v) for v in back] == [(type(v), v) for v in values]
    assert np.signbit(back[7]) and not np.signbit(back[6])
    if deterministic:
        tokens = enc["a"].tolist()
        assert len(set(tokens[:8])) == 8 and tokens[9] == tokens[0]
        reordered = encrypt_columns(df.iloc[::-1], ["a"], ring, deterministic=True)
        assert reordered["a"].loc[df.index].tolist() == tokens
    floats = pd.DataFrame({"f": pd.Series([0.0, -0.0], dtype=object)})
    signs = decrypt_columns(encrypt_columns(floats, ["f"], ring, deterministic), ["f"], ring)
    assert np.signbit(signs["f"].tolist()).tolist() == [False, True]


@pytest.mark.parametrize("deterministic", [False, True])
def test_tokens_reveal_approximate_length_as_documented(ring, deterministic):
    """No padding: the token length is 4 * ceil((overhead + len(utf-8)) / 3) plus the prefix,
    so values are told apart by length up to a multiple of 3 bytes (the module says so)."""
    df = pd.DataFrame({"v": ["x" * n for n in range(1, 31)]})
    lengths = encrypt_columns(df, ["v"], ring, deterministic=deterministic)["v"].str.len()
    # payload: mode byte, (salt, nonce,) SIV or GCM tag, kind byte, the text
    overhead = 1 + 16 + 1 if deterministic else 1 + 16 + 12 + 16 + 1
    prefix = len(f"v1:{ring.primary_id}:")
    expected = [prefix + 4 * -(-(overhead + n) // 3) for n in range(1, 31)]
    assert lengths.tolist() == expected


def test_column_names_equal_as_text_are_rejected(ring):
    """Column keys derive from the name's text (so a column 0 read back from CSV as "0" still
    decrypts); within one frame, 0 and "0" would share a key and tokens could be swapped."""
    df = pd.DataFrame({0: ["a", "b"], "0": ["a", "b"], "x": [1, 2]})
    with pytest.raises(SchemaError, match=r"share their text"):
        encrypt_columns(df, [0], ring, deterministic=True)
    with pytest.raises(SchemaError, match=r"share their text"):
        decrypt_columns(df, ["0"], ring)
    enc = encrypt_columns(df, ["x"], ring)  # other columns are unaffected
    assert decrypt_columns(enc, ["x"], ring)["x"].tolist() == [1, 2]
    only_int = encrypt_columns(df[[0]], [0], ring, deterministic=True)
    as_text = only_int.rename(columns={0: "0"})
    assert decrypt_columns(as_text, ["0"], ring)["0"].tolist() == ["a", "b"]
