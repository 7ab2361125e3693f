"""``PrivacyKeyHook``: the ``privacy_keys`` connection -> a :class:`KeyRing`."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing, PublicKeyRing, load_key_material
from airflow_privacy.core.errors import InvalidParameterError


class PrivacyKeyHook(BaseHook):
    """Load a key ring from an Airflow connection (or any secrets backend behind it).

    The key ring JSON (``airflow-privacy keys generate``; with ``--recipient`` a holder's
    private ring, or the public ring producers hold) lives in the connection's
    *password* field, which Airflow masks in logs and the UI; this hook additionally
    registers every key with the secrets masker in each form it could be printed in
    (:func:`key_forms`: base64 variants, hex, ``repr`` of the bytes), so a key that ends up
    in a log line or a rendered template is redacted too.

    :param key_conn_id: connection id (default ``privacy_keys_default``; per site
        ``privacy_keys_<site>``).
    """

    conn_name_attr = "key_conn_id"
    default_conn_name = "privacy_keys_default"
    conn_type = "privacy_keys"
    hook_name = "Privacy Key Ring"

    def __init__(self, key_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key_conn_id = key_conn_id

    def get_conn(self) -> KeyRing:
        """The connection's symmetric key ring.

        :raises InvalidParameterError: the password field is empty, not a valid key ring, or
            a public-key ring (a :class:`~airflow_privacy.core.errors.PrivacyError`:
            retrying cannot help, so operators fail without retry); the message names the
            field, never its content.
        """
        material = self.get_key_material()
        if not isinstance(material, KeyRing):
            raise InvalidParameterError(
                f"connection {self.key_conn_id!r} password",
                f"<{type(material).__name__}>",
                "this task needs a symmetric key ring (`airflow-privacy keys generate`)",
            )
        return material

    get_keyring = get_conn

    def get_key_material(self) -> KeyRing | PrivateKeyRing | PublicKeyRing:
        """Whatever the connection holds: a symmetric :class:`KeyRing`, a holder's
        :class:`PrivateKeyRing` (or a producer's signing key), or a :class:`PublicKeyRing`
        (what a producer holds to encrypt to the holder; it decrypts nothing).

        Every private key is registered with the secrets masker first, in each form it could
        be printed in (:func:`key_forms`).
        """
        conn = self.get_connection(self.key_conn_id)
        text = conn.password
        if not text:
            raise InvalidParameterError(
                f"connection {self.key_conn_id!r} password",
                None,
                "expected the key-ring JSON of `airflow-privacy keys generate`",
            )
        mask_secret(text)
        try:
            for key in json.loads(text).get("keys", []):
                for field in ("key", "private"):
                    if isinstance(key, dict) and isinstance(key.get(field), str):
                        for form in key_forms(key[field]):
                            mask_secret(form)
        except (ValueError, AttributeError, TypeError):
            pass  # the ring's parser reports the problem without echoing the content
        try:
            return load_key_material(text)
        except InvalidParameterError as exc:  # its value is already redacted
            raise InvalidParameterError(
                f"connection {self.key_conn_id!r} password: {exc.name}", exc.value, exc.allowed
            ) from None


def key_forms(encoded: str) -> list[str]:
    """Every spelling of one key that could end up in a log: the base64 of the ring JSON,
    and, of the raw bytes, unpadded and URL-safe base64, lower- and upper-case hex (what
    ``bytes.hex()`` and debuggers print) and the inside of ``repr(bytes)``."""
    forms = [encoded]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return forms  # not a key KeyRing.from_json would accept
    if not raw:
        return forms
    standard, url_safe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    forms += [standard, standard.rstrip("="), url_safe, url_safe.rstrip("=")]
    forms += [raw.hex(), raw.hex().upper(), repr(raw)[2:-1]]
    return list(dict.fromkeys(forms))
