"""``python -m airflow_privacy.demo``: the driver behind ``make demo``.

Initialises the embedded Airflow (SQLite under ``$AIRFLOW_HOME``), runs every example DAG
with ``airflow dags test`` for a few consecutive logical dates, then prints what was
produced. Each capability appends its DAG to :data:`DEMO_DAGS`.

It runs only in a demo home (see :mod:`airflow_privacy.demo.home`): inherited Airflow
settings and connections are dropped, and it refuses to reset a directory it did not create.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time

from airflow_privacy.demo.data import demo_root
from airflow_privacy.demo.home import claim_home, scrub_environment, start_fresh

#: Example DAGs in the order the demo runs them for each logical date.
DEMO_DAGS: list[str] = [
    "demo_patient_batches",
    "deidentify_daily_batches",
    "dp_daily_statistics",
    "cross_site_totals",
    "paillier_totals",
    "federated_training",
]


def demo_connections(home: str) -> dict[str, str]:
    """Connection env vars of the demo: key rings kept in ``$AIRFLOW_HOME/demo-keyring-*.json``
    (created once, mode 0600) -- the default ring, one per site, the Paillier key holder's,
    and the data holder's key pair: its private ring (``privacy_keys_holder``) and the public
    ring the sites encrypt to (``privacy_recipient_holder``, derived from it). Real
    deployments keep them in a secrets backend, each site's only on that site's worker and
    the holder's private ring only on the holder's."""
    import json

    from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing

    rings = {name: KeyRing.generate for name in ("default", "site_a", "site_b", "site_c", "keyholder")}
    rings["holder"] = lambda: PrivateKeyRing.generate(key_id="demo-holder")
    conns = {}
    for name, generate in rings.items():
        path = os.path.join(home, f"demo-keyring-{name}.json")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(generate().to_json())
        with open(path) as fh:
            ring = fh.read()
        conns[f"AIRFLOW_CONN_PRIVACY_KEYS_{name.upper()}"] = json.dumps({"conn_type": "privacy_keys", "password": ring})
    public = PrivateKeyRing.from_json(json.loads(conns["AIRFLOW_CONN_PRIVACY_KEYS_HOLDER"])["password"]).public_ring()
    conns["AIRFLOW_CONN_PRIVACY_RECIPIENT_HOLDER"] = json.dumps(
        {"conn_type": "privacy_keys", "password": public.to_json()})
    return conns


def _airflow(*args: str, log) -> None:
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    env = {**os.environ, **demo_connections(os.environ["AIRFLOW_HOME"])}
    proc = subprocess.run([airflow, *args], stdout=log, stderr=subprocess.STDOUT, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(
            f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); see {log.name}"
        )


def _summary(dates: list[str]) -> str:
    from airflow_privacy.core.io import read_batch, resolve

    fs, root = resolve(demo_root())
    lines = [f"Demo output under {demo_root()}"]
    files = sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith("."))
    by_kind: dict[str, list[str]] = {}
    for path in files:
        kind = path[len(root):].strip("/").split("/", 1)[0]
        by_kind.setdefault(kind, []).append(path)
    for kind, paths in by_kind.items():
        tables = [p for p in paths if p.endswith(".parquet")]
        rows = sum(len(read_batch(p)) for p in tables)
        extra = []
        if any(p.endswith(".enc") for p in paths):
            extra.append(f"{sum(p.endswith('.enc') for p in paths)} encrypted")
        if any(p.endswith(".json") for p in paths):
            extra.append(f"{sum(p.endswith('.json') for p in paths)} JSON reports")
        if any(p.endswith(".msg") for p in paths):
            extra.append(f"{sum(p.endswith('.msg') for p in paths)} protocol messages")
        lines.append(f"  {kind:<24} {len(tables):>4} tables {rows:>8} rows  {', '.join(extra)}".rstrip())
    lines.extend(_budget_lines())
    lines.append(f"Logical dates: {', '.join(dates)}")
    return "\n".join(lines)


def _budget_lines() -> list[str]:
    from airflow_privacy.demo.report import budget_lines, federated_lines

    return budget_lines() + federated_lines()


def _standalone(parser: argparse.ArgumentParser, args: argparse.Namespace, home: str) -> tuple[str, list[str], dict]:
    """``airflow standalone`` on ``--port`` over ``--dags-folder``, with the demo's connections:
    what to exec."""
    if not 0 < args.port < 65536:
        parser.error(f"--port must be a TCP port in 1..65535, got {args.port}")
    settings = {"AIRFLOW__API__PORT": str(args.port)}
    if args.dags_folder is not None:
        folder = os.path.abspath(os.path.expanduser(args.dags_folder))
        if not os.path.isdir(folder):
            parser.error(f"--dags-folder {args.dags_folder!r} is not a directory")
        settings["AIRFLOW__CORE__DAGS_FOLDER"] = folder
    bin_dir = os.path.dirname(sys.executable)
    airflow = os.path.join(bin_dir, "airflow")
    # standalone starts its components as `airflow ...` from PATH: this interpreter's, even
    # when the virtualenv is not activated (plain `make airflow`)
    settings["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    home = str(claim_home(home))
    print(f"[demo] Airflow UI on http://localhost:{args.port}, DAGs from "
          f"{settings.get('AIRFLOW__CORE__DAGS_FOLDER', os.environ.get('AIRFLOW__CORE__DAGS_FOLDER'))}", flush=True)
    return airflow, [airflow, "standalone"], {**os.environ, **settings, **demo_connections(home)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_privacy.demo", description=__doc__)
    parser.add_argument("--start", default="2026-01-01", help="first logical date (ISO)")
    parser.add_argument("--days", type=int, default=3, help="number of consecutive dates")
    parser.add_argument("--dags", nargs="*", default=DEMO_DAGS, help="DAG ids to run")
    parser.add_argument("--standalone", action="store_true",
                        help="instead: start `airflow standalone` with the demo's connections")
    parser.add_argument("--port", type=int, default=8080, help="with --standalone: the web UI's port")
    parser.add_argument("--dags-folder", help="with --standalone: the DAGs folder to serve "
                        "(default: $AIRFLOW__CORE__DAGS_FOLDER, the repository's dags/ under make)")
    args = parser.parse_args(argv)
    dropped = scrub_environment(os.environ)
    if dropped:
        print(f"[demo] ignoring inherited Airflow settings (the demo uses its own home): {', '.join(dropped)}",
              flush=True)
    home = os.environ.get("AIRFLOW_HOME")
    if not home:
        parser.error("AIRFLOW_HOME is not set; run through `make demo`")
    if args.standalone:
        os.execve(*_standalone(parser, args, home))
    if args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    start = dt.date.fromisoformat(args.start)
    dates = [(start + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    # The demo replays the same dates each time: start from an empty ledger and data dir,
    # or the second `make demo` would (rightly) find the demo budget already spent.
    start_fresh(claim_home(home), demo_root())
    log_path = os.path.join(home, "demo.log")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        print(f"[demo] migrating the embedded Airflow DB in {home} ...", flush=True)
        _airflow("db", "migrate", log=log)
        for date in dates:
            for dag_id in args.dags:
                t = time.monotonic()
                _airflow("dags", "test", dag_id, date, log=log)
                print(f"[demo] {dag_id} {date}: success ({time.monotonic() - t:.1f}s)", flush=True)
    print(_summary(dates))
    print(f"[demo] done in {time.monotonic() - t0:.0f}s; Airflow log of the runs: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
