"""Daily totals across hospitals with Paillier encryption and a separate key holder.

The same per-site vectors as ``cross_site_totals`` (visits and cost per diagnosis, one
visit per patient), summed with the ``paillier`` protocol: a key-holder party (its own
``keyholder`` queue and ``privacy_keys_keyholder`` connection) publishes a fresh Paillier
public key for the round, each site encrypts its vector under it on its own queue, the
aggregator adds the ciphertexts without any key, and the key holder decrypts only the
aggregate of at least 2 sites. Needs the ``paillier`` extra (phe, GPL-licensed).
Not scheduled by default; trigger it manually.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.demo.data import DIAGNOSES
from airflow_privacy.operators.secure_sum import secure_sum_group

HOME = os.environ.get("AIRFLOW_HOME", "/tmp")
SITE_STORAGE = f"file://{HOME}/site-private/{{site}}"


@dag(
    dag_id="paillier_totals",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["privacy", "secure-sum", "paillier"],
    doc_md=__doc__,
)
def paillier_totals():
    round_ = secure_sum_group(
        "paillier",
        protocol="paillier",
        sites=list(SITES),
        source=f"{SITE_STORAGE}/vectors/date={{{{ ds }}}}.parquet",
        destination=f"{demo_root()}/secure_sum/paillier_totals/date={{{{ ds }}}}.parquet",
        bounds=(0, 100_000),
        frac_bits=8,
        length=2 * len(DIAGNOSES),
        shared_storage=f"{demo_root()}/secure_sum/messages",
        site_storage=SITE_STORAGE,
        keyholder_storage=f"file://{HOME}/keyholder-private",
    )
    for site in SITES:

        @task(task_id=f"local_vector_{site}", queue=site)
        def local_vector(site: str = site, ds: str | None = None) -> dict:
            from airflow_privacy.demo.vectors import write_site_vector

            return write_site_vector(site, ds, SITE_STORAGE.replace("{site}", site))

        local_vector() >> round_.children[f"paillier.encrypt_{site}"]


paillier_totals()
