"""``DeidentifyOperator``: per-column de-identification with enforced k-anonymity / l-diversity."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.deid import (
    ENGINES,
    InformationLossWarning,
    check_request,
    deidentify,
    needs_keyring,
)
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators._params import check_uri, fail_without_retry

if TYPE_CHECKING:
    from airflow.sdk import Context


class DeidentifyOperator(BaseOperator):
    """De-identify a batch and write it with a JSON audit report, both atomically.

    See :func:`airflow_privacy.core.deid.deidentify` for the rules and the guarantees:
    direct identifiers dropped, masked, hashed (keyed HMAC) or tokenized (reversible AES-SIV
    with the key ring), quasi-identifiers generalized until every equivalence class holds at
    least ``k`` distinct entities and ``l`` distinct sensitive values, the rest suppressed
    within ``max_suppression`` -- or the task fails (without retry) saying which constraint
    could not be met, and writes nothing. The audit report and the returned summary carry
    the information lost (NCP, discernibility); past ``information_loss``'s threshold the
    task logs a warning, or fails and writes nothing (``"on_exceed": "fail"``).

    Rules, ``k_anonymity``, ``l_diversity`` and ``information_loss`` are checked when the
    DAG file is parsed, without reading data: a misspelt rule or ``k_anonymity`` without
    ``k`` is an import error of the DAG (rules holding a Jinja template are checked after
    rendering, when the task runs).

    :param source: URI of the raw batch (templated): a Parquet file, glob, hive-partitioned
        folder or a list of them, or a CSV file.
    :param destination: URI of the de-identified batch (templated).
    :param rules: ``{column: rule}`` (templated: strings among the values are rendered).
    :param k_anonymity: ``{"quasi_identifiers", "k", "entity", "max_suppression",
        "max_generalization"}`` or None (``max_generalization``: ``{column: highest level}``).
    :param l_diversity: ``{"sensitive", "l"}`` or None.
    :param information_loss: ``{"max_ncp", "max_discernibility", "on_exceed"}`` (default:
        warn above NCP 0.5; ``"on_exceed": "fail"`` fails the task instead).
    :param key_conn_id: ``privacy_keys`` connection for keyed rules.
    :param report_destination: URI of the audit report (default ``<destination>.report.json``).
    :param asset: an :class:`~airflow.sdk.Asset` (or its URI) updated on success, so
        downstream DAGs can be asset-scheduled on de-identified data.
    :param unlisted: columns without a rule: ``"keep"``, ``"drop"`` or ``"error"``.
    :param engine: ``"pandas"`` (the batch in memory), ``"duckdb"`` (Parquet streamed in
        record batches, k-anonymity classes counted by DuckDB: memory does not grow with the
        batch) or ``"spark"`` (the cluster of ``spark_conn_id`` counts the classes and runs the
        rules on its executors; this task writes the file) -- the same output and report on
        each; None (default) picks by size: up to 64 MiB of Parquet, and CSV, run on pandas,
        larger Parquet on duckdb (:mod:`airflow_privacy.core.deid.streaming`).
    :param spark_conn_id: with ``engine="spark"``: the Airflow connection naming the cluster
        (type ``spark`` or ``spark_connect``, as for ``DPAggregateOperator``). The task is the
        driver; the executors read ``source`` and receive the key ring with their tasks (turn
        on Spark's RPC encryption on a shared cluster). ``None``: ``AIRFLOW_PRIVACY_SPARK_MASTER``,
        else ``local[*]``. A cluster that cannot be reached fails the task at once, without
        retries, before anything is read or written.
    """

    template_fields: Sequence[str] = ("source", "destination", "report_destination", "rules")
    ui_color = "#d5f5e0"

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        rules: Mapping[str, Any],
        k_anonymity: Mapping[str, Any] | None = None,
        l_diversity: Mapping[str, Any] | None = None,
        key_conn_id: str = PrivacyKeyHook.default_conn_name,
        report_destination: str | None = None,
        asset: Asset | str | None = None,
        unlisted: str = "keep",
        information_loss: Mapping[str, Any] | None = None,
        engine: str | None = None,
        spark_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if asset is not None:
            asset = asset if isinstance(asset, Asset) else Asset(asset)
            kwargs["outlets"] = [*kwargs.get("outlets", []), asset]
        super().__init__(**kwargs)
        if not isinstance(rules, Mapping) or not rules:
            raise InvalidParameterError("rules", rules, "expected a non-empty {column: rule} dict")
        # Parse time, no data: the same checks deidentify() starts with. Templated rules are
        # only known once rendered, so then only the other parameters are checked here.
        templated = _holds_template(rules)
        check_request({} if templated else rules, k_anonymity=k_anonymity, l_diversity=l_diversity,
                      unlisted="keep" if templated else unlisted, information_loss=information_loss)
        if engine is not None and engine not in ENGINES:
            raise InvalidParameterError("engine", engine, f"expected one of {list(ENGINES)} or None (chosen by "
                                        "input size)")
        self.engine = engine
        if spark_conn_id is not None and (engine != "spark" or not isinstance(spark_conn_id, str)
                                          or not spark_conn_id.strip()):
            raise InvalidParameterError("spark_conn_id", spark_conn_id, "expected a connection id, with "
                                        f"engine='spark' (engine is {engine!r})")
        self.spark_conn_id = spark_conn_id
        self.source = check_uri("source", source, many=True)
        self.destination = check_uri("destination", destination)
        self.rules = dict(rules)
        self.k_anonymity = k_anonymity
        self.l_diversity = l_diversity
        self.key_conn_id = key_conn_id
        self.report_destination = check_uri("report_destination", report_destination, optional=True)
        self.asset = asset
        self.unlisted = unlisted
        self.information_loss = information_loss

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_without_retry():  # an unreadable batch or a bad rule fails the same way on every retry
            return self._deidentify(context)

    def _deidentify(self, context: Context) -> dict[str, Any]:
        for name in ("source", "destination", "report_destination"):  # rendered by now
            check_uri(name, getattr(self, name), optional=name == "report_destination", many=name == "source")
        report_uri = self.report_destination or f"{self.destination}.report.json"
        self.log.info("De-identifying %s with %d rules (engine %s)", self.source, len(self.rules),
                      self.engine or "chosen by size")
        try:
            # the ring inside the try: a malformed ring or an empty connection is not retried
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring() if needs_keyring(self.rules) else None
            options = {"keyring": ring, "k_anonymity": self.k_anonymity, "l_diversity": self.l_diversity,
                       "unlisted": self.unlisted, "information_loss": self.information_loss}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InformationLossWarning)  # logged below, once
                if isinstance(self.source, str) and io.infer_format(self.source) == "csv":
                    if self.engine not in (None, "pandas"):
                        raise InvalidParameterError("engine", self.engine, "a CSV source runs on engine='pandas'")
                    out, report = deidentify(io.read_batch(self.source), self.rules, **options)
                else:
                    out = None  # written by deidentify, the report just before it, each atomically
                    with self._engine_scope():
                        _, report = deidentify(self.source, self.rules, engine=self.engine,
                                               destination=self.destination, report_destination=report_uri,
                                               **options)
        except PrivacyError as exc:
            raise AirflowFailException(str(exc)) from exc
        loss = report.get("information_loss")
        if loss and loss["exceeded"]:
            self.log.warning("Information loss above the policy's threshold (%s): NCP %.3f, normalized "
                             "discernibility %.3f, per column %s -- see the audit report", loss["policy"],
                             loss["ncp"], loss["discernibility_normalized"], loss["ncp_by_column"])
        if out is not None:
            # Report first: each write is atomic, so a failure in between leaves at worst a report
            # of a batch not yet written (a retry rewrites both), never a batch without its audit.
            io.write_bytes(json.dumps(report, indent=2, default=str).encode(), report_uri)
            io.write_batch(out, self.destination)
        rows = report["rows_out"]
        summary = {
            "output": self.destination,
            "report": report_uri,
            "rows_in": report.get("rows_in"),
            "rows_out": rows,
            "suppressed": report.get("suppressed"),
            "k_achieved": report.get("k_achieved"),
            "l_achieved": report.get("l_achieved"),
            "information_loss": None if loss is None else {
                key: loss[key] for key in ("ncp", "discernibility_normalized", "exceeded")},
        }
        self.log.info("De-identified: %s", summary)
        if self.asset is not None:
            context["outlet_events"][self.asset].extra = {"output": self.destination, "rows": rows}
        return summary


    def _engine_scope(self) -> contextlib.AbstractContextManager:
        """With ``spark_conn_id``: a session on that connection's cluster, reached (or refused,
        naming ``spark_conn_id``) before a row is read."""
        if self.spark_conn_id is None:
            return contextlib.nullcontext()
        from airflow_privacy.core.dp.engines.spark_session import spark_on
        from airflow_privacy.hooks.spark import SparkEngineHook

        return spark_on(SparkEngineHook(self.spark_conn_id).get_url(), parameter="spark_conn_id",
                        value=self.spark_conn_id)


def _holds_template(value: Any) -> bool:
    """Whether a (nested) rules value holds a Jinja template Airflow renders at run time."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(_holds_template(k) or _holds_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_template(v) for v in value)
    return False
