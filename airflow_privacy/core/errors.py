"""Exception hierarchy shared by every capability.

Messages name the parameter, the bad value and what is accepted. The operator layer turns
the non-retryable ones into ``AirflowFailException`` (see ``operators/_errors.py``) so that
Airflow does not retry a task that can only fail the same way again.
"""

from __future__ import annotations

from typing import Any


class PrivacyError(Exception):
    """Base class of every error raised by airflow-privacy."""


class InvalidParameterError(PrivacyError, ValueError):
    """A user-supplied parameter is outside what the function accepts."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {name}={value!r}: {allowed}")


class SchemaError(PrivacyError, ValueError):
    """A batch lacks a column, or a column has the wrong type, for the requested work."""


class BudgetExceededError(PrivacyError):
    """A release would push a dataset's privacy spend over its cap. Nothing was released."""


class ReleaseConflictError(PrivacyError):
    """Another try of the same release already fixed its answer: one charge has one answer.

    Raised to the try that lost the race to seal a charged release (two live tries of one
    task). That try must publish nothing; retrying cannot help."""


class IntegrityError(PrivacyError):
    """Ciphertext or a key failed authentication: tampered, truncated, wrong key or not ours."""


class ProtocolError(PrivacyError):
    """A multi-party protocol cannot complete safely (too few survivors, bad transcript)."""
