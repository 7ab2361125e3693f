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
            task_id="e", source="/s", destination="/d", columns=["a"], deterministic_columns=["a"]
        )
    with pytest.raises(InvalidParameterError, match="associated_data"):
        EncryptOperator(
            task_id="e", source="/s", destination="/d", columns=["a"], associated_data="x"
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
    # no plaintext cell survives; "A1" is checked per cell, not as a substring of the CSV:
    # two characters occur by chance in ~4 % of random base64 tokens (this test was flaky)
    assert "a@x.org" not in tokens.to_csv() and not tokens.isin(["A1", "a@x.org"]).any().any()
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


# -- public-key encryption to a data holder (issue 19) -----------------------------------------

_ROLES_DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from airflow_privacy.operators.crypto import DecryptOperator, EncryptOperator

ROOT = {root!r}
with DAG("holder_roles", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    for site in ("site_a", "site_b"):
        EncryptOperator(
            task_id=f"encrypt_{{site}}", source=f"{{ROOT}}/raw-{{site}}.parquet",
            destination=f"{{ROOT}}/to-holder/{{site}}.parquet.enc", associated_data=f"site={{site}}",
            recipient="privacy_recipient_holder", producer=site, queue=site,
        )
    # a site task holds only the holder's public ring (and its own symmetric ring)
    site_a_own = DecryptOperator(
        task_id="site_a_reads_own", source=f"{{ROOT}}/to-holder/site_a.parquet.enc",
        destination=f"{{ROOT}}/leak/own.parquet", associated_data="site=site_a",
        key_conn_id="privacy_recipient_holder", queue="site_a",
    )
    site_b_other = DecryptOperator(
        task_id="site_b_reads_site_a", source=f"{{ROOT}}/to-holder/site_a.parquet.enc",
        destination=f"{{ROOT}}/leak/other.parquet", associated_data="site=site_a",
        key_conn_id="privacy_keys_site_b", queue="site_b",
    )
    holder = [
        DecryptOperator(
            task_id=f"holder_reads_{{site}}", source=f"{{ROOT}}/to-holder/{{site}}.parquet.enc",
            destination=f"{{ROOT}}/holder/{{site}}.parquet", associated_data=f"site={{site}}",
            key_conn_id="privacy_keys_holder", queue="holder",
        )
        for site in ("site_a", "site_b")
    ]
    dag.get_task("encrypt_site_a") >> [site_a_own, site_b_other, holder[0]]
    dag.get_task("encrypt_site_b") >> holder[1]
"""


@pytest.fixture
def holder_roles_dag(airflow_db, tmp_path, monkeypatch):
    """A DAG of two site tasks encrypting to the holder, two site tasks trying to read, and
    the holder's tasks; in a DAG bundle of its own (dag.test() runs only bundled DAGs)."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_privacy.core.crypto import PrivateKeyRing

    holder = PrivateKeyRing.generate(key_id="holder-2026")
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_KEYS_HOLDER",
                       json.dumps({"conn_type": "privacy_keys", "password": holder.to_json()}))
    monkeypatch.setenv("AIRFLOW_CONN_PRIVACY_RECIPIENT_HOLDER",
                       json.dumps({"conn_type": "privacy_keys", "password": holder.public_ring().to_json()}))
    root = tmp_path / "data"
    for site in ("site_a", "site_b"):
        write_batch(pd.DataFrame({"patient": [f"{site}-{i}" for i in range(50)], "value": range(50)}),
                    str(root / f"raw-{site}.parquet"))
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "holder_roles.py").write_text(_ROLES_DAG_FILE.format(root=str(root)))
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "holder-roles", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.get_dag("holder_roles"), root, holder


def test_site_tasks_cannot_decrypt_what_sites_wrote_for_the_holder(
    holder_roles_dag, airflow_home, capfd
):
    dag, root, holder = holder_roles_dag
    run = dag.test(logical_date=pendulum.datetime(2026, 7, 2, tz="UTC"))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    print("task states:", states)
    assert states == {
        "encrypt_site_a": "success", "encrypt_site_b": "success",
        "site_a_reads_own": "failed", "site_b_reads_site_a": "failed",
        "holder_reads_site_a": "success", "holder_reads_site_b": "success",
    }
    assert not (root / "leak").exists() or not any((root / "leak").iterdir())  # nothing written
    for site in ("site_a", "site_b"):
        assert read_batch(str(root / "holder" / f"{site}.parquet")).equals(
            read_batch(str(root / f"raw-{site}.parquet")))
        assert inspect_header(str(root / "to-holder" / f"{site}.parquet.enc"))["producer"] == site
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert tis["encrypt_site_a"].xcom_pull(task_ids="encrypt_site_a")["recipients"] == ["holder-2026"]
    assert tis["holder_reads_site_b"].xcom_pull(task_ids="holder_reads_site_b")["producer"] == "site_b"
    # the failures say why, in the task logs
    logs = "\n".join(p.read_text(errors="ignore") for p in (airflow_home / "logs").rglob("*") if p.is_file())
    captured = capfd.readouterr()
    texts = [logs, captured.out, captured.err]
    assert any("cannot decrypt with a public key ring" in t for t in texts)
    assert any("private key ring, not a KeyRing" in t for t in texts)
    # no private key material anywhere: logs, captured output, XComs
    secret = json.loads(holder.to_json())["keys"][0]["private"]
    forms = [secret, base64.b64decode(secret).hex(), base64.urlsafe_b64encode(base64.b64decode(secret)).decode()]
    for ti in run.get_task_instances():
        texts.append(json.dumps(ti.xcom_pull(task_ids=ti.task_id), default=str))
    leaks = sum(form in t for form in forms for t in texts)
    print(f"scanned {len(texts)} texts ({sum(map(len, texts))} chars) for {len(forms)} key forms: {leaks} leaks")
    assert leaks == 0


def _conn(monkeypatch, name: str, ring) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}",
                       json.dumps({"conn_type": "privacy_keys", "password": ring.to_json()}))
    return name


def test_signed_recipient_files_escrow_and_holder_rotation(tmp_path, monkeypatch):
    from airflow_privacy.core.crypto import PrivateKeyRing

    holder = PrivateKeyRing.generate(key_id="holder-1")
    escrow = PrivateKeyRing.generate(suite="rsa-oaep-3072-sha256", key_id="escrow")
    signer = PrivateKeyRing.generate(suite="ed25519", key_id="site_a")
    pub, esc = _conn(monkeypatch, "pub_holder", holder.public_ring()), _conn(monkeypatch, "pub_escrow", escrow.public_ring())
    sign = _conn(monkeypatch, "sign_site_a", signer)
    senders = _conn(monkeypatch, "senders", signer.public_ring())
    src, enc = tmp_path / "p.bin", tmp_path / "p.bin.enc"
    src.write_bytes(os.urandom(4000))
    ret = EncryptOperator(task_id="e", source=str(src), destination=str(enc), recipient=[pub, esc],
                          signer_conn_id=sign).execute({})
    assert ret == {"output": str(enc), "bytes": enc.stat().st_size, "recipients": ["holder-1", "escrow"],
                   "producer": "site_a", "signed": True}
    _conn(monkeypatch, "holder_keys", holder)
    ret = DecryptOperator(task_id="d", source=str(enc), destination=str(tmp_path / "o"),
                          key_conn_id="holder_keys", senders_conn_id=senders).execute({})
    assert ret["sender_verified"] is True and ret["recipient_key_id"] == "holder-1"
    assert (tmp_path / "o").read_bytes() == src.read_bytes()
    # the holder rotates its key pair; RotateKeysOperator moves the file, escrow kept
    rotated = holder.rotate(key_id="holder-2")
    _conn(monkeypatch, "holder_keys", rotated)
    assert RotateKeysOperator(task_id="r", paths=[str(enc)], key_conn_id="holder_keys").execute({})["rewrapped"] == 1
    assert [r["key_id"] for r in inspect_header(str(enc))["recipients"]] == ["holder-2", "escrow"]
    decrypt_file(str(enc), str(tmp_path / "o2"), escrow)
    assert (tmp_path / "o2").read_bytes() == src.read_bytes()
    # a producer's public ring in RotateKeys (a site) fails without retry, touching nothing
    before = enc.read_bytes()
    with pytest.raises(AirflowFailException, match="public key ring"):
        RotateKeysOperator(task_id="r", paths=[str(enc)], key_conn_id=pub).execute({})
    assert enc.read_bytes() == before


def test_recipient_parameters_and_wrong_connections_are_refused(tmp_path, monkeypatch):
    from airflow_privacy.core.crypto import PrivateKeyRing

    holder = PrivateKeyRing.generate()
    for kwargs, name in [
        ({"recipient": ""}, "recipient"),
        ({"recipient": ["a", 1]}, "recipient"),
        ({"recipient": "pub", "columns": ["a"]}, "recipient"),
        ({"producer": "site_a"}, "producer"),
    ]:
        with pytest.raises(InvalidParameterError, match=name):
            EncryptOperator(task_id="e", source="/s", destination="/d", **kwargs)
    with pytest.raises(InvalidParameterError, match="senders_conn_id"):
        DecryptOperator(task_id="d", source="/s", destination="/d", columns=["a"], senders_conn_id="x")
    src = tmp_path / "p"
    src.write_bytes(b"rows")
    private = _conn(monkeypatch, "holder_private", holder)
    # the holder's private ring given as the recipient: never handed to producers
    with pytest.raises(AirflowFailException, match="holder_private.*recipient's public ring"):
        EncryptOperator(task_id="e", source=str(src), destination=str(tmp_path / "c"),
                        recipient=private).execute({})
    # a symmetric task pointed at a public-key ring
    with pytest.raises(AirflowFailException, match="needs a symmetric key ring"):
        EncryptOperator(task_id="e", source=str(src), destination=str(tmp_path / "c"),
                        key_conn_id=private).execute({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_keys_cli_generates_a_holder_key_pair(tmp_path):
    from airflow_privacy.core.crypto import PrivateKeyRing, PublicKeyRing

    exe = str(Path(sys.executable).parent / "airflow-privacy")
    for suite in ("hpke-x25519-sha256-aes256gcm", "rsa-oaep-3072-sha256"):
        priv, pub = tmp_path / f"{suite}.private.json", tmp_path / f"{suite}.public.json"
        proc = subprocess.run(
            [exe, "keys", "generate", "--recipient", "--suite", suite, "--key-id", "holder-1",
             "--public", str(pub), "--output", str(priv)],
            capture_output=True, text=True, check=True,
        )
        holder, public = PrivateKeyRing.from_json(priv.read_text()), PublicKeyRing.from_json(pub.read_text())
        assert oct(priv.stat().st_mode & 0o777) == "0o600"
        assert public == holder.public_ring() and public.primary_id == "holder-1"
        assert public.primary.fingerprint in proc.stderr and proc.stdout == ""
        assert json.loads(priv.read_text())["keys"][0]["private"] not in pub.read_text() + proc.stderr
        (tmp_path / "p").write_bytes(b"rows")
        encrypt_file(str(tmp_path / "p"), str(tmp_path / "c"), recipient=public)
        decrypt_file(str(tmp_path / "c"), str(tmp_path / "o"), holder)
        assert (tmp_path / "o").read_bytes() == b"rows"
    bad = subprocess.run([exe, "keys", "generate", "--recipient"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--public" in bad.stderr
