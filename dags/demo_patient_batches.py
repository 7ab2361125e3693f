"""Generate and validate the day's synthetic patient-visit batches for every site.

The first DAG of the demo: every other example DAG reads what this one writes, one Parquet
file per site and logical date under ``<demo root>/raw/site=<site>/date=<ds>.parquet``
(the demo root is ``$AIRFLOW_PRIVACY_DEMO_ROOT``, default ``$AIRFLOW_HOME/demo-data``).
Each raw batch is also archived encrypted (``archive/site=<site>/date=<ds>.parquet.enc``,
AES-256-GCM envelope under the ``privacy_keys_default`` key ring, bound to its site and date
as associated data). Only paths, row counts and summary statistics travel through XCom --
never rows, never keys.

Each site also sends its batch to the central data holder, and the roles are split by key:
``send_to_holder_<site>`` runs on the site's own queue and encrypts to the holder's *public*
ring (connection ``privacy_recipient_holder``; HPKE, the site's id bound to the header as
producer) -- the site can write the file (``to-holder/site=<site>/date=<ds>.parquet.enc``)
but neither it nor any other site can read it back. ``holder_receives`` runs on the
holder's queue (``queue="holder"``), the only worker whose ``privacy_keys_holder`` connection
holds the private ring, and opens each file into the holder's own storage. In the embedded
demo one process holds both connections; in the distributed deployment each site's worker
holds only the public ring.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Asset, dag, task

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.operators.crypto import DecryptOperator, EncryptOperator

RAW_BATCHES = Asset(f"{demo_root()}/raw/")
HOLDER_PUBLIC_RING = "privacy_recipient_holder"  # on every site's worker: encrypts, never decrypts
HOLDER_PRIVATE_RING = "privacy_keys_holder"  # on the holder's worker only
# The holder's own storage (parsed again on the worker that runs the task: its AIRFLOW_HOME).
HOLDER_STORAGE = f"file://{os.environ.get('AIRFLOW_HOME', '/tmp')}/site-private/holder"


@dag(
    dag_id="demo_patient_batches",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["privacy", "demo"],
    doc_md=__doc__,
)
def demo_patient_batches():
    @task(map_index_template="{{ site }}")
    def generate(site: str, ds: str | None = None) -> dict:
        from airflow_privacy.core.io import write_batch
        from airflow_privacy.demo.data import generate_batch

        uri = f"{demo_root()}/raw/site={site}/date={ds}.parquet"
        rows = write_batch(generate_batch(site, ds), uri)
        return {"site": site, "output": uri, "rows": rows}

    @task(outlets=[RAW_BATCHES])
    def validate(batches: list[dict]) -> dict:
        from airflow_privacy.core.io import read_batch
        from airflow_privacy.demo.data import validate_batch

        summary = {}
        for batch in batches:
            stats = validate_batch(read_batch(batch["output"]))
            if stats["rows"] != batch["rows"]:
                raise ValueError(f"{batch['output']}: wrote {batch['rows']} rows, read {stats['rows']}")
            summary[batch["site"]] = stats
        return {"rows": sum(s["rows"] for s in summary.values()), "sites": summary}

    batches = generate.expand(site=list(SITES))
    checked = validate(batches)
    archive = EncryptOperator.partial(task_id="archive_encrypted").expand_kwargs(
        [
            {
                "source": f"{demo_root()}/raw/site={site}/date={{{{ ds }}}}.parquet",
                "destination": f"{demo_root()}/archive/site={site}/date={{{{ ds }}}}.parquet.enc",
                "associated_data": f"site={site}/date={{{{ ds }}}}",
            }
            for site in SITES
        ]
    )
    checked >> archive

    sent = [
        EncryptOperator(
            task_id=f"send_to_holder_{site}",
            queue=site,
            source=f"{demo_root()}/raw/site={site}/date={{{{ ds }}}}.parquet",
            destination=f"{demo_root()}/to-holder/site={site}/date={{{{ ds }}}}.parquet.enc",
            associated_data=f"site={site}/date={{{{ ds }}}}",
            recipient=HOLDER_PUBLIC_RING,
            producer=site,
        )
        for site in SITES
    ]
    received = DecryptOperator.partial(
        task_id="holder_receives", queue="holder", key_conn_id=HOLDER_PRIVATE_RING
    ).expand_kwargs(
        [
            {
                "source": f"{demo_root()}/to-holder/site={site}/date={{{{ ds }}}}.parquet.enc",
                "destination": f"{HOLDER_STORAGE}/received/site={site}/date={{{{ ds }}}}.parquet",
                "associated_data": f"site={site}/date={{{{ ds }}}}",
            }
            for site in SITES
        ]
    )
    checked >> sent >> received


demo_patient_batches()
