"""De-identify a day's batches of every site in one task, on a Spark cluster.

The day's raw batches of all sites are read by the executors of the cluster named by the
Airflow connection ``spark_default``: Spark SQL counts the k-anonymity classes (k = 5
distinct patients per (age, ZIP, sex) class, at most 5 % of rows suppressed), and the
executors run the rules on their row groups -- the e-mail keyed-hashed (HMAC), the patient id
tokenized (AES-SIV, re-identifiable only with the key), SSN masked, name, phone and birth
date dropped, ZIP and age coarsened, the note scrubbed of e-mail addresses, phone
numbers and SSNs. The task (the Spark driver) writes one Parquet file in the input's order
and its JSON audit report, each atomically: the same rows, values and report as
``engine="duckdb"`` or ``"pandas"`` would give.

The key ring (the ``privacy_keys`` connection) travels to the executors inside their tasks:
run it on a cluster you trust with the raw data, with Spark's RPC encryption on. The
executors must be able to read ``AIRFLOW_PRIVACY_DEMO_ROOT``. A cluster that cannot be
reached fails the task once, naming ``spark_conn_id``, and writes nothing. The native cluster
(``scripts/cluster/cluster.sh``) defines ``spark_default`` for its own Spark master. Not
scheduled: trigger it for a day whose raw batches exist (``demo_patient_batches`` writes
them)::

    airflow dags trigger deidentify_spark_batches --logical-date 2026-01-01
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.operators.deidentify import DeidentifyOperator


@dag(
    dag_id="deidentify_spark_batches",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["privacy", "de-identification", "spark", "demo"],
    doc_md=__doc__,
)
def deidentify_spark_batches():
    DeidentifyOperator(
        task_id="deidentify_day",
        source=[f"{demo_root()}/raw/site={site}/date={{{{ ds }}}}.parquet" for site in SITES],
        destination=f"{demo_root()}/deid-spark/date={{{{ ds }}}}.parquet",
        rules={
            # direct identifiers: dropped, or keyed (joinable across days, never readable)
            **dict.fromkeys(["name", "birth_date", "phone"], "drop"),
            "email": {"hash": {}},
            "patient_id": {"tokenize": {}},
            "ssn": {"mask": {"keep_last": 4}},
            # quasi-identifiers, coarsened further when k = 5 needs it
            "age": {"bucket": {"width": 10}},
            "zip": {"generalize": {"prefix": 3}},
            "note": {"scrub_pii": {"entities": ["EMAIL", "PHONE", "SSN"]}},
        },
        k_anonymity={"quasi_identifiers": ["age", "zip", "sex"], "k": 5, "entity": "patient_id",
                     "max_suppression": 0.05},
        engine="spark",
        spark_conn_id="spark_default",
    )


deidentify_spark_batches()
