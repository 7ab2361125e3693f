"""The budget dashboard against hostile requests and hostile stored values.

Standing checks: every route refuses anonymous requests (401) and every forged token (403):
``alg=none``, a foreign key, a tampered payload, a truncated signature, garbage -- as a
bearer header and as the UI's ``_token`` cookie; an expired token signed with the real key
gets 401, as everywhere in Airflow. And issue 17 §7: a cap of
1.7e308 (or inf/NaN written into the ledger by hand) must not take the dashboard down for
everybody, and a dataset named ``x/releases`` must be readable.
"""

from __future__ import annotations

import base64
import json
import math
import os

import jwt
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.plugins.budget_api import create_app
from airflow_privacy.plugins.budget_urls import URL_PREFIX

ROUTES = [
    "/privacy/",
    "/privacy/dashboard",
    "/privacy/dashboard/datasets/patients",
    "/privacy/api/datasets",
    "/privacy/api/datasets/patients",
    "/privacy/api/datasets/patients/releases",
    "/privacy/api/datasets/x%2Freleases",
    "/privacy/api/federated",
]


@pytest.fixture(scope="module")
def token(airflow_db) -> str:
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> PrivacyLedger:
    url = f"sqlite:///{tmp_path}/ledger.db"
    conn = json.dumps({"conn_type": "privacy_budget", "host": url})
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT", conn)
    ledger = PrivacyLedger(url)
    ledger.set_budget("patients", epsilon=3.0, delta=1e-6, accountant="basic")
    ledger.charge("patients", release_id="r1", cost=_cost(1.0))
    return ledger


@pytest.fixture
def anonymous() -> TestClient:
    root = FastAPI()
    root.mount(URL_PREFIX, create_app())
    return TestClient(root)


def _cost(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forgeries(token: str) -> dict[str, str]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    head, _, signature = token.split(".")
    secret = os.environ["AIRFLOW__API_AUTH__JWT_SECRET"]
    expired = {**claims, "iat": 1, "nbf": 1, "exp": 2}
    return {
        "alg=none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg=None, signature kept": f"{_b64({**header, 'alg': 'none'})}.{_b64(claims)}.{signature}",
        "foreign key": jwt.encode(claims, os.urandom(64).hex(), algorithm=header["alg"]),
        "tampered payload": f"{head}.{_b64({**claims, 'sub': 'someone-else'})}.{signature}",
        "expired, real key": jwt.encode(expired, secret, algorithm=header["alg"]),
        "truncated signature": token[:-8],
        "garbage": "not-a-jwt",
    }


def test_anonymous_401_forged_403_on_every_route(anonymous, ledger, token):
    forged = _forgeries(token)
    outcomes: dict[int, int] = {}
    for path in ROUTES:
        assert anonymous.get(path).status_code == 401, path
        for name, bad in forged.items():
            for how in (
                {"headers": {"Authorization": f"Bearer {bad}"}},
                {"cookies": {"_token": bad}},
            ):
                anonymous.cookies.clear()
                code = anonymous.get(path, **how).status_code
                outcomes[code] = outcomes.get(code, 0) + 1
                # Airflow answers an expired token 401 (log in again), any forgery 403.
                assert code == (401 if name.startswith("expired") else 403), (path, name, how)
        anonymous.cookies.clear()
        assert anonymous.get(path, headers={"Authorization": f"Bearer {token}"}).status_code in (
            200,
            404,
        )
    print(
        f"dashboard auth: {len(ROUTES)} routes x {len(forged)} forged tokens x 2 carriers "
        f"= {sum(outcomes.values())} requests, outcomes {outcomes}; "
        f"{len(ROUTES)} anonymous requests all 401"
    )


def test_a_cap_of_1_7e308_keeps_the_dashboard_up(anonymous, ledger, token):
    ledger.set_budget("huge", epsilon=1.7e308, accountant="basic")
    ledger.charge("huge", release_id="h1", cost=_cost(2.0))
    auth = {"Authorization": f"Bearer {token}"}
    page = anonymous.get("/privacy/dashboard", headers=auth)
    assert page.status_code == 200, page.text[-500:]
    assert "1.7e+308" in page.text  # the stored cap is shown as it is
    assert anonymous.get("/privacy/dashboard/datasets/huge", headers=auth).status_code == 200
    body = anonymous.get("/privacy/api/datasets/huge", headers=auth).json()
    assert body["cap_epsilon"] == 1.7e308 and body["spent_epsilon"] == 2.0


def test_non_finite_values_written_by_hand_keep_it_up(anonymous, ledger, token):
    engine = sa.create_engine(json.loads(os.environ["AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT"])["host"])
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE privacy_datasets SET cap_epsilon = :c, spent_epsilon = :s"),
            {"c": math.inf, "s": math.inf},
        )
    auth = {"Authorization": f"Bearer {token}"}
    codes = {p: anonymous.get(p, headers=auth).status_code for p in ROUTES}
    assert set(codes.values()) <= {200, 404}, codes
    body = anonymous.get("/privacy/api/datasets/patients", headers=auth).json()
    assert body["cap_epsilon"] is None  # JSON has no inf: null, not a 500


def test_a_dataset_named_x_slash_releases_is_reachable(anonymous, ledger, token):
    ledger.set_budget("x", epsilon=1.0, accountant="basic")
    ledger.set_budget("x/releases", epsilon=2.0, accountant="basic")
    ledger.charge("x/releases", release_id="xr1", cost=_cost(0.5))
    auth = {"Authorization": f"Bearer {token}"}
    named = anonymous.get("/privacy/api/datasets/x%2Freleases", headers=auth).json()
    assert named["dataset"] == "x/releases" and named["cap_epsilon"] == 2.0
    assert anonymous.get("/privacy/api/datasets/x%2freleases", headers=auth).json()["dataset"] == (
        "x/releases"
    )
    its_releases = anonymous.get("/privacy/api/datasets/x%2Freleases/releases", headers=auth).json()
    assert its_releases["dataset"] == "x/releases" and its_releases["total_entries"] == 1
    of_x = anonymous.get("/privacy/api/datasets/x/releases", headers=auth).json()
    assert (
        of_x["dataset"] == "x" and of_x["total_entries"] == 0
    )  # a literal "/" still means releases
    page = anonymous.get("/privacy/dashboard/datasets/x%2Freleases", headers=auth)
    assert page.status_code == 200 and "x/releases" in page.text
