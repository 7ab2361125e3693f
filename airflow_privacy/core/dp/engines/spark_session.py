"""Where the Spark engine runs: a Spark master URL or a Spark Connect endpoint, checked and
reached before any row is read or any budget is charged.

Accepted targets (:func:`parse_target`):

* ``local``, ``local[N]``, ``local[*]`` -- Spark inside this process's JVM (tests, notebooks);
* ``spark://host:port[,host:port...]`` -- a standalone cluster's master(s); this process is
  the driver (client mode), the cluster's executors read the Parquet files;
* ``sc://host[:port][/;param=value...]`` -- a Spark Connect server (default port 15002);
  the query plan travels over gRPC, the server's cluster runs it.

Spark keeps one session per driver process (one ``SparkContext`` per JVM), so the target is
scoped, not passed down every call: :func:`spark_on` opens a session for a target and makes it
the one :func:`current` returns inside the ``with`` block; outside any block :func:`current`
uses the active session, else ``AIRFLOW_PRIVACY_SPARK_MASTER``, else ``local[*]``.

Unreachable targets fail fast and once: a standalone master that cannot be reached would have
Spark retry its registration for a minute and then wait forever for executors, a Spark Connect
client would retry with back-off for minutes -- so every endpoint is first probed with one TCP
connection bounded by :data:`PROBE_SECONDS`, and any failure is an
:class:`InvalidParameterError` naming the parameter (in Airflow, ``spark_conn_id``), which the
operator layer does not retry.

A Spark Connect URL may carry a ``token``: messages show :attr:`SparkTarget.display`, which
drops the parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from airflow_privacy.core.errors import InvalidParameterError

MASTER_ENV = "AIRFLOW_PRIVACY_SPARK_MASTER"
MEMORY_ENV = "AIRFLOW_PRIVACY_SPARK_MEMORY"
"""Driver and executor memory of sessions this module creates (default ``1g``)."""
PROBE_SECONDS = 10.0
CONNECT_PORT = 15002
_LOCAL = re.compile(r"^local(\[(\*|\d+)(,\d+)?\])?$")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_current: ContextVar[Any] = ContextVar("airflow_privacy_spark_session", default=None)

# py4j logs every command it sends to the JVM at DEBUG, arguments included -- a pickled Python
# task among them, and de-identification's tasks carry the key ring: with Airflow's logging at
# DEBUG the ring reached the task log (tests/core/deid/test_deid_spark.py). Neither py4j nor
# pyspark (whose Spark Connect client logs plans at DEBUG) logs below INFO.
for _name in ("py4j", "pyspark"):
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)


@dataclass(frozen=True)
class SparkTarget:
    """A parsed target: ``kind`` is ``"local"``, ``"standalone"`` or ``"connect"``;
    ``endpoints`` the (host, port) pairs to probe."""

    url: str = field(repr=False)
    kind: str
    endpoints: tuple[tuple[str, int], ...] = ()

    @property
    def display(self) -> str:
        """The URL without Spark Connect parameters (a ``token`` may be among them)."""
        return self.url.split("/;", 1)[0].split(";", 1)[0]


def parse_target(url: Any, parameter: str = MASTER_ENV, value: Any = None) -> SparkTarget:
    """Check ``url`` (see the module docstring); errors name ``parameter`` and ``value`` (by
    default the URL without its parameters)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameterError(parameter, url if value is None else value, "expected a Spark master URL (local[N], spark://host:port) or a "
                                    "Spark Connect URL (sc://host:port)")
    url = url.strip()
    if _LOCAL.match(url):
        return SparkTarget(url, "local")
    if url.startswith("spark://"):
        hosts = url[len("spark://"):].rstrip("/").split(",")
        pairs = [_HOSTPORT.match(h) for h in hosts]
        if not all(pairs):
            raise InvalidParameterError(parameter, _shown(url, value), f"{url!r} is not spark://host:port"
                                        "[,host:port...] (a standalone master, port usually 7077)")
        return SparkTarget(url, "standalone", tuple((m[1].strip("[]"), _port(m[2], parameter, url, value))
                                                    for m in pairs))
    if url.startswith("sc://"):
        authority = url[len("sc://"):].split("/", 1)[0].split(";", 1)[0]
        m = _HOSTPORT.match(authority) or _HOSTPORT.match(f"{authority}:{CONNECT_PORT}")
        if not authority or not m:
            raise InvalidParameterError(parameter, _shown(url, value), f"{SparkTarget(url, '').display!r} is not "
                                        "sc://host[:port][/;param=value...] (a Spark Connect server)")
        return SparkTarget(url, "connect", ((m[1].strip("[]"), _port(m[2], parameter, url, value)),))
    raise InvalidParameterError(parameter, _shown(url, value), f"{SparkTarget(url, '').display!r}: expected local[N], "
                                "spark://host:port (standalone master) or sc://host:port (Spark Connect); YARN and "
                                "Kubernetes clusters are reached through a Spark Connect server in front of them")


def _shown(url: str, value: Any) -> Any:
    return SparkTarget(url, "").display if value is None else value


def _port(text: str, parameter: str, url: str, value: Any) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise InvalidParameterError(parameter, _shown(url, value), f"port {port} is not in 1..65535")
    return port


def probe(target: SparkTarget, parameter: str = MASTER_ENV, value: Any = None) -> None:
    """One TCP connection to each endpoint until one answers (a standalone master may list
    several, for high availability); none answering is an error naming ``parameter``."""
    errors = []
    for host, port in target.endpoints:
        try:
            with socket.create_connection((host, port), timeout=PROBE_SECONDS):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc}")
    if errors:
        raise InvalidParameterError(parameter, _shown(target.url, value), f"cannot reach Spark at {target.display} "
                                    f"({'; '.join(errors)}) within {PROBE_SECONDS:g} s -- nothing was read or charged")


def _start(target: SparkTarget, parameter: str, value: Any = None) -> Any:
    from pyspark.sql import SparkSession

    memory = os.environ.get(MEMORY_ENV, "1g")
    try:
        if target.kind == "connect":
            return SparkSession.builder.remote(target.url).create()
        # Python tasks (de-identification's second pass) run this interpreter, which has this
        # package, unless PYSPARK_PYTHON names another; shuffle, spill and cached blocks hold
        # raw rows: written encrypted, under a key of this application that never leaves it
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (SparkSession.builder.master(target.url).appName("airflow-privacy")
                   .config("spark.ui.enabled", "false").config("spark.driver.memory", memory)
                   .config("spark.executor.memory", memory).config("spark.io.encryption.enabled", "true"))
        if target.kind == "local":
            builder = builder.config("spark.sql.shuffle.partitions", "8")
        return builder.getOrCreate()
    except Exception as exc:  # py4j, gRPC and JVM errors share no base class
        raise InvalidParameterError(parameter, _shown(target.url, value), f"cannot start a Spark session on "
                                    f"{target.display}: {_redacted(exc, target)} -- nothing was read or charged") from None


def _redacted(exc: BaseException, target: SparkTarget) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.replace(target.url, target.display)


def _master_of(session: Any) -> str | None:
    try:
        return session.sparkContext.master
    except Exception:  # a Spark Connect session has no SparkContext
        return None


@contextlib.contextmanager
def spark_on(url: str, *, parameter: str = MASTER_ENV, value: Any = None) -> Iterator[Any]:
    """A session on ``url`` for the ``with`` block (:func:`current` returns it), stopped at
    the end when this block created it. Errors name ``parameter`` and ``value`` (e.g.
    ``spark_conn_id`` and the connection id; by default the URL without its parameters).

    Reaching the target happens here, before the caller reads data or charges a budget. A
    process already driving another master cannot switch (one ``SparkContext`` per JVM): that
    is an error naming ``parameter`` rather than a silent run on the other master.
    """
    from airflow_privacy.core.dp.engines import load_engine

    load_engine("spark")  # pyspark missing: the error names the extra
    target = parse_target(url, parameter, value)
    probe(target, parameter, value)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession() if target.kind != "connect" else None
    if active is not None and _master_of(active) not in (None, target.url):
        raise InvalidParameterError(parameter, _shown(target.url, value), f"this process already drives Spark "
                                    f"master {_master_of(active)!r}, not {target.display}; one process drives one "
                                    "Spark master")
    session = active or _start(target, parameter, value)
    token = _current.set(session)
    try:
        yield session
    finally:
        _current.reset(token)
        if active is None:
            session.stop()


def current() -> Any:
    """The session of the innermost :func:`spark_on`, else the active one, else a session on
    ``AIRFLOW_PRIVACY_SPARK_MASTER`` (``local[*]`` when unset), reached as :func:`spark_on`
    reaches its target."""
    session = _current.get()
    if session is not None:
        return session
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    target = parse_target(os.environ.get(MASTER_ENV, "local[*]"), MASTER_ENV)
    probe(target, MASTER_ENV)
    return _start(target, MASTER_ENV)
