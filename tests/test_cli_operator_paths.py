"""The CLI as an operator uses it (issue 17 §8): the real ``airflow-privacy`` in a subprocess.

Missing files are one-line errors, a closed pipe ends quietly, secrets are written 0600,
a cap's δ is bounded and kept when not given, and the help shows no reST markup.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.dp import PrivacyCost

EXE = str(Path(sys.executable).parent / "airflow-privacy")


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, **kwargs)


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and all(w in out.stderr for w in words), out.stderr


def test_missing_and_unreadable_files_are_one_line_errors(tmp_path):
    _one_line_error(_cli("keys", "inspect", "/nonexistent.enc"), "/nonexistent.enc", "No such file")
    _one_line_error(_cli("keys", "rotate", "/missing.json"), "/missing.json", "No such file")
    _one_line_error(_cli("keys", "inspect", str(tmp_path)), str(tmp_path), "directory")
    _one_line_error(_cli("keys", "rotate", "-", input="not json"), "keyring", "not valid JSON")
    (tmp_path / "plain.txt").write_text("hello")
    _one_line_error(_cli("keys", "inspect", str(tmp_path / "plain.txt")))


def test_a_reader_that_stops_early_ends_it_quietly(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    ledger = PrivacyLedger(url)
    ledger.set_budget("patients", epsilon=1000.0, accountant="basic")
    cost = PrivacyCost(0.01, 0.0, [{"kind": "pure", "epsilon": 0.01}])
    for i in range(100):  # long outputs: ~250 KB either way, more than a pipe holds
        output = f"file:///archive/{'x' * 2000}/{i}.parquet"
        ledger.charge("patients", release_id=f"dag/run_{i}/task/-1", cost=cost, output=output)
    for args in (["budget", "history", "patients", "--json"], ["budget", "history", "patients"]):
        out = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{EXE} {' '.join(args)} --url {url} | head -1"],
            capture_output=True,
            text=True,
        )
        assert out.stderr == "", out.stderr  # no BrokenPipeError traceback
        assert out.returncode == 141  # as a command killed by SIGPIPE
        assert out.stdout.split()[0] in ("[", "at")


@pytest.mark.parametrize("command", [["generate"], ["rotate", "RING"]])
def test_key_rings_are_written_0600_with_output(tmp_path, command):
    ring = tmp_path / "ring.json"
    ring.write_text(KeyRing.generate().to_json())
    target = tmp_path / "sub" / "new.json"
    args = [str(ring) if a == "RING" else a for a in command]
    out = _cli("keys", *args, "--output", str(target))
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    written = KeyRing.from_json(target.read_text())
    if command[0] == "rotate":
        assert written.primary_id != KeyRing.from_json(ring.read_text()).primary_id
    # --output over an existing file (say, rotating in place) replaces it, still 0600
    target.write_text("old")
    target.chmod(0o644)
    assert _cli("keys", *args, "--output", str(target)).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and "keys" in json.loads(target.read_text())


def test_a_shell_redirect_of_a_secret_warns(tmp_path):
    redirected = tmp_path / "ring.json"
    old = os.umask(0o022)
    try:
        with open(redirected, "w") as fh:
            out = subprocess.run(
                [EXE, "keys", "generate"], stdout=fh, stderr=subprocess.PIPE, text=True
            )
    finally:
        os.umask(old)
    assert out.returncode == 0 and "warning" in out.stderr and "--output" in out.stderr
    KeyRing.from_json(redirected.read_text())  # still written: a warning, not a refusal
    piped = _cli("keys", "generate")  # a pipe (to a secrets manager) is fine
    assert piped.returncode == 0 and piped.stderr == ""


def test_budget_set_bounds_delta_and_keeps_it_when_not_given(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    for bad in ("0.5", "0.01", "nan"):
        _one_line_error(
            _cli("budget", "set", "x", "--epsilon", "1", f"--delta={bad}", "--url", url), "--delta"
        )
    assert PrivacyLedger(url).datasets() == []  # nothing written on bad input
    made = _cli("budget", "set", "x", "--epsilon", "1", "--delta", "1e-6", "--url", url, "--json")
    assert made.returncode == 0, made.stderr
    changed = _cli(
        "budget", "set", "x", "--epsilon", "5", "--reason", "approved", "--url", url, "--json"
    )
    assert changed.returncode == 0, changed.stderr
    status = json.loads(changed.stdout)
    assert status["cap_epsilon"] == 5.0 and status["cap_delta"] == 1e-6  # δ kept, not reset to 0
    new = json.loads(_cli("budget", "set", "y", "--epsilon", "1", "--url", url, "--json").stdout)
    assert new["cap_delta"] == 0.0


def test_tables_round_numbers_json_keeps_them(tmp_path):
    url = f"sqlite:///{tmp_path}/l.db"
    ledger = PrivacyLedger(url)
    ledger.set_budget("patients", epsilon=1.0, delta=1e-6, accountant="basic")
    third = 1 / 3
    ledger.charge(
        "patients",
        release_id="r",
        cost=PrivacyCost(third, 0.0, [{"kind": "pure", "epsilon": third}]),
    )
    table = _cli("budget", "show", "--url", url).stdout
    assert "0.6667" in table and "0.3333" in table and "0.66666" not in table
    history = _cli("budget", "history", "patients", "--url", url).stdout
    assert "0.3333 " in history and "0.33333" not in history and "+00:00" not in history
    shown = json.loads(_cli("budget", "show", "--url", url, "--json").stdout)
    assert shown[0]["remaining_epsilon"] == pytest.approx(2 / 3, rel=1e-12)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["budget"],
        ["budget", "show"],
        ["budget", "set"],
        ["budget", "history"],
        ["keys"],
        ["keys", "generate"],
        ["keys", "rotate"],
        ["keys", "inspect"],
        ["keys", "decrypt"],
        ["keys", "rewrap"],
    ],
)
def test_help_shows_no_markup(args):
    out = _cli(*args, "--help")
    assert out.returncode == 0 and "usage: airflow-privacy" in out.stdout
    assert "``" not in out.stdout and ":func:" not in out.stdout


def test_keys_decrypt_to_a_0600_file_and_nothing_on_a_wrong_key(tmp_path, keyring):
    from airflow_privacy.core.crypto import encrypt_file

    plain = os.urandom(3 << 20)
    (tmp_path / "p.bin").write_bytes(plain)
    encrypt_file(str(tmp_path / "p.bin"), str(tmp_path / "c.enc"), keyring, "site_a/2026-01-01")
    ring = tmp_path / "ring.json"
    ring.write_text(keyring.to_json())
    out = tmp_path / "out" / "p.bin"
    args = ["keys", "decrypt", str(tmp_path / "c.enc"), "--output", str(out)]
    done = _cli(*args, "--ring", str(ring), "--associated-data", "site_a/2026-01-01", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plaintext_bytes"] == len(plain) and out.read_bytes() == plain
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    out.unlink()
    # the ring of the privacy_keys_default connection (the test session's, in the environment)
    by_conn = _cli(*args, "--associated-data", "site_a/2026-01-01")
    assert by_conn.returncode == 0 and out.read_bytes() == plain, by_conn.stderr
    out.unlink()
    _one_line_error(_cli(*args, "--ring", str(ring)), "authentication")  # associated data differs
    wrong = tmp_path / "wrong.json"
    wrong.write_text(KeyRing.generate().to_json())
    _one_line_error(_cli(*args, "--ring", str(wrong), "--associated-data", "site_a/2026-01-01"))
    assert not out.exists() and os.listdir(out.parent) == []  # no plaintext on failure
