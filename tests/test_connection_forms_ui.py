"""The privacy connection forms on a real ``airflow api-server`` (issue 18 §2): the UI's form
endpoint ``/ui/connections/hook_meta``, and Admin > Connections > Add Connection in headless
Chromium -- relabelled fields, the generic ones hidden, a key ring saved through the form
that the hook then loads. Screenshots stay in the test's tmp dir (``form_privacy_keys.png``,
``form_privacy_budget.png``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from airflow_privacy.core.crypto import KeyRing

TESTS = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_{path.stem}_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# the suite's real-UI helpers: Chromium (installed on demand), free ports, stopping a server
_browser = _module(TESTS / "plugins" / "test_dashboard_browser.py")
_runbook = _module(TESTS / "test_runbook.py")

FORMS = {
    "privacy_keys": ("Privacy Key Ring", ["Key ring JSON"]),
    "privacy_budget": ("Privacy Budget Ledger", ["Ledger URL (SQLAlchemy)", "Ledger database password"]),
}
GENERIC = ["Host", "Login", "Password", "Port", "Schema"]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """``airflow api-server`` on a free port over a fresh metadata DB, simple auth manager."""
    tmp = tmp_path_factory.mktemp("connection-forms")
    home, port, password = tmp / "airflow", _runbook._free_port(), "forms-" + os.urandom(6).hex()
    home.mkdir()
    (tmp / "passwords.json").write_text(json.dumps({"admin": password}))
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "passwords.json"),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(64).hex(),
    })
    airflow = str(VENV_BIN / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = tmp / "api-server.log"
    with log.open("w") as out:
        server = subprocess.Popen([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        yield {"base": base, "password": password, "env": env, "log": log, "tmp": tmp}
    finally:
        _runbook._stop(server)


def _token(server) -> str:
    req = urllib.request.Request(f"{server['base']}/auth/token", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"username": "admin", "password": server["password"]}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["access_token"]


@pytest.mark.slow
def test_hook_meta_of_the_api_server_describes_both_forms(api_server):
    code, body = _browser._status(f"{api_server['base']}/ui/connections/hook_meta",
                                  Authorization=f"Bearer {_token(api_server)}")
    assert code == 200
    meta = {m["connection_type"]: m for m in json.loads(body)}
    keys, budget = meta["privacy_keys"]["standard_fields"], meta["privacy_budget"]["standard_fields"]
    assert keys["password"]["title"] == "Key ring JSON" and not keys["password"]["hidden"]
    assert "airflow-privacy keys generate" in keys["password"]["placeholder"]
    assert all(keys[f]["hidden"] for f in ("host", "login", "port", "url_schema"))
    assert budget["host"]["title"] == "Ledger URL (SQLAlchemy)" and not budget["host"]["hidden"]
    assert budget["host"]["placeholder"].startswith("postgresql+psycopg2://")
    assert all(budget[f]["hidden"] for f in ("login", "port", "url_schema"))
    assert "not fully initialized" not in api_server["log"].read_text()


@pytest.mark.slow
def test_add_connection_form_in_the_browser_saves_a_usable_key_ring(api_server):
    chromium = _browser._chromium()
    from playwright.sync_api import sync_playwright

    base, tmp = api_server["base"], api_server["tmp"]
    ring = KeyRing.generate()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=_browser.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(base + "/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", api_server["password"])
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url)
            page.goto(base + "/connections")
            page.get_by_role("button", name="Add Connection").click()
            page.fill("input[name=connection_id]", "privacy_keys_site_z")
            for conn_type, (hook_name, labels) in FORMS.items():
                page.get_by_label("Connection Type").fill(hook_name)
                page.keyboard.press("Enter")
                page.get_by_text(labels[0], exact=True).wait_for(state="visible")
                shown = [label.inner_text().strip() for label in page.get_by_role("dialog").locator("label").all()]
                assert all(label in shown for label in labels), shown
                assert not [g for g in GENERIC if g in shown], shown
                page.screenshot(path=str(tmp / f"form_{conn_type}.png"))
            # the key-ring form again, filled and saved: the ring lands in the password field
            page.get_by_label("Connection Type").fill(FORMS["privacy_keys"][0])
            page.keyboard.press("Enter")
            page.get_by_label("Key ring JSON").fill(ring.to_json())
            page.get_by_role("button", name="Save").click()
            page.get_by_text("privacy_keys_site_z").first.wait_for(state="visible")
        finally:
            browser.close()
    assert (tmp / "form_privacy_keys.png").stat().st_size > 10_000

    out = subprocess.run([str(VENV_BIN / "airflow"), "connections", "get", "privacy_keys_site_z", "-o", "json"],
                         env=api_server["env"], capture_output=True, text=True, check=True, timeout=300)
    (saved,) = json.loads(out.stdout[out.stdout.index("["):])
    assert saved["conn_type"] == "privacy_keys" and not saved["host"] and not saved["login"]
    assert KeyRing.from_json(saved["password"]).to_json() == ring.to_json()
