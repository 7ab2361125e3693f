"""Encryption at rest for batches: envelope-encrypted files and blobs, tokenized columns.

Security guarantees (details and citations in each module):

* :mod:`.envelope` -- files and blobs: a fresh 256-bit data key per blob, AES-256-GCM in
  the segmented STREAM construction (Hoang-Reyhanitabar-Rogaway-Vizár 2015, as in Tink's
  streaming AEAD), data key wrapped under a key ring's primary KEK. Confidentiality and
  integrity of the whole stream: tampering, truncation, reordering, wrong key or wrong
  associated data raise :class:`~airflow_privacy.core.errors.IntegrityError`, never
  garbage output; file decryption publishes its output atomically. Key rotation re-wraps
  the data key without touching the body (:func:`rewrap`).
* :mod:`.recipients` / :mod:`.suites` / :mod:`.hybrid` -- public-key encryption to a data
  holder: :class:`PublicKeyRing` (producers: encrypt only) and :class:`PrivateKeyRing`
  (the holder: decrypt), HPKE (RFC 9180, X25519/HKDF-SHA256/AES-256-GCM) or RSA-OAEP-3072
  wraps of the same segmented body, optional Ed25519 producer signatures.
* :mod:`.columns` -- column tokens ``v1:<kek id>:<base64url>``: randomized AES-256-GCM (hides
  everything but approximate length) or deterministic AES-256-SIV (reveals equality within
  a column under one key, and approximate length; joinable).
* :mod:`.keyring` -- :class:`KeyRing`: named 256-bit KEKs, one primary; key bytes never
  appear in ``repr`` or error messages.

Nothing here imports Airflow.
"""

from __future__ import annotations

from airflow_privacy.core.crypto.columns import decrypt_columns, encrypt_columns
from airflow_privacy.core.crypto.envelope import (
    DEFAULT_SEGMENT_SIZE,
    RewrapResult,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    inspect_header,
    rewrap,
)
from airflow_privacy.core.crypto.keyring import KeyRing
from airflow_privacy.core.crypto.recipients import PrivateKeyRing, PublicKeyRing, load_key_material
from airflow_privacy.core.crypto.stream import SourceChangedError

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "KeyRing",
    "PrivateKeyRing",
    "PublicKeyRing",
    "RewrapResult",
    "SourceChangedError",
    "decrypt_bytes",
    "decrypt_columns",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_columns",
    "encrypt_file",
    "inspect_header",
    "load_key_material",
    "rewrap",
]
