"""Encrypt, decrypt and re-key batches at rest (envelope AEAD; see ``core.crypto``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import (
    PrivateKeyRing,
    PublicKeyRing,
    decrypt_columns,
    decrypt_file,
    encrypt_columns,
    encrypt_file,
    rewrap,
)
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators._params import check_uri, fail_without_retry

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


def _conn_ids(name: str, value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, Sequence) or not ids or not all(isinstance(c, str) and c for c in ids):
        raise InvalidParameterError(name, value, "expected a connection id or a non-empty list of them")
    return list(ids)


def _material(conn_id: str, kind: type, role: str, purpose: str) -> Any:
    """The key ring in connection ``conn_id``, which must be a ``kind`` of ``role`` keys."""
    material = PrivacyKeyHook(conn_id).get_key_material()
    if not isinstance(material, kind) or getattr(material, "role", role) != role:
        raise InvalidParameterError(
            conn_id, f"<{type(material).__name__}>", f"expected the {purpose} in this connection"
        )
    return material


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
        self.source = check_uri("source", source)
        self.destination = check_uri("destination", destination)
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
        # a malformed ring, an empty connection, a key that cannot open the file or an
        # unreadable source fails the same way on every retry (messages hold no key material)
        with fail_without_retry():
            check_uri("source", self.source)  # rendered by now
            check_uri("destination", self.destination)
            return self._run()

    def _run(self) -> dict[str, Any]:
        raise NotImplementedError


class EncryptOperator(_CryptoOperator):
    """Encrypt a batch at rest under the key ring of ``key_conn_id``, or to a data holder.

    Whole-file mode (default): streaming segmented AES-256-GCM envelope; the output reveals
    only the file's length. With ``recipient`` the file's data key is wrapped to the
    holder's public key (HPKE or RSA-OAEP): the task needs only the holder's *public* ring,
    and neither it nor any other producer can decrypt the output -- only the holder's
    private ring does. Column mode (``columns`` / ``deterministic_columns``): the listed
    cells become ``v1:<kek id>:<base64url>`` tokens -- randomized, or deterministic AES-SIV
    (equal values -> equal tokens, joinable). Both kinds of token reveal the approximate
    length of each value; deterministic ones also reveal equality within the column (see
    :mod:`airflow_privacy.core.crypto.columns`).

    :param source: URI of the input (templated).
    :param destination: URI of the output (templated); written atomically.
    :param key_conn_id: ``privacy_keys`` connection holding the key ring (symmetric mode).
    :param columns: columns to encrypt with randomized tokens.
    :param deterministic_columns: columns to encrypt with deterministic tokens.
    :param associated_data: whole-file mode only: context bound to the ciphertext (e.g.
        ``"dataset=patients/date={{ ds }}"``); decryption must pass the same value.
    :param recipient: whole-file mode: id of the ``privacy_keys`` connection holding the
        holder's public ring (``airflow-privacy keys generate --recipient``), or a list
        (e.g. the holder and an escrow key); replaces ``key_conn_id``.
    :param producer: with ``recipient``: this producer's id (e.g. the site), bound to the
        file's header.
    :param signer_conn_id: with ``recipient``: connection holding this producer's
        ``ed25519`` signing ring; the header is signed and the producer id is its key id.
    """

    def __init__(
        self,
        *,
        recipient: str | Sequence[str] | None = None,
        producer: str | None = None,
        signer_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.recipient = _conn_ids("recipient", recipient)
        if (producer is not None or signer_conn_id is not None) and not self.recipient:
            raise InvalidParameterError("producer", producer or signer_conn_id, "only used with recipient")
        if self.recipient and (self.columns or self.deterministic_columns):
            raise InvalidParameterError("recipient", recipient, "only whole-file mode encrypts to a recipient")
        self.producer = producer
        self.signer_conn_id = signer_conn_id

    def _run(self) -> dict[str, Any]:
        if self.recipient:
            return self._to_recipient()
        ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
        if self.columns or self.deterministic_columns:
            return self._columns_mode(ring)
        info = encrypt_file(self.source, self.destination, ring, self.associated_data)
        self.log.info("Encrypted %s -> %s (%d bytes, %d segments, key %s)", self.source, self.destination,
                      info["plaintext_bytes"], info["segments"], info["kek_id"])
        return {"output": self.destination, "bytes": info["ciphertext_bytes"], "kek_id": info["kek_id"]}

    def _to_recipient(self) -> dict[str, Any]:
        rings = [_material(c, PublicKeyRing, "encrypt", "recipient's public ring") for c in self.recipient]
        signer = None
        if self.signer_conn_id is not None:
            signer = _material(self.signer_conn_id, PrivateKeyRing, "sign", "producer's ed25519 signing ring")
        info = encrypt_file(self.source, self.destination, associated_data=self.associated_data,
                            recipient=rings, producer=self.producer, signer=signer)
        self.log.info("Encrypted %s -> %s (%d bytes, %d segments) to recipient key(s) %s", self.source,
                      self.destination, info["plaintext_bytes"], info["segments"], info["recipients"])
        return {"output": self.destination, "bytes": info["ciphertext_bytes"], "recipients": info["recipients"],
                "producer": info["producer"], "signed": info["signed"]}

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

    A file encrypted to a recipient opens only with the holder's private ring in
    ``key_conn_id`` (run this on the holder's queue); a producer's public ring fails
    clearly. Tampering, truncation, a wrong key or recipient, or wrong associated data fail
    the task without retry and write nothing -- never partial plaintext.

    :param senders_conn_id: recipient files: connection holding the producers' ``ed25519``
        public ring; the file must then carry a valid signature of the producer it names.
    """

    def __init__(self, *, senders_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if senders_conn_id is not None and (self.columns or self.deterministic_columns):
            raise InvalidParameterError("senders_conn_id", senders_conn_id, "only used in whole-file mode")
        self.senders_conn_id = senders_conn_id

    def _run(self) -> dict[str, Any]:
        if self.columns or self.deterministic_columns:
            return self._columns_mode(PrivacyKeyHook(self.key_conn_id).get_keyring())
        keys = PrivacyKeyHook(self.key_conn_id).get_key_material()
        senders = None
        if self.senders_conn_id is not None:
            senders = _material(self.senders_conn_id, PublicKeyRing, "sign", "producers' ed25519 public ring")
        info = decrypt_file(self.source, self.destination, keys, self.associated_data, senders=senders)
        self.log.info("Decrypted %s -> %s (%d bytes)", self.source, self.destination, info["plaintext_bytes"])
        out = {"output": self.destination, "bytes": info["plaintext_bytes"]}
        keep = ("kek_id", "recipient_key_id", "producer", "sender_verified")
        return out | {k: info[k] for k in keep if k in info}

    def _columns_mode(self, ring) -> dict[str, Any]:
        df = decrypt_columns(io.read_batch(self.source), self.columns + self.deterministic_columns, ring)
        rows = io.write_batch(df, self.destination)
        return {"output": self.destination, "rows": rows, "columns": self.columns + self.deterministic_columns}


class RotateKeysOperator(BaseOperator):
    """Re-wrap the data keys of encrypted files under the key ring's current primary.

    Rotate the ring first (``airflow-privacy keys rotate`` and update the connection), then
    run this: each file's header is rewritten atomically, its body is untouched, and files
    already under the primary are skipped, so the task is safe to retry. Files encrypted to
    a recipient: run it on the holder with the holder's rotated private ring; each file's
    data key moves to the ring's new primary key pair (other recipients are kept).

    :param paths: explicit URIs of encrypted files, a non-empty list (templated).
    :param prefix: or a folder URI: every ``*.enc`` file below it (templated).
    :param key_conn_id: ``privacy_keys`` connection holding the rotated (symmetric or
        holder's private) ring.
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
            ring = PrivacyKeyHook(self.key_conn_id).get_key_material()
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
