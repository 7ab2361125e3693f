"""The native distributed cluster (``scripts/cluster/cluster.sh``) for the integration tests.

One cluster per test session: Postgres, Redis and Airflow 3 with the CeleryExecutor on
127.0.0.1, each data site's worker holding only its own key ring. The fixture starts it with
``cluster.sh up`` and stops it (by PID) with ``cluster.sh down``; the script's watchdog also
stops it if this test process dies without tearing down. Under ``cluster.sh run -- pytest
...`` (``make cluster-test``) the fixture uses that cluster instead
(``$AIRFLOW_PRIVACY_CLUSTER_ENV``). Set ``AIRFLOW_PRIVACY_CLUSTER_KEEP=1`` to keep the state
directory (logs, task logs, data) after the session.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cluster_client import CLUSTER_SH, TIMINGS, AirflowAPI, Cluster, script_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the native distributed cluster (scripts/cluster)")


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("native cluster timings")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value}")


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    reused = os.environ.get("AIRFLOW_PRIVACY_CLUSTER_ENV")
    state = None
    keep = os.environ.get("AIRFLOW_PRIVACY_CLUSTER_KEEP") == "1"
    try:
        if reused:
            env = _read_env(Path(reused))
            state = Path(env["AIRFLOW_PRIVACY_CLUSTER_STATE"])
            # Cron schedules would add runs (and budget charges) of their own.
            assert env["AIRFLOW_PRIVACY_CLUSTER_USE_JOB_SCHEDULE"] == "False", \
                "start the cluster with `cluster.sh run --no-schedules -- ...` for these tests"
        else:
            state = Path(tempfile.mkdtemp(prefix="airflow-privacy-cluster-"))
            started = time.monotonic()
            # --owner-pid: the script's watchdog stops the cluster if this process dies
            # without tearing down; --max-lifetime bounds it in any case (CI gets 90 minutes).
            proc = subprocess.run(
                ["bash", str(CLUSTER_SH), "up", "--state", str(state), "--no-schedules",
                 "--owner-pid", str(os.getpid()), "--max-lifetime", "5400"],
                capture_output=True, text=True, timeout=1800, env=script_env())
            if proc.returncode != 0:  # the script has stopped whatever it had started
                keep = True  # its logs tell why
                pytest.fail(f"cluster.sh up failed (exit {proc.returncode}); state kept in {state}:\n"
                            f"{proc.stderr[-5000:]}", pytrace=False)
            TIMINGS["cluster start (cluster.sh up)"] = f"{time.monotonic() - started:.1f}s"
            env = _read_env(state / "cluster.env")
        api = AirflowAPI(env["AIRFLOW_PRIVACY_CLUSTER_API"], env["AIRFLOW_PRIVACY_CLUSTER_USER"],
                         env["AIRFLOW_PRIVACY_CLUSTER_PASSWORD"])
        yield Cluster(state=state, env=env, api=api)
    finally:
        if state is not None and not reused:
            subprocess.run(["bash", str(CLUSTER_SH), "down", str(state), *([] if keep else ["--purge"])],
                           capture_output=True, text=True, timeout=600, env=script_env())
