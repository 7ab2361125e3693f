"""The dashboard in a real Airflow UI: ``airflow standalone``, a real DAG's releases, headless Chromium.

Runs ``dp_daily_statistics`` for two days with ``airflow dags test`` (two releases of ε = 1
charged to the ``patients`` dataset), starts ``airflow standalone`` on a free local port, logs in through
the simple auth manager's form, opens *Browse > Privacy budget* and checks what the framed
page shows: the datasets table, the chart, the releases and their links into the Airflow UI.
Screenshots are left in the test's tmp dir (``dashboard.png``, ``dataset.png``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DATES = ("2026-05-01", "2026-05-02")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--no-first-run"]


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install_chromium.sh")], capture_output=True, text=True,
                          timeout=900)
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if proc.returncode != 0 or not found:
        pytest.skip("Chromium is missing and scripts/install_chromium.sh could not install it: "
                    + (proc.stderr or proc.stdout).strip()[-500:])
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin_has_entry_point() -> bool:
    return any(ep.value.startswith("airflow_privacy.") for ep in entry_points(group="airflow.plugins"))


def _run(args: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"`{' '.join(args)}` failed:\n{log.read_text()[-3000:]}"


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``airflow standalone`` and every component it spawned (all in its process group)."""
    # SIGINT is standalone's own shutdown: it terminates its components and waits for them
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 15)):
        if proc.poll() is not None:
            break
        os.kill(proc.pid, sig) if sig == signal.SIGINT else os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever outlived the supervisor (a worker of a component)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"airflow standalone exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"airflow standalone not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def _status(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_dashboard_in_the_airflow_ui(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    home, port, password = tmp_path / "airflow", _free_port(), secrets.token_urlsafe(12)
    home.mkdir()
    base = f"http://127.0.0.1:{port}"
    (tmp_path / "passwords.json").write_text(json.dumps({"admin": password}))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    if not _plugin_has_entry_point():
        # until the package is reinstalled with its airflow.plugins entry point
        (plugins / "privacy_budget.py").write_text(
            "from airflow_privacy.plugins.budget_dashboard import PrivacyBudgetPlugin  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # standalone spawns `airflow ...`
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW_PRIVACY_DEMO_ROOT": f"file://{tmp_path}/demo-data",
    })
    log = tmp_path / "airflow.log"
    airflow = str(VENV_BIN / "airflow")

    # Two real releases of the example DAG, into a ledger named by a connection kept in the
    # metadata DB (as one made in the UI): tasks and the API server must both resolve it.
    ledger_url = f"sqlite:///{tmp_path}/ledger.db"
    _run([airflow, "db", "migrate"], env, log, timeout=300)
    _run([airflow, "connections", "add", "privacy_budget_default", "--conn-type", "privacy_budget",
          "--conn-host", ledger_url], env, log, timeout=120)
    _run([sys.executable, "-c", (
        "import datetime as dt, sys\n"
        "from airflow_privacy.core.io import write_batch\n"
        "from airflow_privacy.demo.data import SITES, demo_root, generate_batch\n"
        "for d in sys.argv[1:]:\n"
        "    for s in SITES:\n"
        "        write_batch(generate_batch(s, dt.date.fromisoformat(d)), f'{demo_root()}/raw/site={s}/date={d}.parquet')\n"
    ), *DATES], env, log, timeout=120)
    for date in DATES:
        _run([airflow, "dags", "test", "dp_daily_statistics", date], env, log, timeout=300)
    from airflow_privacy.core.budget import PrivacyLedger

    assert not (home / "privacy_budget.db").exists()
    ledger = PrivacyLedger(ledger_url)
    status = ledger.status("patients")
    spent, cap = status.spent_epsilon, status.cap_epsilon
    assert status.releases == 2 and 1.9 < spent <= cap
    shown_spent, shown_cap = f"{spent:.4g}", f"{cap:.4g}"

    standalone_log = tmp_path / "standalone.log"
    with standalone_log.open("w") as out:
        proc = subprocess.Popen([airflow, "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_healthy(base, proc, standalone_log)

        # The API: no token, no data; a token from Airflow's own login endpoint opens it.
        assert _status(f"{base}/privacy/api/datasets")[0] == 401
        req = urllib.request.Request(f"{base}/auth/token", data=json.dumps(
            {"username": "admin", "password": password}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["access_token"]
        code, body = _status(f"{base}/privacy/api/datasets", Authorization=f"Bearer {token}")
        assert code == 200
        (patients,) = [d for d in json.loads(body)["datasets"] if d["dataset"] == "patients"]
        assert patients["spent_epsilon"] == pytest.approx(spent) and patients["releases"] == 2
        code, body = _status(f"{base}/api/v2/plugins", Authorization=f"Bearer {token}")
        assert any(p["name"] == "privacy_budget" for p in json.loads(body)["plugins"]), body
        code, body = _status(f"{base}/api/v2/plugins/importErrors", Authorization=f"Bearer {token}")
        assert json.loads(body)["total_entries"] == 0, body

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                page.goto(base + "/")
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", password)
                page.click("button[type=submit]")
                page.wait_for_url(lambda url: "/auth/login" not in url)

                # Browse > Privacy budget: the plugin's external view, framed in the UI
                page.get_by_role("button", name="Browse").click()
                page.get_by_role("menuitem", name="Privacy budget").click()
                page.wait_for_url("**/plugin/privacy-budget**")
                frame = page.frame_locator("iframe[title='Privacy budget']")
                row = frame.locator('#datasets tr[data-dataset="patients"]')
                assert row.locator("td.spent").inner_text() == shown_spent
                assert row.locator("td.remaining").inner_text() == f"{cap - spent:.4g}"
                assert row.locator("td.releases").inner_text() == "2"
                series = frame.locator('svg g.series[data-dataset="patients"]')
                assert series.get_attribute("data-spent") == shown_spent
                assert series.locator("polyline:not(.cap)").count() == 1 and series.locator("circle").count() == 2
                assert series.locator("polyline.cap").count() == 1  # the cap as it was over time
                assert f"patients: ε {shown_spent} of {shown_cap}" in frame.locator("figcaption").inner_text()
                page.screenshot(path=str(tmp_path / "dashboard.png"))

                # The dataset's page: its releases, each linking to its task instance in the UI
                row.locator("a").click()
                releases = frame.locator("#releases tbody tr")
                releases.first.wait_for()
                assert releases.count() == 2
                assert page.url.endswith("/plugin/privacy-budget/privacy/dashboard/datasets/patients")
                page.screenshot(path=str(tmp_path / "dataset.png"))
                releases.first.locator("a.ti").click()
                page.wait_for_url("**/dags/dp_daily_statistics/runs/**/tasks/visit_statistics")
                page.get_by_text("DPAggregateOperator").first.wait_for(state="visible")
            finally:
                browser.close()
    finally:
        _stop(proc)
    assert not (home / "privacy_budget.db").exists()  # the API server read the connection too
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
