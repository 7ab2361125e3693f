"""Keyed transforms across batches: the same patient gets the same token and the same date
shift in every batch; another key gives other tokens; rotation is visible in the report."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.crypto import KeyRing, decrypt_columns
from airflow_privacy.core.deid import deidentify
from airflow_privacy.demo.data import generate_batch

RULES = {
    "name": "drop",
    "email": {"hash": {}},
    "patient_id": {"tokenize": {}},
    "visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}},
}


@pytest.fixture(scope="module")
def batches() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_batch("site_b", "2026-03-02"), generate_batch("site_b", "2026-03-03")


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(key_id="site-b-1")


def released(df: pd.DataFrame, ring: KeyRing) -> pd.DataFrame:
    out, _ = deidentify(df, RULES, keyring=ring, unlisted="drop")
    shift = pd.to_datetime(out["visit_date"]) - pd.to_datetime(df["visit_date"])
    return pd.DataFrame(
        {
            "patient_id": df["patient_id"],
            "token": out["patient_id"],
            "email": out["email"],
            "shift": shift.dt.days,
        }
    )


def test_same_patient_same_token_and_shift_across_batches(batches, ring):
    first, second = (released(b, ring) for b in batches)
    both = first.merge(second, on="patient_id", suffixes=("_1", "_2"))
    assert len(both) > 50, "the demo population should recur across days"
    assert (both["token_1"] == both["token_2"]).all()
    assert (both["email_1"] == both["email_2"]).all()
    assert (both["shift_1"] == both["shift_2"]).all()
    # within a batch too: one token, one hash, one shift per patient
    for frame in (first, second):
        per_patient = frame.groupby("patient_id")[["token", "email", "shift"]].nunique()
        assert (per_patient == 1).all().all()
        # and tokens stay distinct between patients (a bijection on this batch)
        assert frame.groupby("token")["patient_id"].nunique().max() == 1


def test_different_keys_give_different_tokens_and_shifts(batches, ring):
    other = KeyRing.generate(key_id="site-b-1")  # same id, different key material
    mine, theirs = released(batches[0], ring), released(batches[0], other)
    assert not (mine["token"] == theirs["token"]).any()
    assert not (mine["email"] == theirs["email"]).any()
    per_patient = mine.groupby("patient_id")["shift"].first()
    other_shift = theirs.groupby("patient_id")["shift"].first()
    assert (per_patient != other_shift).mean() > 0.9  # 1/60 agree by chance


def test_shifts_are_nonzero_bounded_and_cover_the_range(batches, ring):
    shifts = pd.concat([released(b, ring) for b in batches]).groupby("patient_id")["shift"].first()
    assert shifts.abs().between(1, 30).all()
    # ~700 patients over 60 possible shifts: every shift value shows up
    assert set(shifts) == set(range(-30, 0)) | set(range(1, 31))
    assert abs(float(np.mean(shifts > 0)) - 0.5) < 0.1


def test_tokens_decrypt_back_and_rotation_changes_key_id(batches, ring):
    df = batches[0]
    out, report = deidentify(df, RULES, keyring=ring)
    back = decrypt_columns(out, ["patient_id"], ring)
    assert back["patient_id"].equals(df["patient_id"])
    rotated = ring.rotate(key_id="site-b-2")
    out2, report2 = deidentify(df, RULES, keyring=rotated)
    assert report["columns"]["patient_id"]["key_id"] == "site-b-1"
    assert {report2["columns"][c]["key_id"] for c in ("email", "patient_id", "visit_date")} == {
        "site-b-2"
    }
    assert not (out2["patient_id"] == out["patient_id"]).any()
    # old tokens still decrypt with the rotated ring (the old key stays in it)
    assert decrypt_columns(out, ["patient_id"], rotated)["patient_id"].equals(df["patient_id"])


def test_every_date_column_of_a_patient_moves_together(ring):
    df = pd.DataFrame(
        {
            "pid": ["p1", "p2", "p1", "p3"],
            "admitted": [
                dt.date(2026, 1, 1),
                dt.date(2026, 1, 2),
                dt.date(2026, 2, 1),
                dt.date(2026, 3, 1),
            ],
        }
    )
    df["discharged"] = [d + dt.timedelta(days=3) for d in df["admitted"]]
    rule = {"shift_dates": {"max_days": 365, "by": "pid"}}
    out, _ = deidentify(df, {"admitted": rule, "discharged": rule}, keyring=ring)
    stay = pd.to_datetime(out["discharged"]) - pd.to_datetime(out["admitted"])
    assert (stay.dt.days == 3).all()
    gap = pd.to_datetime(out["admitted"]).iloc[2] - pd.to_datetime(out["admitted"]).iloc[0]
    assert gap.days == 31  # intervals within a patient survive


def test_equal_comparing_values_of_different_types_get_their_own_tokens(ring):
    """pd.factorize merges 1, True and 1.0 (and 0.0, -0.0): tokens, hashes and the values
    they decrypt to must not depend on which spelling a batch happens to hold first."""
    values = [1, True, 1.0, "1", 0, False, 0.0, -0.0, None]
    rules = {"v": {"tokenize": {}}, "h": {"hash": {}}}

    def release(cells):
        df = pd.DataFrame(
            {"v": pd.Series(cells, dtype=object), "h": pd.Series(cells, dtype=object)}
        )
        return deidentify(df, rules, keyring=ring)[0]

    out = release(values)
    assert out["v"].iloc[:8].nunique() == 8 and out["h"].iloc[:8].nunique() == 8
    back = decrypt_columns(out, ["v"], ring)["v"].tolist()
    assert [(type(v), v) for v in back[:8]] == [(type(v), v) for v in values[:8]]
    assert np.signbit(back[7]) and back[8] is None
    reordered = release(values[::-1])
    assert reordered["v"].tolist()[::-1][:8] == out["v"].tolist()[:8]
    assert reordered["h"].tolist()[::-1][:8] == out["h"].tolist()[:8]


def test_date_shift_of_a_patient_is_one_shift_when_rows_are_suppressed(ring):
    """Suppression leaves gaps in the row labels; every kept visit of a patient must still
    move by that patient's one keyed shift (object columns of dates used to be re-aligned
    by label, moving visits by other patients' shifts or to null)."""
    df = pd.concat([generate_batch("site_a", d) for d in ("2026-03-01", "2026-03-02")], ignore_index=True)
    out, report = deidentify(df, {"visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}}},
                             keyring=ring, k_anonymity={"quasi_identifiers": ["age"], "k": 5,
                                                        "max_suppression": 0.3})
    assert report["suppressed"] > 0 and out["visit_date"].notna().all()
    shift = (pd.to_datetime(out["visit_date"]) - pd.to_datetime(df["visit_date"].loc[out.index])).dt.days
    per_patient = shift.groupby(df["patient_id"].loc[out.index]).nunique()
    print(f"{report['suppressed']} rows suppressed, {len(per_patient)} patients, "
          f"{int((per_patient > 1).sum())} with more than one shift")
    assert (per_patient == 1).all()
