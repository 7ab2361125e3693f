"""``demo_patient_batches`` under a real ``dag.test()`` on the session's SQLite DB."""

from __future__ import annotations

import base64
import json
import os

import pendulum
import pytest

from airflow_privacy.core.crypto import decrypt_file, inspect_header, load_key_material
from airflow_privacy.core.errors import IntegrityError
from airflow_privacy.core.io import read_batch
from airflow_privacy.demo.data import COLUMNS


def test_dag_generates_and_validates_each_site(dagbag, demo_root):
    dag = dagbag.get_dag("demo_patient_batches")
    run = dag.test(logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"))
    assert run.state == "success"
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert {k for k in tis if k[0] == "generate"} == {("generate", i) for i in range(3)}
    summary = tis[("validate", -1)].xcom_pull(task_ids="validate")
    assert set(summary["sites"]) == {"site_a", "site_b", "site_c"}
    total = 0
    for site in summary["sites"]:
        df = read_batch(f"{demo_root}/raw/site={site}/date=2026-03-01.parquet")
        assert list(df.columns) == list(COLUMNS)
        assert len(df) == summary["sites"][site]["rows"]
        total += len(df)
    assert summary["rows"] == total


def test_sites_send_to_the_holder_with_only_its_public_ring(dagbag, demo_root, airflow_home, holder_ring, capfd):
    """Issue 19 roles: each site encrypts on its own queue to the holder's public ring; the
    holder's task on the holder's queue opens the files; a site's public ring opens none of
    them, its own or another site's; no private key byte reaches a log or XCom."""
    dag = dagbag.get_dag("demo_patient_batches")
    sites = ("site_a", "site_b", "site_c")
    for site in sites:
        task = dag.get_task(f"send_to_holder_{site}")
        assert task.queue == site and task.recipient == ["privacy_recipient_holder"] and task.producer == site
    holder = dag.get_task("holder_receives")
    assert holder.queue == "holder" and holder.partial_kwargs["key_conn_id"] == "privacy_keys_holder"

    run = dag.test(logical_date=pendulum.datetime(2026, 8, 1, tz="UTC"))
    assert run.state == "success"
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert {tis[("holder_receives", i)].state for i in range(3)} == {"success"}
    root = demo_root.removeprefix("file://")
    # what every site holds: the public ring of its privacy_recipient_holder connection
    site_ring = load_key_material(json.loads(os.environ["AIRFLOW_CONN_PRIVACY_RECIPIENT_HOLDER"])["password"])
    for i, site in enumerate(sites):
        sent = f"{root}/to-holder/site={site}/date=2026-08-01.parquet.enc"
        header = inspect_header(sent)
        assert header["producer"] == site
        assert [r["key_id"] for r in header["recipients"]] == [holder_ring.primary_id]
        received = airflow_home / "site-private" / "holder" / "received" / f"site={site}" / "date=2026-08-01.parquet"
        raw = f"{root}/raw/site={site}/date=2026-08-01.parquet"
        assert received.read_bytes() == open(raw, "rb").read()
        ret = tis[("holder_receives", i)].xcom_pull(task_ids="holder_receives", map_indexes=i)
        assert ret["recipient_key_id"] == holder_ring.primary_id and ret["producer"] == site
        out = airflow_home / f"site-tries-{site}.parquet"
        with pytest.raises(IntegrityError, match="cannot decrypt with a public key ring"):
            decrypt_file(sent, str(out), site_ring, f"site={site}/date=2026-08-01")
        assert not out.exists()
    secrets = [k["private"] for k in json.loads(holder_ring.to_json())["keys"]]
    secrets += [base64.b64decode(s).hex() for s in secrets]
    captured = capfd.readouterr()
    texts = [captured.out, captured.err]
    texts += [p.read_text(errors="ignore") for p in (airflow_home / "logs").rglob("*") if p.is_file()]
    texts += [json.dumps(ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index), default=str)
              for ti in run.get_task_instances()]
    assert all(secret not in t for secret in secrets for t in texts)
