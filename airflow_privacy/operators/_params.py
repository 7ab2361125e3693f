"""Checks every operator applies to the parameters that name data, and the one rule for which
run-time failures Airflow must not retry.

Adversary: a DAG author or a ``dag_run.conf`` that passes a relative path (resolved against
the worker's working directory, so ``../../etc/passwd`` writes outside any data folder), a
number where a URI goes, or a file that is not a batch. Found by tests/adversarial/
test_operator_fuzz.py, which once overwrote the test machine's /etc/passwd through a relative
``destination`` before these checks existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.errors import InvalidParameterError, PrivacyError


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_uri(name: str, value: Any, *, many: bool = False, optional: bool = False) -> Any:
    """A URI (``file://``, ``s3://``, ...) or an absolute path; with ``many``, also a non-empty
    list of them. A Jinja template passes here and is checked again once rendered."""
    if value is None and optional:
        return None
    if many and isinstance(value, (list, tuple)):
        if not value:
            raise InvalidParameterError(name, value, "expected a URI or a non-empty list of URIs")
        return [check_uri(name, v) for v in value]
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(name, value, "expected a URI (file://, s3://, gs://, ...) or an absolute path")
    if is_template(value):
        return value
    if "://" not in value and not value.startswith("/"):
        raise InvalidParameterError(name, value, "expected a URI or an absolute path: a relative path would be "
                                    "resolved against the worker's working directory")
    return value


def check_name(name: str, value: Any, *, optional: bool = False) -> Any:
    """A non-empty string naming a column or a dataset."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(name, value, "expected a non-empty name")
    return value


@contextlib.contextmanager
def fail_without_retry(what: str = "") -> Iterator[None]:
    """Turn failures that a retry would only repeat into ``AirflowFailException``: our own
    (``PrivacyError``), an input that is missing, a directory, unreadable or not a batch, a
    storage scheme whose filesystem is not installed. Transient I/O errors (connection
    resets, timeouts) stay retryable."""
    try:
        yield
    except AirflowFailException:
        raise
    except (PrivacyError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            ImportError, ValueError) as exc:
        raise AirflowFailException(f"{what}{exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):  # not a Parquet/CSV batch (pyarrow.lib.ArrowInvalid)
            raise AirflowFailException(f"{what}{type(exc).__name__}: {exc}") from exc
        raise
