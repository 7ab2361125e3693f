"""federated_training under dag.test(): rounds continue across runs, epsilon grows, a site
dropping out is recovered by the secure sum, shared storage and XCom hold no rows and no
site statistics; site-level DP is charged before any site masks; bad training parameters
fail at parse time."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import resolve, write_batch
from airflow_privacy.demo.data import SITES, generate_batch


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return url


def _run(dagbag, date, sites):
    from airflow_privacy.demo.data import demo_root

    for site in sites:
        write_batch(generate_batch(site, date), f"{demo_root()}/raw/site={site}/date={date}.parquet")
    run = dagbag.get_dag("federated_training").test(logical_date=pendulum.parse(date))
    return run, {t.task_id: t for t in run.get_task_instances()}


def test_two_runs_continue_rounds_and_accounting_with_a_dropout(dagbag, ledger_url, demo_root, caplog, capfd):
    with caplog.at_level(logging.DEBUG):
        run1, tis1 = _run(dagbag, "2026-10-01", SITES)
    assert run1.state == "success"
    rows = {site: len(generate_batch(site, "2026-10-01")) for site in SITES}
    assert len(set(rows.values())) == 3  # the sites differ in size...
    # ... but not in what they publish: the DP-SGD plan is the declared max_rows' (issue 14 §3)
    ledger = PrivacyLedger(ledger_url)
    events = {site: [c.events for c in ledger.history(f"patients_{site}")] for site in SITES}
    assert events["site_a"] == events["site_b"] == events["site_c"] and len(events["site_a"]) == 3
    assert {e["sampling_probability"] for round_events in events["site_a"] for e in round_events} == {64 / 600}
    reports = {site: tis1[f"federated.round_3.train_{site}"].xcom_pull(task_ids=f"federated.round_3.train_{site}")
               for site in SITES}
    assert len({json.dumps(r["privacy"]) for r in reports.values()}) == 1
    # the site's statistics stay in its own storage; the task logs (every UI user reads them) hold none
    home = Path(os.environ["AIRFLOW_HOME"])
    diagnostics = {site: [json.loads(p.read_text()) for p in (home / "site-private" / site).rglob("diagnostics.json")]
                   for site in SITES}
    assert {site: [d["examples"] for d in found] for site, found in diagnostics.items()} == {
        site: [n] * 3 for site, n in rows.items()}
    # operators log through structlog to the process output, the core library through logging
    logged = "\n".join([*(r.getMessage() for r in caplog.records), *capfd.readouterr()])
    assert "Site site_a trains on" in logged and "diagnostics.json" in logged  # the task logs were captured
    for site, n in rows.items():
        assert not re.search(rf"\b{n}\b", logged), (site, n)
    assert not [k for k in ("train loss", "'examples'", "clipped_fraction", "train_loss") if k in logged]
    r1 = tis1["federated.round_3.aggregate"].xcom_pull(task_ids="federated.round_3.aggregate")
    eps = [tis1[f"federated.round_{r}.aggregate"].xcom_pull(
        task_ids=f"federated.round_{r}.aggregate", key="privacy_budget")["spent_epsilon"] for r in (1, 2, 3)]
    assert r1["round"] >= 3 and eps[0] < eps[1] < eps[2] <= 8.0
    # one accountant in the XCom: the training's epsilon is the ledger's composition of the
    # worst site's events (PLD), not the checkpoint's RDP figure of the same events
    shown = r1["privacy"]
    own = PrivacyLedger(ledger_url).status(shown["dataset"])
    assert shown["epsilon"] == pytest.approx(own.own_epsilon, rel=1e-9) and shown["accountant"] == own.accountant

    # Next day site_c has no batch: its training fails, the secure sum drops it, rounds complete.
    run2, tis2 = _run(dagbag, "2026-10-02", ["site_a", "site_b"])
    assert tis2["federated.round_1.train_site_c"].state == "failed"
    agg = tis2["federated.round_3.aggregate"]
    assert agg.state == "success"
    r2 = agg.xcom_pull(task_ids="federated.round_3.aggregate")
    assert r2["round"] == r1["round"] + 3
    assert r2["metrics"]["sites"] == ["site_a", "site_b"]
    assert r2["privacy"]["spent_epsilon"] > eps[2]
    assert 0.55 < r2["metrics"]["eval_accuracy"] <= 1.0
    ledger = PrivacyLedger(ledger_url)
    assert {d.dataset for d in ledger.datasets()} == {"patients_site_a", "patients_site_b", "patients_site_c"}
    assert all(d.spent_epsilon <= d.cap_epsilon for d in ledger.datasets())

    # Shared storage: checkpoints, masked messages, reports, metrics -- never a row, and no
    # statistic of one site: its row count (nor the DP-SGD sampling rate batch_size / rows,
    # which names it), training loss, update norm or clipped fraction.
    fs, root = resolve(f"{demo_root}/federated")
    raw = generate_batch("site_a", "2026-10-01")
    needles = [s.encode() for s in list(raw.patient_id[:50]) + list(raw.name[:50])]
    site_stats = [b"examples", b"sampling_probability", b"train_loss", b"clipped_fraction"]
    reports = []
    for path in fs.find(root):
        if path.endswith("holdout.parquet"):
            continue  # the agreed synthetic evaluation set
        blob = fs.cat_file(path)
        assert not any(n in blob for n in needles), path
        assert not [k for k in site_stats if k in blob], path
        if "/reports/" in path:
            reports.append(json.loads(blob))
    # 3 + 3 rounds, 3 + 2 sites
    assert len(reports) == 15
    xcoms = [tis[t].xcom_pull(task_ids=t) for tis in (tis1, tis2) for t in tis
             if ".train_" in t and tis[t].state == "success"]
    assert len(xcoms) == 15
    for report in reports + xcoms:
        assert set(report) == {"site", "round", "config_hash", "privacy"}, report
        assert set(report["privacy"]) == {"epsilon", "delta"}
    assert fs.exists(f"{root}/checkpoints/metrics.png")


def test_robust_aggregation_with_secure_sum_is_rejected_at_parse_time():
    from airflow.sdk import DAG

    from airflow_privacy.operators.federated import federated_round_group

    training = {"features": ["age"], "label": "outcome", "ranges": {"age": (0, 100)}, "aggregator": "median"}
    with DAG("parse_check", schedule=None), pytest.raises(InvalidParameterError, match="secure sum"):
        federated_round_group("f", sites=list(SITES), source="s", training=training, checkpoint_dir="c",
                              shared_storage="x", site_storage="y")


# -- site-level DP: charged before any site masks ---------------------------------------------

SITE_DP_TRAINING = {
    "features": ["age", "cost", "sex"], "label": "outcome",
    "ranges": {"age": (18, 100), "cost": (0, 10_000)}, "categories": {"sex": ["F", "M"]},
    "rounds": 5, "lr": 0.2, "dp": {"level": "site", "noise_multiplier": 1.0, "clip": 0.5},
}
SITE_DP_DAGS = {"site_dp_in_budget": "sitedp", "site_dp_over_cap": "sitedp_small"}
_SITE_DP_DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from airflow_privacy.demo.data import SITES, demo_root
from airflow_privacy.operators.federated import federated_round_group

for dag_id, dataset in {dags!r}.items():
    base = f"{base}/{{dataset}}"
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        federated_round_group(
            "federated", sites=list(SITES), source=f"{{demo_root()}}/raw/site={{{{site}}}}/date={{{{{{{{ ds }}}}}}}}.parquet",
            training={training!r}, checkpoint_dir=f"{{base}}/checkpoints", shared_storage=f"{{base}}/messages",
            site_storage=f"{{base}}/site-private/{{{{site}}}}", dataset=dataset,
        )
    globals()[dag_id] = dag
"""


@pytest.fixture(scope="module")
def site_dp_dags(airflow_db, tmp_path_factory):
    """Two site-level DP DAGs in a DAG bundle of their own (dag.test() runs only DAGs that a
    bundle holds): ``{dag_id: (dag, storage root)}``."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_privacy.demo.data import demo_root

    folder = tmp_path_factory.mktemp("site-dp-dags")
    base = tmp_path_factory.mktemp("site-dp-storage")
    (folder / "site_dp.py").write_text(
        _SITE_DP_DAG_FILE.format(dags=SITE_DP_DAGS, base=f"file://{base}", training=SITE_DP_TRAINING))
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
               {"name": "federated-site-dp", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    for site in SITES:
        write_batch(generate_batch(site, "2026-10-05"), f"{demo_root()}/raw/site={site}/date=2026-10-05.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}
        yield {dag_id: (bag.get_dag(dag_id), base / dataset) for dag_id, dataset in SITE_DP_DAGS.items()}


@pytest.mark.filterwarnings("ignore:site-level DP with 3 sites")
def test_site_level_round_is_charged_before_any_site_masks(site_dp_dags, ledger_url):
    ledger = PrivacyLedger(ledger_url)
    ledger.set_budget("sitedp", epsilon=20.0, delta=1e-5)
    dag, _ = site_dp_dags["site_dp_in_budget"]
    run = dag.test(logical_date=pendulum.parse("2026-10-05"))
    assert run.state == "success"
    tis = {t.task_id: t for t in run.get_task_instances()}
    (charge,) = ledger.history("sitedp")
    assert charge.task_id == "federated.round_1.charge" and charge.status == "released"
    assert charge.output.endswith("round-00001.pt") and charge.spent_epsilon > 0
    # every site trained (drew its noise share) and masked after the charge was recorded
    sites_start = min(t.start_date for t_id, t in tis.items() if ".train_" in t_id or ".mask_" in t_id)
    assert charge.created_at <= sites_start
    assert tis["federated.round_1.charge"].end_date <= sites_start
    privacy = tis["federated.round_1.aggregate"].xcom_pull(task_ids="federated.round_1.aggregate")["privacy"]
    assert privacy["level"] == "site" and privacy["spent_epsilon"] == pytest.approx(charge.spent_epsilon)
    assert privacy["epsilon"] == pytest.approx(ledger.status("sitedp").own_epsilon, rel=1e-9)


@pytest.mark.filterwarnings("ignore:site-level DP with 3 sites")
def test_over_cap_site_level_round_fails_and_releases_nothing(site_dp_dags, ledger_url):
    ledger = PrivacyLedger(ledger_url)
    ledger.set_budget("sitedp_small", epsilon=1.0, delta=1e-5)  # one round costs ~5.3
    dag, root = site_dp_dags["site_dp_over_cap"]
    run = dag.test(logical_date=pendulum.parse("2026-10-05"))
    assert run.state == "failed"
    tis = {t.task_id: t for t in run.get_task_instances()}
    assert tis["federated.round_1.charge"].state == "failed"
    assert {tis[f"federated.round_1.train_{s}"].state for s in SITES} == {"upstream_failed"}
    assert {tis[f"federated.round_1.secure_sum.mask_{s}"].state for s in SITES} == {"upstream_failed"}
    assert tis["federated.round_1.aggregate"].state == "upstream_failed"
    assert ledger.history("sitedp_small") == [] and ledger.status("sitedp_small").spent_epsilon == 0.0
    written = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert not [n for n in written if n.startswith("sum-") or n.startswith("round-") or n == "update.enc"], written
    assert "latest.pt" in written  # the init step's round-0 model, nothing trained


# -- parse-time validation ------------------------------------------------------------------

TRAINING = {"features": ["age", "sex"], "label": "outcome", "ranges": {"age": (0, 100)},
            "categories": {"sex": ["F", "M"]}}


@pytest.mark.parametrize(
    ("change", "name", "value", "allowed"),
    [
        ({"strategy": "fedadm"}, "strategy", "fedadm", "fedavg"),
        ({"lr": -1}, "lr", -1, "> 0"),
        ({"rounds": 0}, "rounds", 0, ">= 1"),
        ({"dp": {"level": "record"}}, "dp", {"epsilon": None, "noise_multiplier": None}, "epsilon"),
        ({"dp": {"level": "recrd", "epsilon": 1.0}}, "dp.level", "recrd", "record"),
        ({"model": "nope"}, "model", "nope", "logistic"),
        ({"learning_rate": 0.1}, "training", ["learning_rate"], "lr"),
        ({"sites": ["site_a", "site_b"]}, "sites", 2, "at least 3"),
        ({"rounds": 2, "rounds_per_run": 3}, "rounds_per_run", 3, "rounds=2"),
        # issue 14 §2: the row count as the weight, under record-level DP
        ({"dp": {"level": "record", "epsilon": 1.0, "max_rows": 600}, "weighting": "examples"}, "weighting",
         "examples", "uniform"),
        # issue 14 §3: DP-SGD is planned from a declared bound, not from the site's rows
        ({"dp": {"level": "record", "epsilon": 1.0}}, "dp.max_rows", None, "integer >= 1"),
    ],
)
def test_bad_training_parameters_fail_when_the_dag_is_parsed(change, name, value, allowed):
    from airflow.sdk import DAG

    from airflow_privacy.operators.federated import federated_round_group

    change = dict(change)
    sites = change.pop("sites", list(SITES))
    rounds_per_run = change.pop("rounds_per_run", 1)
    with DAG("parse_check", schedule=None), pytest.raises(InvalidParameterError) as exc:
        federated_round_group("f", sites=sites, source="s", training={**TRAINING, **change}, checkpoint_dir="c",
                              shared_storage="x", site_storage="y", rounds_per_run=rounds_per_run)
    assert (exc.value.name, exc.value.value) == (name, value)
    assert allowed in exc.value.allowed and repr(value) in str(exc.value)


_RECORD_DP_BY_EXAMPLES_DAG = """
import pendulum
from airflow.sdk import DAG

from airflow_privacy.operators.federated import FederatedClientOperator, federated_round_group

TRAINING = {training!r}
with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    {body}
"""


@pytest.mark.parametrize("body", [
    'federated_round_group("f", sites=["site_a", "site_b", "site_c"], source="s", training=TRAINING, '
    'checkpoint_dir="c", shared_storage="x", site_storage="y")',
    'FederatedClientOperator(task_id="t", site="site_a", sites=["site_a", "site_b", "site_c"], source="s", '
    'training=TRAINING, checkpoint_dir="c", shared_storage="x", site_storage="y")',
])
def test_record_level_dp_weighted_by_examples_is_an_import_error_of_the_dag_file(body, airflow_db, tmp_path):
    """Issue 14 §2: refused when the DAG file is parsed, before any site trains."""
    from airflow.dag_processing.dagbag import DagBag

    training = {**TRAINING, "weighting": "examples", "dp": {"level": "record", "epsilon": 8.0, "max_rows": 600}}
    (tmp_path / "record_by_examples.py").write_text(
        _RECORD_DP_BY_EXAMPLES_DAG.format(training=training, dag_id="record_by_examples", body=body))
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.dag_ids == []
    (error,) = bag.import_errors.values()
    assert "InvalidParameterError" in error and "weighting='examples'" in error and "expected 'uniform'" in error


def test_parsing_the_example_dag_validates_without_importing_torch():
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported at parse time'")
    dag_file = Path(__file__).resolve().parents[2] / "dags" / "federated_training.py"
    proc = subprocess.run([sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
