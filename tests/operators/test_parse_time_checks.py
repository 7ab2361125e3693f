"""Mistakes a DAG author makes are refused when the DAG file is parsed, before any data is
read (issue 18 §3); epsilon and delta are templated and checked when rendered."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.io import exists, write_batch

_DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from airflow_privacy.operators import DeidentifyOperator, DPAggregateOperator

with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={{"epsilon": 1.0, "delta": 1e-6}}):
    {body}
"""


def _dag_file(tmp_path, body: str, dag_id: str = "authored") -> None:
    (tmp_path / f"{dag_id}.py").write_text(_DAG_FILE.format(dag_id=dag_id, body=textwrap.dedent(body).strip()))


def _import_error(tmp_path, body: str) -> str:
    from airflow.dag_processing.dagbag import DagBag

    _dag_file(tmp_path, body)
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.dag_ids == []
    (error,) = bag.import_errors.values()
    return error


DP = 'DPAggregateOperator(task_id="stats", source="file:///nowhere/in.parquet", destination="file:///nowhere/out.parquet", dataset="patients", '


@pytest.mark.parametrize(("args", "expected"), [
    ('epsilon=1.0, metrics={"avg": ("mean", "cost")})',
     "invalid bounds={}: column 'cost' needs declared bounds (lo, hi)"),
    ('epsilon=1.0, metrics={"n": "cnt"})',
     "invalid metrics['n']='cnt': expected a kind in ('count'"),
    ('epsilon=1.0, metrics={"n": "count"}, mechanism="gaussian", delta=0)',
     "invalid delta=0.0: mechanism='gaussian' needs delta > 0"),
    ('epsilon=1.0, metrics={"n": "count"}, mechanism="gauss", delta=1e-6)',
     "invalid mechanism='gauss': expected one of ('laplace', 'gaussian')"),
    ('epsilon="{{ params.epsilon }}", metrics={"n": "count", "s": ("sum", "cost")}, bounds={"cost": (5, 1)})',
     "invalid bounds['cost']=(5, 1): expected finite lo < hi"),
], ids=["mean-without-bounds", "misspelt-metric", "gaussian-delta-0", "misspelt-mechanism", "templated-eps-bad-bounds"])
def test_dp_mistakes_are_import_errors_of_the_dag_file(args, expected, tmp_path, airflow_db):
    error = _import_error(tmp_path, DP + args)
    assert "InvalidParameterError" in error and expected in error, error


DEID = 'DeidentifyOperator(task_id="deid", source="file:///nowhere/raw.parquet", destination="file:///nowhere/deid.parquet", '


@pytest.mark.parametrize(("args", "expected"), [
    ('rules={"age": {"bucketize": {"width": 10}}})',
     "invalid rules['age']='bucketize': unknown rule; expected one of ["),
    ('rules={"age": {"bucket": {"width": 10}}}, k_anonymity={"quasi_identifiers": ["age"]})',
     "invalid k_anonymity.k=None: expected an integer >= 2"),
    ('rules={"age": "keep"}, k_anonymity={"quasi_identifiers": ["age"], "k": 5, "max_generalization": {"zip": 1}})',
     "invalid k_anonymity.max_generalization='zip': not one of the quasi-identifiers ['age']"),
    ('rules={"age": "drop"}, k_anonymity={"quasi_identifiers": ["age"], "k": 5})',
     "invalid k_anonymity.quasi_identifiers='age': this column is dropped by its rule"),
    ('rules={"age": "{{ params.age_rule }}"}, k_anonymity={"quasi_identifiers": ["age"], "k": 5}, '
     'information_loss={"on_exceed": "stop"})',
     "invalid information_loss.on_exceed='stop': expected one of ['warn', 'fail']"),
], ids=["misspelt-rule", "k-anonymity-without-k", "cap-of-no-qi", "dropped-qi", "templated-rules-bad-policy"])
def test_deid_mistakes_are_import_errors_of_the_dag_file(args, expected, tmp_path, airflow_db):
    error = _import_error(tmp_path, DEID + args)
    assert "InvalidParameterError" in error and expected in error, error


def test_a_templated_rule_is_left_to_the_run(tmp_path):
    """Its value is known only once rendered: parsing accepts the template, the run refuses a
    bad rendered rule before reading or writing anything."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_privacy.operators import DeidentifyOperator

    source = f"file://{tmp_path}/raw.parquet"
    write_batch(pd.DataFrame({"age": [30, 40]}), source)
    op = DeidentifyOperator(task_id="deid", source=source, destination=f"file://{tmp_path}/out.parquet",
                            rules={"age": "{{ params.rule }}"})
    op.render_template_fields({"params": {"rule": "bucketize"}})
    with pytest.raises(AirflowFailException, match=r"invalid rules\['age'\]='bucketize': unknown rule"):
        op.execute({})
    assert not exists(f"file://{tmp_path}/out.parquet")


# -- templated epsilon / delta, rendered from the run's conf ---------------------------------
_TEMPLATED = """
    DPAggregateOperator(task_id="stats", source="{source}", destination="{dest}/{{{{ run_id }}}}.parquet",
                        dataset="patients", metrics={{"n": "count", "m": ("mean", "cost")}},
                        bounds={{"cost": (0, 100)}}, privacy_unit="patient_id", mechanism="gaussian",
                        epsilon="{{{{ dag_run.conf.get('epsilon', params.epsilon) }}}}",
                        delta="{{{{ dag_run.conf.get('delta', params.delta) }}}}",
                        budget_cap=(10.0, 1e-4))
"""


@pytest.fixture
def conf_dag(tmp_path, airflow_db, monkeypatch):
    """A DAG whose epsilon and delta come from ``dag_run.conf``, in a bundle of its own
    (dag.test() runs DAGs that a bundle holds), and its ledger."""
    from airflow.dag_processing.dagbag import DagBag

    folder, data = tmp_path / "dags", tmp_path / "data"
    folder.mkdir()
    source = f"file://{data}/in.parquet"
    rng = np.random.default_rng(3)
    write_batch(pd.DataFrame({"patient_id": np.arange(400), "cost": rng.uniform(0, 100, 400)}), source)
    _dag_file(folder, _TEMPLATED.format(source=source, dest=f"file://{data}/out"), dag_id="tuned_by_conf")
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
               {"name": "tuned-by-conf", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))

    def fresh_dag():
        # dag.test() runs tasks in this process and rendering replaces the template by its
        # value, so each run gets the DAG as parsed (as each worker process would)
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}
        return bag.get_dag("tuned_by_conf")

    return fresh_dag, PrivacyLedger(url), data


def _stats(run):
    return next(t for t in run.get_task_instances() if t.task_id == "stats")


def test_epsilon_and_delta_come_from_the_run_conf(conf_dag):
    dag, ledger, _ = conf_dag
    run = dag().test(logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"), run_conf={"epsilon": 0.25, "delta": 1e-7})
    assert run.state == "success"
    privacy = _stats(run).xcom_pull(task_ids="stats")["privacy"]
    assert privacy["epsilon"] <= 0.25 and privacy["delta"] <= 1e-7
    (charge,) = ledger.history("patients")
    assert 0.2 < charge.epsilon <= 0.25 and 0 < charge.delta <= 1e-7

    # without conf the params' defaults apply
    run = dag().test(logical_date=pendulum.datetime(2026, 3, 2, tz="UTC"))
    assert run.state == "success"
    assert 0.9 < ledger.history("patients")[-1].epsilon <= 1.0


@pytest.mark.parametrize(("conf", "message"), [
    ({"epsilon": 0}, "invalid epsilon=0.0: expected a number in [1e-06, 100]"),
    ({"epsilon": "lots"}, "invalid epsilon='lots': expected a number in [1e-06, 100]"),
    ({"delta": 0}, "invalid delta=0.0: mechanism='gaussian' needs delta > 0"),
    ({"delta": 1.5}, "invalid delta=1.5: expected a number in [0, 1)"),
])
def test_a_bad_run_conf_fails_when_rendered_and_charges_nothing(conf_dag, conf, message, capfd):
    dag, ledger, data = conf_dag
    run = dag().test(logical_date=pendulum.datetime(2026, 3, 3, tz="UTC"), run_conf=conf)
    assert run.state == "failed" and _stats(run).state == "failed"
    assert _stats(run).try_number == 1  # AirflowFailException: no retry of a bad conf
    logged = capfd.readouterr()
    assert message in logged.out + logged.err
    assert ledger.history("patients") == [] and not exists(f"file://{data}/out")
