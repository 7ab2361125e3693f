"""``airflow-privacy``: runbook commands for the people who operate these pipelines.

Each capability registers its command group here (``budget``, ``keys`` ...). Output is a
plain table by default and JSON with ``--json`` for scripts. Errors are one line on stderr
with exit status 2; a reader that stops early (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import stat
import sys
from collections.abc import Sequence

from airflow_privacy import __version__

DESCRIPTION = (
    "Runbook commands for the people who operate airflow-privacy pipelines: privacy budgets "
    "(budget) and key rings (keys). Tables by default, JSON with --json."
)


def _cell(value) -> str:
    """A table cell without spaces (``cut``/``awk`` keep working): floats to 4 significant
    digits, ISO times to the second in UTC, ``-`` for none. JSON keeps every digit."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > 19 and value[10:11] == "T":
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        if when.tzinfo is not None:
            return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return when.strftime("%Y-%m-%dT%H:%M:%S")
    return "-" if value is None else str(value)


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        cols = list(obj[0])
        cells = [[_cell(r.get(c)) for c in cols] for r in obj]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    elif isinstance(obj, dict):
        width = max((len(k) for k in obj), default=0)
        for k, v in obj.items():
            print(f"{k.ljust(width)}  {_cell(v)}")
    else:
        print(obj)


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


def _read_ring(path: str | None):
    """The key ring JSON in ``path`` (``-``: stdin): a symmetric ring, or a holder's private
    or public ring (told apart by its ``kind``)."""
    from airflow_privacy.core.crypto import load_key_material

    if path in (None, "-"):
        return load_key_material(sys.stdin.read())
    with open(path) as fh:
        return load_key_material(fh.read())


def _ring_of(args):
    """``--ring FILE`` or, without it, the ``privacy_keys`` connection ``--conn-id``."""
    if args.ring is not None:
        return _read_ring(args.ring)
    from airflow_privacy.hooks.keys import PrivacyKeyHook

    return PrivacyKeyHook(args.conn_id).get_key_material()


def _write_secret(text: str, output: str | None) -> None:
    """A key ring to ``output`` (atomically, mode 0600) or to stdout.

    A shell redirect (``> ring.json``) creates the file with the umask's mode, usually 0644
    -- readable by every local user -- so printing to a regular file warns.
    """
    if output is not None:
        from airflow_privacy.core.io import open_atomic

        with open_atomic(output, mode=0o600) as fh:
            fh.write(text.encode() + b"\n")
        return
    mode = os.fstat(sys.stdout.fileno()).st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        print(f"warning: a secret key ring is going to a file readable by others (mode {stat.S_IMODE(mode):o}); "
              "use --output PATH to write it with mode 0600", file=sys.stderr)
    print(text)


def _keys_generate(args) -> int:
    from airflow_privacy.core.crypto import KeyRing

    if args.recipient or args.public:
        return _keys_generate_recipient(args)
    _write_secret(KeyRing.generate().to_json(), args.output)
    return 0


def _keys_generate_recipient(args) -> int:
    """``--recipient``: a data holder's key pair. The private ring (secret) goes to
    ``--output`` or stdout, for the holder's privacy_keys connection only; the public ring
    (key id, suite, fingerprint) to ``--public``, for every producer."""
    from airflow_privacy.core.crypto import PrivateKeyRing
    from airflow_privacy.core.errors import InvalidParameterError

    if not (args.recipient and args.public):
        raise InvalidParameterError("--public", args.public, "give both --recipient and --public PATH")
    ring = PrivateKeyRing.generate(suite=args.suite, key_id=args.key_id)
    _write_secret(ring.to_json(), args.output)
    _write_public(ring, args.public)
    return 0


def _write_public(ring, path: str) -> None:
    """The public half of a holder's private ring to ``path`` (atomically; not secret), and
    its primary key's id and fingerprint on stderr, to compare out of band."""
    from airflow_privacy.core.io import open_atomic

    public = ring.public_ring()
    with open_atomic(path) as fh:
        fh.write(public.to_json().encode() + b"\n")
    key = public.primary
    print(f"public ring -> {path}: key {key.key_id} ({key.suite.name}), {key.fingerprint}", file=sys.stderr)


def _keys_rotate(args) -> int:
    """A symmetric ring gets a new primary KEK; a holder's private ring a new key pair as
    primary, whose public ring goes to ``--public`` (required: producers keep wrapping to
    the old key until they get it). Old keys stay, so existing files still open. Every check
    runs before anything is written."""
    from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing
    from airflow_privacy.core.errors import InvalidParameterError

    ring = _read_ring(args.ring)
    if isinstance(ring, KeyRing):
        if args.public is not None:
            raise InvalidParameterError("--public", args.public, "only a holder's private ring has a public "
                                        "ring to republish; this is a symmetric key ring")
        _write_secret(ring.rotate(key_id=args.key_id).to_json(), args.output)
        return 0
    if not isinstance(ring, PrivateKeyRing):
        raise InvalidParameterError("ring", args.ring, "this is a public ring: rotate the holder's private "
                                    "ring, then hand its new public ring (--public) to the producers")
    if ring.role != "encrypt":
        raise InvalidParameterError("ring", args.ring, "an ed25519 signing ring's key id is its producer's "
                                    "id: generate the producer a new signing key instead")
    if args.public is None:
        raise InvalidParameterError("--public", None, "rotating a holder's key pair needs --public PATH for "
                                    "the new public ring (producers keep wrapping to the old key until they get it)")
    rotated = ring.rotate(key_id=args.key_id)
    _write_secret(rotated.to_json(), args.output)
    _write_public(rotated, args.public)
    return 0


def _keys_inspect(args) -> int:
    from airflow_privacy.core.crypto import inspect_header

    _print(inspect_header(args.file), args.json)
    return 0


def _keys_decrypt(args) -> int:
    from airflow_privacy.core.crypto import decrypt_file

    # a symmetric ring, or the holder's private ring for files encrypted to it; a public ring
    # fails with IntegrityError before anything is written
    ring = _ring_of(args)
    # The plaintext file is created 0600, whatever the shell's umask: this process writes
    # nothing else.
    os.umask(0o077)
    stats = decrypt_file(args.file, args.output, ring, args.associated_data)
    _print({"output": args.output, **stats}, args.json)
    return 0


def _keys_rewrap(args) -> int:
    """Re-wrap each file's data key in place (bodies untouched); already done: unchanged."""
    from airflow_privacy.core.crypto import PublicKeyRing, rewrap
    from airflow_privacy.core.errors import InvalidParameterError

    ring = _ring_of(args)
    recipients = None
    if args.recipient:
        recipients = [_read_ring(path) for path in args.recipient]
        for path, public in zip(args.recipient, recipients, strict=True):
            if not isinstance(public, PublicKeyRing):
                raise InvalidParameterError("--recipient", path, "expected a public ring file (keys generate "
                                            "--recipient --public PATH)")
    rows = [{"file": path, **rewrap(path, ring, recipient=recipients).as_dict()} for path in args.file]
    _print(rows, args.json)
    return 0


_OUTPUT_HELP = ("write the key ring to PATH, atomically and with mode 0600 (a shell redirect "
                "would leave it readable by others, mode 0644 under the usual umask)")


def _add_keys(sub) -> None:
    keys = sub.add_parser("keys", help="generate and rotate key rings, inspect and decrypt encrypted files")
    ksub = keys.add_subparsers(dest="command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="print a new key ring JSON (paste it into a privacy_keys connection's password)")
    gen.add_argument("--output", metavar="PATH", help=_OUTPUT_HELP)
    gen.add_argument("--recipient", action="store_true", help="a data holder's key pair: the private ring as "
                     "above (the holder's connection only), the public ring to --public (for producers)")
    gen.add_argument("--public", metavar="PATH", help="with --recipient: where to write the public ring")
    gen.add_argument("--suite", default="hpke-x25519-sha256-aes256gcm",
                     choices=["hpke-x25519-sha256-aes256gcm", "rsa-oaep-3072-sha256"], help="with --recipient")
    gen.add_argument("--key-id", help="with --recipient: the key's id (default: 8 random hex digits)")
    gen.set_defaults(func=_keys_generate)
    rot = ksub.add_parser("rotate", help="print the ring with a new primary key (a holder's private ring: a new "
                          "key pair, its public ring to --public); old keys stay for decryption")
    rot.add_argument("ring", nargs="?", default="-", help="key ring JSON file (default: stdin)")
    rot.add_argument("--output", metavar="PATH", help=_OUTPUT_HELP)
    rot.add_argument("--public", metavar="PATH", help="a holder's private ring: where to write the new public "
                     "ring for the producers (required for such a ring)")
    rot.add_argument("--key-id", help="the new key's id (default: 8 random hex digits)")
    rot.set_defaults(func=_keys_rotate)
    ins = ksub.add_parser("inspect", help="header of an encrypted file (no secrets)")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_keys_inspect)
    ring_source = argparse.ArgumentParser(add_help=False)
    ring_source.add_argument("--ring", metavar="FILE", help="key ring JSON file, - for stdin: a symmetric ring or, "
                             "for files encrypted to a data holder, the holder's private ring (default: the "
                             "privacy_keys connection)")
    ring_source.add_argument("--conn-id", default="privacy_keys_default", help="privacy_keys connection id")
    ring_source.add_argument("--json", action="store_true", help="JSON output")
    dec = ksub.add_parser("decrypt", parents=[ring_source], help="decrypt an encrypted file to PATH (mode 0600, "
                          "published only once every segment authenticated)")
    dec.add_argument("file", help="encrypted file (path or URI)")
    dec.add_argument("--output", metavar="PATH", required=True, help="where the plaintext goes (path or URI)")
    dec.add_argument("--associated-data", help="the associated data given at encryption")
    dec.set_defaults(func=_keys_decrypt)
    rew = ksub.add_parser("rewrap", parents=[ring_source], help="after a rotation: re-wrap each file's data key "
                          "under the ring's new primary, in place; the body is not decrypted")
    rew.add_argument("file", nargs="+", help="encrypted files (paths or URIs)")
    rew.add_argument("--recipient", metavar="FILE", action="append", help="files encrypted to a data holder: wrap "
                     "to exactly these public rings' primaries instead (repeat for several, e.g. the holder and "
                     "an escrow key)")
    rew.set_defaults(func=_keys_rewrap)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-privacy", description=DESCRIPTION)
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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader stopped (`| head`): end quietly with the status of a command killed by
        # SIGPIPE; stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # a file named on the command line
        print(f"error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # runbook users need the message, not a traceback
        from airflow_privacy.core.errors import PrivacyError

        if isinstance(exc, (PrivacyError, KeyError)):
            print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
