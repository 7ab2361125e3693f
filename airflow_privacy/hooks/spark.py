"""``SparkEngineHook``: the Spark cluster of ``engine="spark"`` from an Airflow connection.

It reads the connection types of ``apache-airflow-providers-apache-spark`` (which is not
required: a connection of any type can be defined by environment variable, secrets backend or
CLI; install that provider for their forms in the UI):

* ``spark`` (default id ``spark_default``): *host* the master -- ``spark://master`` with *port*
  7077, or the whole ``spark://host:port``; a host without a scheme means ``spark://``. As the
  provider's ``SparkSubmitHook`` reads it.
* ``spark_connect`` (default id ``spark_connect_default``): *host* and *port* of a Spark
  Connect server (``sc://`` added when missing), *login* its ``user_id``, *password* its
  ``token`` (masked in logs by Airflow), extra ``{"use_ssl": true}``. As the provider's
  ``SparkConnectHook`` builds its URL.

Only a plain URL leaves this module: :mod:`airflow_privacy.core.dp.engines.spark_session`
checks and reaches it, so ``core`` never sees Airflow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from airflow_privacy.core.errors import InvalidParameterError

CONN_TYPES = ("spark", "spark_connect")


class SparkEngineHook(BaseHook):
    """Resolve a ``spark`` or ``spark_connect`` connection to the URL of the Spark engine.

    :param spark_conn_id: the connection id; errors name it as ``spark_conn_id``.
    """

    conn_name_attr = "spark_conn_id"
    default_conn_name = "spark_default"
    hook_name = "Spark (airflow-privacy engine)"

    def __init__(self, spark_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark_conn_id = spark_conn_id

    def get_url(self) -> str:
        """``spark://host:port`` or ``sc://host:port/;user_id=...;token=...`` (holds a secret:
        never log it)."""
        try:
            conn = self.get_connection(self.spark_conn_id)
        except Exception as exc:  # AirflowNotFoundException differs between SDK and core
            if type(exc).__name__ != "AirflowNotFoundException":
                raise
            raise InvalidParameterError("spark_conn_id", self.spark_conn_id, "no such Airflow connection; define a "
                                        f"connection of type {' or '.join(CONN_TYPES)}") from None
        if conn.conn_type not in CONN_TYPES:
            raise InvalidParameterError("spark_conn_id", self.spark_conn_id, f"its type is {conn.conn_type!r}; "
                                        f"expected {' or '.join(map(repr, CONN_TYPES))}")
        host = (conn.host or "").strip().rstrip("/")
        if not host:
            raise InvalidParameterError("spark_conn_id", self.spark_conn_id, "its host is empty; expected the "
                                        "Spark master (spark://host) or Spark Connect server (sc://host)")
        if conn.conn_type == "spark":
            if "://" not in host and not host.startswith("local") and host != "yarn":  # yarn: refused by name
                host = f"spark://{host}"
            return f"{host}:{conn.port}" if conn.port else host
        if "://" not in host:
            host = f"sc://{host}"
        url = f"{host}:{conn.port}" if conn.port else host
        params = []
        if conn.login:
            params.append(f"user_id={quote(conn.login)}")
        if conn.password:
            params.append(f"token={quote(conn.password)}")
        use_ssl = (conn.extra_dejson or {}).get("use_ssl")
        if use_ssl is not None:
            params.append(f"use_ssl={str(use_ssl).lower()}")
        return f"{url}/;{';'.join(params)}" if params else url
