"""Encrypt/Decrypt/RotateKeys operators in real dag.test() runs; no key material leaks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from airflow_privacy.core.crypto import decrypt_file, inspect_header
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.operators.crypto import EncryptOperator, RotateKeysOperator


def test_demo_archive_decrypts_bit_identical_and_keys_never_leak(dagbag, keyring, demo_root, airflow_home, capfd):
    dag = dagbag.get_dag("demo_patient_batches")
    run = dag.test(logical_date=pendulum.datetime(2026, 7, 1, tz="UTC"))
    assert run.state == "success"
    root = demo_root.removeprefix("file://")
    for site in ("site_a", "site_b", "site_c"):
        enc = Path(f"{root}/archive/site={site}/date=2026-07-01.parquet.enc")
        raw = Path(f"{root}/raw/site={site}/date=2026-07-01.parquet")
        out = airflow_home / f"dec-{site}.parquet"
        decrypt_file(str(enc), str(out), keyring, associated_data=f"site={site}/date=2026-07-01")
        assert out.read_bytes() == raw.read_bytes()
        assert inspect_header(str(enc))["kek_id"] == keyring.primary_id
    # Scan everything the run left behind: task logs, captured output, XComs.
    secrets = [k["key"] for k in json.loads(keyring.to_json())["keys"]]
    secrets += [base64.b64decode(s).hex() for s in secrets]
    captured = capfd.readouterr()
    texts = [captured.out, captured.err]
    texts += [p.read_text(errors="ignore") for p in (airflow_home / "logs").rglob("*") if p.is_file()]
    for ti in run.get_task_instances():
        texts.append(json.dumps(ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index), default=str))
    for secret in secrets:
        assert all(secret not in t for t in texts)


def test_rotate_then_rewrap_reads_with_only_new_key(tmp_path, keyring, monkeypatch):
    from airflow_privacy.core.crypto import encrypt_file

    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(5000))
    encrypt_file(str(src), str(tmp_path / "a.bin.enc"), keyring)
    rotated = keyring.rotate()
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_ROTATED",
                       json.dumps({"conn_type": "privacy_keys", "password": rotated.to_json()}))
    op = RotateKeysOperator(task_id="rotate", prefix=f"file://{tmp_path}", key_conn_id="privacy_keys_rotated")
    assert op.execute({})["rewrapped"] == 1
    assert op.execute({})["unchanged"] == 1  # a retry touches nothing
    only_new = rotated.without(keyring.primary_id)
    decrypt_file(str(tmp_path / "a.bin.enc"), str(tmp_path / "back.bin"), only_new)
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_parameter_validation():
    with pytest.raises(InvalidParameterError, match="deterministic_columns"):
        EncryptOperator(task_id="e", source="s", destination="d", columns=["a"], deterministic_columns=["a"])
    with pytest.raises(InvalidParameterError, match="associated_data"):
        EncryptOperator(task_id="e", source="s", destination="d", columns=["a"], associated_data="x")
    with pytest.raises(InvalidParameterError, match="paths"):
        RotateKeysOperator(task_id="r")


def test_keys_cli(tmp_path):
    exe = str(Path(sys.executable).parent / "airflow-privacy")
    ring = subprocess.run([exe, "keys", "generate"], capture_output=True, text=True, check=True).stdout
    (tmp_path / "ring.json").write_text(ring)
    rotated = json.loads(subprocess.run([exe, "keys", "rotate", str(tmp_path / "ring.json")],
                                        capture_output=True, text=True, check=True).stdout)
    assert len(rotated["keys"]) == 2 and rotated["primary"] != json.loads(ring)["primary"]
    bad = subprocess.run([exe, "keys", "inspect", str(tmp_path / "ring.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr
