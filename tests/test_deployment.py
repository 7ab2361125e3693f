"""The deployments: docker-compose.yml and the Dockerfile (no Docker engine here: their
structure), the Makefile's demo home, the demo driver's refusal to reset a real Airflow home,
and cluster.sh stopping what it started when it is interrupted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from airflow_privacy.demo.home import DATA_MARKER, MARKER, scrub_environment

REPO = Path(__file__).resolve().parent.parent
SITES = ("site_a", "site_b", "site_c")
CLUSTER_SH = REPO / "scripts" / "cluster" / "cluster.sh"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_present(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker"):
        assert name in services, name
    assert services["airflow-apiserver"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_one_worker_per_party_queue_with_only_its_own_keys(compose):
    """A worker per site, one for the Paillier key holder and one for the data holder, each
    with only its own ring."""
    workers = {n: s for n, s in compose["services"].items() if "celery worker" in str(s.get("command", ""))}
    queues = {s["command"].split("--queues", 1)[1].strip(): n for n, s in workers.items()}
    assert set(queues) == {"default", *SITES, "keyholder", "holder"}
    for site in (*SITES, "keyholder", "holder"):
        env = workers[queues[site]]["environment"]
        keys = [k for k in env if k.startswith("AIRFLOW_CONN_PRIVACY_KEYS_")]
        assert keys == [f"AIRFLOW_CONN_PRIVACY_KEYS_{site.upper()}"]


def test_healthchecks_and_no_runtime_pip(compose):
    for name, svc in compose["services"].items():
        if name != "airflow-init":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in str(svc.get("environment", {}))
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (REPO / "Dockerfile").read_text()


def test_ledger_has_its_own_postgres_database(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert "/privacy" in env["AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT"]
    assert "CREATE DATABASE privacy" in (REPO / "scripts/postgres-init.sql").read_text()
    assert "FROM apache/airflow:3.3.2" in (REPO / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker client not installed")
def test_docker_compose_config_parses():
    proc = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=REPO, capture_output=True, text=True)
    if "is not a docker command" in proc.stderr or "unknown" in proc.stderr.lower():
        pytest.skip("docker compose plugin not available")
    assert proc.returncode == 0, proc.stderr


def test_scheduler_healthcheck_has_its_server(compose):
    """Airflow serves the scheduler's :8974/health only with enable_health_check (default False)."""
    scheduler = compose["services"]["airflow-scheduler"]
    assert "8974/health" in " ".join(scheduler["healthcheck"]["test"])
    assert scheduler["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_shared_data_volume_belongs_to_the_airflow_user(compose):
    services = compose["services"]
    init = services["airflow-init"]
    assert init["user"] == "0:0"
    command = " ".join(init["command"])
    assert "chown -R 50000:0 /opt/airflow/shared-data" in command and command.endswith("airflow db migrate")
    for name, svc in services.items():
        if "shared-data:/opt/airflow/shared-data" in svc.get("volumes", []) and name != "airflow-init":
            assert svc["user"].startswith("50000:"), name
    assert "mkdir -p /opt/airflow/shared-data" in (REPO / "Dockerfile").read_text()


def test_image_installs_the_cluster_extra_and_keeps_airflow():
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [line for line in dockerfile.splitlines() if line.startswith("RUN ") and "/opt/airflow-privacy[" in line]
    assert len(installs) == 1
    extras = set(re.search(r"/opt/airflow-privacy\[([^\]]+)\]", installs[0]).group(1).split(","))
    assert {"cluster", "federated", "paillier"} <= extras
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in installs[0]  # pip must not move the image's Airflow
    # the provider's own accountant: no dp-accounting (its attrs<24 pin breaks Airflow's), and pip check passes
    assert "dp-accounting" not in dockerfile and "pip check" in installs[0]
    cluster = re.search(r"^cluster = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.S | re.M).group(1)
    assert re.search(r'"celery\[redis\][^"]*<5\.7"', cluster), cluster


# -- the demo's home ----------------------------------------------------------------------------
def _make_env(*args: str, **env: str) -> str:
    rule = 'print-env: ; @echo "$$AIRFLOW_HOME|$$AIRFLOW_PRIVACY_DEMO_ROOT|$$AIRFLOW__CORE__DAGS_FOLDER"'
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "--eval", rule, "print-env", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_never_takes_airflow_home_from_the_shell(tmp_path):
    ours = REPO / ".airflow"
    shell = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW_PRIVACY_DEMO_ROOT": "file:///data/real",
             "DEMO_HOME": str(tmp_path / "from-env")}
    assert _make_env(**shell) == f"{ours}|file://{ours}/demo-data|{REPO / 'dags'}"
    other = tmp_path / "demo"
    assert _make_env(f"DEMO_HOME={other}", **shell) == f"{other}|file://{other}/demo-data|{REPO / 'dags'}"


def test_scrub_environment_drops_what_points_at_a_real_deployment():
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://prod/airflow",
        "AIRFLOW__SECRETS__BACKEND": "x", "AIRFLOW_CONFIG": "/home/u/airflow/airflow.cfg",
        "AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT": "{}", "AIRFLOW_CONN_PRIVACY_KEYS_DEFAULT": "{}",
        "AIRFLOW__CORE__DAGS_FOLDER": "/repo/dags", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW_HOME": "/repo/.airflow", "AIRFLOW_PRIVACY_DEMO_ROOT": "file:///repo/.airflow/demo-data", "PATH": "/bin",
    }
    dropped = scrub_environment(env)
    assert dropped == ["AIRFLOW_CONFIG", "AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", "AIRFLOW_CONN_PRIVACY_KEYS_DEFAULT",
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__SECRETS__BACKEND"]
    assert sorted(env) == ["AIRFLOW_HOME", "AIRFLOW_PRIVACY_DEMO_ROOT", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
                           "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES", "PATH"]


def _demo(home: Path, root: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_PRIVACY_DEMO_ROOT"}
    env["AIRFLOW_HOME"] = str(home)
    if root is not None:
        env["AIRFLOW_PRIVACY_DEMO_ROOT"] = root
    # no DAGs and a refusal expected before `airflow db migrate`: seconds, not minutes
    return subprocess.run([sys.executable, "-m", "airflow_privacy.demo", "--days", "1", "--dags"], env=env,
                          capture_output=True, text=True, timeout=120)


def _real_home(path: Path) -> Path:
    (path / "demo-data").mkdir(parents=True)
    (path / "airflow.cfg").write_text("[core]\n")
    (path / "privacy_budget.db").write_text("a real ledger")
    (path / "demo-data" / "batch.parquet").write_text("real data")
    return path


def test_demo_refuses_to_reset_a_real_airflow_home(tmp_path):
    home = _real_home(tmp_path / "airflow")
    proc = _demo(home)
    assert proc.returncode == 1 and "is not a demo home" in proc.stderr, proc.stderr[-2000:]
    assert (home / "privacy_budget.db").read_text() == "a real ledger"
    assert (home / "demo-data" / "batch.parquet").read_text() == "real data"
    assert not (home / MARKER).exists() and sorted(p.name for p in home.iterdir()) == [
        "airflow.cfg", "demo-data", "privacy_budget.db"]


def test_demo_refuses_to_delete_a_data_root_it_did_not_write(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / MARKER).write_text("")
    (home / "privacy_budget.db").write_text("demo ledger")
    real = tmp_path / "warehouse"
    real.mkdir()
    (real / "table.parquet").write_text("real data")
    for root, message in ((f"file://{real}", "has no"), (f"file://{home}", "or contains it"),
                          (f"file://{tmp_path}", "or contains it")):
        proc = _demo(home, root)
        assert proc.returncode == 1 and message in proc.stderr, (root, proc.stderr[-2000:])
        assert (real / "table.parquet").read_text() == "real data"
        assert (home / "privacy_budget.db").read_text() == "demo ledger"  # nothing deleted on refusal


def test_demo_claims_a_new_home_and_marks_its_data_root(tmp_path):
    from airflow_privacy.demo.home import claim_home, start_fresh

    home = claim_home(tmp_path / "new")
    assert (home / MARKER).is_file()
    (home / "privacy_budget.db").write_text("old")
    (home / "site-private" / "site_a").mkdir(parents=True)
    root = tmp_path / "elsewhere"
    start_fresh(home, f"file://{root}")  # empty (missing) root outside the home: allowed, and marked
    assert (root / DATA_MARKER).is_file() and not (home / "privacy_budget.db").exists()
    assert not (home / "site-private").exists()
    (root / "raw").mkdir()
    start_fresh(claim_home(home), f"file://{root}")  # marked by the last run: reset
    assert sorted(p.name for p in root.iterdir()) == [DATA_MARKER]


# -- cluster.sh interrupted ---------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(_pg_bin() is None or shutil.which("redis-server") is None,
                    reason="Debian's postgresql and redis-server are not installed")
@pytest.mark.parametrize(("sig", "lose_pidfile"), [(signal.SIGTERM, True), (signal.SIGHUP, False)])
def test_interrupted_cluster_start_stops_what_it_started(sig, lose_pidfile):
    """``cluster.sh up`` killed by a signal stops Postgres and Redis; also a postmaster whose
    PID file the script never wrote (what a ``pg_ctl -w -t`` timeout leaves)."""
    # not pytest's tmp_path: the postgres user must reach the data directory (pytest's is 0700)
    state = Path(tempfile.mkdtemp(prefix="airflow-privacy-cluster-"))
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.Popen(["bash", str(CLUSTER_SH), "up", "--state", str(state), "--no-schedules"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    postmaster = None
    try:
        deadline = time.monotonic() + 180
        while not (state / "pids" / "postgres.pid").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.1)
        postmaster = int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        if lose_pidfile:
            (state / "pids" / "postgres.pid").unlink()
        os.kill(proc.pid, sig)  # bash only, as a closed terminal or a `kill` would
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, err[-3000:]
        assert "stopping what was started" in err
        assert not _alive(postmaster), err[-3000:]
        assert not list((state / "pids").glob("*.pid")), err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["bash", str(CLUSTER_SH), "down", str(state), "--purge"], env=env, capture_output=True,
                       timeout=300)
        if postmaster is not None and _alive(postmaster):
            os.kill(postmaster, signal.SIGKILL)


def test_cluster_script_installs_packages_with_sudo_when_not_root():
    text = CLUSTER_SH.read_text()
    ensure = text[text.index("ensure_packages() {"):text.index("\n}\n", text.index("ensure_packages() {"))]
    assert "sudo -n true" in ensure and '"${sudo[@]}" apt-get update' in ensure
    assert '"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive' in ensure
