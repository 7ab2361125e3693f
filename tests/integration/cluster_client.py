"""Client side of the native cluster for the integration tests: Airflow's REST API and the
cluster script's per-service commands. The session fixture is in ``conftest.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "scripts" / "cluster" / "cluster.sh"
SITES = ("site_a", "site_b", "site_c")
KEYHOLDER = "keyholder"  # the Paillier key holder's queue, worker and key ring
HOLDER = "holder"  # the data holder's queue and worker: the only one with its private ring
HOLDER_PUBLIC_CONN = "privacy_recipient_holder"  # the holder's public ring, on every site's worker
TERMINAL_RUN_STATES = ("success", "failed")
TERMINAL_TI_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")

#: Wall times measured by the tests, printed at the end of the session.
TIMINGS: dict[str, Any] = {}


def script_env() -> dict[str, str]:
    """The caller's environment plus the venv the script should use; the script itself starts
    every service with a clean environment (``env -i``)."""
    return {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}


def site_service(site: str) -> str:
    """docker-compose / cluster.sh service name of a party's worker (``site_a`` -> ``worker-site-a``,
    ``keyholder`` -> ``worker-keyholder``)."""
    return "worker-" + site.replace("_", "-")


class AirflowAPI:
    """The parts of Airflow 3's REST API (``/api/v2``, JWT from ``/auth/token``) the tests use."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        import httpx

        token = httpx.post(f"{base_url}/auth/token", json={"username": username, "password": password}, timeout=30)
        token.raise_for_status()
        self.http = httpx.Client(base_url=f"{base_url}/api/v2", timeout=60,
                                 headers={"Authorization": f"Bearer {token.json()['access_token']}"})

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.http.get(path, params=params or None)
        response.raise_for_status()
        return response.json()

    def status(self, path: str) -> int:
        return self.http.get(path).status_code

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 300) -> None:
        """Until the dag-processor has parsed ``dag_ids`` (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [d for d in dag_ids if self.status(f"/dags/{d}") != 200]
            if not missing:
                return
            if time.monotonic() > deadline:
                errors = self.get("/importErrors")
                raise AssertionError(f"DAGs {missing} not parsed after {timeout}s; import errors: {errors}")
            time.sleep(2)

    def trigger(self, dag_id: str, logical_date: str, run_id: str) -> None:
        """A manual run for ``logical_date``, replacing an earlier run of that date (a logical
        date has one run per DAG; an earlier run exists when the tests reuse a cluster)."""
        when = f"{logical_date}T00:00:00Z"
        earlier = self.get(f"/dags/{dag_id}/dagRuns", logical_date_gte=when, logical_date_lte=when)["dag_runs"]
        for run in earlier:
            self.http.delete(f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}").raise_for_status()
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.http.post(f"/dags/{dag_id}/dagRuns", json={
            "dag_run_id": run_id, "logical_date": when, "conf": {}})
        assert response.status_code == 200, response.text

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        """The run's final state (``success`` / ``failed``); bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                states = {k: ti["state"] for k, ti in self.task_instances(dag_id, run_id).items()}
                raise AssertionError(f"{dag_id} {run_id} still {state} after {timeout}s: {states}")
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """``task_id`` (``task_id[map_index]`` for mapped tasks) -> task instance."""
        tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=200)["task_instances"]
        return {ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log (structured events) as one JSON text, for searching."""
        log = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                       full_content=True)
        return json.dumps(log["content"])


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    api: AirflowAPI
    timings: dict[str, Any] = field(default_factory=lambda: TIMINGS)

    @property
    def demo_root(self) -> str:
        return self.env["AIRFLOW_PRIVACY_DEMO_ROOT"]

    @property
    def ledger_url(self) -> str:
        return self.env["AIRFLOW_PRIVACY_CLUSTER_LEDGER_URL"]

    def script(self, *args: str, timeout: float = 600) -> None:
        proc = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True,
                              timeout=timeout, env=script_env())
        assert proc.returncode == 0, f"cluster.sh {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"

    def kill(self, service: str) -> None:
        """SIGKILL every process of ``service`` (its main process, pool, task supervisors, tasks)."""
        self.script("kill", str(self.state), service)

    def start(self, service: str, *, name: str | None = None, queues: str | None = None) -> None:
        """(Re)start ``service``; with ``name``/``queues``: a worker with ``service``'s
        environment (and so its key rings) consuming ``queues``."""
        extra = [*(["--name", name] if name else []), *(["--queues", queues] if queues else [])]
        self.script("start", str(self.state), service, *extra)

    def stop(self, name: str) -> None:
        self.script("stop", str(self.state), name)

    def pid(self, service: str) -> int:
        return int((self.state / "pids" / f"{service}.pid").read_text())

    def service_log(self, service: str) -> str:
        return (self.state / "logs" / f"{service}.log").read_text(errors="replace")
