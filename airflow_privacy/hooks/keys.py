"""``PrivacyKeyHook``: the ``privacy_keys`` connection -> a :class:`KeyRing`."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.errors import InvalidParameterError


class PrivacyKeyHook(BaseHook):
    """Load a key ring from an Airflow connection (or any secrets backend behind it).

    The key ring JSON (``airflow-privacy keys generate``) lives in the connection's
    *password* field, which Airflow masks in logs and the UI; this hook additionally
    registers every key with the secrets masker, so a key that ends up in a log line or a
    rendered template is redacted too.

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

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["host", "schema", "port", "login", "extra"],
            "relabeling": {"password": "Key ring JSON"},
            "placeholders": {"password": "output of `airflow-privacy keys generate`"},
        }

    def get_conn(self) -> KeyRing:
        """The connection's key ring.

        :raises InvalidParameterError: the password field is empty or not a valid key ring
            (a :class:`~airflow_privacy.core.errors.PrivacyError`: retrying cannot help, so
            operators fail without retry); the message names the field, never its content.
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
                if isinstance(key, dict) and isinstance(key.get("key"), str):
                    mask_secret(key["key"])
        except (ValueError, AttributeError):
            pass  # KeyRing.from_json reports the problem without echoing the content
        try:
            return KeyRing.from_json(text)
        except InvalidParameterError as exc:  # its value is already redacted
            raise InvalidParameterError(
                f"connection {self.key_conn_id!r} password: {exc.name}", exc.value, exc.allowed
            ) from None

    get_keyring = get_conn
