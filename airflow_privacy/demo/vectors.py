"""A site's local vector for the secure-sum demos (runs at the site, on its own batch)."""

from __future__ import annotations

import pandas as pd

from airflow_privacy.core.io import read_batch, write_batch
from airflow_privacy.demo.data import DIAGNOSES, demo_root


def write_site_vector(site: str, ds: str, site_storage: str) -> dict:
    """Visits and cost (k$) per diagnosis of the site's day, one random visit per patient.

    Contribution bounding makes the sensitivity explicit: a patient changes the vector by at
    most 1 visit and 5 k$ in one diagnosis (L2 <= sqrt(26)). The vector is written to the
    site's own storage; only its path is returned.
    """
    df = read_batch(f"{demo_root()}/raw/site={site}/date={ds}.parquet", columns=["patient_id", "diagnosis", "cost"])
    df = df.sample(frac=1.0).drop_duplicates("patient_id")
    df = df.assign(cost_k=df["cost"].clip(0, 5000) / 1000)
    per_dx = df.groupby("diagnosis")["cost_k"].agg(["size", "sum"]).reindex(list(DIAGNOSES), fill_value=0)
    vector = pd.DataFrame({"visits": per_dx["size"].astype(float), "cost_k": per_dx["sum"]})
    uri = f"{site_storage}/vectors/date={ds}.parquet"
    write_batch(vector, uri)
    return {"site": site, "values": int(vector.size), "output": uri}
