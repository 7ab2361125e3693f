"""Every per-column rule on the edge cases users hit: nulls, unicode, mixed types, empty
frames, odd dtypes -- and the values a user relies on."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_privacy.core.crypto import KeyRing, decrypt_columns
from airflow_privacy.core.deid import deidentify
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

HASH = re.compile(r"h1:k1:[A-Za-z0-9_-]{22}")


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(key_id="k1")


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["Zoë Ångström", "李小龍", None, "Ana"],
            "ssn": ["425-16-3144", "123-45-6789", None, "12"],
            "mixed": np.array([123456789, "abc", None, 7.5], dtype=object),
            "age": [41, 17, 95, 40],
            "age_f": [41.0, np.nan, 95.0, 40.0],
            "zip": ["10138", "94110", None, "12"],
            "born": [dt.date(1984, 2, 29), dt.date(2008, 12, 31), None, dt.date(1930, 7, 4)],
            "dx": ["E11", "I10", "E11", None],
        },
        index=pd.Index([10, 20, 30, 40], name="row"),
    )


def only(df: pd.DataFrame, column: str, rule, **kwargs) -> pd.Series:
    out, _ = deidentify(df[[column]], {column: rule}, **kwargs)
    return out[column]


def values(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series.tolist()]


# -- drop / keep / unlisted -----------------------------------------------------------------


def test_drop_removes_only_that_column_and_keeps_index(frame):
    out, report = deidentify(frame, {"name": "drop"})
    assert list(out.columns) == [c for c in frame.columns if c != "name"]
    assert out.index.equals(frame.index)
    pd.testing.assert_frame_equal(out, frame.drop(columns="name"))
    assert report["columns"]["name"] == {"transform": "drop"}
    assert report["columns"]["age"] == {"transform": "keep"}


def test_unlisted_columns_keep_drop_or_error(frame):
    out, _ = deidentify(frame, {"age": "keep"}, unlisted="drop")
    assert list(out.columns) == ["age"]
    with pytest.raises(SchemaError, match="have no rule"):
        deidentify(frame, {"age": "keep"}, unlisted="error")


def test_input_frame_is_not_modified(frame, ring):
    before = frame.copy()
    deidentify(
        frame,
        {
            "name": {"hash": {}},
            "ssn": {"mask": {"keep_last": 4}},
            "zip": {"generalize": {"prefix": 2}},
        },
        keyring=ring,
    )
    pd.testing.assert_frame_equal(frame, before)


# -- redact / replace -----------------------------------------------------------------------


def test_redact_keeps_nulls_and_unicode_values_become_the_constant(frame):
    assert values(only(frame, "name", "redact")) == ["<REDACTED>", "<REDACTED>", None, "<REDACTED>"]
    custom = only(frame, "mixed", {"redact": {"value": "[gelöscht]"}})
    assert values(custom) == ["[gelöscht]", "[gelöscht]", None, "[gelöscht]"]


def test_replace_with_a_number_keeps_a_numeric_dtype(frame):
    out = only(frame, "age_f", {"replace": {"value": 0}})
    assert values(out) == [0, None, 0, 0]
    assert pd.api.types.is_integer_dtype(out.dtype)


# -- mask -----------------------------------------------------------------------------------


def test_mask_keeps_last_characters_and_masks_short_values_entirely(frame):
    out = only(frame, "ssn", {"mask": {"keep_last": 4, "char": "*"}})
    # "12" is not longer than what would be kept: showing it whole would disclose it.
    assert values(out) == ["*******3144", "*******6789", None, "**"]


def test_mask_preserve_keep_first_and_unicode(frame):
    out = only(frame, "ssn", {"mask": {"keep_last": 4, "preserve": "-"}})
    assert values(out)[:2] == ["***-**-3144", "***-**-6789"]
    names = only(frame, "name", {"mask": {"keep_first": 1, "char": "•"}})
    assert values(names) == ["Z•••••••••••", "李••", None, "A••"]


def test_mask_on_mixed_types_masks_their_text(frame):
    out = only(frame, "mixed", {"mask": {"keep_last": 2, "char": "#"}})
    assert values(out) == ["#######89", "#bc", None, "#.5"]


# -- hash -----------------------------------------------------------------------------------


def test_hash_is_the_documented_keyed_hmac(frame, ring):
    out = only(frame, "name", {"hash": {}}, keyring=ring)
    assert all(HASH.fullmatch(v) for v in values(out) if v is not None)
    assert values(out)[2] is None
    material = base64.b64decode(json.loads(ring.to_json())["keys"][0]["key"])
    key = HKDF(hashes.SHA256(), 32, None, b"airflow-privacy/deid/hmac/v1\x00name").derive(material)
    mac = hmac.digest(key, b"\x01" + "Zoë Ångström".encode(), hashlib.sha256)[:16]
    assert out.iloc[0] == "h1:k1:" + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_hash_length_domain_and_types(frame, ring):
    long = only(frame, "dx", {"hash": {"length": 32}}, keyring=ring)
    assert len(long.iloc[0]) == len("h1:k1:") + 43
    assert long.iloc[0] == long.iloc[2] and long.iloc[0] != long.iloc[1]
    both = frame.assign(dx2=frame["dx"])
    out, report = deidentify(
        both, {"dx": {"hash": {}}, "dx2": {"hash": {}}}, keyring=ring, unlisted="drop"
    )
    assert (out["dx"] != out["dx2"]).iloc[:3].all()  # one key per column by default
    out, _ = deidentify(
        both,
        {"dx": {"hash": {"domain": "icd"}}, "dx2": {"hash": {"domain": "icd"}}},
        keyring=ring,
        unlisted="drop",
    )
    assert out["dx"].equals(out["dx2"])  # a shared domain makes tokens joinable
    assert report["columns"]["dx"]["key_id"] == "k1"
    typed = pd.DataFrame({"v": pd.Series([7, "7", 7.0, True, 7], dtype=object)})
    tokens = only(typed, "v", {"hash": {}}, keyring=ring).tolist()
    assert len(set(tokens[:4])) == 4 and tokens[0] == tokens[4]


def test_hash_floats_bit_exact_across_row_order(ring):
    a = pd.DataFrame({"x": [0.0, -0.0]})
    b = pd.DataFrame({"x": [-0.0, 0.0]})
    ta = only(a, "x", {"hash": {}}, keyring=ring).tolist()
    tb = only(b, "x", {"hash": {}}, keyring=ring).tolist()
    assert ta[0] != ta[1] and ta == tb[::-1]


# -- tokenize -------------------------------------------------------------------------------


def test_tokenize_is_deterministic_and_reversible(frame, ring):
    out, report = deidentify(frame, {"dx": {"tokenize": {}}, "age": {"tokenize": {}}}, keyring=ring)
    assert out["dx"].iloc[0] == out["dx"].iloc[2] and pd.isna(out["dx"].iloc[3])
    assert out["dx"].iloc[0].startswith("v1:k1:")
    back = decrypt_columns(out, ["dx", "age"], ring)
    pd.testing.assert_series_equal(back["dx"], frame["dx"], check_dtype=False)
    pd.testing.assert_series_equal(back["age"], frame["age"])  # dtype restored from the hint
    assert report["columns"]["dx"]["key_id"] == "k1"


# -- bucket ---------------------------------------------------------------------------------


def test_bucket_width_labels_nulls_and_float_columns(frame):
    assert values(only(frame, "age", {"bucket": {"width": 10}})) == [
        "40-49",
        "10-19",
        "90-99",
        "40-49",
    ]
    # float column holding whole numbers (a CSV with a null) still gets integer labels
    assert values(only(frame, "age_f", {"bucket": {"width": 10}})) == [
        "40-49",
        None,
        "90-99",
        "40-49",
    ]
    assert values(only(frame, "age", {"bucket": {"width": 10, "top": 90}}))[2] == "90+"
    halves = pd.DataFrame({"x": [0.2, 0.7, 1.25, None]})
    assert values(only(halves, "x", {"bucket": {"width": 0.5}})) == [
        "[0, 0.5)",
        "[0.5, 1)",
        "[1, 1.5)",
        None,
    ]


def test_bucket_edges_with_open_ends(frame):
    out = only(frame, "age", {"bucket": {"edges": [18, 40, 65]}})
    assert values(out) == ["40-64", "<18", "65+", "40-64"]


def test_bucket_accepts_numbers_in_object_columns_and_rejects_text():
    numbers = pd.DataFrame({"x": pd.Series(["42", 43, None], dtype=object)})
    assert values(only(numbers, "x", {"bucket": {"width": 5}})) == ["40-44", "40-44", None]
    with pytest.raises(SchemaError, match="non-numeric"):
        only(pd.DataFrame({"x": ["a", "b"]}), "x", {"bucket": {"width": 5}})
    with pytest.raises(SchemaError, match="booleans"):
        only(pd.DataFrame({"x": [True, False]}), "x", {"bucket": {"width": 5}})


# -- generalize -----------------------------------------------------------------------------


def test_generalize_prefix_keeps_length_with_fill(frame):
    assert values(only(frame, "zip", {"generalize": {"prefix": 3}})) == [
        "101**",
        "941**",
        None,
        "12",
    ]
    assert values(only(frame, "zip", {"generalize": {"prefix": 3, "fill": ""}})) == [
        "101",
        "941",
        None,
        "12",
    ]
    assert values(only(frame, "name", {"generalize": {"prefix": 1}}))[:2] == [
        "Z***********",
        "李**",
    ]


@pytest.mark.parametrize(
    ("granularity", "expected"),
    [
        ("day", ["1984-02-29", "2008-12-31", None, "1930-07-04"]),
        ("month", ["1984-02", "2008-12", None, "1930-07"]),
        ("quarter", ["1984-Q1", "2008-Q4", None, "1930-Q3"]),
        ("year", ["1984", "2008", None, "1930"]),
        ("decade", ["1980-1989", "2000-2009", None, "1930-1939"]),
    ],
)
def test_generalize_date_levels(frame, granularity, expected):
    assert values(only(frame, "born", {"generalize": {"date": granularity}})) == expected


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(pd.to_datetime(["2026-01-05 23:30", None, "1999-12-31 00:00"])),
        pd.Series(
            pd.to_datetime(["2026-01-05 23:30", None, "1999-12-31 00:00"]).tz_localize(
                "America/New_York"
            )
        ),
        pd.Series(["2026-01-05", None, "1999-12-31T08:00:00"]),
        pd.Series(
            pd.array(
                [dt.date(2026, 1, 5), None, dt.date(1999, 12, 31)], dtype=pd.ArrowDtype(pa.date32())
            )
        ),
    ],
    ids=["datetime64", "tz-aware", "strings", "arrow-date32"],
)
def test_generalize_date_accepts_every_date_representation(column):
    out = only(pd.DataFrame({"d": column}), "d", {"generalize": {"date": "month"}})
    assert values(out) == ["2026-01", None, "1999-12"]


def test_generalize_date_rejects_non_dates():
    with pytest.raises(SchemaError, match="date"):
        only(pd.DataFrame({"d": ["soon", "later"]}), "d", {"generalize": {"date": "year"}})


def test_generalize_map_with_default_and_missing_entries(frame):
    mapping = {"E11": "endocrine", "I10": "circulatory"}
    assert values(only(frame, "dx", {"generalize": {"map": mapping}})) == [
        "endocrine",
        "circulatory",
        "endocrine",
        None,
    ]
    assert values(
        only(frame, "age", {"generalize": {"map": {"41": "adult"}, "default": "other"}})
    ) == [
        "adult",
        "other",
        "other",
        "other",
    ]
    with pytest.raises(SchemaError, match="no entry for 1 distinct"):
        only(frame, "dx", {"generalize": {"map": {"E11": "endocrine"}}})


# -- shift_dates ----------------------------------------------------------------------------


def shifted_days(before: pd.Series, after: pd.Series) -> pd.Series:
    as_time = lambda s: pd.to_datetime(s, format="mixed", utc=True)  # noqa: E731
    return (as_time(after) - as_time(before)).dt.days


def test_shift_dates_per_entity_keeps_types_and_nulls(ring):
    df = pd.DataFrame(
        {
            "pid": ["a", "b", "a", None, "b"],
            "d_obj": [
                dt.date(2026, 1, 5),
                dt.date(2026, 2, 1),
                dt.date(2026, 3, 1),
                dt.date(2026, 1, 1),
                None,
            ],
            "d_ts": pd.to_datetime(
                ["2026-01-05 08:00", "2026-02-01", "2026-03-01", "2026-01-01", None], format="mixed"
            ),
            "d_tz": pd.to_datetime(
                ["2026-01-05 08:00", "2026-02-01", "2026-03-01", "2026-01-01", None], format="mixed"
            ).tz_localize("UTC"),
            "d_str": ["2026-01-05", "2026-02-01", "2026-03-01", "2026-01-01", None],
            "d_arrow": pd.array(
                [
                    dt.date(2026, 1, 5),
                    dt.date(2026, 2, 1),
                    dt.date(2026, 3, 1),
                    dt.date(2026, 1, 1),
                    None,
                ],
                dtype=pd.ArrowDtype(pa.date32()),
            ),
        }
    )
    rule = {"shift_dates": {"max_days": 30, "by": "pid"}}
    cols = [c for c in df.columns if c != "pid"]
    out, report = deidentify(df, {c: rule for c in cols}, keyring=ring)
    assert isinstance(out["d_obj"].iloc[0], dt.date)
    assert out["d_ts"].dtype == df["d_ts"].dtype and out["d_tz"].dtype == df["d_tz"].dtype
    assert out["d_arrow"].dtype == df["d_arrow"].dtype
    assert out["d_str"].iloc[0] != "2026-01-05" and len(out["d_str"].iloc[0]) == 10
    for c in cols:
        before = df[c].astype(object).where(df[c].notna(), None)
        days = shifted_days(
            before.map(str, na_action="ignore"), out[c].astype(object).map(str, na_action="ignore")
        )
        # same entity, same shift, in every date column; never 0, never beyond max_days
        assert days.iloc[0] == days.iloc[2] != 0
        assert 1 <= abs(days.iloc[0]) <= 30 and 1 <= abs(days.iloc[1]) <= 30
        assert pd.isna(out[c].iloc[3])  # null entity: fail closed
        assert pd.isna(out[c].iloc[4])  # null date stays null
    assert report["columns"]["d_obj"]["nulled_without_entity"] == 1
    assert report["columns"]["d_obj"]["key_id"] == "k1"


def test_shift_dates_needs_an_entity_other_than_the_date_column(ring):
    """One shift for the whole column would be undone by a single known date; a shift keyed
    by the date itself scatters an entity's dates and keeps no interval."""
    df = pd.DataFrame({"d": pd.to_datetime(["2026-01-05", "2027-06-30", None]), "pid": [1, 2, 1]})
    for params in ({"max_days": 10}, {"max_days": 10, "by": None}, {"max_days": 10, "by": "d"}):
        with pytest.raises(InvalidParameterError) as err:
            only(df, "d", {"shift_dates": params}, keyring=ring)
        assert err.value.name == "rules['d'].shift_dates.by"
    out, _ = deidentify(df, {"d": {"shift_dates": {"max_days": 10, "by": "pid"}}}, keyring=ring)
    days = (out["d"] - df["d"]).dt.days
    assert 1 <= abs(days.iloc[0]) <= 10 and pd.isna(out["d"].iloc[2])


@pytest.mark.parametrize("arrow", [False, True])
def test_shift_dates_keeps_wall_clock_time_across_dst(ring, arrow):
    """Europe/Paris: summer time starts 29 March 2026 and ends 25 October 2026. A shift of
    whole days must keep 10:00 at 10:00 on either side of the change (n x 24 h would not)."""
    local = pd.to_datetime(
        [
            "2026-03-20 10:00",  # winter -> summer for shifts >= 9 days
            "2026-03-28 23:30",
            "2026-10-20 10:00",  # summer -> winter for shifts >= 5 days
            "2026-10-24 02:30",
            "2026-04-10 10:00",  # summer -> winter time for shifts <= -12 days
        ]
    )
    zoned = pd.Series(local.tz_localize("Europe/Paris"))
    pids = [f"p{i}" for i in range(200)]
    df = pd.DataFrame(
        {"pid": pids, "t": zoned.sample(200, replace=True, random_state=1).reset_index(drop=True)}
    )
    if arrow:
        df["t"] = df["t"].astype(pd.ArrowDtype(pa.timestamp("us", tz="Europe/Paris")))
    out, _ = deidentify(df, {"t": {"shift_dates": {"max_days": 30, "by": "pid"}}}, keyring=ring)
    assert out["t"].dtype == df["t"].dtype
    before = pd.Series(pd.DatetimeIndex(df["t"].astype("datetime64[us, Europe/Paris]")))
    after = pd.Series(pd.DatetimeIndex(out["t"].astype("datetime64[us, Europe/Paris]")))
    wall_before, wall_after = before.dt.tz_localize(None), after.dt.tz_localize(None)
    days = (wall_after.dt.normalize() - wall_before.dt.normalize()).dt.days
    assert days.abs().between(1, 30).all()
    assert (wall_after.dt.time == wall_before.dt.time).all()
    # the sample does cross DST: some rows changed UTC offset
    offsets = lambda s: s.map(lambda t: t.utcoffset())  # noqa: E731
    assert (offsets(before) != offsets(after)).any()


def test_shift_dates_into_a_dst_gap_or_overlap_is_explicit(ring):
    from airflow_privacy.core.deid.keyed import shift_dates

    zoned = pd.Series(
        pd.to_datetime(["2026-03-22 02:30", "2026-10-18 02:30"]).tz_localize("Europe/Paris")
    )
    moved = shift_dates(zoned, np.array([7, 7], dtype=np.int64), "t")
    # 29 March 02:30 does not exist: the first time that does; 25 October 02:30 exists twice:
    # the first (summer-time) one
    assert moved.tolist() == [
        pd.Timestamp("2026-03-29 03:00", tz="Europe/Paris"),
        pd.Timestamp("2026-10-25 02:30:00+02:00", tz="Europe/Paris"),
    ]
    assert moved.iloc[1].utcoffset() == dt.timedelta(hours=2)


# -- scrub_pii through deidentify -----------------------------------------------------------


def test_scrub_rule_reports_matches_and_keeps_nulls():
    df = pd.DataFrame({"note": ["mail a@b.org or call (212) 555-0143", None, "çà va 10.0.0.1"]})
    out, report = deidentify(df, {"note": {"scrub_pii": {"entities": ["EMAIL", "IP"]}}})
    assert values(out["note"]) == ["mail <EMAIL> or call (212) 555-0143", None, "çà va <IP>"]
    assert report["columns"]["note"]["found"] == {"EMAIL": 1, "IP": 1}


# -- empty frames, whole-frame behaviour ----------------------------------------------------


ALL_RULES = {
    "name": "drop",
    "ssn": {"mask": {"keep_last": 4}},
    "mixed": {"hash": {}},
    "age": {"bucket": {"width": 10}},
    "age_f": "redact",
    "zip": {"generalize": {"prefix": 3}},
    "born": {"shift_dates": {"max_days": 30, "by": "dx"}},
    "dx": {"tokenize": {}},
}


def test_empty_frame_goes_through_every_rule(frame, ring):
    empty = frame.iloc[:0]
    out, report = deidentify(
        empty,
        {**ALL_RULES, "born": {"generalize": {"date": "year"}}},
        keyring=ring,
        k_anonymity={"quasi_identifiers": ["age", "zip"], "k": 2},
    )
    assert len(out) == 0 and list(out.columns) == [c for c in frame.columns if c != "name"]
    assert report["rows_in"] == report["rows_out"] == report["suppressed"] == 0
    assert report["k_achieved"] is None
    json.dumps(report)


def test_all_rules_together_report_is_json_and_nulls_stay_null(frame, ring):
    out, report = deidentify(frame, ALL_RULES, keyring=ring)
    row = out.loc[30]
    assert row.drop(["age", "age_f", "dx"]).isna().all()  # null inputs stay null
    assert json.loads(json.dumps(report)) == report
    assert {c["transform"] for c in report["columns"].values()} >= {
        "drop",
        "mask",
        "hash",
        "bucket",
        "redact",
        "generalize",
        "shift_dates",
        "tokenize",
    }
