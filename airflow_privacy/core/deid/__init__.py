"""De-identification of tabular batches: per-column rules, k-anonymity, l-diversity, PII
scrubbing of free text.

* :func:`deidentify` -- the one entry point: declarative per-column rules
  (:mod:`.rules`: drop, redact, replace, mask, keyed HMAC hash, reversible AES-SIV token,
  bucket, generalize by prefix / date truncation / user hierarchy, per-entity date shift,
  PII scrubbing), then k-anonymity counting distinct entities per class (Samarati 2001;
  Sweeney 2002) and distinct l-diversity (Machanavajjhala et al. 2007) enforced by climbing
  generalization hierarchies and suppressing within a limit (:mod:`.anonymity`). Returns
  the frame and a JSON-able audit report (columns x transform x key id, rows in/out,
  suppressed, k and l achieved, generalization levels, information loss -- NCP and
  discernibility, :mod:`.loss` -- against a warn-or-fail policy). :func:`check_request`
  runs its parameter checks without data, as a DAG file is parsed (:mod:`.spec`).
* ``engine=``: a Parquet dataset runs in memory (``"pandas"``), streamed out of core with
  the classes counted by DuckDB (``"duckdb"``, :mod:`.streaming`), or on a Spark cluster
  (``"spark"``, :mod:`.spark_engine`); pandas or DuckDB is chosen by size when not given;
  all release the same rows and report.
* :func:`needs_keyring` -- whether a rules mapping uses ``hash``, ``tokenize`` or
  ``shift_dates`` (so an operator fetches keys only when needed).
* :func:`scrub_pii` -- validated regex recognizers for e-mail, phone, SSN, card, IP and
  date in free text (:mod:`.pii`), offline; no NER model.

Everything is vectorized over pandas / Arrow with dedupe-then-map for per-value work
(:mod:`.dedupe`). Keys are derived from a :class:`~airflow_privacy.core.crypto.KeyRing`
(:mod:`.keyed`). Nothing here imports Airflow.
"""

from __future__ import annotations

from airflow_privacy.core.deid.deidentify import REPORT_VERSION, deidentify
from airflow_privacy.core.deid.generalize import DATE_LEVELS
from airflow_privacy.core.deid.keyed import HASH_VERSION
from airflow_privacy.core.deid.loss import InformationLossError, InformationLossWarning
from airflow_privacy.core.deid.pii import ENTITIES, scrub_pii
from airflow_privacy.core.deid.rules import KEYED_RULES, RULES, needs_keyring
from airflow_privacy.core.deid.spec import DEFAULT_LOSS_POLICY, check_request
from airflow_privacy.core.deid.streaming import ENGINES, choose_engine

__all__ = [
    "DATE_LEVELS",
    "DEFAULT_LOSS_POLICY",
    "ENGINES",
    "ENTITIES",
    "HASH_VERSION",
    "InformationLossError",
    "InformationLossWarning",
    "KEYED_RULES",
    "REPORT_VERSION",
    "RULES",
    "check_request",
    "choose_engine",
    "deidentify",
    "needs_keyring",
    "scrub_pii",
]
