"""docker-compose.yml and the native cluster script describe one topology.

Both are the distributed deployment (docker-compose where a Docker engine exists,
``scripts/cluster/cluster.sh`` where it does not); ``cluster.sh topology`` prints the script's
services, their Airflow commands and key connections. Needs no cluster and no Docker.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from cluster_client import CLUSTER_SH, KEYHOLDER, REPO, SITES


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def script() -> dict[str, tuple[str, list[str]]]:
    out = subprocess.run(["bash", str(CLUSTER_SH), "topology"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {name: (command, [] if keys == "-" else keys.split(",")) for name, command, keys in rows}


def _command(service: dict) -> str:
    command = service.get("command", "-")
    if isinstance(command, list):
        command = " ".join(command)
    return command.split("airflow ", 1)[-1].strip()  # ["bash", "-c", "airflow db migrate"]


PREFIX = "AIRFLOW_CONN_PRIVACY_KEYS_"


PARTIES = (*SITES, KEYHOLDER)  # each holds a key ring no other process may see


def _party_keys(names) -> list[str]:
    return sorted(k for k in names if k.startswith(PREFIX) and k.removeprefix(PREFIX).lower() in PARTIES)


def test_same_services(compose, script):
    assert set(compose) == set(script)


def test_same_commands_and_queues(compose, script):
    for name, (command, _) in script.items():
        if command != "-":
            assert _command(compose[name]) == command, name
    queues = {cmd.split("--queues ", 1)[1] for cmd, _ in script.values() if "--queues" in cmd}
    assert queues == {"default", *PARTIES}


def test_party_keys_only_on_their_own_worker(compose, script):
    for name, (_, keys) in script.items():
        own = [PREFIX + name.removeprefix("worker-").replace("-", "_").upper()] if name.startswith("worker-") else []
        assert _party_keys(keys) == own, name
        assert _party_keys(compose[name].get("environment", {})) == own, name
