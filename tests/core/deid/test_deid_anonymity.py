"""k-anonymity (distinct entities per class) and distinct l-diversity, verified on the output
by an independent pandas groupby; enforcement climbs every kind of hierarchy, terminates and
never suppresses more than allowed."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import deidentify
from airflow_privacy.core.errors import PrivacyError
from airflow_privacy.demo.data import generate_batch

ISSUE_RULES = {
    "name": "drop",
    "email": {"hash": {}},
    "patient_id": {"tokenize": {}},
    "ssn": {"mask": {"keep_last": 4, "char": "*"}},
    "phone": "redact",
    "zip": {"generalize": {"prefix": 3}},
    "age": {"bucket": {"width": 10}},
    "birth_date": {"generalize": {"date": "year"}},
    "visit_date": {"shift_dates": {"max_days": 30, "by": "patient_id"}},
    "note": {"scrub_pii": {"entities": ["EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IP", "DATE"]}},
}


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate(key_id="k1")


@pytest.fixture(scope="module")
def visits() -> pd.DataFrame:
    """Five days at one site: ~2,500 visits, most patients with several rows."""
    days = [generate_batch("site_c", dt.date(2026, 2, d)) for d in range(1, 6)]
    return pd.concat(days, ignore_index=True)


def min_entities(
    out: pd.DataFrame, source: pd.DataFrame, qis: list[str], entity: str | None
) -> int:
    """Smallest number of distinct entities (original ids, looked up by index) per class."""
    ids = (
        source.loc[out.index, entity] if entity else pd.Series(np.arange(len(out)), index=out.index)
    )
    frame = out[qis].astype(object).assign(_entity=ids.astype(object))
    return int(frame.groupby(qis, dropna=False)["_entity"].nunique(dropna=False).min())


def min_diversity(out: pd.DataFrame, qis: list[str], sensitive: str) -> int:
    frame = out[qis].astype(object).assign(_s=out[sensitive])
    return int(frame.groupby(qis, dropna=False)["_s"].nunique().min())


def test_issue_example_on_demo_visits(visits, ring):
    qis = ["age", "zip", "sex"]
    out, report = deidentify(
        visits,
        ISSUE_RULES,
        keyring=ring,
        k_anonymity={
            "quasi_identifiers": qis,
            "k": 5,
            "entity": "patient_id",
            "max_suppression": 0.05,
        },
        l_diversity={"sensitive": "diagnosis", "l": 2},
    )
    assert visits.groupby("patient_id").size().max() > 1  # multi-row entities
    k = min_entities(out, visits, qis, "patient_id")
    assert k >= 5 and report["k_achieved"] == k
    l_div = min_diversity(out, qis, "diagnosis")
    assert l_div >= 2 and report["l_achieved"] == l_div
    assert report["suppressed"] <= math.floor(0.05 * len(visits))
    assert report["rows_in"] == len(visits) == report["rows_out"] + report["suppressed"]
    assert out.index.isin(visits.index).all()
    assert out["cost"].equals(visits.loc[out.index, "cost"])  # unruled columns untouched
    assert set(report["k_anonymity"]["levels"]) == set(qis)
    json.dumps(report)


def two_patient_class() -> pd.DataFrame:
    """Class age 30-39 holds 6 rows but only 2 patients; class 40-49 holds 6 patients."""
    return pd.DataFrame(
        {
            "pid": ["a", "a", "a", "b", "b", "b", "c", "d", "e", "f", "g", "h"],
            "age": [31, 31, 31, 33, 33, 33, 45, 46, 41, 44, 47, 42],
            "dx": list("xyxyxyxyxyxy"),
        }
    )


def test_k_counts_entities_not_rows():
    df = two_patient_class()
    rules = {"age": {"bucket": {"width": 10}}}
    by_rows, report = deidentify(df, rules, k_anonymity={"quasi_identifiers": ["age"], "k": 3})
    assert report["k_achieved"] == 6 and report["suppressed"] == 0
    assert set(by_rows["age"]) == {"30-39", "40-49"}
    spec = {"quasi_identifiers": ["age"], "k": 3, "entity": "pid"}
    out, report = deidentify(df, rules, k_anonymity=spec)
    assert min_entities(out, df, ["age"], "pid") >= 3
    assert report["suppressed"] == 0 and set(out["age"]) == {"0-79"}
    assert report["k_anonymity"]["levels"]["age"]["description"] == "bucket width 80"
    # with a suppression budget the small class goes instead (6 of 12 rows allowed)
    out, report = deidentify(df, rules, k_anonymity={**spec, "max_suppression": 0.5})
    assert report["suppressed"] == 6 and set(out["age"]) == {"40-49"}
    assert min_entities(out, df, ["age"], "pid") >= 3


def test_zip_prefix_shortens():
    df = pd.DataFrame({"zip": ["10001", "10002", "10003", "10004", "10101"], "pid": list("abcde")})
    out, report = deidentify(
        df,
        {"zip": {"generalize": {"prefix": 3}}},
        k_anonymity={"quasi_identifiers": ["zip"], "k": 2, "entity": "pid"},
    )
    assert set(out["zip"]) == {"10***"}
    assert report["k_anonymity"]["levels"]["zip"] == {"level": 1, "description": "prefix 2"}


def test_dates_truncate_day_month_year():
    born = [dt.date(1980, 3, d) for d in (1, 9, 17)] + [dt.date(1980, 7, 2), dt.date(1980, 11, 30)]
    df = pd.DataFrame({"born": born, "pid": list("abcde")})
    out, report = deidentify(df, {}, k_anonymity={"quasi_identifiers": ["born"], "k": 2})
    # as is -> month (the July and November singletons fail) -> quarter (Q3, Q4 singletons)
    # -> year: all five together
    assert set(out["born"]) == {"1980"}
    assert report["k_anonymity"]["levels"]["born"]["description"] == "date year"
    out, report = deidentify(
        df, {}, k_anonymity={"quasi_identifiers": ["born"], "k": 2, "max_suppression": 0.4}
    )
    assert set(out["born"]) == {"1980-03"} and report["suppressed"] == 2


def test_user_mapping_hierarchy_is_climbed():
    df = pd.DataFrame({"dx": ["E10", "I10", "I11", "I11"], "pid": list("abcd")})
    hierarchy = [
        {"E10": "E1x", "E11": "E1x", "I10": "I1x", "I11": "I1x"},
        {"E1x": "chronic", "I1x": "chronic"},
    ]
    out, report = deidentify(
        df,
        {"dx": {"generalize": {"map": hierarchy}}},
        k_anonymity={"quasi_identifiers": ["dx"], "k": 2, "entity": "pid"},
    )
    assert set(out["dx"]) == {"chronic"}
    assert report["k_anonymity"]["levels"]["dx"] == {"level": 1, "description": "map level 1"}


def test_categorical_and_keyed_quasi_identifiers_go_to_star(ring):
    df = pd.DataFrame({"sex": ["F", "F", "F", "M"], "zip": ["1", "1", "2", "2"]})
    out, report = deidentify(
        df,
        {"zip": {"hash": {}}},
        keyring=ring,
        k_anonymity={"quasi_identifiers": ["sex", "zip"], "k": 2},
    )
    assert min_entities(out, df, ["sex", "zip"], None) >= 2
    assert "*" in set(out["sex"]) | set(out["zip"])


def test_step_goes_to_the_attribute_that_splits_small_classes():
    df = pd.DataFrame(
        {"zip": ["10001"] * 8, "age": [30, 31, 32, 33, 34, 35, 36, 37], "pid": list("abcdefgh")}
    )
    out, report = deidentify(
        df,
        {"zip": {"generalize": {"prefix": 5}}, "age": {"bucket": {"width": 1}}},
        k_anonymity={"quasi_identifiers": ["zip", "age"], "k": 2},
    )
    steps = report["k_anonymity"]["steps"]
    assert steps and {s["column"] for s in steps} == {"age"}  # shortening zip splits nothing
    assert steps[0] == {
        "column": "age",
        "level": 1,
        "generalization": "bucket width 2",
        "violating_rows": 0,
    }
    assert list(out["zip"].unique()) == ["10001"]


def test_null_quasi_identifiers_form_their_own_class():
    df = pd.DataFrame({"age": [30, 31, None, None, 52, 58], "pid": list("abcdef")})
    out, report = deidentify(
        df,
        {"age": {"bucket": {"width": 10}}},
        k_anonymity={"quasi_identifiers": ["age"], "k": 2, "entity": "pid"},
    )
    assert min_entities(out, df, ["age"], "pid") >= 2
    assert out["age"].isna().sum() == 2  # nulls stay nulls
    assert report["suppressed"] == 0


def test_l_diversity_generalizes_homogeneous_classes():
    df = pd.DataFrame(
        {
            "age": [31, 32, 33, 41, 42, 43],
            "dx": ["C50", "C50", "C50", "I10", "E11", "I10"],
        }
    )
    out, report = deidentify(
        df,
        {"age": {"bucket": {"width": 10}}},
        k_anonymity={"quasi_identifiers": ["age"], "k": 3},
        l_diversity={"sensitive": "dx", "l": 2},
    )
    assert min_diversity(out, ["age"], "dx") >= 2 and report["l_achieved"] >= 2
    # 30-39 holds only C50: widths 20 and 40 keep it apart from the 40s, width 80 merges
    assert set(out["age"]) == {"0-79"} and report["suppressed"] == 0


def test_l_diversity_alone_on_released_sensitive_values():
    df = pd.DataFrame(
        {"zip": ["10001", "10002", "10003", "10004"], "dx": ["E10", "E11", "I10", "I11"]}
    )
    spec = {"quasi_identifiers": ["zip"], "sensitive": "dx", "l": 2}
    out, report = deidentify(
        df,
        {
            "zip": {"generalize": {"prefix": 4}},
            "dx": {"generalize": {"map": {"E10": "E", "E11": "E", "I10": "I", "I11": "I"}}},
        },
        l_diversity=spec,
    )
    # diversity is counted on the released (mapped) values: "1000*" holds E and I
    assert min_diversity(out, ["zip"], "dx") >= 2
    assert "k_anonymity" not in report and report["l_diversity"]["l_achieved"] == 2


def test_impossible_k_raises_and_says_by_how_much():
    df = pd.DataFrame({"age": [30, 40, 50, 30], "pid": ["a", "b", "c", "a"]})
    with pytest.raises(PrivacyError, match=r"k-anonymity k=5 fails.*smallest has 3, 2 short"):
        deidentify(
            df,
            {"age": {"bucket": {"width": 10}}},
            k_anonymity={
                "quasi_identifiers": ["age"],
                "k": 5,
                "entity": "pid",
                "max_suppression": 0.5,
            },
        )


def test_impossible_l_raises():
    df = pd.DataFrame({"age": [30, 40, 50, 60], "dx": ["E11"] * 4})
    with pytest.raises(PrivacyError, match=r"l-diversity l=2 fails: 4 of 4 rows"):
        deidentify(
            df,
            {},
            k_anonymity={"quasi_identifiers": ["age"], "k": 2},
            l_diversity={"sensitive": "dx", "l": 2},
        )


def top_level_violations(df: pd.DataFrame, qis, k, entity, sensitive, l_div) -> int:
    """Rows violating k / l when every QI is fully generalized (only null-ness remains)."""
    pattern = df[qis].isna()
    frame = pattern.assign(
        _e=df[entity].astype(object) if entity else np.arange(len(df)),
        _s=df[sensitive] if sensitive else 0,
    )
    groups = frame.groupby(list(qis), dropna=False)
    ent = groups["_e"].transform(lambda s: s.nunique(dropna=False))
    bad = ent < k
    if sensitive:
        bad |= groups["_s"].transform("nunique") < l_div
    return int(bad.sum())


@pytest.mark.parametrize("seed", range(25))
def test_random_batches_terminate_and_respect_the_suppression_limit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    patients = max(1, int(rng.integers(1, n + 1)))
    pid = rng.integers(0, patients, n)
    ages = rng.integers(0, 100, patients)[pid].astype(float)
    ages[rng.random(n) < 0.05] = np.nan
    df = pd.DataFrame(
        {
            "pid": pid.astype(str),
            "age": ages,
            "zip": np.char.add("1", rng.integers(0, 10_000, patients).astype(str))[pid],
            "sex": rng.choice(["F", "M"], patients)[pid],
            "dx": rng.choice(["a", "b", "c", "d"], n, p=[0.7, 0.1, 0.1, 0.1]),
        }
    )
    k = int(rng.choice([2, 3, 5]))
    max_suppression = float(rng.choice([0.0, 0.05, 0.3]))
    use_l = bool(rng.integers(0, 2))
    qis = ["age", "zip", "sex"]
    kwargs = {
        "k_anonymity": {
            "quasi_identifiers": qis,
            "k": k,
            "entity": "pid",
            "max_suppression": max_suppression,
        },
        "l_diversity": {"sensitive": "dx", "l": 2} if use_l else None,
    }
    rules = {"age": {"bucket": {"width": 5}}, "zip": {"generalize": {"prefix": 5}}}
    allowed = math.floor(max_suppression * n)
    try:
        out, report = deidentify(df, rules, **kwargs)
    except PrivacyError:
        bad = top_level_violations(df, qis, k, "pid", "dx" if use_l else None, 2)
        assert bad > allowed
        return
    assert report["suppressed"] <= allowed and len(out) == n - report["suppressed"]
    if len(out):
        assert min_entities(out, df, qis, "pid") >= k
        if use_l:
            assert min_diversity(out, qis, "dx") >= 2
    levels = report["k_anonymity"]["levels"]
    assert [s["column"] for s in report["k_anonymity"]["steps"]].count("age") == levels["age"][
        "level"
    ]


@pytest.mark.slow
def test_one_million_rows_k_and_l_hold(ring):
    days = [
        generate_batch(s, dt.date(2026, 4, d))
        for s in ("site_a", "site_b", "site_c")
        for d in range(1, 31)
    ]
    pool = pd.concat(days, ignore_index=True)
    df = pool.take(np.random.default_rng(3).integers(0, len(pool), 1_000_000))
    df = df.reset_index(drop=True)
    qis = ["age", "zip", "sex"]
    out, report = deidentify(
        df,
        ISSUE_RULES,
        keyring=ring,
        k_anonymity={
            "quasi_identifiers": qis,
            "k": 10,
            "entity": "patient_id",
            "max_suppression": 0.01,
        },
        l_diversity={"sensitive": "diagnosis", "l": 3},
    )
    assert min_entities(out, df, qis, "patient_id") >= 10
    assert min_diversity(out, qis, "diagnosis") >= 3
    assert report["suppressed"] <= 0.01 * len(df)
    assert report["rows_out"] == len(out) > 0.99 * len(df)
