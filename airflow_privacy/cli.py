"""``airflow-privacy``: runbook commands for the people who operate these pipelines.

Each capability registers its command group here (``budget`` from :mod:`._cli_budget`,
``keys`` from :mod:`._cli_keys` ...). Output is a plain table by default and JSON with
``--json`` for scripts (:mod:`._cli_output`). Errors are one line on stderr with exit
status 2; a reader that stops early (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from airflow_privacy import __version__
from airflow_privacy._cli_budget import AIRFLOW_SETUP, VERIFY_TOLERANCE, _add_budget
from airflow_privacy._cli_keys import _add_keys

__all__ = ["AIRFLOW_SETUP", "DESCRIPTION", "VERIFY_TOLERANCE", "build_parser", "main"]

DESCRIPTION = (
    "Runbook commands for the people who operate airflow-privacy pipelines: privacy budgets "
    "(budget) and key rings (keys). Tables by default, JSON with --json."
)


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
