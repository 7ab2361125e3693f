"""Encrypt, decrypt and re-key batches at rest (envelope AEAD; see ``core.crypto``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import (
    decrypt_columns,
    decrypt_file,
    encrypt_columns,
    encrypt_file,
    rewrap,
)
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.hooks.keys import PrivacyKeyHook

if TYPE_CHECKING:
    from airflow.sdk import Context


def _columns(name: str, value: Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(c, str) and c for c in value):
        raise InvalidParameterError(name, value, "expected a list of column names")
    return list(value)


def _paths(value: Any) -> list[str]:
    # A lone string would otherwise be iterated character by character.
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(p, str) and p for p in value)
    ):
        raise InvalidParameterError(
            "paths", value, "expected a non-empty list of file URIs, e.g. ['s3://b/x.enc']"
        )
    return list(value)


class _CryptoOperator(BaseOperator):
    template_fields: Sequence[str] = ("source", "destination", "associated_data")
    ui_color = "#d5e8f5"

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        key_conn_id: str = PrivacyKeyHook.default_conn_name,
        columns: Sequence[str] | None = None,
        deterministic_columns: Sequence[str] | None = None,
        associated_data: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.key_conn_id = key_conn_id
        self.columns = _columns("columns", columns)
        self.deterministic_columns = _columns("deterministic_columns", deterministic_columns)
        overlap = set(self.columns) & set(self.deterministic_columns)
        if overlap:
            raise InvalidParameterError("deterministic_columns", sorted(overlap), "a column cannot be in both lists")
        if associated_data is not None and (self.columns or self.deterministic_columns):
            raise InvalidParameterError("associated_data", associated_data, "only used in whole-file mode")
        self.associated_data = associated_data

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            # inside the try: a malformed ring or an empty connection fails the same way on
            # every retry (its message never holds key material)
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
            if self.columns or self.deterministic_columns:
                return self._columns_mode(ring)
            return self._file_mode(ring)
        except PrivacyError as exc:
            raise AirflowFailException(str(exc)) from exc


class EncryptOperator(_CryptoOperator):
    """Encrypt a batch at rest under the key ring of ``key_conn_id``.

    Whole-file mode (default): streaming segmented AES-256-GCM envelope; the output reveals
    only the file's length. Column mode (``columns`` / ``deterministic_columns``): the
    listed cells become ``v1:<kek id>:<base64url>`` tokens -- randomized, or deterministic
    AES-SIV (equal values -> equal tokens, joinable). Both kinds of token reveal the
    approximate length of each value; deterministic ones also reveal equality within the
    column (see :mod:`airflow_privacy.core.crypto.columns`).

    :param source: URI of the input (templated).
    :param destination: URI of the output (templated); written atomically.
    :param key_conn_id: ``privacy_keys`` connection holding the key ring.
    :param columns: columns to encrypt with randomized tokens.
    :param deterministic_columns: columns to encrypt with deterministic tokens.
    :param associated_data: whole-file mode only: context bound to the ciphertext (e.g.
        ``"dataset=patients/date={{ ds }}"``); decryption must pass the same value.
    """

    def _file_mode(self, ring) -> dict[str, Any]:
        info = encrypt_file(self.source, self.destination, ring, self.associated_data)
        self.log.info("Encrypted %s -> %s (%d bytes, %d segments, key %s)", self.source, self.destination,
                      info["plaintext_bytes"], info["segments"], info["kek_id"])
        return {"output": self.destination, "bytes": info["ciphertext_bytes"], "kek_id": info["kek_id"]}

    def _columns_mode(self, ring) -> dict[str, Any]:
        df = io.read_batch(self.source, columns=None)
        if self.columns:
            df = encrypt_columns(df, self.columns, ring, deterministic=False)
        if self.deterministic_columns:
            df = encrypt_columns(df, self.deterministic_columns, ring, deterministic=True)
        rows = io.write_batch(df, self.destination)
        self.log.info("Tokenized %s in %d rows -> %s", self.columns + self.deterministic_columns, rows, self.destination)
        return {"output": self.destination, "rows": rows, "kek_id": ring.primary_id,
                "columns": self.columns + self.deterministic_columns}


class DecryptOperator(_CryptoOperator):
    """Decrypt what :class:`EncryptOperator` wrote (same parameters).

    Tampering, truncation, a wrong key or wrong associated data fail the task without retry
    and write nothing -- never partial plaintext.
    """

    def _file_mode(self, ring) -> dict[str, Any]:
        info = decrypt_file(self.source, self.destination, ring, self.associated_data)
        self.log.info("Decrypted %s -> %s (%d bytes)", self.source, self.destination, info["plaintext_bytes"])
        return {"output": self.destination, "bytes": info["plaintext_bytes"], "kek_id": info["kek_id"]}

    def _columns_mode(self, ring) -> dict[str, Any]:
        df = decrypt_columns(io.read_batch(self.source), self.columns + self.deterministic_columns, ring)
        rows = io.write_batch(df, self.destination)
        return {"output": self.destination, "rows": rows, "columns": self.columns + self.deterministic_columns}


class RotateKeysOperator(BaseOperator):
    """Re-wrap the data keys of encrypted files under the key ring's current primary.

    Rotate the ring first (``airflow-privacy keys rotate`` and update the connection), then
    run this: each file's header is rewritten atomically, its body is untouched, and files
    already under the primary are skipped, so the task is safe to retry.

    :param paths: explicit URIs of encrypted files, a non-empty list (templated).
    :param prefix: or a folder URI: every ``*.enc`` file below it (templated).
    :param key_conn_id: ``privacy_keys`` connection holding the rotated ring.
    """

    template_fields: Sequence[str] = ("paths", "prefix")
    ui_color = "#d5e8f5"

    def __init__(
        self,
        *,
        paths: Sequence[str] | None = None,
        prefix: str | None = None,
        key_conn_id: str = PrivacyKeyHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (paths is None) == (prefix is None):
            raise InvalidParameterError("paths", paths, "give exactly one of paths or prefix")
        if isinstance(paths, Sequence):  # str included
            _paths(paths)  # else an XComArg: checked once rendered
        self.paths = paths
        self.prefix = prefix
        self.key_conn_id = key_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
            targets = None if self.paths is None else _paths(self.paths)
        except PrivacyError as exc:
            raise AirflowFailException(str(exc)) from exc
        if targets is None:
            fs, root = io.resolve(self.prefix)
            targets = sorted(fs.unstrip_protocol(p) for p in fs.find(root) if p.endswith(".enc"))
        rewrapped = unchanged = 0
        for i, target in enumerate(targets, 1):
            try:
                result = rewrap(target, ring)
            except PrivacyError as exc:
                raise AirflowFailException(f"{target}: {exc}") from exc
            rewrapped += bool(result.rewrapped)
            unchanged += not result.rewrapped
            if i % 100 == 0 or i == len(targets):
                self.log.info("Re-wrapped %d/%d files (%d already under key %s)", i, len(targets), unchanged,
                              ring.primary_id)
        return {"rewrapped": rewrapped, "unchanged": unchanged, "kek_id": ring.primary_id, "files": len(targets)}
