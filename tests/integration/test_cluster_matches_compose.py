"""docker-compose.yml and the native cluster script describe one topology.

Both are the distributed deployment (docker-compose where a Docker engine exists,
``scripts/cluster/cluster.sh`` where it does not); ``cluster.sh topology`` prints the script's
services, their Airflow commands and key connections, ``cluster.sh settings`` the Airflow
settings every service shares (executor, broker, result backend, metadata DB, ledger
connection). Needs no cluster and no Docker.
"""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from cluster_client import CLUSTER_SH, HOLDER, HOLDER_PUBLIC_CONN, KEYHOLDER, REPO, SITES


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
    # ["bash", "-c", "chown ... && exec /entrypoint airflow db migrate"] -> "db migrate"
    return command.rsplit("airflow ", 1)[-1].strip()


PREFIX = "AIRFLOW_CONN_PRIVACY_KEYS_"


PARTIES = (*SITES, KEYHOLDER, HOLDER)  # each holds a key ring no other process may see


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


def test_only_site_workers_hold_the_data_holders_public_ring(compose, script):
    """Issue 19: each site encrypts to the data holder with its public ring; the private ring
    (``privacy_keys_holder``) is on the holder's worker alone (test above)."""
    public = f"AIRFLOW_CONN_{HOLDER_PUBLIC_CONN.upper()}"
    with_public = {name for name, (_, keys) in script.items() if public in keys}
    assert with_public == {f"worker-{site.replace('_', '-')}" for site in SITES}
    assert {name for name, service in compose.items() if public in service.get("environment", {})} == with_public
    assert script["worker-holder"][1] == [f"{PREFIX}{HOLDER.upper()}"]


@pytest.fixture(scope="module")
def script_settings() -> dict[str, str]:
    """``cluster.sh settings``: what every native service gets (random values as placeholders)."""
    out = subprocess.run(["bash", str(CLUSTER_SH), "settings"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def compose_settings() -> dict[str, str]:
    """docker-compose.yml's ``x-airflow-common`` environment, as every Airflow service gets it."""
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-airflow-common"]["environment"]


def _url(value: str) -> tuple[str, str]:
    """(scheme, path) of a URL: the driver and the database (or Redis DB number); host,
    port and credentials differ on purpose (service names vs 127.0.0.1, random passwords)."""
    parts = urlsplit(value)
    return parts.scheme, parts.path


def test_same_executor_and_auth(compose_settings, script_settings):
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER"):
        assert compose_settings[key] == script_settings[key], key
    assert script_settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for key in ("AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"):
        assert str(compose_settings[key]).lower() == script_settings[key].lower(), key


def test_same_broker_result_backend_and_metadata_db(compose_settings, script_settings):
    assert _url(compose_settings["AIRFLOW__CELERY__BROKER_URL"]) == \
        _url(script_settings["AIRFLOW__CELERY__BROKER_URL"]) == ("redis", "/0")
    assert _url(compose_settings["AIRFLOW__CELERY__RESULT_BACKEND"]) == \
        _url(script_settings["AIRFLOW__CELERY__RESULT_BACKEND"]) == ("db+postgresql+psycopg2", "/airflow")
    assert _url(compose_settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == \
        _url(script_settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == ("postgresql+psycopg2", "/airflow")


def test_ledger_connection_is_the_privacy_database_in_both(compose_settings, script_settings):
    compose_conn = json.loads(compose_settings["AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT"])
    script_conn = json.loads(script_settings["AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT"])
    assert compose_conn["conn_type"] == script_conn["conn_type"] == "privacy_budget"
    assert _url(compose_conn["host"]) == _url(script_conn["host"]) == ("postgresql+psycopg2", "/privacy")
    # the ledger is a database of its own, never Airflow's metadata DB
    assert _url(script_conn["host"])[1] != _url(script_settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])[1]
    assert "CREATE DATABASE privacy" in (REPO / "scripts" / "postgres-init.sql").read_text()


def test_one_demo_root_for_every_service(compose_settings, script_settings):
    assert compose_settings["AIRFLOW_PRIVACY_DEMO_ROOT"].startswith("file://")
    assert script_settings["AIRFLOW_PRIVACY_DEMO_ROOT"].startswith("file://")
