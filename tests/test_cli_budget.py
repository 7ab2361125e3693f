"""``airflow-privacy budget`` on population trees (issue 16): the real CLI in a subprocess
against a SQLite ledger -- the tree with its forecast, governed ``set``, one history."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.errors import BudgetExceededError

EXE = str(Path(sys.executable).parent / "airflow-privacy")


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, input=stdin)


def _one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def _pure(eps: float) -> PrivacyCost:
    return PrivacyCost(eps, 0.0, [{"kind": "pure", "epsilon": eps}])


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def tree(url) -> tuple[PrivacyLedger, dt.datetime]:
    """patients (cap 5) with partitions site_a and site_b (cap 3): three past daily runs, each
    charging 0.2 to both sites (DAG fed) and 0.1 to patients itself (DAG daily)."""
    for args in (["patients", "--epsilon", "5"], ["site_a", "--epsilon", "3", "--parent", "patients"],
                 ["site_b", "--epsilon", "3", "--parent", "patients"]):
        out = _cli("budget", "set", *args, "--accountant", "basic", "--url", url)
        assert out.returncode == 0, out.stderr
    ledger = PrivacyLedger(url)
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    for k in range(3):
        day = today - dt.timedelta(days=3 - k)
        for site in ("site_a", "site_b"):
            ledger.charge(site, release_id=f"fed/r{k}/{site}", cost=_pure(0.2), dag_id="fed", run_id=f"r{k}",
                          task_id=site, logical_date=day)
        ledger.charge("patients", release_id=f"daily/r{k}", cost=_pure(0.1), dag_id="daily", run_id=f"r{k}",
                      task_id="stats", logical_date=day)
    return ledger, today


def test_show_prints_the_tree_with_worst_case_and_forecast(url, tree):
    _, today = tree
    table = _cli("budget", "show", "--url", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["dataset", "own_eps", "worst_eps", "cap_eps", "cap_delta", "remaining_eps",
                                "releases", "cap_reached"]
    assert [line.split()[0] for line in lines[1:]] == ["patients", "site_a", "site_b"]
    assert lines[2].startswith("  site_a") and lines[1].startswith("patients")
    # patients: own 0.3, a person of site a lost 0.3 + 0.6; 4.1 left at 0.1 own + 0.2 (one site) a day
    # -> 14 more daily runs (the cadence of the logical dates; no Airflow DAG of that name), the first
    # tomorrow (today's 00:00 is past)
    assert lines[1].split()[1:8] == ["0.3", "0.9", "5", "0", "4.1", "3", str((today + dt.timedelta(days=14)).date())]
    # a site: 2.4 left at 0.2 a day -> 12 runs
    assert lines[2].split()[-1] == str((today + dt.timedelta(days=12)).date())
    shown = json.loads(_cli("budget", "show", "site_a", "--url", url, "--json").stdout)
    assert [r["dataset"] for r in shown] == ["site_a"] and shown[0]["parent"] == "patients"
    assert shown[0]["ancestors"][0]["dataset"] == "patients"
    assert dt.datetime.fromisoformat(shown[0]["forecast"]) == today + dt.timedelta(days=12)
    whole = json.loads(_cli("budget", "show", "--url", url, "--json").stdout)
    assert whole[0]["children"] == ["site_a", "site_b"] and whole[0]["spent_epsilon"] == pytest.approx(0.9)


def test_a_dataset_nothing_scheduled_spends_is_never_reached(url):
    assert _cli("budget", "set", "visits", "--epsilon", "2", "--url", url).returncode == 0
    PrivacyLedger(url).charge("visits", release_id="notebook-1", cost=_pure(0.5))  # no DAG
    row = json.loads(_cli("budget", "show", "--url", url, "--json").stdout)[0]
    assert row["forecast"] == "never" and row["remaining_epsilon"] == pytest.approx(1.5)
    assert _cli("budget", "show", "--url", url).stdout.splitlines()[1].split()[-1] == "never"


def test_set_needs_a_reason_to_change_and_records_who(url):
    assert _cli("budget", "set", "patients", "--epsilon", "5", "--delta", "1e-6", "--url", url).returncode == 0
    _one_line_error(_cli("budget", "set", "patients", "--epsilon", "6", "--url", url), "--reason", "patients")
    _one_line_error(_cli("budget", "set", "patients", "--epsilon", "6", "--reason", "  ", "--url", url), "--reason")
    for share in ("0", "1.5", "nan"):
        _one_line_error(_cli("budget", "set", "patients", "--epsilon", "6", "--reason", "r", "--alert-share", share,
                             "--url", url), "--alert-share", "(0, 1]")
    assert PrivacyLedger(url).status("patients").cap_epsilon == 5.0  # nothing changed
    out = _cli("budget", "set", "patients", "--epsilon", "6", "--reason", "DPO approved Q3", "--alert-share", "0.5",
               "--url", url, "--json")
    assert out.returncode == 0, out.stderr
    after = json.loads(out.stdout)
    assert after["cap_epsilon"] == 6.0 and after["cap_delta"] == 1e-6 and after["alert_share"] == 0.5  # δ kept
    assert _cli("budget", "set", "patients", "--epsilon", "7", "--reason", "r2", "--by", "dpo@example.org",
                "--url", url).returncode == 0
    changes = PrivacyLedger(url).cap_changes("patients")
    assert [(c.changed_by, c.old_epsilon, c.new_epsilon, c.reason) for c in changes] == [
        (getpass.getuser(), None, 5.0, "created"), (getpass.getuser(), 5.0, 6.0, "DPO approved Q3"),
        ("dpo@example.org", 6.0, 7.0, "r2")]


def test_set_parent_refuses_a_cycle_and_a_missing_parent_and_detaches(url):
    for args in (["p", "--epsilon", "5"], ["c", "--epsilon", "3", "--parent", "p"]):
        assert _cli("budget", "set", *args, "--url", url).returncode == 0
    _one_line_error(_cli("budget", "set", "p", "--epsilon", "5", "--parent", "c", "--reason", "x", "--url", url),
                    "cycle", "p")
    _one_line_error(_cli("budget", "set", "c", "--epsilon", "3", "--parent", "nope", "--reason", "x", "--url", url),
                    "nope")
    _one_line_error(_cli("budget", "set", "new", "--epsilon", "3", "--parent", "nope", "--url", url), "nope")
    ledger = PrivacyLedger(url)
    assert ledger.status("p").parent is None and ledger.status("c").parent == "p"
    assert [s.dataset for s in ledger.datasets()] == ["c", "p"]  # nothing written by the refusals
    both = _cli("budget", "set", "c", "--epsilon", "3", "--parent", "p", "--no-parent", "--url", url)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    out = _cli("budget", "set", "c", "--epsilon", "3", "--no-parent", "--reason", "own study", "--url", url)
    assert out.returncode == 0, out.stderr
    assert ledger.status("c").parent is None
    assert [line.split()[0] for line in _cli("budget", "show", "--url", url).stdout.splitlines()[1:]] == ["c", "p"]


def test_history_lists_charges_cap_changes_and_refusals_in_order(url, tree):
    ledger, today = tree
    assert _cli("budget", "set", "site_a", "--epsilon", "0.7", "--reason", "tighter", "--url", url).returncode == 0
    with pytest.raises(BudgetExceededError, match="site_a"):
        ledger.charge("site_a", release_id="fed/r3/site_a", cost=_pure(0.2), dag_id="fed", run_id="r3",
                      task_id="site_a", logical_date=today)
    rows = json.loads(_cli("budget", "history", "site_a", "--url", url, "--json").stdout)
    assert [r["kind"] for r in rows] == ["cap_change", "charge", "charge", "charge", "cap_change", "refused"]
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    assert rows[4]["reason"] == "tighter" and rows[4]["old_epsilon"] == 3.0 and rows[4]["new_epsilon"] == 0.7
    assert rows[5]["release_id"] == "fed/r3/site_a" and rows[5]["dag_id"] == "fed"
    assert dt.datetime.fromisoformat(rows[5]["logical_date"]) == today
    table = _cli("budget", "history", "site_a", "--url", url).stdout.splitlines()
    assert table[0].split() == ["at", "kind", "logical_date", "release_id", "epsilon", "spent_epsilon", "detail"]
    assert [line.split()[1] for line in table[1:]] == [r["kind"] for r in rows]
    assert "cap 3/0->0.7/0" in table[5] and "tighter" in table[5]
    assert table[2].split()[2] == f"{(today - dt.timedelta(days=3)).date()}T00:00:00Z"


# -- budget delete (issue 18 §5): only a dataset that never spent, never refused a release and
# has no partitions goes; every refusal is one line naming the dataset and why, nothing deleted.
@pytest.fixture
def deletable(url) -> PrivacyLedger:
    """patients (with partition site_a), spent (one charge), refused (one refusal), typo (nothing)."""
    lg = PrivacyLedger(url)
    lg.set_budget("patients", epsilon=5.0, delta=1e-6)
    lg.set_budget("site_a", epsilon=3.0, delta=1e-6, parent="patients")
    lg.set_budget("spent", epsilon=1.0)
    lg.charge("spent", release_id="daily/r1/t/-1", cost=_pure(0.5), dag_id="daily")
    lg.set_budget("refused", epsilon=0.1)
    with pytest.raises(BudgetExceededError):
        lg.charge("refused", release_id="weekly/r1/t/-1", cost=_pure(0.5), dag_id="weekly")
    lg.set_budget("typo", epsilon=2.0, delta=1e-7)
    return lg


def _names(lg: PrivacyLedger) -> list[str]:
    return [s.dataset for s in lg.datasets()]


def test_delete_refuses_what_holds_history_or_partitions(url, deletable):
    before = _names(deletable)
    for name, *why in (("spent", "1 charged"), ("refused", "1 refused release", "'weekly'"),
                       ("patients", "partition", "'site_a'"), ("nope", "no privacy budget")):
        _one_line_error(_cli("budget", "delete", name, "--reason", "r", "--yes", "--url", url), f"'{name}'", *why)
    _one_line_error(_cli("budget", "delete", "typo", "--yes", "--url", url), "--reason", "'typo'")
    _one_line_error(_cli("budget", "delete", "typo", "--reason", "  ", "--yes", "--url", url), "--reason")
    assert _names(deletable) == before
    assert [len(deletable.cap_changes(n)) for n in ("spent", "refused", "patients", "typo")] == [1, 1, 1, 1]


def test_delete_asks_for_the_name_unless_yes_and_leaves_a_trace(url, deletable):
    for answer in ("", "y\n", "typ\n"):  # EOF, a reflex, a near miss: nothing goes
        out = _cli("budget", "delete", "typo", "--reason", "typo of visits", "--url", url, stdin=answer)
        prompt, error = out.stderr.strip().splitlines()
        assert out.returncode == 2 and "Type its name to confirm" in prompt and "epsilon=2" in prompt, out.stderr
        assert error.startswith("error: not confirmed") and "'typo'" in error, out.stderr
    assert "typo" in _names(deletable)
    out = _cli("budget", "delete", "typo", "--reason", "typo of visits", "--by", "ops@example.org", "--url", url,
               stdin="typo\n")
    assert out.returncode == 0, out.stderr
    assert "typo" not in _names(deletable) and "site_a" in _names(deletable)
    last = deletable.cap_changes("typo")[-1]
    assert (last.old_epsilon, last.old_delta, last.new_epsilon, last.new_delta) == (2.0, 1e-7, 0.0, 0.0)
    assert last.reason == "deleted: typo of visits" and last.changed_by == "ops@example.org"
    hist = _cli("budget", "history", "typo", "--url", url).stdout.splitlines()
    assert "cap 2/1e-07->-" in hist[-1] and "deleted: typo of visits" in hist[-1], hist
    # A partition without history goes with --yes; then its parent has none left and goes too.
    out = _cli("budget", "delete", "site_a", "--reason", "merged", "--yes", "--url", url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["old_parent"] == "patients"
    assert _cli("budget", "delete", "patients", "--reason", "merged", "--yes", "--url", url).returncode == 0
    assert _names(deletable) == ["refused", "spent"]
    # The name can be created again; its history keeps the earlier life.
    deletable.set_budget("typo", epsilon=1.0)
    assert [c.reason for c in deletable.cap_changes("typo")] == ["created", "deleted: typo of visits", "created"]
