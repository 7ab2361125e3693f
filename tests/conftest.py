"""Test session setup: a throw-away embedded Airflow (SQLite) shared by the whole run.

The environment must be set before anything imports ``airflow``, which reads its config at
import time -- hence module level, not a fixture.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from airflow_privacy.demo.home import scrub_environment  # imports no Airflow

REPO = Path(__file__).resolve().parent.parent
# Nothing inherited may point the session at a real deployment: a shell's
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, AIRFLOW_CONFIG or AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT
# would have the tests migrate, fill and charge a user's metadata DB and ledger.
scrub_environment(os.environ, keep=())
_HOME = Path(tempfile.mkdtemp(prefix="airflow-privacy-tests-"))
atexit.register(shutil.rmtree, _HOME, True)  # the session's metadata DB, ledger and demo data
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
# A 64-byte JWT secret, as production should have (Airflow's generated default is 16 bytes).
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = os.urandom(64).hex()
os.environ["AIRFLOW_PRIVACY_DEMO_ROOT"] = f"file://{_HOME}/demo-data"
# The test session's key ring: an ordinary env connection, like a secrets backend would give.
from airflow_privacy.core.crypto import KeyRing  # noqa: E402

TEST_KEYRING = KeyRing.generate()
os.environ["AIRFLOW_CONN_PRIVACY_KEYS_DEFAULT"] = json.dumps(
    {"conn_type": "privacy_keys", "password": TEST_KEYRING.to_json()}
)
SITE_KEYRINGS = {site: KeyRing.generate() for site in ("site_a", "site_b", "site_c")}
for _site, _ring in SITE_KEYRINGS.items():
    os.environ[f"AIRFLOW_CONN_PRIVACY_KEYS_{_site.upper()}"] = json.dumps(
        {"conn_type": "privacy_keys", "password": _ring.to_json()}
    )
# The data holder's key pair (issue 19): its private ring, and the public ring sites hold.
from airflow_privacy.core.crypto import PrivateKeyRing  # noqa: E402

HOLDER_RING = PrivateKeyRing.generate(key_id="holder-tests")
for _conn_id, _text in (("PRIVACY_KEYS_HOLDER", HOLDER_RING.to_json()),
                        ("PRIVACY_RECIPIENT_HOLDER", HOLDER_RING.public_ring().to_json())):
    os.environ[f"AIRFLOW_CONN_{_conn_id}"] = json.dumps({"conn_type": "privacy_keys", "password": _text})

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """A migrated SQLite metadata DB (``airflow db migrate`` in a subprocess, once)."""
    airflow = Path(sys.executable).parent / "airflow"
    proc = subprocess.run(
        [str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return airflow_home


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="session")
def keyring() -> KeyRing:
    return TEST_KEYRING


@pytest.fixture(scope="session")
def site_keyrings() -> dict[str, KeyRing]:
    return SITE_KEYRINGS


@pytest.fixture(scope="session")
def holder_ring() -> PrivateKeyRing:
    """The data holder's private ring (connection ``privacy_keys_holder``; its public ring is
    ``privacy_recipient_holder``)."""
    return HOLDER_RING


@pytest.fixture
def demo_root() -> str:
    return os.environ["AIRFLOW_PRIVACY_DEMO_ROOT"]


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL 15 server (tests/postgres_server.py); ``postgres.url(name)``
    creates a database and returns its SQLAlchemy URL."""
    from postgres_server import ScratchPostgres

    with ScratchPostgres() as pg:
        yield pg
