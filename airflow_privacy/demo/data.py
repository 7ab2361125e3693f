"""Realistic synthetic patient-visit batches, deterministic per (logical date, site).

Each site has a stable patient population (so a patient recurs across daily batches), its
own ZIP area and case mix (non-IID across sites), and every visit carries direct
identifiers (name, email, phone, SSN-like id), quasi-identifiers (date of birth, sex, ZIP),
a diagnosis, a free-text note with planted PII, a cost and a binary outcome that depends
learnably on the features. Nothing here is real: names and contact data come from Faker.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import zlib

import numpy as np
import pandas as pd

from airflow_privacy.core.errors import InvalidParameterError

SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")

#: ICD-10 codes of the demo case mix, with a base cost per visit.
DIAGNOSES: dict[str, float] = {
    "E11": 420.0,  # type 2 diabetes
    "I10": 260.0,  # essential hypertension
    "J45": 310.0,  # asthma
    "M54": 220.0,  # back pain
    "F32": 380.0,  # depressive episode
    "I25": 1450.0,  # chronic ischaemic heart disease
    "N18": 1900.0,  # chronic kidney disease
    "C50": 3100.0,  # breast cancer
}

# Per-site differences: ZIP area, age profile, case mix and outcome baseline (non-IID).
_SITE_PROFILE: dict[str, dict] = {
    "site_a": {"zip3": ["100", "101", "102"], "age_mean": 52, "mix": [4, 5, 2, 3, 2, 2, 1, 1], "shift": -0.3},
    "site_b": {"zip3": ["606", "607"], "age_mean": 61, "mix": [3, 4, 1, 2, 1, 4, 3, 2], "shift": 0.2},
    "site_c": {"zip3": ["941", "945", "946"], "age_mean": 44, "mix": [2, 2, 4, 4, 4, 1, 1, 1], "shift": 0.0},
}
_PATIENTS_PER_SITE = 2000
_VISITS_PER_DAY = (400, 600)

COLUMNS: tuple[str, ...] = (
    "patient_id", "name", "email", "phone", "ssn", "birth_date", "sex", "zip", "site",
    "visit_date", "diagnosis", "note", "cost", "age", "outcome",
)


def demo_root() -> str:
    """Where the demo keeps its batches: ``$AIRFLOW_PRIVACY_DEMO_ROOT`` or ``$AIRFLOW_HOME/demo-data``."""
    root = os.environ.get("AIRFLOW_PRIVACY_DEMO_ROOT")
    if root:
        return root.rstrip("/")
    home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
    return f"file://{os.path.abspath(home)}/demo-data"


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


@functools.lru_cache(maxsize=8)
def _population(site: str) -> pd.DataFrame:
    """The site's stable patients (identifiers and quasi-identifiers)."""
    from faker import Faker

    profile = _SITE_PROFILE[site]
    fake = Faker("en_US")
    fake.seed_instance(_seed("population", site))
    rng = np.random.default_rng(_seed("population-np", site))
    n = _PATIENTS_PER_SITE
    sex = rng.choice(np.array(["F", "M"]), size=n)
    first = [fake.first_name_female() if s == "F" else fake.first_name_male() for s in sex]
    last = [fake.last_name() for _ in range(n)]
    ages = np.clip(rng.normal(profile["age_mean"], 16, size=n), 18, 95).astype(int)
    ref = dt.date(2026, 1, 1)
    birth = [ref - dt.timedelta(days=int(a * 365.25 + d)) for a, d in zip(ages, rng.integers(0, 365, n), strict=False)]
    zip3 = rng.choice(np.array(profile["zip3"]), size=n)
    zips = [f"{z}{int(x):02d}" for z, x in zip(zip3, rng.integers(0, 100, n), strict=False)]
    prefix = site[-1].upper()
    return pd.DataFrame(
        {
            "patient_id": [f"{prefix}{i:06d}" for i in range(n)],
            "name": [f"{f} {lname}" for f, lname in zip(first, last, strict=False)],
            "email": [f"{f.lower()}.{lname.lower()}{i % 97}@{fake.free_email_domain()}" for i, (f, lname) in enumerate(zip(first, last, strict=False))],
            "phone": [f"({rng.integers(201, 990)}) {rng.integers(200, 999)}-{rng.integers(0, 10000):04d}" for _ in range(n)],
            "ssn": [f"{rng.integers(1, 665):03d}-{rng.integers(1, 99):02d}-{rng.integers(1, 9999):04d}" for _ in range(n)],
            "birth_date": birth,
            "sex": sex,
            "zip": zips,
            "risk": rng.normal(0, 1, n),  # latent, never emitted
        }
    )


def _notes(rows: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    templates = (
        "Pt {name} seen for {dx}. Contact {email}. Follow-up in 2 weeks.",
        "Called {phone} to confirm appointment on {date}; patient reports improvement.",
        "SSN {ssn} verified at intake. Discussed {dx} management plan.",
        "Routine visit for {dx}. No complaints. Billing card 4111 1111 1111 1111 on file.",
        "Patient {name} requests records be sent to {email} and copy to 192.168.10.{octet}.",
        "Stable. Continue current medication for {dx}.",
    )
    choice = rng.integers(0, len(templates), len(rows))
    octets = rng.integers(2, 250, len(rows))
    out = []
    for t, octet, name, email, phone, ssn, dx, date in zip(
        choice, octets, rows["name"], rows["email"], rows["phone"], rows["ssn"],
        rows["diagnosis"], rows["visit_date"], strict=False,
    ):
        out.append(templates[t].format(name=name, email=email, phone=phone, ssn=ssn, dx=dx, date=date, octet=octet))
    return out


def generate_batch(site: str, logical_date: dt.date | str) -> pd.DataFrame:
    """One day's visits at ``site``; identical output for the same ``(site, logical_date)``.

    :param site: one of :data:`SITES`.
    :param logical_date: the batch date (``date`` or ISO string).
    """
    if site not in _SITE_PROFILE:
        raise InvalidParameterError("site", site, f"expected one of {list(_SITE_PROFILE)}")
    if isinstance(logical_date, str):
        try:
            logical_date = dt.date.fromisoformat(logical_date[:10])
        except ValueError:
            raise InvalidParameterError("logical_date", logical_date, "expected an ISO date YYYY-MM-DD") from None
    profile = _SITE_PROFILE[site]
    rng = np.random.default_rng(_seed("batch", site, logical_date.isoformat()))
    pop = _population(site)
    n = int(rng.integers(*_VISITS_PER_DAY))
    # Frequent visitors come back more often: Zipf-like weights over the population.
    weights = 1.0 / np.arange(1, len(pop) + 1) ** 0.6
    idx = rng.choice(len(pop), size=n, p=weights / weights.sum())
    rows = pop.iloc[idx].reset_index(drop=True)
    mix = np.asarray(profile["mix"], dtype=float)
    codes = np.array(list(DIAGNOSES))
    rows["diagnosis"] = rng.choice(codes, size=n, p=mix / mix.sum())
    rows["site"] = site
    rows["visit_date"] = logical_date
    age = np.array([(logical_date - b).days // 365 for b in rows["birth_date"]])
    rows["age"] = age
    base = rows["diagnosis"].map(DIAGNOSES).to_numpy()
    rows["cost"] = np.round(base * rng.lognormal(0.0, 0.45, n), 2)
    severe = rows["diagnosis"].isin(["I25", "N18", "C50"]).to_numpy()
    logit = (
        -1.2 + profile["shift"] + 0.045 * (age - 50) + 1.3 * severe
        + 0.6 * (rows["sex"].to_numpy() == "M") + 0.0004 * (rows["cost"].to_numpy() - 800)
        + 0.8 * rows["risk"].to_numpy()
    )
    rows["outcome"] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int8")
    rows["note"] = _notes(rows, rng)
    return rows[list(COLUMNS)]


def validate_batch(df: pd.DataFrame) -> dict:
    """Check a raw demo batch against the schema; return a small summary dict (no rows)."""
    from airflow_privacy.core.errors import SchemaError

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"batch lacks column(s) {missing}")
    if df.empty:
        raise SchemaError("batch is empty")
    required = ["patient_id", "site", "visit_date", "diagnosis", "cost", "outcome"]
    nulls = {c: int(df[c].isna().sum()) for c in required if df[c].isna().any()}
    if nulls:
        raise SchemaError(f"batch has nulls in required columns: {nulls}")
    if (df["cost"] < 0).any():
        raise SchemaError("batch has negative cost values")
    if not df["outcome"].isin([0, 1]).all():
        raise SchemaError("outcome must be 0/1")
    return {
        "rows": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "diagnoses": int(df["diagnosis"].nunique()),
        "outcome_rate": round(float(df["outcome"].mean()), 4),
    }
