"""Every ``$ ...`` command of docs/runbook.md runs against a demo home and prints what it should.

The home is built the way ``make demo`` builds its own: the demo driver (with the Makefile's
environment) runs ``demo_patient_batches``, ``dp_daily_statistics`` and ``federated_training``
for :data:`DAY`; then ``site_c``'s batch goes missing and ``cross_site_totals`` runs for the
same day (the flaky-site section); an ``airflow api-server`` on a free port serves the REST
API section. Each ``console`` block runs in one bash (its commands share variables), in the
runbook's order, and every command has a check of its output below (:data:`CHECKS`) -- a
command added to the runbook without one fails :func:`test_every_command_has_one_check`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.crypto import (
    KeyRing,
    PrivateKeyRing,
    PublicKeyRing,
    decrypt_bytes,
    inspect_header,
)
from airflow_privacy.demo.home import scrub_environment

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = REPO / "docs" / "runbook.md"
BIN = Path(sys.executable).parent
DAY = "2026-01-01"
DROPPED = "site_c"  # the site whose batch is missing for cross_site_totals
_MARK = "@@runbook-command-"


# -- the runbook's commands ---------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    section: str
    commands: tuple[str, ...]


def _blocks() -> list[Block]:
    """The ``console`` blocks: each ``$`` line with its ``\\``-continued lines, under its section."""
    text = RUNBOOK.read_text()
    blocks = []
    for match in re.finditer(r"```console\n(.*?)```", text, flags=re.S):
        section = re.findall(r"^## (.+)$", text[: match.start()], flags=re.M)[-1]
        commands: list[str] = []
        continued = False
        for line in match.group(1).splitlines():
            if continued:
                commands[-1] += "\n" + line
            elif line.startswith("$ "):
                commands.append(line[2:])
            continued = bool(commands) and commands[-1].endswith("\\")
        blocks.append(Block(section, tuple(commands)))
    return blocks


# -- the demo home ------------------------------------------------------------------------------
@dataclass
class Demo:
    home: Path
    work: Path
    env: dict[str, str]
    demo_stdout: str
    real: Path  # where the inherited (poisoned) settings pointed

    @property
    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(f"sqlite:///{self.home}/privacy_budget.db")

    @property
    def checkpoints(self) -> Path:
        return self.home / "demo-data" / "federated" / "checkpoints"

    def dag_runs(self, dag_id: str) -> list[dict]:
        with sqlite3.connect(self.home / "airflow.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT run_id, state, run_type, conf, logical_date FROM dag_run WHERE dag_id = ?",
                              (dag_id,)).fetchall()
        return [dict(r) for r in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Stop the api-server and its workers (the process group it leads): SIGTERM, then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:  # whatever outlived the supervisor
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    from airflow_privacy.demo.__main__ import demo_connections

    base = tmp_path_factory.mktemp("runbook")
    home, work, real = base / "airflow", base / "work", base / "real"
    work.mkdir()
    # What `make demo` exports -- and nothing of the test session's own Airflow settings.
    env = dict(os.environ)
    scrub_environment(env, keep=())
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW_PRIVACY_DEMO_ROOT": f"file://{home}/demo-data",
    })
    # A user's shell pointing at a real deployment: the demo must not touch it.
    poisoned = {
        **env,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{real}/airflow.db",
        "AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT": json.dumps(
            {"conn_type": "privacy_budget", "host": f"sqlite:///{real}/ledger.db"}),
    }
    real.mkdir()
    demo_run = _run([sys.executable, "-m", "airflow_privacy.demo", "--start", DAY, "--days", "1", "--dags",
                     "demo_patient_batches", "dp_daily_statistics", "federated_training"],
                    poisoned, work, timeout=1500)

    # The flaky site: its batch of the day is gone when the secure sum runs.
    (home / "demo-data" / "raw" / f"site={DROPPED}" / f"date={DAY}.parquet").unlink()
    _run([str(BIN / "airflow"), "dags", "test", "cross_site_totals", DAY], {**env, **demo_connections(str(home))},
         work, timeout=900)

    port = _free_port()
    env["AIRFLOW_URL"] = f"http://127.0.0.1:{port}"
    log = (base / "api-server.log").open("w")
    server = subprocess.Popen([str(BIN / "airflow"), "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (base / "api-server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{env['AIRFLOW_URL']}/api/v2/monitor/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, (base / "api-server.log").read_text()[-3000:]
                time.sleep(1)
        yield Demo(home=home, work=work, env=env, demo_stdout=demo_run.stdout, real=real)
    finally:
        _stop(server)
        log.close()


def _run_block(block: Block, demo: Demo) -> list[str]:
    """Run the block's commands in one bash (``set -euo pipefail``); return each one's stdout."""
    script = ["set -euo pipefail"]
    for i, command in enumerate(block.commands):
        script += [f"printf '\\n{_MARK}%d\\n' {i}", command]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], env=demo.env, cwd=demo.work, capture_output=True,
                          text=True, timeout=600)
    parts = re.split(rf"\n{_MARK}(\d+)\n", proc.stdout)
    outputs = {int(i): out for i, out in zip(parts[1::2], parts[2::2], strict=True)}
    if proc.returncode != 0:
        failed = block.commands[max(outputs, default=0)]
        raise AssertionError(f"`{failed}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    assert sorted(outputs) == list(range(len(block.commands)))
    return [outputs[i] for i in range(len(block.commands))]


def _json(out: str):
    """The JSON document in ``out`` (Airflow may log a line or two before it)."""
    start = re.search(r"^[\[{]", out, flags=re.M)
    assert start, out
    return json.JSONDecoder().raw_decode(out[start.start():])[0]


def _table(out: str) -> list[list[str]]:
    """Data rows of Airflow's ``-o table`` output (lines with cells; its header left out)."""
    rows = [[c.strip() for c in line.split("|")] for line in out.splitlines() if line.count("|") >= 3]
    return [r for r in rows if r[0] != "dag_id"]


# -- what each command must print (or do) -------------------------------------------------------
def _no_output(out: str, demo: Demo) -> None:
    assert out.strip() == ""  # an assignment: the next command uses (and so checks) it


def _cli_trigger(out: str, demo: Demo) -> None:
    # Airflow's table wraps long cells over several lines
    assert "{'note': 'rerun" in out and "queued" in out and "manual" in out
    (run,) = [r for r in demo.dag_runs("dp_daily_statistics") if r["logical_date"].startswith("2026-01-05")]
    assert run["state"] == "queued" and run["run_type"] == "manual"
    assert json.loads(run["conf"]) == {"note": "rerun after fix"}


def _rest_trigger(out: str, demo: Demo) -> None:
    run = json.loads(out)
    assert run["dag_id"] == "dp_daily_statistics" and run["state"] == "queued"
    assert run["logical_date"] == "2026-01-06T00:00:00Z" and run["conf"] == {"note": "rerun after fix"}
    assert run["triggered_by"] == "rest_api" and run["triggering_user_name"] == "admin"
    (row,) = [r for r in demo.dag_runs("dp_daily_statistics") if r["run_id"] == run["dag_run_id"]]
    assert row["state"] == "queued" and row["logical_date"].startswith("2026-01-06")


def _budget_table(out: str, demo: Demo) -> None:
    lines = out.strip().splitlines()
    header = lines[0].split()
    assert header[:5] == ["dataset", "own_eps", "worst_eps", "cap_eps", "cap_delta"]
    shown = {cols[0]: dict(zip(header, cols, strict=True)) for cols in (line.split() for line in lines[1:])}
    ledger = {s.dataset: s for s in demo.ledger.datasets()}
    assert set(shown) == set(ledger) == {"patients", "patients_site_a", "patients_site_b", "patients_site_c"}
    assert [line.startswith("  patients_site_") for line in lines[1:]] == [False, True, True, True]  # the tree
    for name, status in ledger.items():
        assert float(shown[name]["worst_eps"]) == pytest.approx(status.spent_epsilon, rel=5e-4)  # 4 digits
        assert int(shown[name]["releases"]) == status.releases


def _budget_json(out: str, demo: Demo) -> None:
    shown, *partitions = _json(out)  # patients, then its partitions
    assert [p["dataset"] for p in partitions] == ["patients_site_a", "patients_site_b", "patients_site_c"]
    status = demo.ledger.status("patients")
    assert shown["dataset"] == "patients" and shown["cap_epsilon"] == 12.0 and shown["cap_delta"] == 1e-5
    assert shown["spent_epsilon"] == pytest.approx(status.spent_epsilon)
    # patients' own releases: dp_daily_statistics (ε = 1) and cross_site_totals (ε = 1 at δ = 1e-7),
    # composed at δ = 1e-5; its spend is a patient's worst case, with their site's training
    sites = [demo.ledger.status(f"patients_site_{s}") for s in "abc"]
    assert all(site.parent == "patients" for site in sites)
    assert shown["releases"] == 2 and 1.9 < status.own_epsilon <= 2.0 + 1e-9
    assert status.own_epsilon < shown["spent_epsilon"] <= status.own_epsilon + max(s.spent_epsilon for s in sites) + 1e-6


def _budget_history(out: str, demo: Demo) -> None:
    dp_release, secure_sum = demo.ledger.history("patients")
    assert dp_release.release_id.startswith("dp_daily_statistics/")
    assert dp_release.release_id.endswith("/visit_statistics/-1")
    assert secure_sum.release_id.startswith("cross_site_totals/")
    rows = [r for r in out.strip().splitlines()[1:] if r.split()[1] == "charge"]
    assert [r.split()[3] for r in rows] == [dp_release.release_id, secure_sum.release_id]
    assert out.split()[:4] == ["at", "kind", "logical_date", "release_id"]
    assert f"date={DAY}.parquet" in rows[0] and "released" in rows[0]


def _budget_set(out: str, demo: Demo) -> None:
    assert re.search(r"^cap_epsilon\s+8$", out, flags=re.M) and re.search(r"^cap_delta\s+1e-05$", out, flags=re.M)
    status = demo.ledger.status("patients")
    assert (status.cap_epsilon, status.cap_delta, status.releases) == (8.0, 1e-5, 2)
    assert status.remaining_epsilon == pytest.approx(8.0 - status.spent_epsilon)


def _keys_generate(out: str, demo: Demo) -> None:
    assert out.strip() == ""  # written to ring.json
    ring = KeyRing.from_json((demo.work / "ring.json").read_text())
    assert len(ring) == 1 and (demo.work / "ring.json").stat().st_mode & 0o777 == 0o600


def _keys_rotate(out: str, demo: Demo) -> None:
    old = KeyRing.from_json((demo.work / "ring.json").read_text())
    new = KeyRing.from_json((demo.work / "ring-rotated.json").read_text())
    assert len(new) == 2 and old.primary_id in new and new.primary_id != old.primary_id
    assert (demo.work / "ring-rotated.json").stat().st_mode & 0o777 == 0o600


def _keys_inspect(out: str, demo: Demo) -> None:
    header = dict(line.split(None, 1) for line in out.strip().splitlines())
    ring_json = (demo.home / "demo-keyring-default.json").read_text()
    assert header["magic"] == "APRV" and header["kek_id"] == KeyRing.from_json(ring_json).primary_id
    assert all(key["key"] not in out for key in json.loads(ring_json)["keys"])  # a header, never a secret


def _keys_decrypt(out: str, demo: Demo) -> None:
    import pyarrow.parquet as pq

    shown = dict(line.split(None, 1) for line in out.strip().splitlines())
    batch = demo.work / "site_a.parquet"
    assert shown["output"] == "site_a.parquet" and int(shown["plaintext_bytes"]) == batch.stat().st_size
    assert batch.stat().st_mode & 0o777 == 0o600
    raw = demo.home / "demo-data" / "raw" / "site=site_a" / f"date={DAY}.parquet"
    assert batch.read_bytes() == raw.read_bytes() and pq.read_table(batch).num_rows > 0


def _holder_rotate(out: str, demo: Demo) -> None:
    old = PrivateKeyRing.from_json((demo.home / "demo-keyring-holder.json").read_text())
    new = PrivateKeyRing.from_json((demo.work / "holder-private-2.json").read_text())
    public = PublicKeyRing.from_json((demo.work / "holder-public-2.json").read_text())
    assert list(new.ids) == [*old.ids, new.primary_id] and new.primary_id != old.primary_id
    assert public == new.public_ring() and public.primary_id == new.primary_id
    assert (demo.work / "holder-private-2.json").stat().st_mode & 0o777 == 0o600
    published = json.loads((demo.work / "holder-public-2.json").read_text())["keys"]
    assert published[-1]["fingerprint"] == public.primary.fingerprint  # what sites compare out of band
    private = json.loads((demo.work / "holder-private-2.json").read_text())
    assert all(k["private"] not in out for k in private["keys"])  # no private key is printed


def _holder_rewrap(out: str, demo: Demo) -> None:
    new = PrivateKeyRing.from_json((demo.work / "holder-private-2.json").read_text())
    files = sorted((demo.home / "demo-data" / "to-holder").glob("site=*/*.enc"))
    assert len(files) == 3 and all(f.name in out for f in files)
    for f in files:  # every file now wrapped to the new key pair only, and it opens with it
        assert [r["key_id"] for r in inspect_header(str(f))["recipients"]] == [new.primary_id]
        site = f.parent.name
        plain = decrypt_bytes(f.read_bytes(), new, f"{site}/date={DAY}")
        raw = demo.home / "demo-data" / "raw" / site / f"date={DAY}.parquet"  # site_c's went missing since
        assert plain == raw.read_bytes() if raw.exists() else plain[:4] == plain[-4:] == b"PAR1"


def _list_checkpoints(out: str, demo: Demo) -> None:
    assert {"latest.pt", "round-00001.pt", "round-00002.pt", "round-00003.pt"} <= set(out.split())


def _roll_back(out: str, demo: Demo) -> None:
    from airflow_privacy.core.federated import load_checkpoint

    latest = load_checkpoint(f"file://{demo.checkpoints}/latest.pt")
    assert latest.round == 2 and [h["round"] for h in latest.history] == [1, 2]
    assert (demo.checkpoints / "latest.pt").read_bytes() == (demo.checkpoints / "round-00002.pt").read_bytes()
    assert load_checkpoint(f"file://{demo.checkpoints}/round-00003.pt").round == 3  # kept, not deleted


def _site_task_states(out: str, demo: Demo) -> None:
    states = {row[2]: row[3] for row in _table(out)}
    assert states == {
        "secure_sum.advertise_site_c": "success", "secure_sum.share_site_c": "success",
        "secure_sum.mask_site_c": "upstream_failed", "secure_sum.reveal_site_c": "skipped",
        "secure_sum.unmask": "success", "local_vector_site_c": "failed",
    }
    assert all(row[0] == "cross_site_totals" and row[1].startswith(DAY) for row in _table(out))


def _site_batches(out: str, demo: Demo) -> None:
    listing = {}
    for section in out.strip().split("\n\n"):  # `ls DIR...`: "DIR:" then its files, per directory
        header, *files = section.splitlines()
        listing[re.fullmatch(r".*/raw/site=(\w+)/:", header).group(1)] = files
    assert listing == {"site_a": [f"date={DAY}.parquet"], "site_b": [f"date={DAY}.parquet"], "site_c": []}


#: Command prefix -> its check; each command of the runbook matches exactly one.
CHECKS: list[tuple[str, Callable[[str, Demo], None]]] = [
    ("airflow dags trigger dp_daily_statistics", _cli_trigger),
    ("PASSWORD=$(jq -r .admin", _no_output),
    ("TOKEN=$(curl", _no_output),
    ('curl -sf -X POST "$AIRFLOW_URL/api/v2/dags/dp_daily_statistics/dagRuns"', _rest_trigger),
    ("airflow-privacy budget show patients --json", _budget_json),
    ("airflow-privacy budget show", _budget_table),
    ("airflow-privacy budget history patients", _budget_history),
    ("airflow-privacy budget set patients", _budget_set),
    ("airflow-privacy keys generate --output ring.json", _keys_generate),
    ("airflow-privacy keys rotate ring.json --output ring-rotated.json", _keys_rotate),
    ("airflow-privacy keys inspect", _keys_inspect),
    ("airflow-privacy keys decrypt", _keys_decrypt),
    ('airflow-privacy keys rotate "$AIRFLOW_HOME/demo-keyring-holder.json"', _holder_rotate),
    ('airflow-privacy keys rewrap "$AIRFLOW_HOME"/demo-data/to-holder/', _holder_rewrap),
    ('CKPT="$AIRFLOW_HOME/demo-data/federated/checkpoints"', _no_output),
    ('ls "$CKPT"', _list_checkpoints),
    ('cp "$CKPT/round-00002.pt" "$CKPT/latest.pt"', _roll_back),
    ("airflow tasks states-for-dag-run cross_site_totals", _site_task_states),
    ('ls "$AIRFLOW_HOME"/demo-data/raw/site=*/', _site_batches),
]


def _prefix(command: str) -> str:
    # the longest matching prefix: `budget show patients --json` is also a `budget show`
    matches = sorted((p for p, _ in CHECKS if command.startswith(p)), key=len, reverse=True)
    assert matches, f"no check for runbook command `{command}`: add one to CHECKS"
    return matches[0]


def _check(command: str) -> Callable[[str, Demo], None]:
    return dict(CHECKS)[_prefix(command)]


# -- tests --------------------------------------------------------------------------------------
def test_every_command_has_one_check():
    """Each runbook command has its own check, and every check has its command."""
    prefixes = [_prefix(c) for b in _blocks() for c in b.commands]
    assert sorted(prefixes) == sorted(p for p, _ in CHECKS)
    sections = {b.section for b in _blocks()}
    assert {"Trigger a DAG with parameters", "Recover a federated run from a checkpoint",
            "A site keeps dropping out"} <= sections
    assert "```bash" not in RUNBOOK.read_text()  # a block the test would not run


@pytest.mark.slow
def test_demo_ignored_the_shells_real_deployment(demo):
    """The demo home was built with a real metadata DB and ledger in the environment."""
    assert "ignoring inherited Airflow settings" in demo.demo_stdout
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in demo.demo_stdout
    assert list(demo.real.iterdir()) == []
    assert f"Privacy budget (ledger {demo.home}/privacy_budget.db):" in demo.demo_stdout
    # patients' own release is 1.000; its worst case adds a site's training when that ran
    line = re.search(r"^  patients +spent epsilon (\d+\.\d{3}) of 12 \((?:own (\d+\.\d{3}), )?delta cap 1e-05",
                     demo.demo_stdout, flags=re.M)
    assert line and (line.group(2) or line.group(1)) == "1.000", demo.demo_stdout


@pytest.mark.slow
@pytest.mark.parametrize("block", _blocks(), ids=lambda b: re.sub(r"\W+", "-", b.section.lower()).strip("-"))
def test_runbook_block(block, demo):
    for command, out in zip(block.commands, _run_block(block, demo), strict=True):
        _check(command)(out, demo)
