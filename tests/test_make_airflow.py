"""``make airflow`` serves the UI on ``PORT=`` and the DAGs of ``DAGS=`` (issue 18 §5): the
Makefile's wiring, the demo driver's checks of both, and a real ``airflow standalone`` started
by ``make airflow`` on a free port over a folder holding one DAG of the user's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _make_n(*args: str, env: dict | None = None) -> str:
    # --no-print-directory: under `make test` (MAKELEVEL >= 1) make would end with "Leaving directory"
    out = subprocess.run(["make", "--no-print-directory", "-n", "airflow", *args], cwd=REPO, capture_output=True, text=True, check=True,
                         env=env or os.environ.copy())
    return out.stdout.strip().splitlines()[-1]


def test_port_and_dags_reach_the_standalone_command():
    assert _make_n().endswith(f'--standalone --port "8080" --dags-folder "{REPO}/dags"')
    assert _make_n("PORT=9090", "DAGS=/srv/dags").endswith('--standalone --port "9090" --dags-folder "/srv/dags"')
    # a PORT or DAGS exported by the shell (PaaS shells export PORT) does not move the UI
    shell = {**os.environ, "PORT": "1234", "DAGS": "/elsewhere"}
    assert _make_n(env=shell).endswith(f'--port "8080" --dags-folder "{REPO}/dags"')


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "0"], "--port must be a TCP port in 1..65535, got 0"),
    (["--port", "70000"], "--port must be a TCP port in 1..65535, got 70000"),
    (["--dags-folder", "/no/such/folder"], "--dags-folder '/no/such/folder' is not a directory"),
])
def test_bad_port_or_folder_is_refused_before_anything_starts(args, message, tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "airflow_privacy.demo", "--standalone", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "home").exists()


_USER_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("users_own_dag", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    EmptyOperator(task_id="nothing")
"""


def _get(url: str, **headers: str):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_make_airflow_serves_the_users_dags_on_the_users_port(tmp_path):
    from test_runbook import _free_port

    port, dags, home = _free_port(), tmp_path / "my_dags", tmp_path / "home"
    dags.mkdir()
    (dags / "users_own_dag.py").write_text(_USER_DAG)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "make-airflow.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "airflow", f"PORT={port}", f"DAGS={dags}", f"DEMO_HOME={home}"], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        dag_ids: list[str] = []
        while not dag_ids:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
            try:
                _get(f"{base}/api/v2/monitor/health")
                password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
                req = urllib.request.Request(f"{base}/auth/token", headers={"Content-Type": "application/json"},
                                             data=json.dumps({"username": "admin", "password": password}).encode())
                with urllib.request.urlopen(req, timeout=10) as r:
                    token = json.loads(r.read())["access_token"]
                dag_ids = [d["dag_id"] for d in _get(f"{base}/api/v2/dags", Authorization=f"Bearer {token}")["dags"]]
            except (urllib.error.URLError, ConnectionError, TimeoutError, FileNotFoundError, KeyError):
                continue
        assert dag_ids == ["users_own_dag"]  # the repository's example DAGs are not served
        assert f"Airflow UI on http://localhost:{port}, DAGs from {dags}" in log.read_text()
    finally:
        # standalone shuts its components down on SIGINT; then whatever is left of the group
        for sig, grace in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
