"""``airflow-privacy keys`` with a data holder's key pair (issue 19), as an operator runs it:
the real console script in a subprocess.

The holder decrypts recipient files with its private ring; a public ring (what every site
holds) fails with one clear line, exit 2 and no output; ``keys rotate`` adds a key pair and
republishes the public ring; ``keys rewrap`` moves files to the new key without touching
their bodies.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy.core.crypto import (
    KeyRing,
    PrivateKeyRing,
    PublicKeyRing,
    encrypt_file,
    inspect_header,
)

EXE = str(Path(sys.executable).parent / "airflow-privacy")
AD = "site=site_a/date=2026-01-01"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env)


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and all(w in out.stderr for w in words), out.stderr


def _secrets(private: PrivateKeyRing) -> list[str]:
    return [k["private"] for k in json.loads(private.to_json())["keys"]]


@pytest.fixture
def holder(tmp_path) -> tuple[Path, Path]:
    """A holder key pair made by the CLI: (private ring file, public ring file)."""
    priv, pub = tmp_path / "holder-private.json", tmp_path / "holder-public.json"
    out = _cli("keys", "generate", "--recipient", "--key-id", "holder-1", "--public", str(pub),
               "--output", str(priv))
    assert out.returncode == 0, out.stderr
    return priv, pub


def _site_encrypts(tmp_path: Path, pub: Path, name: str = "c.enc") -> tuple[bytes, Path]:
    """What a site task does: encrypt to the holder with only the public ring."""
    plain = os.urandom((1 << 20) + 123)
    src = tmp_path / f"{name}.plain"
    src.write_bytes(plain)
    enc = tmp_path / name
    encrypt_file(str(src), str(enc), associated_data=AD,
                 recipient=PublicKeyRing.from_json(pub.read_text()), producer="site_a")
    return plain, enc


def _conn_env(**rings: str) -> dict[str, str]:
    env = dict(os.environ)
    for conn_id, text in rings.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": "privacy_keys", "password": text})
    return env


def test_keys_decrypt_opens_a_recipient_file_with_the_holders_private_ring(tmp_path, holder):
    priv, pub = holder
    plain, enc = _site_encrypts(tmp_path, pub)
    out = tmp_path / "out" / "batch.bin"
    done = _cli("keys", "decrypt", str(enc), "--output", str(out), "--ring", str(priv),
                "--associated-data", AD, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert out.read_bytes() == plain and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert info["recipient_key_id"] == "holder-1" and info["producer"] == "site_a"
    assert info["plaintext_bytes"] == len(plain)
    out.unlink()
    # from the holder's privacy_keys connection (its worker's environment)
    env = _conn_env(privacy_keys_holder=priv.read_text())
    by_conn = _cli("keys", "decrypt", str(enc), "--output", str(out), "--conn-id", "privacy_keys_holder",
                   "--associated-data", AD, env=env)
    assert by_conn.returncode == 0, by_conn.stderr
    assert out.read_bytes() == plain
    for secret in _secrets(PrivateKeyRing.from_json(priv.read_text())):
        assert secret not in done.stdout + done.stderr + by_conn.stdout + by_conn.stderr


def test_keys_decrypt_with_a_public_ring_fails_clearly_and_writes_nothing(tmp_path, holder, keyring):
    priv, pub = holder
    _, enc = _site_encrypts(tmp_path, pub)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "batch.bin"
    args = ["keys", "decrypt", str(enc), "--output", str(out), "--associated-data", AD]
    # a site's public ring, from a file or from its connection: what a site task would try
    _one_line_error(_cli(*args, "--ring", str(pub)), "cannot decrypt with a public key ring", "holder-1")
    env = _conn_env(privacy_recipient_holder=pub.read_text())
    _one_line_error(_cli(*args, "--conn-id", "privacy_recipient_holder", env=env),
                    "cannot decrypt with a public key ring")
    # another holder's private ring: the wrong recipient
    other = tmp_path / "other.json"
    other.write_text(PrivateKeyRing.generate(key_id="other").to_json())
    _one_line_error(_cli(*args, "--ring", str(other)), "wrong recipient", "holder-1")
    # a symmetric file and a public ring
    sym = tmp_path / "sym.enc"
    encrypt_file(str(enc), str(sym), keyring)
    _one_line_error(_cli("keys", "decrypt", str(sym), "--output", str(out), "--ring", str(pub)),
                    keyring.primary_id, "PublicKeyRing")
    assert os.listdir(folder) == []  # no plaintext, not even a partial temporary file


def test_keys_rotate_a_holder_key_pair_keeps_old_files_readable(tmp_path, holder):
    priv, pub = holder
    plain, old_file = _site_encrypts(tmp_path, pub, "old.enc")
    priv2, pub2 = tmp_path / "rotated" / "private.json", tmp_path / "rotated" / "public.json"
    done = _cli("keys", "rotate", str(priv), "--key-id", "holder-2", "--output", str(priv2), "--public", str(pub2))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "holder-2" in done.stderr and "fingerprint" not in done.stderr.lower()
    rotated, public = PrivateKeyRing.from_json(priv2.read_text()), PublicKeyRing.from_json(pub2.read_text())
    assert stat.S_IMODE(priv2.stat().st_mode) == 0o600
    assert rotated.primary_id == "holder-2" and list(rotated.ids) == ["holder-1", "holder-2"]
    assert public == rotated.public_ring()  # the ring to hand to every site
    for secret in _secrets(rotated):
        assert secret not in pub2.read_text() and secret not in done.stderr
    # a file wrapped to the old key pair still opens with the rotated ring
    out = tmp_path / "old.plain.out"
    assert _cli("keys", "decrypt", str(old_file), "--output", str(out), "--ring", str(priv2),
                "--associated-data", AD).returncode == 0
    assert out.read_bytes() == plain
    # sites holding the new public ring wrap to the new key pair
    _, new_file = _site_encrypts(tmp_path, pub2, "new.enc")
    assert [r["key_id"] for r in inspect_header(str(new_file))["recipients"]] == ["holder-2"]


@pytest.mark.parametrize("case", ["private without --public", "public ring", "symmetric with --public",
                                  "signing ring"])
def test_keys_rotate_refuses_what_it_cannot_rotate_and_writes_nothing(tmp_path, holder, case):
    priv, pub = holder
    target, target_pub = tmp_path / "new.json", tmp_path / "new-public.json"
    if case == "private without --public":
        out = _cli("keys", "rotate", str(priv), "--output", str(target))
        _one_line_error(out, "--public")
    elif case == "public ring":
        out = _cli("keys", "rotate", str(pub), "--output", str(target), "--public", str(target_pub))
        _one_line_error(out, "public", "holder's private ring")
    elif case == "symmetric with --public":
        ring = tmp_path / "ring.json"
        ring.write_text(KeyRing.generate().to_json())
        _one_line_error(_cli("keys", "rotate", str(ring), "--output", str(target), "--public", str(target_pub)),
                        "--public")
    else:
        signer = tmp_path / "signer.json"
        signer.write_text(PrivateKeyRing.generate(suite="ed25519", key_id="site_a").to_json())
        _one_line_error(_cli("keys", "rotate", str(signer), "--output", str(target), "--public", str(target_pub)),
                        "ed25519")
    assert not target.exists() and not target_pub.exists()


def test_keys_rewrap_moves_recipient_files_to_the_new_key_pair(tmp_path, holder):
    priv, pub = holder
    plain, enc = _site_encrypts(tmp_path, pub)
    priv2, pub2 = tmp_path / "private2.json", tmp_path / "public2.json"
    assert _cli("keys", "rotate", str(priv), "--key-id", "holder-2", "--output", str(priv2),
                "--public", str(pub2)).returncode == 0
    body = enc.read_bytes()[inspect_header(str(enc))["header_size"]:]
    # a site's (new) public ring cannot re-wrap: nothing is written
    before = enc.read_bytes()
    _one_line_error(_cli("keys", "rewrap", str(enc), "--ring", str(pub2)), "cannot decrypt with a public key ring")
    assert enc.read_bytes() == before
    done = _cli("keys", "rewrap", str(enc), "--ring", str(priv2), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"file": str(enc), "old_kek_id": "holder-1", "new_kek_id": "holder-2",
                                        "rewrapped": True}]
    header = inspect_header(str(enc))
    assert [r["key_id"] for r in header["recipients"]] == ["holder-2"]
    assert enc.read_bytes()[header["header_size"]:] == body  # the body is not re-encrypted
    again = _cli("keys", "rewrap", str(enc), "--ring", str(priv2), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["rewrapped"] is False  # nothing to do
    # only the new key pair is needed now
    only_new = tmp_path / "only-new.json"
    doc = json.loads(priv2.read_text())
    doc["keys"] = [k for k in doc["keys"] if k["id"] == "holder-2"]
    only_new.write_text(json.dumps(doc))
    out = tmp_path / "plain.out"
    opened = _cli("keys", "decrypt", str(enc), "--output", str(out), "--ring", str(only_new), "--associated-data", AD)
    assert opened.returncode == 0, opened.stderr
    assert out.read_bytes() == plain


def test_keys_rewrap_to_explicit_recipients_and_symmetric_rotation(tmp_path, holder, keyring):
    priv, pub = holder
    _, enc = _site_encrypts(tmp_path, pub)
    escrow = PrivateKeyRing.generate(key_id="escrow")
    escrow_pub = tmp_path / "escrow-public.json"
    escrow_pub.write_text(escrow.public_ring().to_json())
    done = _cli("keys", "rewrap", str(enc), "--ring", str(priv), "--recipient", str(pub),
                "--recipient", str(escrow_pub))
    assert done.returncode == 0, done.stderr
    assert [r["key_id"] for r in inspect_header(str(enc))["recipients"]] == ["holder-1", "escrow"]
    # symmetric archives: rotate the ring, then re-wrap under its new primary
    sym = tmp_path / "sym.enc"
    encrypt_file(str(enc), str(sym), keyring)
    ring, rotated = tmp_path / "ring.json", tmp_path / "ring2.json"
    ring.write_text(keyring.to_json())
    assert _cli("keys", "rotate", str(ring), "--output", str(rotated)).returncode == 0
    moved = _cli("keys", "rewrap", str(sym), "--ring", str(rotated), "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)[0]["new_kek_id"] == KeyRing.from_json(rotated.read_text()).primary_id
    _one_line_error(_cli("keys", "rewrap", str(sym), "--ring", str(rotated), "--recipient", str(pub)),
                    "recipient")
