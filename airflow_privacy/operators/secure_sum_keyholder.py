"""The Paillier key holder's task of a secure-sum round (:mod:`.secure_sum`, ``protocol=
"paillier"``): ``PaillierKeyHolderOperator``, an aggregator step that also holds the round's
Paillier private key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import decrypt_bytes, encrypt_bytes
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.core.secure_sum import paillier_decrypt, paillier_keygen
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators.secure_sum_aggregator import SecureSumOperator
from airflow_privacy.operators.secure_sum_round import KEYHOLDER_STEPS

if TYPE_CHECKING:
    from airflow.sdk import Context


class PaillierKeyHolderOperator(SecureSumOperator):
    """The Paillier key holder: makes the round's key pair and decrypts only the aggregate.

    Runs on its own queue (``keyholder``) with its own key ring, which encrypts the Paillier
    private key in the key holder's storage. It refuses to decrypt anything but an aggregate
    of at least ``threshold`` sites, and decrypts one aggregate per round (dag, run, round):
    it records the aggregate's SHA-256 in its storage before decrypting, a retry re-releases
    that same aggregate, and any other aggregate of the round is refused -- two aggregates
    differing by one site would reveal that site's input.

    :param step: ``keygen`` | ``decrypt``.
    :param keyholder_storage: URI prefix only the key holder uses.
    :param key_conn_id: the key holder's ``privacy_keys`` connection.
    :param key_bits: Paillier modulus size (>= 2048; 3072 for 128-bit security).
    """

    template_fields: Sequence[str] = ("destination", "shared_storage", "keyholder_storage")

    def __init__(self, *, step: str, keyholder_storage: str, key_conn_id: str = "privacy_keys_keyholder",
                 key_bits: int = 2048, **kwargs: Any) -> None:
        if step not in KEYHOLDER_STEPS:
            raise InvalidParameterError("step", step, f"expected one of {KEYHOLDER_STEPS}")
        kwargs.setdefault("trigger_rule", "all_success" if step == "keygen" else "all_done")
        super().__init__(step="unmask" if step == "decrypt" else "collect", **kwargs)
        self.step = step
        self.keyholder_storage = keyholder_storage
        self.key_conn_id = key_conn_id
        self.key_bits = key_bits

    def _private_path(self, context: Context, name: str = "paillier.key.enc") -> str:
        digest = hashlib.sha256(self._round_id(context).encode()).hexdigest()[:16]
        return f"{self.keyholder_storage.rstrip('/')}/{self.round_name}/{digest}/{name}"

    def _mark_decrypted(self, context: Context, aggregate: bytes) -> None:
        """Record (once per round, before decrypting) which aggregate this round decrypts."""
        digest = hashlib.sha256(aggregate).hexdigest()
        marker = self._private_path(context, "decrypted.sha256")
        if not io.exists(marker):
            io.write_bytes(digest.encode(), marker)
            return
        if io.read_bytes(marker).decode() != digest:
            raise AirflowFailException(
                f"key holder already decrypted another aggregate in round {self._round_id(context)!r}; "
                "refusing a second one: two aggregates differing by one site reveal that site's input")
        self.log.info("Retry: decrypting the same aggregate of this round again")

    def execute(self, context: Context) -> dict[str, Any]:
        config = self._config(self._round_id(context))
        aad = f"{self._round_id(context)}|keyholder"
        try:
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
            if self.step == "keygen":
                public_path = self._msg(context, "keygen")
                if io.exists(public_path) and io.exists(self._private_path(context)):
                    return {"step": self.step, "message": public_path}
                pair = paillier_keygen(self.key_bits)
                io.write_bytes(encrypt_bytes(pair.private_key, ring, associated_data=aad), self._private_path(context))
                io.write_bytes(pair.public_key, public_path)
                self.log.info("Published a fresh %d-bit Paillier public key for this round", self.key_bits)
                return {"step": self.step, "message": public_path}
            aggregate = self._input_msg(context, "add")
            self._mark_decrypted(context, aggregate)
            private = decrypt_bytes(io.read_bytes(self._private_path(context)), ring, associated_data=aad)
            result = paillier_decrypt(config, private, aggregate)
        except PrivacyError as exc:
            raise AirflowFailException(f"key holder, step {self.step}: {exc}") from exc
        return self._release(context, result)
