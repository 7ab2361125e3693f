"""Output of the ``airflow-privacy`` commands: a plain table by default, JSON with ``--json``.

Table cells hold no spaces, so ``cut``/``awk`` keep working on the output.
"""

from __future__ import annotations

import datetime as dt
import json


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
