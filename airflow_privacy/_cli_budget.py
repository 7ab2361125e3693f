"""``airflow-privacy budget``: inspect and set privacy budgets (the ledger).

``show``, ``set``, ``history``, ``verify`` and ``delete``; :func:`_add_budget` registers the
group with the parser of :mod:`airflow_privacy.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys

from airflow_privacy._cli_output import _print


def _ledger(args):
    from airflow_privacy.core.budget import PrivacyLedger

    if args.url:
        return PrivacyLedger(args.url)
    from airflow_privacy.hooks.budget import PrivacyBudgetHook

    return PrivacyBudgetHook(args.conn_id).get_ledger()


AIRFLOW_SETUP = ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")


def _airflow_is_set_up(args) -> bool:
    """Whether ``budget show`` looks the DAGs' schedules up in Airflow's metadata DB.

    Without ``--url`` the ledger comes from an Airflow connection: Airflow is in use anyway.
    With ``--url``, only on a machine with Airflow set up (one of :data:`AIRFLOW_SETUP` in the
    environment, or ``~/airflow/airflow.cfg``): importing Airflow costs seconds and, where it
    was never set up, writes a default ``~/airflow``. Otherwise the forecast assumes each DAG
    keeps the cadence of its logical dates, and says so on stderr.
    """
    if not args.url or any(os.environ.get(name) for name in AIRFLOW_SETUP):
        return True
    if os.path.isfile(os.path.join(os.path.expanduser("~"), "airflow", "airflow.cfg")):
        return True
    print(f"note: no Airflow set up here (none of {', '.join(AIRFLOW_SETUP)} set, no ~/airflow/airflow.cfg): "
          "DAG schedules unknown, cap_reached assumes each DAG keeps the cadence of its logical dates",
          file=sys.stderr)
    return False


def _budget_show(args) -> int:
    from airflow_privacy.plugins.budget_tree import BudgetTree

    ledger = _ledger(args)
    if args.dataset is not None:
        ledger.status(args.dataset)  # KeyError: no such dataset
    tree = BudgetTree(ledger, schedules=_airflow_is_set_up(args))
    rows = [tree.summary(name, depth) for name, depth in tree.ordered(args.dataset)]
    if not rows:
        _print("no datasets have a privacy budget yet", args.json)
    elif args.json:
        _print(rows, True)
    else:
        _print([{"dataset": "  " * r["depth"] + r["dataset"], "own_eps": r["own_epsilon"],
                 "worst_eps": r["spent_epsilon"], "cap_eps": r["cap_epsilon"], "cap_delta": r["cap_delta"],
                 "remaining_eps": r["remaining_epsilon"], "releases": r["releases"],
                 "cap_reached": r["forecast"][:10] if r["forecast"] != "never" else "never"} for r in rows], False)
    return 0


def _budget_set(args) -> int:
    import getpass

    from airflow_privacy.core.budget.ledger import MAX_CAP_DELTA
    from airflow_privacy.core.dp.calibration import check_delta
    from airflow_privacy.core.errors import InvalidParameterError

    if args.delta is not None:
        check_delta(args.delta, "--delta")
    if args.delta is not None and args.delta > MAX_CAP_DELTA:
        raise InvalidParameterError(
            "--delta", args.delta, f"expected at most {MAX_CAP_DELTA:g}: δ must stay well below "
            "1/(number of people in the dataset); typical caps are 1e-5 to 1e-9")
    if args.alert_share is not None and not 0 < args.alert_share <= 1:  # NaN too
        raise InvalidParameterError("--alert-share", args.alert_share, "expected a share of the cap in (0, 1]")
    ledger = _ledger(args)
    extra = {}
    if args.no_parent:
        extra["parent"] = None
    elif args.parent is not None:
        extra["parent"] = args.parent
    try:
        ledger.status(args.dataset)
        if args.reason is None or not args.reason.strip():
            raise InvalidParameterError("--reason", args.reason, f"changing the cap of {args.dataset!r} needs "
                                        "--reason TEXT (recorded with who and when in `budget history`)")
    except KeyError:
        pass  # a new dataset: no reason needed
    status = ledger.set_budget(args.dataset, epsilon=args.epsilon, delta=args.delta, accountant=args.accountant,
                               reason=args.reason, changed_by=args.by or getpass.getuser(),
                               alert_share=args.alert_share, **extra)
    _print(status.to_dict(), args.json)
    return 0


def _budget_history(args) -> int:
    """Charges, cap changes and refused releases of one dataset, in one chronological list
    (also of a deleted dataset: its history ends with the deletion)."""
    ledger = _ledger(args)
    try:
        ledger.status(args.dataset)
    except KeyError:
        if not ledger.cap_changes(args.dataset):
            raise
    rows = [{"kind": "charge", "at": c.created_at, **c.to_dict()} for c in ledger.history(args.dataset)]
    rows += [{"kind": "cap_change", "at": c.changed_at, **c.to_dict()} for c in ledger.cap_changes(args.dataset)]
    rows += [{"kind": "refused", "at": r.created_at, **r.to_dict()} for r in ledger.refusals(args.dataset)]
    rows.sort(key=lambda r: r["at"])  # stable: within one instant, charges, then changes, then refusals
    for r in rows:
        r["at"] = r["at"].isoformat()
    if not args.json:
        rows = [_history_line(r) for r in rows]
    _print(rows or f"dataset {args.dataset!r} has no history yet", args.json)
    return 0


VERIFY_TOLERANCE = 1e-6
"""Stored and recomposed ε differ only by the order of the PLD convolutions (each moves at most
TAIL = 1e-15 of mass to the tails): ~1e-8 at 10,000 runs, far below this; more is a defect."""


def _budget_verify(args) -> int:
    """Recompose every dataset's worst case from its events and compare with the stored spend."""
    rows = [{"dataset": name, "stored_epsilon": stored, "recomposed_epsilon": again,
             "ok": abs(stored - again) <= VERIFY_TOLERANCE * max(1.0, abs(again))}
            for name, stored, again in _ledger(args).verify()]
    _print(rows or "the ledger holds no datasets", args.json)
    return 0 if all(r["ok"] for r in rows) else 1


def _budget_delete(args) -> int:
    """Delete a dataset that never spent, never refused a release and has no partitions
    (:mod:`airflow_privacy.core.budget.delete`), after confirmation."""
    import getpass

    from airflow_privacy.core.budget.delete import check_deletable, delete_dataset
    from airflow_privacy.core.errors import InvalidParameterError, PrivacyError

    if args.reason is None or not args.reason.strip():
        raise InvalidParameterError("--reason", args.reason, f"deleting dataset {args.dataset!r} needs --reason "
                                    "TEXT (recorded with who and when in `budget history`)")
    ledger = _ledger(args)
    check_deletable(ledger, args.dataset)  # refuse before asking
    if not args.yes:
        s = ledger.status(args.dataset)
        print(f"Delete the privacy budget of dataset {args.dataset!r} (cap epsilon={s.cap_epsilon:g}, "
              f"delta={s.cap_delta:g}, no releases)? Type its name to confirm: ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not sys.stdin.isatty():  # nothing echoed the answer: end the prompt's line
            print(file=sys.stderr)
        if answer.strip() != args.dataset:
            raise PrivacyError(f"not confirmed: dataset {args.dataset!r} was not deleted (pass --yes to skip "
                               "the question)")
    deleted = delete_dataset(ledger, args.dataset, reason=args.reason, deleted_by=args.by or getpass.getuser())
    _print(deleted.to_dict() if args.json else f"deleted dataset {args.dataset!r} (recorded in `budget history "
           f"{args.dataset}`)", args.json)
    return 0


def _history_line(r: dict) -> dict:
    """One table row: what happened, to which run, for how much ε."""
    if r["kind"] == "cap_change":
        was = "-" if r["old_epsilon"] is None else f"{r['old_epsilon']:g}/{r['old_delta']:g}"
        what = f"cap {was}->{r['new_epsilon']:g}/{r['new_delta']:g}"
        if r["new_epsilon"] == 0:  # a deletion (no cap is 0): the reason says "deleted: ..."
            what = f"cap {was}->-"
        if r["old_parent"] != r["new_parent"]:
            what += f" parent {r['old_parent'] or '-'}->{r['new_parent'] or '-'}"
        return {"at": r["at"], "kind": r["kind"], "logical_date": None, "release_id": None, "epsilon": None,
                "spent_epsilon": None, "detail": f"{what} by {r['changed_by'] or 'unknown'}: {r['reason']}"}
    detail = f"{r['status']} {r['output'] or '-'}" if r["kind"] == "charge" else r["reason"]
    return {"at": r["at"], "kind": r["kind"], "logical_date": r["logical_date"], "release_id": r["release_id"],
            "epsilon": r["epsilon"], "spent_epsilon": r.get("spent_epsilon"), "detail": detail}


def _add_budget(sub) -> None:
    budget = sub.add_parser("budget", help="inspect and set privacy budgets (the ledger)")
    bsub = budget.add_subparsers(dest="command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conn-id", default="privacy_budget_default", help="privacy_budget connection id")
    common.add_argument("--url", help="SQLAlchemy URL of the ledger (overrides --conn-id)")
    common.add_argument("--json", action="store_true", help="JSON output")
    show = bsub.add_parser("show", parents=[common], help="the population tree: own and worst-case spend, cap, "
                           "remaining budget and the forecast date each cap is reached")
    show.add_argument("dataset", nargs="?", help="show only this dataset and its partitions")
    show.set_defaults(func=_budget_show)
    st = bsub.add_parser("set", parents=[common], help="create or change a dataset's cap (recorded with who, "
                         "when and why)")
    st.add_argument("dataset")
    st.add_argument("--epsilon", type=float, required=True, help="the ε cap (> 0)")
    st.add_argument("--delta", type=float, help="the δ cap, from 0 to the ledger's limit (MAX_CAP_DELTA: δ must "
                    "stay well below 1/n for n people) (default: keep the current one; 0 for a new dataset)")
    st.add_argument("--accountant", choices=["pld", "rdp", "basic"],
                    help="how releases compose (default: keep the current one; the parent's or pld for a new "
                    "dataset)")
    parent = st.add_mutually_exclusive_group()
    parent.add_argument("--parent", metavar="NAME", help="declare the dataset a partition of NAME (its "
                        "siblings are disjoint: one person is in at most one)")
    parent.add_argument("--no-parent", action="store_true", help="detach the dataset from its parent")
    st.add_argument("--reason", help="why the cap changes; required to change an existing dataset")
    st.add_argument("--alert-share", type=float, metavar="SHARE",
                    help="notify when the worst case passes this share of the cap, in (0, 1] (default 0.8)")
    st.add_argument("--by", metavar="WHO", help="who makes the change (default: the OS user)")
    st.set_defaults(func=_budget_set)
    hist = bsub.add_parser("history", parents=[common], help="a dataset's charges, cap changes and refused "
                           "releases, oldest first")
    hist.add_argument("dataset")
    hist.set_defaults(func=_budget_history)
    ver = bsub.add_parser("verify", parents=[common], help="recompose every dataset's spend from its events and "
                          "compare with the stored figures (exit 1 on a mismatch)")
    ver.set_defaults(func=_budget_verify)
    rm = bsub.add_parser("delete", parents=[common], help="delete a dataset that never spent, never refused a "
                         "release and has no partitions (a typo, a mistaken `set`); recorded in its history")
    rm.add_argument("dataset")
    rm.add_argument("--reason", help="why (required; recorded with who and when)")
    rm.add_argument("--by", metavar="WHO", help="who deletes it (default: the OS user)")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation (by typing the name)")
    rm.set_defaults(func=_budget_delete)
