"""``airflow-privacy``: runbook commands for the people who operate these pipelines.

Each capability registers its command group here (``budget``, ``keys`` ...). Output is a
plain table by default and JSON with ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from airflow_privacy import __version__


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        cols = list(obj[0])
        widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in obj)) for c in cols]
        print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=False)))
        for row in obj:
            print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=False)))
    elif isinstance(obj, dict):
        width = max((len(k) for k in obj), default=0)
        for k, v in obj.items():
            print(f"{k.ljust(width)}  {v}")
    else:
        print(obj)


def _ledger(args):
    from airflow_privacy.core.budget import PrivacyLedger

    if args.url:
        return PrivacyLedger(args.url)
    from airflow_privacy.hooks.budget import PrivacyBudgetHook

    return PrivacyBudgetHook(args.conn_id).get_ledger()


def _budget_show(args) -> int:
    ledger = _ledger(args)
    rows = [ledger.status(args.dataset)] if args.dataset else ledger.datasets()
    _print([r.to_dict() for r in rows] if rows else "no datasets have a privacy budget yet", args.json)
    return 0


def _budget_set(args) -> int:
    status = _ledger(args).set_budget(args.dataset, epsilon=args.epsilon, delta=args.delta, accountant=args.accountant)
    _print(status.to_dict(), args.json)
    return 0


def _budget_history(args) -> int:
    ledger = _ledger(args)
    ledger.status(args.dataset)
    charges = [c.to_dict() for c in ledger.history(args.dataset)]
    if not args.json:
        keep = ("created_at", "release_id", "epsilon", "delta", "spent_epsilon", "status", "output")
        charges = [{k: c[k] for k in keep} for c in charges]
    _print(charges or f"dataset {args.dataset!r} has no releases yet", args.json)
    return 0


def _add_budget(sub) -> None:
    budget = sub.add_parser("budget", help="inspect and set privacy budgets (the ledger)")
    bsub = budget.add_subparsers(dest="command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conn-id", default="privacy_budget_default", help="privacy_budget connection id")
    common.add_argument("--url", help="SQLAlchemy URL of the ledger (overrides --conn-id)")
    common.add_argument("--json", action="store_true", help="JSON output")
    show = bsub.add_parser("show", parents=[common], help="cap, spent and remaining budget")
    show.add_argument("dataset", nargs="?")
    show.set_defaults(func=_budget_show)
    st = bsub.add_parser("set", parents=[common], help="create or change a dataset's cap")
    st.add_argument("dataset")
    st.add_argument("--epsilon", type=float, required=True)
    st.add_argument("--delta", type=float, default=0.0)
    st.add_argument("--accountant", choices=["pld", "rdp", "basic"])
    st.set_defaults(func=_budget_set)
    hist = bsub.add_parser("history", parents=[common], help="every release charged to a dataset")
    hist.add_argument("dataset")
    hist.set_defaults(func=_budget_history)


def _read_ring(path: str | None):
    from airflow_privacy.core.crypto import KeyRing

    text = sys.stdin.read() if path in (None, "-") else open(path).read()
    return KeyRing.from_json(text)


def _keys_generate(args) -> int:
    from airflow_privacy.core.crypto import KeyRing

    print(KeyRing.generate().to_json())
    return 0


def _keys_rotate(args) -> int:
    print(_read_ring(args.ring).rotate().to_json())
    return 0


def _keys_inspect(args) -> int:
    from airflow_privacy.core.crypto import inspect_header

    _print(inspect_header(args.file), args.json)
    return 0


def _add_keys(sub) -> None:
    keys = sub.add_parser("keys", help="generate and rotate key rings, inspect encrypted files")
    ksub = keys.add_subparsers(dest="command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="print a new key ring JSON (paste it into a privacy_keys connection's password)")
    gen.set_defaults(func=_keys_generate)
    rot = ksub.add_parser("rotate", help="print the ring with a new primary key; old keys stay for decryption")
    rot.add_argument("ring", nargs="?", default="-", help="key ring JSON file (default: stdin)")
    rot.set_defaults(func=_keys_rotate)
    ins = ksub.add_parser("inspect", help="header of an encrypted file (no secrets)")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_keys_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-privacy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"airflow-privacy {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    _add_budget(sub)
    _add_keys(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # runbook users need the message, not a traceback
        from airflow_privacy.core.errors import PrivacyError

        if isinstance(exc, (PrivacyError, KeyError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
