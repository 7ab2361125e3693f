"""Shared fixtures of the dashboard tests: Airflow's auth manager and tokens, a SQLite ledger
behind the default ``privacy_budget`` connection, and the app mounted as the API server mounts it."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.plugins.budget_api import create_app
from airflow_privacy.plugins.budget_urls import URL_PREFIX


@pytest.fixture(scope="module")
def auth_manager(airflow_db):
    """Airflow's configured auth manager (SimpleAuthManager by default), as the API server has it."""
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.fixture(scope="module")
def token(auth_manager) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.fixture(scope="module")
def viewer_token(auth_manager) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> PrivacyLedger:
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", json.dumps({"conn_type": "privacy_budget", "host": url}))
    return PrivacyLedger(url)


@pytest.fixture
def client(token) -> TestClient:
    """The app mounted under /privacy as Airflow's API server mounts it, logged in by cookie."""
    root = FastAPI()
    root.mount(URL_PREFIX, create_app())
    return TestClient(root, cookies={"_token": token})


@pytest.fixture
def anonymous() -> TestClient:
    root = FastAPI()
    root.mount(URL_PREFIX, create_app())
    return TestClient(root)
