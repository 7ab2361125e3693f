"""Encrypt/Decrypt/RotateKeys operators in real dag.test() runs; no key material leaks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.crypto import KeyRing, decrypt_file, encrypt_file, inspect_header
from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.io import read_batch, write_batch
from airflow_privacy.operators.crypto import DecryptOperator, EncryptOperator, RotateKeysOperator


def test_demo_archive_decrypts_bit_identical_and_keys_never_leak(
    dagbag, keyring, demo_root, airflow_home, capfd
):
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
    texts += [
        p.read_text(errors="ignore") for p in (airflow_home / "logs").rglob("*") if p.is_file()
    ]
    for ti in run.get_task_instances():
        texts.append(
            json.dumps(ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index), default=str)
        )
    for secret in secrets:
        assert all(secret not in t for t in texts)


def test_rotate_then_rewrap_reads_with_only_new_key(tmp_path, keyring, monkeypatch):
    from airflow_privacy.core.crypto import encrypt_file

    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(5000))
    encrypt_file(str(src), str(tmp_path / "a.bin.enc"), keyring)
    rotated = keyring.rotate()
    monkeypatch.setenv(
        "AIRFLOW_CONN_PRIVACY_KEYS_ROTATED",
        json.dumps({"conn_type": "privacy_keys", "password": rotated.to_json()}),
    )
    op = RotateKeysOperator(
        task_id="rotate", prefix=f"file://{tmp_path}", key_conn_id="privacy_keys_rotated"
    )
    assert op.execute({})["rewrapped"] == 1
    assert op.execute({})["unchanged"] == 1  # a retry touches nothing
    only_new = rotated.without(keyring.primary_id)
    decrypt_file(str(tmp_path / "a.bin.enc"), str(tmp_path / "back.bin"), only_new)
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_parameter_validation():
    with pytest.raises(InvalidParameterError, match="deterministic_columns"):
        EncryptOperator(
            task_id="e", source="s", destination="d", columns=["a"], deterministic_columns=["a"]
        )
    with pytest.raises(InvalidParameterError, match="associated_data"):
        EncryptOperator(
            task_id="e", source="s", destination="d", columns=["a"], associated_data="x"
        )
    with pytest.raises(InvalidParameterError, match="paths"):
        RotateKeysOperator(task_id="r")
    # a lone string was iterated character by character; an empty list rotated nothing
    for paths in ("x.enc", [], ["a.enc", ""], [1]):
        with pytest.raises(InvalidParameterError, match="paths"):
            RotateKeysOperator(task_id="r", paths=paths)


def test_rotate_rendered_paths_are_checked_too(tmp_path):
    op = RotateKeysOperator(task_id="r", paths=["a.enc"])
    op.paths = "a.enc"  # what a template could render to
    with pytest.raises(AirflowFailException, match="paths"):
        op.execute({})


def test_file_mode_encrypt_decrypt_operators_round_trip_and_fail_closed(tmp_path, keyring):
    src = tmp_path / "batch.bin"
    src.write_bytes(os.urandom(3000))
    enc, out = tmp_path / "batch.bin.enc", tmp_path / "back.bin"
    ad = "dataset=x/date=2026-07-01"
    ret = EncryptOperator(
        task_id="e", source=str(src), destination=str(enc), associated_data=ad
    ).execute({})
    assert ret["kek_id"] == keyring.primary_id and ret["output"] == str(enc)
    ret = DecryptOperator(
        task_id="d", source=str(enc), destination=str(out), associated_data=ad
    ).execute({})
    assert out.read_bytes() == src.read_bytes() and ret["bytes"] == 3000
    out.unlink()
    with pytest.raises(AirflowFailException, match="authenticat|associated"):
        DecryptOperator(
            task_id="d", source=str(enc), destination=str(out), associated_data="other"
        ).execute({})
    blob = bytearray(enc.read_bytes())
    blob[-100] ^= 1
    enc.write_bytes(bytes(blob))
    with pytest.raises(AirflowFailException):
        DecryptOperator(
            task_id="d", source=str(enc), destination=str(out), associated_data=ad
        ).execute({})
    assert not out.exists()  # nothing written, not even partial plaintext


def test_column_mode_encrypt_decrypt_operators_round_trip(tmp_path, keyring):
    df = pd.DataFrame(
        {
            "patient_id": ["A1", "A2", "A1", None],
            "email": ["a@x.org", "b@y.org", "a@x.org", "c@z.org"],
            "age": [34, 51, 34, 7],
            "cost": [10.5, 20.0, 10.5, 3.25],
        }
    )
    src, enc, out = (str(tmp_path / n) for n in ("raw.parquet", "tok.parquet", "back.parquet"))
    write_batch(df, src)
    ret = EncryptOperator(
        task_id="e",
        source=src,
        destination=enc,
        columns=["email", "age"],
        deterministic_columns=["patient_id"],
    ).execute({})
    assert ret["rows"] == 4 and ret["columns"] == ["email", "age", "patient_id"]
    tokens = read_batch(enc)
    assert tokens["patient_id"][0] == tokens["patient_id"][2]  # deterministic: joinable
    assert tokens["email"][0] != tokens["email"][2]  # randomized
    assert pd.isna(tokens["patient_id"][3]) and tokens["cost"].equals(df["cost"])
    assert not any(str(v) in tokens.to_csv() for v in ("a@x.org", "A1"))
    DecryptOperator(
        task_id="d",
        source=enc,
        destination=out,
        columns=["email", "age"],
        deterministic_columns=["patient_id"],
    ).execute({})
    pd.testing.assert_frame_equal(read_batch(out), read_batch(src))


@pytest.mark.parametrize("password", [None, "not json", "broken-ring"])
def test_bad_key_ring_fails_without_retry_and_without_key_material(tmp_path, monkeypatch, password):
    real = KeyRing.generate()
    key = json.loads(real.to_json())["keys"][0]["key"]
    if password == "broken-ring":  # a real key in a document that does not validate
        password = real.to_json().replace('"version":1', '"version":2')
    conn = {"conn_type": "privacy_keys"} | ({"password": password} if password else {})
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_BAD", json.dumps(conn))
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 100)
    encrypt_file(str(src), str(tmp_path / "a.bin.enc"), real)
    ops = [
        EncryptOperator(
            task_id="e",
            source=str(src),
            destination=str(tmp_path / "o"),
            key_conn_id="privacy_keys_bad",
        ),
        DecryptOperator(
            task_id="d",
            source=str(tmp_path / "a.bin.enc"),
            destination=str(tmp_path / "o"),
            key_conn_id="privacy_keys_bad",
        ),
        RotateKeysOperator(
            task_id="r", prefix=f"file://{tmp_path}", key_conn_id="privacy_keys_bad"
        ),
    ]
    for op in ops:
        with pytest.raises(AirflowFailException, match="privacy_keys_bad") as err:
            op.execute({})
        assert key not in str(err.value) and base64.b64decode(key).hex() not in str(err.value)
    assert not (tmp_path / "o").exists()


def test_keys_cli(tmp_path):
    exe = str(Path(sys.executable).parent / "airflow-privacy")
    ring = subprocess.run(
        [exe, "keys", "generate"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "ring.json").write_text(ring)
    rotated = json.loads(
        subprocess.run(
            [exe, "keys", "rotate", str(tmp_path / "ring.json")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(rotated["keys"]) == 2 and rotated["primary"] != json.loads(ring)["primary"]
    bad = subprocess.run(
        [exe, "keys", "inspect", str(tmp_path / "ring.json")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_hook_masks_every_printable_form_of_each_key(monkeypatch):
    import airflow_privacy.hooks.keys as keys_module

    ring = KeyRing.generate().rotate()
    monkeypatch.setenv(
        "AIRFLOW_CONN_PRIVACY_KEYS_MASKED",
        json.dumps({"conn_type": "privacy_keys", "password": ring.to_json()}),
    )
    masked: list[str] = []
    monkeypatch.setattr(keys_module, "mask_secret", lambda s, name=None: masked.append(s))
    assert keys_module.PrivacyKeyHook("privacy_keys_masked").get_keyring() == ring
    for entry in json.loads(ring.to_json())["keys"]:
        raw = base64.b64decode(entry["key"])
        printed = [
            entry["key"],
            base64.urlsafe_b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(raw).decode().rstrip("="),
            raw.hex(),
            raw.hex().upper(),
            repr(raw)[2:-1],
        ]
        for form in printed:  # a log line holding the form holds a masked string
            assert any(m in f"log: {form} end" for m in masked), form
