"""A throw-away PostgreSQL server for the tests that must see real READ COMMITTED behaviour.

Debian's ``postgresql`` package gives the binaries (installed with apt-get when missing, as
root or with passwordless sudo -- the same rule as ``scripts/cluster/cluster.sh``); the server
runs from a temporary data directory on a free loopback port, is reached over TCP with a
random password, and is stopped (and its directory removed) at the end of the session.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return str(Path(found[-1]).parent) if found else None


def _install() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, timeout=900, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                   check=True, timeout=900, env=env, stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScratchPostgres:
    """``with ScratchPostgres() as pg: pg.url("privacy")`` -- a database per call of :meth:`url`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="airflow-privacy-pg-"))
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self._databases: set[str] = set()

    def _as_pg(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        # initdb and pg_ctl refuse to run as root
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, cwd=self.root, **kw)

    def __enter__(self) -> ScratchPostgres:
        if _bindir() is None:
            _install()
        bindir = _bindir()
        assert bindir, "postgresql binaries not found after apt-get install postgresql"
        self._bin = bindir
        data, run = self.root / "data", self.root / "run"
        data.mkdir()
        run.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for p in (data, run, pwfile):
                shutil.chown(p, "postgres", "postgres")
        self._as_pg(f"{bindir}/initdb", "-D", str(data), "-U", "tester", "-E", "UTF8", "--no-locale",
                    "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
        self._as_pg(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", "90",
                    "-o", f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={run} "
                          "-c max_connections=300 -c fsync=off", "start")
        return self

    def url(self, database: str) -> str:
        """A new, empty database (READ COMMITTED, Postgres' default) and its SQLAlchemy URL."""
        if database not in self._databases:
            self._as_pg(f"{self._bin}/psql", "-h", str(self.root / "run"), "-p", str(self.port), "-U", "tester",
                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", f'CREATE DATABASE "{database}"')
            self._databases.add(database)
        return f"postgresql+psycopg2://tester:{self.password}@127.0.0.1:{self.port}/{database}"

    def __exit__(self, *exc) -> None:
        try:
            self._as_pg(f"{self._bin}/pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
