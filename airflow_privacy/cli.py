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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-privacy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"airflow-privacy {__version__}")
    parser.add_subparsers(dest="group", metavar="COMMAND")
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

        if isinstance(exc, PrivacyError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
