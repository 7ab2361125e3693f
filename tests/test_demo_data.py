from __future__ import annotations

import pandas as pd
import pytest

from airflow_privacy.core.errors import InvalidParameterError, SchemaError
from airflow_privacy.demo.data import SITES, generate_batch, validate_batch


def test_deterministic_per_site_and_date():
    a = generate_batch("site_a", "2026-01-05")
    pd.testing.assert_frame_equal(a, generate_batch("site_a", "2026-01-05"))
    assert not a.equals(generate_batch("site_a", "2026-01-06"))


def test_patients_recur_and_sites_differ():
    d1, d2 = generate_batch("site_b", "2026-01-01"), generate_batch("site_b", "2026-01-02")
    assert len(set(d1.patient_id) & set(d2.patient_id)) > 20
    rates = {s: generate_batch(s, "2026-01-01")["diagnosis"].value_counts(normalize=True) for s in SITES}
    assert abs(rates["site_a"].get("C50", 0) - rates["site_b"].get("C50", 0)) > 0.03


def test_outcome_is_learnable():
    df = pd.concat([generate_batch(s, "2026-01-01") for s in SITES])
    severe = df.diagnosis.isin(["I25", "N18", "C50"])
    assert df[severe].outcome.mean() > df[~severe].outcome.mean() + 0.15


def test_validation_errors():
    with pytest.raises(InvalidParameterError, match="site"):
        generate_batch("site_z", "2026-01-01")
    with pytest.raises(InvalidParameterError, match="logical_date"):
        generate_batch("site_a", "yesterday")
    df = generate_batch("site_a", "2026-01-01")
    with pytest.raises(SchemaError, match="cost"):
        validate_batch(df.drop(columns=["cost"]))
    with pytest.raises(SchemaError, match="empty"):
        validate_batch(df.iloc[:0])
