"""The distributed topology, end to end, on the native cluster (``scripts/cluster/cluster.sh``).

Airflow 3 with the CeleryExecutor, Postgres (metadata + ``privacy`` ledger) and Redis on
127.0.0.1; the example DAGs are triggered through the REST API exactly as a runbook would.
What a user relies on and only a distributed deployment can show:

* each site's secure-sum steps run on that site's worker, the only process holding its key;
  a site task that lands on a worker without that key fails instead of borrowing one;
* the budget ledger is the Postgres ``privacy`` database, and every XCom budget matches it;
* concurrent releases against one budget stop exactly at the cap (row lock in the ledger);
* a federated run: every site trains on its own worker, the updates are securely summed and
  the rounds complete; the per-site DP-SGD budgets are Postgres ledger rows matching XCom;
* Paillier: the key holder's steps run on its own worker, the only process holding the ring
  that seals the round's private key, and the decrypted aggregate is the sites' exact sum;
* a site worker killed in the middle of a round: the round recovers through the dropout path
  (or fails cleanly, releasing nothing), and after a restart the next round succeeds.

The cluster's ledger is throw-away: each test starts from an unspent ``patients`` budget.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_client import KEYHOLDER, SITES, TERMINAL_TI_STATES, Cluster, site_service

from airflow_privacy.core import io
from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.budget.ledger import SCHEMA_VERSION
from airflow_privacy.core.dp.accounting import PrivacyCost, compose_epsilon
from airflow_privacy.demo.data import DIAGNOSES, generate_batch

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]

DATASET = "patients"
SITE_STEPS = ("advertise", "share", "mask", "reveal")
AGGREGATOR_STEPS = ("collect", "route", "request", "unmask")
RUN_TAG = dt.datetime.now(dt.timezone.utc).strftime("%H%M%S")  # run ids unique per session
BUDGET_MESSAGE = f"privacy budget of dataset '{DATASET}' exceeded"


# --- helpers ---------------------------------------------------------------------------------
def reset_budget(cluster: Cluster) -> None:
    """An unspent ``patients`` budget: the DAGs re-create its cap on their next charge."""
    engine = sa.create_engine(cluster.ledger_url)
    try:
        with engine.begin() as conn:
            if sa.inspect(conn).has_table("privacy_charges"):
                conn.execute(sa.text("DELETE FROM privacy_charges WHERE dataset = :d"), {"d": DATASET})
                if sa.inspect(conn).has_table("privacy_composed"):  # schema v5: the stored composition
                    conn.execute(sa.text("DELETE FROM privacy_composed WHERE dataset = :d"), {"d": DATASET})
                conn.execute(sa.text("DELETE FROM privacy_datasets WHERE name = :d"), {"d": DATASET})
    finally:
        engine.dispose()


def ledger(cluster: Cluster) -> PrivacyLedger:
    return PrivacyLedger(cluster.ledger_url)


def write_raw_batches(cluster: Cluster, dates: list[str]) -> None:
    """The day's raw batches, as demo_patient_batches writes them (test_example_dags runs
    that DAG itself; the other tests only need its output)."""
    for date in dates:
        for site in SITES:
            io.write_batch(generate_batch(site, date), f"{cluster.demo_root}/raw/site={site}/date={date}.parquet")


def run_dag(cluster: Cluster, dag_id: str, date: str, label: str, timeout: float = 600) -> tuple[str, str]:
    """Trigger ``dag_id`` for ``date`` and wait for it; returns (run id, final state)."""
    run_id = f"it{RUN_TAG}-{label}-{date}"
    started = time.monotonic()
    cluster.api.trigger(dag_id, date, run_id)
    state = cluster.api.wait_for_run(dag_id, run_id, timeout=timeout)
    cluster.timings[f"{dag_id} {date} ({label})"] = f"{state} in {time.monotonic() - started:.1f}s"
    return run_id, state


def wait_for_task(cluster: Cluster, dag_id: str, run_id: str, task_id: str, states: tuple[str, ...],
                  timeout: float, poll: float = 1.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = cluster.api.task_instances(dag_id, run_id).get(task_id, {}).get("state")
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{dag_id} {run_id} {task_id} is {state!r} after {timeout}s, expected {states}")
        time.sleep(poll)


def local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri[len("file://"):])


def assert_site_placement(cluster: Cluster, dag_id: str, run_id: str, sites=SITES) -> None:
    """Each site's tasks ran on that site's queue and worker; the aggregator's on the default one."""
    tis = cluster.api.task_instances(dag_id, run_id)
    for site in sites:
        for task_id in [f"local_vector_{site}", *(f"secure_sum.{step}_{site}" for step in SITE_STEPS)]:
            ti = tis[task_id]
            assert ti["queue"] == site, (task_id, ti["queue"])
            if ti["state"] != "skipped":
                assert ti["hostname"].startswith(f"{site_service(site)}@"), (task_id, ti["hostname"])
    for step in AGGREGATOR_STEPS:
        ti = tis[f"secure_sum.{step}"]
        assert ti["queue"] == "default" and ti["hostname"].startswith("airflow-worker@"), (step, ti)


def executed_on(cluster: Cluster, dag_id: str, run_id: str, service: str) -> set[str]:
    """Task ids of the run that the Celery worker ``service`` logged as executing."""
    marker = f"dag_id={dag_id}/run_id={run_id}/task_id="
    return {line.split(marker, 1)[1].split("/", 1)[0]
            for line in cluster.service_log(service).splitlines()
            if "Executing workload" in line and marker in line}


def assert_budget_xcom_matches_ledger(privacy: dict, cluster: Cluster, release_id: str) -> None:
    charge = ledger(cluster).get_release(DATASET, release_id)
    assert charge is not None, f"no ledger row for {release_id}"
    assert charge.status == "released"
    assert privacy["dataset"] == DATASET and privacy["release_id"] == release_id
    assert privacy["epsilon"] == pytest.approx(charge.epsilon, rel=1e-9)
    assert privacy["delta"] == pytest.approx(charge.delta, rel=1e-9)
    # Nothing else charged in between (runs of this test are sequential): the XCom's
    # cumulative spend is the ledger's spend right after this release.
    assert privacy["spent_epsilon"] == pytest.approx(charge.spent_epsilon, rel=1e-9)
    status = ledger(cluster).status(DATASET)
    assert (privacy["cap_epsilon"], privacy["cap_delta"], privacy["accountant"]) == \
        (status.cap_epsilon, status.cap_delta, status.accountant)


# --- tests -----------------------------------------------------------------------------------
def test_key_rings_are_not_in_the_metadata_db(cluster: Cluster):
    for name in ("default", *SITES, KEYHOLDER):
        # Not in the metadata DB, so no worker can obtain it through the api-server either.
        assert cluster.api.status(f"/connections/privacy_keys_{name}") == 404, name
    assert cluster.api.get("/monitor/health")["scheduler"]["status"] == "healthy"


def _open_and_charge(url: str, dataset: str, start_at: float) -> float:
    time.sleep(max(0.0, start_at - time.time()))  # every process opens the ledger at once
    ledger = PrivacyLedger(url)
    ledger.ensure_budget(dataset, epsilon=1.0)
    cost = PrivacyCost(0.5, 0.0, [{"kind": "pure", "epsilon": 0.5}])
    return ledger.charge(dataset, release_id="r1", cost=cost).spent_epsilon


def test_many_workers_open_a_new_postgres_ledger_at_once(cluster: Cluster):
    """The first runs of a new deployment: several workers create the ledger schema at the
    same moment (concurrent CREATE TABLEs collide in Postgres unless serialized)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    schema = f"fresh_{RUN_TAG}"
    engine = sa.create_engine(cluster.ledger_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{cluster.ledger_url}?options=-csearch_path%3D{schema}"
    try:
        start_at = time.time() + 3
        with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("spawn")) as pool:
            spent = list(pool.map(_open_and_charge, [url] * 6, [f"d{i}" for i in range(6)], [start_at] * 6))
        assert spent == [pytest.approx(0.5)] * 6
        with engine.begin() as conn:
            # each schema version applied exactly once, though six processes raced to create it
            versions = conn.execute(sa.text(f"SELECT version FROM {schema}.privacy_schema ORDER BY version")).scalars()
            assert list(versions) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_example_dags_on_the_cluster(cluster: Cluster):
    api = cluster.api
    api.wait_for_dags(["demo_patient_batches", "dp_daily_statistics", "cross_site_totals"])
    reset_budget(cluster)
    date = "2026-01-01"

    run_id, state = run_dag(cluster, "demo_patient_batches", date, "flow")
    assert state == "success"
    for site in SITES:
        assert local_path(f"{cluster.demo_root}/archive/site={site}/date={date}.parquet.enc").is_file()

    run_id, state = run_dag(cluster, "dp_daily_statistics", date, "flow")
    assert state == "success"
    ti = api.task_instances("dp_daily_statistics", run_id)["visit_statistics"]
    assert ti["hostname"].startswith("airflow-worker@") and ti["queue"] == "default"
    result = api.xcom("dp_daily_statistics", run_id, "visit_statistics")
    assert local_path(result["output"]).is_file()
    release_id = f"dp_daily_statistics/{run_id}/visit_statistics/-1"
    assert api.xcom("dp_daily_statistics", run_id, "visit_statistics", "privacy_budget") == result["privacy"]
    assert_budget_xcom_matches_ledger(result["privacy"], cluster, release_id)

    run_id, state = run_dag(cluster, "cross_site_totals", date, "flow")
    assert state == "success"
    assert_site_placement(cluster, "cross_site_totals", run_id)
    for site in SITES:  # the workers' own logs agree with the task instances
        ran = executed_on(cluster, "cross_site_totals", run_id, site_service(site))
        assert ran == {f"local_vector_{site}", *(f"secure_sum.{s}_{site}" for s in SITE_STEPS)}, (site, ran)
    assert executed_on(cluster, "cross_site_totals", run_id, "airflow-worker") == \
        {f"secure_sum.{s}" for s in AGGREGATOR_STEPS}
    total = api.xcom("cross_site_totals", run_id, "secure_sum.unmask")
    assert total["survivors"] == list(SITES) and total["dropped"] == []
    assert total["rows"] == 2 * len(DIAGNOSES) == len(io.read_batch(total["output"]))
    assert_budget_xcom_matches_ledger(total["privacy"], cluster, f"cross_site_totals/{run_id}/secure_sum")

    # The ledger is the Postgres `privacy` database: both releases, nothing else, no SQLite file.
    history = ledger(cluster).history(DATASET)
    assert [c.dag_id for c in history] == ["dp_daily_statistics", "cross_site_totals"]
    assert ledger(cluster).status(DATASET).spent_epsilon == pytest.approx(history[-1].spent_epsilon)
    assert not list(cluster.state.rglob("privacy_budget.db"))
    # Each site's round state stayed in its own worker's storage.
    for service in ("airflow-worker", *map(site_service, SITES)):
        private = cluster.state / "homes" / service / "site-private"
        found = sorted(p.name for p in private.iterdir()) if private.exists() else []
        expected = [service.removeprefix("worker-").replace("-", "_")] if service != "airflow-worker" else []
        assert found == expected, (service, found)


def test_federated_rounds_with_each_site_training_on_its_own_worker(cluster: Cluster):
    """``federated_training``: three rounds, each site's training and secure-sum steps on its
    own worker, FedAvg on the default worker; record-level DP charged per site in Postgres."""
    api, dag_id, date = cluster.api, "federated_training", "2026-05-01"
    api.wait_for_dags([dag_id])
    write_raw_batches(cluster, [date])
    run_id, state = run_dag(cluster, dag_id, date, "federated", timeout=1200)
    assert state == "success"

    tis = api.task_instances(dag_id, run_id)
    rounds = sorted({int(t.split(".")[1].removeprefix("round_")) for t in tis if t.startswith("federated.round_")})
    assert rounds == [1, 2, 3]
    for r in rounds:
        prefix = f"federated.round_{r}"
        for site in SITES:
            for task_id in [f"{prefix}.train_{site}", *(f"{prefix}.secure_sum.{s}_{site}" for s in SITE_STEPS)]:
                ti = tis[task_id]
                assert ti["state"] == "success" and ti["queue"] == site, (task_id, ti["state"], ti["queue"])
                assert ti["hostname"].startswith(f"{site_service(site)}@"), (task_id, ti["hostname"])
        for task_id in (f"{prefix}.aggregate", *(f"{prefix}.secure_sum.{s}" for s in AGGREGATOR_STEPS)):
            assert tis[task_id]["hostname"].startswith("airflow-worker@"), (task_id, tis[task_id]["hostname"])
    for site in SITES:  # the site's worker log agrees: its training ran there
        assert {f"federated.round_{r}.train_{site}" for r in rounds} <= \
            executed_on(cluster, dag_id, run_id, site_service(site))

    last = api.xcom(dag_id, run_id, "federated.round_3.aggregate")
    assert last["round"] == 3 and last["metrics"]["sites"] == list(SITES)
    assert local_path(last["checkpoint"]).is_file()
    privacy = last["privacy"]
    assert privacy["level"] == "record" and set(privacy["per_site"]) == set(SITES)
    for site in SITES:  # each site's DP-SGD budget is a Postgres ledger row, equal to XCom
        status = ledger(cluster).status(f"patients_{site}")
        assert status.releases == 3 and status.spent_epsilon <= status.cap_epsilon
        assert privacy["per_site"][site] == pytest.approx(status.spent_epsilon, abs=1e-6)
    cluster.timings["federated_training: eval accuracy after 3 rounds"] = f"{last['metrics']['eval_accuracy']:.3f}"


def test_paillier_round_with_the_key_holder_on_its_own_worker(cluster: Cluster):
    """``paillier_totals``: the key holder makes the round's key pair and decrypts only the
    aggregate, on its own queue and worker; sites encrypt on theirs; the aggregator adds
    ciphertexts on the default worker without any key. The result is the sites' sum."""
    api, dag_id, date = cluster.api, "paillier_totals", "2026-04-01"
    api.wait_for_dags([dag_id])
    write_raw_batches(cluster, [date])
    run_id, state = run_dag(cluster, dag_id, date, "paillier")
    assert state == "success"

    tis = api.task_instances(dag_id, run_id)
    placement = {"paillier.keygen": KEYHOLDER, "paillier.decrypt": KEYHOLDER,
                 "paillier.charge": "default", "paillier.add": "default",
                 **{f"paillier.encrypt_{site}": site for site in SITES},
                 **{f"local_vector_{site}": site for site in SITES}}
    for task_id, queue in placement.items():
        service = "airflow-worker" if queue == "default" else site_service(queue)
        assert tis[task_id]["queue"] == queue, (task_id, tis[task_id]["queue"])
        assert tis[task_id]["hostname"].startswith(f"{service}@"), (task_id, tis[task_id]["hostname"])
    assert executed_on(cluster, dag_id, run_id, site_service(KEYHOLDER)) == {"paillier.keygen", "paillier.decrypt"}

    out = api.xcom(dag_id, run_id, "paillier.decrypt")
    assert out["survivors"] == list(SITES) and out["dropped"] == []
    total = io.read_batch(out["output"])["value"].to_numpy()
    exact = sum(io.read_batch(f"file://{cluster.state}/homes/{site_service(site)}/site-private/{site}"
                              f"/vectors/date={date}.parquet").to_numpy().ravel() for site in SITES)
    # frac_bits=8 with unbiased stochastic rounding: each site's value is off by < 2^-8.
    assert len(total) == 2 * len(DIAGNOSES) and abs(total - exact).max() < len(SITES) * 2**-8
    # The sealed Paillier private key is only in the key holder's own storage.
    sealed = sorted(p.relative_to(cluster.state).parts[:2] for p in cluster.state.rglob("paillier.key.enc"))
    assert sealed and set(sealed) == {("homes", site_service(KEYHOLDER))}


def test_site_worker_killed_mid_round(cluster: Cluster):
    """SIGKILL site_c's worker while it masks; a worker *without* site_c's key then takes
    site_c's queue (and must fail, not borrow a key); the round completes through the dropout
    path or fails releasing nothing; with site_c's worker back the next round succeeds."""
    api, dag_id = cluster.api, "cross_site_totals"
    api.wait_for_dags([dag_id])
    reset_budget(cluster)
    first, second = "2026-02-01", "2026-02-02"
    write_raw_batches(cluster, [first, second])
    run_id = f"it{RUN_TAG}-fault-{first}"
    started, wall_start = time.monotonic(), time.time()
    api.trigger(dag_id, first, run_id)
    # Kill while site_c masks its input (or, if that was too quick to catch, right after).
    at_kill = wait_for_task(cluster, dag_id, run_id, "secure_sum.mask_site_c",
                            ("running", *TERMINAL_TI_STATES), timeout=600, poll=0.25)
    cluster.kill("worker-site-c")
    cluster.timings["fault: mask_site_c state when worker-site-c was killed"] = at_kill
    # A running task of a dead worker fails once its heartbeat times out (60 s on the
    # cluster); the aggregator then asks the survivors to unmask.
    wait_for_task(cluster, dag_id, run_id, "secure_sum.request", TERMINAL_TI_STATES, timeout=600)

    # Misrouting: the default worker's environment (default ring only) on site_c's queue.
    cluster.start("airflow-worker", name="misrouted-site-c", queues="site_c")
    try:
        reveal = "secure_sum.reveal_site_c"
        assert wait_for_task(cluster, dag_id, run_id, reveal, TERMINAL_TI_STATES, timeout=600) == "failed"
        ti = api.task_instances(dag_id, run_id)[reveal]
        assert ti["hostname"].startswith("misrouted-site-c@"), ti["hostname"]
        assert "privacy_keys_site_c" in api.task_log(dag_id, run_id, reveal, ti["try_number"])
        state = api.wait_for_run(dag_id, run_id, timeout=600)
    finally:
        cluster.stop("misrouted-site-c")
    cluster.timings[f"{dag_id} {first} (fault: kill + misrouted worker)"] = \
        f"{state} in {time.monotonic() - started:.1f}s"

    tis = api.task_instances(dag_id, run_id)
    destination = local_path(f"{cluster.demo_root}/secure_sum/visits_and_cost_by_diagnosis/date={first}.parquet")
    if state == "success":  # recovered: the sum of the survivors, site_c's masks removed
        total = api.xcom(dag_id, run_id, "secure_sum.unmask")
        assert {"site_a", "site_b"} <= set(total["survivors"])
        if tis["secure_sum.mask_site_c"]["state"] != "success":
            assert total["dropped"] == ["site_c"] and total["survivors"] == ["site_a", "site_b"]
        assert len(io.read_batch(total["output"])) == 2 * len(DIAGNOSES)
        cluster.timings["fault: outcome"] = f"recovered, survivors {total['survivors']}, dropped {total['dropped']}"
    else:  # failed cleanly: nothing released
        assert tis["secure_sum.unmask"]["state"] != "success"
        assert not destination.exists() or destination.stat().st_mtime < wall_start
        cluster.timings["fault: outcome"] = "failed cleanly (nothing released)"

    started = time.monotonic()
    cluster.start("worker-site-c")
    cluster.timings["fault: worker-site-c restart"] = f"{time.monotonic() - started:.1f}s"
    run_id, state = run_dag(cluster, dag_id, second, "after-restart")
    assert state == "success"
    assert_site_placement(cluster, dag_id, run_id)
    total = api.xcom(dag_id, run_id, "secure_sum.unmask")
    assert total["survivors"] == list(SITES) and total["dropped"] == []


def test_concurrent_releases_stop_exactly_at_the_cap(cluster: Cluster):
    """Several days' releases at once against one budget: exactly as many succeed as the cap
    affords, the others fail with the budget message (no retry, nothing written), and the
    ledger never exceeds the cap -- the ledger's row lock serializes the charges."""
    api, dag_id = cluster.api, "dp_daily_statistics"
    api.wait_for_dags([dag_id])
    reset_budget(cluster)
    dates = [f"2026-03-{day:02d}" for day in range(1, 16)]
    write_raw_batches(cluster, dates[:1])

    # One release first: its recorded mechanism events say what each further one costs.
    first_run, state = run_dag(cluster, dag_id, dates[0], "reference")
    assert state == "success"
    events = ledger(cluster).history(DATASET)[0].events
    # The demo cap (12, 1e-5) also covers the sites' training; spend half of it elsewhere so
    # that a handful of further daily releases fit (as many as the dates and max_active_runs allow).
    elsewhere = [{"kind": "pure", "epsilon": 6.0}]
    ledger(cluster).charge(DATASET, release_id="elsewhere", cost=PrivacyCost(0.0, 0.0, elsewhere))
    status = ledger(cluster).status(DATASET)
    # patients' spend is a patient's worst case: its own releases composed with those of the
    # site partition (federated training of earlier tests) the patient is in, maximised over sites
    partitions = [[e for c in ledger(cluster).history(s.dataset) for e in c.events]
                  for s in ledger(cluster).datasets() if s.parent == DATASET] or [[]]

    def worst(releases: int) -> float:
        return max(compose_epsilon(elsewhere + events * releases + site, status.cap_delta, status.accountant)
                   for site in partitions)

    def affordable_after_first() -> int:
        k = 0
        while worst(k + 2) <= status.cap_epsilon * (1 + 1e-9):
            k += 1
        return k

    expected = affordable_after_first()
    n_runs = expected + 2
    assert n_runs <= len(dates) - 1, "cap larger than this test's dates allow"
    max_active = api.get(f"/dags/{dag_id}/details")["max_active_runs"]
    if max_active < n_runs:
        pytest.skip(f"{dag_id} has max_active_runs={max_active}; needs >= {n_runs} "
                    "(AIRFLOW_PRIVACY_MAX_ACTIVE_RUNS read by dags/dp_daily_statistics.py)")
    days = dates[1:1 + n_runs]
    write_raw_batches(cluster, days)
    run_ids = {day: f"it{RUN_TAG}-concurrent-{day}" for day in days}
    started, wall_start = time.monotonic(), time.time()
    for day, run_id in run_ids.items():
        api.trigger(dag_id, day, run_id)
    states = {day: api.wait_for_run(dag_id, run_id, timeout=900) for day, run_id in run_ids.items()}
    elapsed = time.monotonic() - started

    succeeded = [d for d, s in states.items() if s == "success"]
    failed = [d for d, s in states.items() if s == "failed"]
    tis = {day: api.task_instances(dag_id, run_ids[day])["visit_statistics"] for day in days}
    spans = sorted((dt.datetime.fromisoformat(t["start_date"]), dt.datetime.fromisoformat(t["end_date"]))
                   for t in tis.values())
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    cluster.timings["concurrency"] = (
        f"{n_runs} runs triggered at once, cap affords {expected} after the reference run: "
        f"{len(succeeded)} succeeded, {len(failed)} failed, {elapsed:.1f}s in all, "
        f"up to {overlap} releases running at the same time")

    assert overlap >= 2, "the releases did not run concurrently"
    assert len(succeeded) == expected and len(failed) == n_runs - expected, states
    for day in failed:
        assert tis[day]["try_number"] == 1  # a budget failure is not retried
        assert BUDGET_MESSAGE in api.task_log(dag_id, run_ids[day], "visit_statistics", 1)
        destination = local_path(f"{cluster.demo_root}/dp/visit_statistics/date={day}.parquet")
        assert not destination.exists() or destination.stat().st_mtime < wall_start
    charges = [c for c in ledger(cluster).history(DATASET) if c.release_id != "elsewhere"]
    assert {c.run_id for c in charges} == {first_run, *(run_ids[d] for d in succeeded)}
    assert all(c.spent_epsilon <= status.cap_epsilon * (1 + 1e-9) for c in charges)
    final = ledger(cluster).status(DATASET)
    assert final.releases == 2 + expected and final.spent_epsilon <= status.cap_epsilon * (1 + 1e-9)
    assert final.spent_epsilon == pytest.approx(worst(1 + expected))
    for day in succeeded:
        privacy = api.xcom(dag_id, run_ids[day], "visit_statistics", "privacy_budget")
        charge = ledger(cluster).get_release(DATASET, f"{dag_id}/{run_ids[day]}/visit_statistics/-1")
        assert charge.status == "released" and privacy["epsilon"] == pytest.approx(charge.epsilon)
        # XCom shows the spend when the release finished: this charge's, or later ones' too.
        assert charge.spent_epsilon - 1e-9 <= privacy["spent_epsilon"] <= status.cap_epsilon * (1 + 1e-9)
