"""Public-key roles on the native cluster (issue 19): sites encrypt to the data holder and
cannot decrypt; the holder's private ring lives in the holder worker's environment alone.

``demo_patient_batches`` triggered through the REST API: each site's ``send_to_holder_<site>``
runs on that site's worker, which holds only the holder's public ring
(``privacy_recipient_holder``); ``holder_receives`` runs on ``worker-holder``, the one process
started with ``privacy_keys_holder``. Then a site's environment on the holder's queue fails
to open what the sites wrote, the public ring a site holds fails with ``IntegrityError``, and
no form of the private key is in any process's environment but the holder's, in any log or
in any XCom.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster_client import HOLDER, HOLDER_PUBLIC_CONN, SITES, Cluster, site_service

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]

DAG_ID = "demo_patient_batches"
HOLDER_SERVICE = site_service(HOLDER)  # worker-holder
CLI = str(Path(sys.executable).parent / "airflow-privacy")


def _trigger_and_wait(cluster: Cluster, date: str, label: str) -> tuple[str, str]:
    run_id = f"holder-{label}-{time.strftime('%H%M%S')}-{date}"
    started = time.monotonic()
    cluster.api.trigger(DAG_ID, date, run_id)
    state = cluster.api.wait_for_run(DAG_ID, run_id, timeout=900)
    cluster.timings[f"{DAG_ID} {date} ({label})"] = f"{state} in {time.monotonic() - started:.1f}s"
    return run_id, state


def _secret_forms(cluster: Cluster) -> list[str]:
    """Every printable form of the holder's private keys: the ring JSON, each key's base64 and hex."""
    ring = json.loads((cluster.state / "keys" / "privacy_keys_holder.conn").read_text())["password"]
    forms = [ring]
    for key in json.loads(ring)["keys"]:
        raw = base64.b64decode(key["private"])
        forms += [key["private"], base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()]
    return forms


def _environ(pid: int) -> str:
    """The environment a process was started with, NUL-separated (a process that is gone
    holds nothing)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _session_environs(cluster: Cluster, service: str) -> list[str]:
    """The environments of every process of ``service`` (the script starts each service as a
    session of its own). Celery's main process rewrites its environment block for its process
    title, so its children -- pool processes, task supervisors, tasks -- are read too."""
    sid = cluster.pid(service)
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return [_environ(int(pid)) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _service_environ(cluster: Cluster, service: str) -> dict[str, str]:
    """``service``'s environment as the script started it (a process whose block is intact:
    it names the service's cluster node)."""
    block = next(e for e in _session_environs(cluster, service) if f"AIRFLOW_PRIVACY_CLUSTER_NODE={service}\0" in e)
    return dict(item.split("=", 1) for item in block.split("\0") if "=" in item)


def _to_holder(cluster: Cluster, site: str, date: str) -> Path:
    return Path(cluster.demo_root.removeprefix("file://")) / "to-holder" / f"site={site}" / f"date={date}.parquet.enc"


def test_sites_encrypt_to_the_holder_and_only_the_holder_decrypts(cluster: Cluster, tmp_path):
    api, date, refused = cluster.api, "2026-06-01", "2026-06-02"
    api.wait_for_dags([DAG_ID])
    secrets = _secret_forms(cluster)

    # 1. The roles as deployed: sites send on their own workers, the holder opens on its own.
    run_id, state = _trigger_and_wait(cluster, date, "roles")
    assert state == "success"
    tis = api.task_instances(DAG_ID, run_id)
    for i, site in enumerate(SITES):
        sent = tis[f"send_to_holder_{site}"]
        assert sent["queue"] == site and sent["hostname"].startswith(f"{site_service(site)}@"), sent
        opened = tis[f"holder_receives[{i}]"]
        assert opened["queue"] == HOLDER and opened["hostname"].startswith(f"{HOLDER_SERVICE}@"), opened
        received = (cluster.state / "homes" / HOLDER_SERVICE / "site-private" / "holder" / "received"
                    / f"site={site}" / f"date={date}.parquet")
        raw = Path(cluster.demo_root.removeprefix("file://")) / "raw" / f"site={site}" / f"date={date}.parquet"
        assert received.read_bytes() == raw.read_bytes()

    # 2. The private ring is in the holder worker's environment and nowhere else; every site
    #    worker has the public ring.
    holding, scanned = set(), 0
    for pidfile in (cluster.state / "pids").glob("*.pid"):
        environs = _session_environs(cluster, pidfile.stem)
        scanned += len(environs)
        if any(s in environ for environ in environs for s in secrets):
            holding.add(pidfile.stem)
        if pidfile.stem in map(site_service, SITES):
            assert any(f"AIRFLOW_CONN_{HOLDER_PUBLIC_CONN.upper()}=" in e for e in environs), pidfile.stem
    assert holding == {HOLDER_SERVICE}, holding

    # 3. A site task on the holder's queue (worker-site-b's environment) opens nothing, neither
    #    its own file nor site_a's or site_c's: it fails naming the connection it lacks.
    cluster.stop(HOLDER_SERVICE)
    misrouted = "site-b-on-holder-queue"
    cluster.start(site_service("site_b"), name=misrouted, queues=HOLDER)
    try:
        bad_run, state = _trigger_and_wait(cluster, refused, "site-on-holder-queue")
    finally:
        cluster.stop(misrouted)
        cluster.start(HOLDER_SERVICE)
    assert state == "failed"
    tis = api.task_instances(DAG_ID, bad_run)
    for i, site in enumerate(SITES):
        assert tis[f"send_to_holder_{site}"]["state"] == "success"
        ti = tis[f"holder_receives[{i}]"]
        assert ti["state"] == "failed" and ti["hostname"].startswith(f"{misrouted}@"), ti
        log = api.get(f"/dags/{DAG_ID}/dagRuns/{bad_run}/taskInstances/holder_receives/logs/{ti['try_number']}",
                      map_index=i, full_content=True)
        assert "privacy_keys_holder" in json.dumps(log["content"]), site
    assert not list(cluster.state.rglob(f"received/*/date={refused}.parquet"))

    # 4. What a site does hold -- the public ring, in worker-site-a's exact environment --
    #    fails with IntegrityError on its own file and on another site's, writing nothing.
    site_env = _service_environ(cluster, site_service("site_a"))
    assert f"AIRFLOW_CONN_{HOLDER_PUBLIC_CONN.upper()}" in site_env and "AIRFLOW_CONN_PRIVACY_KEYS_HOLDER" not in site_env
    for site in ("site_a", "site_b"):
        out = tmp_path / f"{site}.parquet"
        tried = subprocess.run([CLI, "keys", "decrypt", str(_to_holder(cluster, site, date)), "--output", str(out),
                                "--conn-id", HOLDER_PUBLIC_CONN, "--associated-data", f"site={site}/date={date}"],
                               capture_output=True, text=True, env=site_env, timeout=300)
        assert tried.returncode == 2, (tried.stdout, tried.stderr)
        assert "cannot decrypt with a public key ring" in tried.stderr and "Traceback" not in tried.stderr
        assert not out.exists() and list(tmp_path.iterdir()) == []
        assert all(s not in tried.stdout + tried.stderr for s in secrets)

    # 5. No form of the private key in any task log, service log or XCom of the cluster.
    logs = [p for folder in ("task-logs", "logs") for p in (cluster.state / folder).rglob("*") if p.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert all(s not in text for s in secrets), path
    engine = sa.create_engine(cluster.env["AIRFLOW_PRIVACY_CLUSTER_METADATA_URL"])
    try:
        with engine.connect() as conn:
            values = conn.execute(sa.text("SELECT CAST(value AS TEXT) FROM xcom WHERE dag_id = :d"),
                                  {"d": DAG_ID}).scalars().all()
    finally:
        engine.dispose()
    assert any("holder-1" in (v or "") for v in values)  # the holder's XComs are there, key ids only
    assert all(s not in (v or "") for v in values for s in secrets)
    cluster.timings["holder roles: services with the holder's private ring"] = \
        f"{sorted(holding)} (environments of {scanned} processes read)"
    cluster.timings["holder roles: task/service logs and XComs scanned"] = f"{len(logs)} files, {len(values)} XComs"
