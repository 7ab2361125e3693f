"""Three hospitals train one outcome model without moving patient rows.

Every day, after the day's batches exist, each site trains the current global model on its
own batch on its own worker (``queue=<site>``) with DP-SGD (record-level differential
privacy: ε ≤ 8 per site over the 30 planned rounds, δ = 1e-5, charged to the ledger as
``patients_<site>``); the updates are summed with the masking secure sum, so the aggregator
only ever sees their sum. Besides its masked update a site publishes only its spent ε, which
does not depend on its row count: DP-SGD is planned for the declared ``max_rows`` = 600
visits per site per day (the demo data's maximum; a public bound), not for the rows the
site has. Its row count, training loss and update norm stay in its own storage. The aggregator applies
FedAvg, evaluates on an agreed held-out set and writes the next checkpoint (plus
``metrics.png``). The checkpoint persists between runs:
each run continues the round counter and the privacy accountant. ``rounds_per_run`` rounds
run per DAG run. Changing the model or features invalidates the checkpoint: the run fails
with the list of changed settings instead of silently restarting.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_privacy.demo import SITES, demo_root
from airflow_privacy.demo.data import DIAGNOSES
from airflow_privacy.operators.federated import federated_round_group

HOME = os.environ.get("AIRFLOW_HOME", "/tmp")
ROUNDS_PER_RUN = 3
HOLDOUT = f"{demo_root()}/federated/holdout.parquet"

TRAINING = {
    "features": ["age", "cost", "sex", "diagnosis"],
    "label": "outcome",
    "ranges": {"age": (18, 100), "cost": (0, 10_000)},
    "categories": {"sex": ["F", "M"], "diagnosis": list(DIAGNOSES)},
    "model": "logistic",
    "rounds": 30,
    "local_epochs": 2,
    "batch_size": 64,
    "lr": 0.2,
    "strategy": "fedavg",
    "dp": {"level": "record", "epsilon": 8.0, "max_rows": 600, "delta": 1e-5, "max_grad_norm": 1.0},
}


@dag(
    dag_id="federated_training",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["privacy", "federated-learning", "demo"],
    doc_md=__doc__,
)
def federated_training():
    @task
    def holdout() -> dict:
        """The evaluation set the consortium agreed to share (synthetic, from a day outside
        the training data); written once."""
        import pandas as pd

        from airflow_privacy.core.io import exists, write_batch
        from airflow_privacy.demo.data import generate_batch

        if not exists(HOLDOUT):
            cols = TRAINING["features"] + [TRAINING["label"]]
            write_batch(pd.concat([generate_batch(s, "2025-12-31")[cols] for s in SITES]), HOLDOUT)
        return {"output": HOLDOUT}

    training = federated_round_group(
        "federated",
        sites=list(SITES),
        source=f"{demo_root()}/raw/site={{site}}/date={{{{ ds }}}}.parquet",
        training=TRAINING,
        checkpoint_dir=f"{demo_root()}/federated/checkpoints",
        shared_storage=f"{demo_root()}/federated/messages",
        site_storage=f"file://{HOME}/site-private/{{site}}",
        rounds_per_run=ROUNDS_PER_RUN,
        eval_source=HOLDOUT,
        dataset="patients",
    )
    holdout() >> training


federated_training()
