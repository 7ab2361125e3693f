"""Daily totals across hospitals without any hospital revealing its own numbers.

Each site computes, on its own worker (``queue=<site>``), its vector of visits and total cost
per diagnosis for the day; the ``secure_sum`` task group adds the vectors with Bonawitz et
al.'s double-masking protocol. The aggregator and the shared storage only ever see public
keys, encrypted key shares and masked vectors; each site's round state stays in its own
storage, encrypted under its own key ring (``privacy_keys_<site>``). If a site drops out after
the keys were shared, the survivors' shares remove its masks and the sum of the others is
still released (at least 2 of 3 sites must survive).

Distributed differential privacy is on: each site keeps one random visit per patient (a
patient then changes its vector by at most 1 visit and 5 k$ of cost, L2 <= sqrt(26)) and adds
a discrete Gaussian noise share before masking (Kairouz-Liu-Steinke 2021), calibrated so
that any 2 surviving shares give (1.0, 1e-7)-DP. The cost is charged to the ``patients``
budget before any site masks; only the noisy sum ever exists in the clear.

In the embedded demo every queue runs locally; in the distributed deployment each site's
worker consumes only its own queue and holds only its own key connection.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.demo.data import DIAGNOSES
from airflow_privacy.operators.secure_sum import secure_sum_group

SITE_STORAGE = f"file://{os.environ.get('AIRFLOW_HOME', '/tmp')}/site-private/{{site}}"


@dag(
    dag_id="cross_site_totals",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["privacy", "secure-sum", "demo"],
    doc_md=__doc__,
)
def cross_site_totals():
    round_ = secure_sum_group(
        "secure_sum",
        sites=list(SITES),
        source=f"{SITE_STORAGE}/vectors/date={{{{ ds }}}}.parquet",
        destination=f"{demo_root()}/secure_sum/visits_and_cost_by_diagnosis/date={{{{ ds }}}}.parquet",
        bounds=(0, 100_000),
        frac_bits=8,
        length=2 * len(DIAGNOSES),
        dp={"epsilon": 1.0, "delta": 1e-7, "l2_sensitivity": 26**0.5, "dataset": "patients",
            "budget_cap": (12.0, 1e-5)},
        shared_storage=f"{demo_root()}/secure_sum/messages",
        site_storage=SITE_STORAGE,
    )
    for site in SITES:

        @task(task_id=f"local_vector_{site}", queue=site)
        def local_vector(site: str = site, ds: str | None = None) -> dict:
            """Runs at the site: only the site's own batch is read; the vector stays local."""
            from airflow_privacy.demo.vectors import write_site_vector

            return write_site_vector(site, ds, SITE_STORAGE.replace("{site}", site))

        local_vector() >> round_.children[f"secure_sum.mask_{site}"]


cross_site_totals()
