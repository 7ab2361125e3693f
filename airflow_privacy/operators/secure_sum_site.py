"""The site's task of a secure-sum round (:mod:`.secure_sum`): ``SecureShareOperator``, run
on the site's queue with its key ring, its round state kept encrypted in site storage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import decrypt_bytes, encrypt_bytes
from airflow_privacy.core.dp.noise import default_random_source
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    advertise_keys,
    mask_input,
    paillier_encrypt,
    reveal_shares,
    share_keys,
)
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators.secure_sum_round import (
    PAILLIER_SITE_STEPS,
    SITE_STEPS,
    _bundle_for,
    _RoundMixin,
    read_vector,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class SecureShareOperator(_RoundMixin, BaseOperator):
    """One site's step of a secure-sum round; runs on the site's queue with its key ring.

    :param step: ``advertise`` | ``share`` | ``mask`` | ``reveal``.
    :param site: this site's name (one of ``sites``).
    :param sites: the whole cohort.
    :param source: for ``mask``: URI of the site's local vector (Parquet; every numeric
        column, row-major, flattened), templated; ``{site}`` is replaced by the site name.
    :param bounds: ``(lo, hi)`` clipping bounds of every coordinate.
    :param threshold: survivors needed (default majority).
    :param frac_bits: fixed-point precision of the encoding.
    :param shared_storage: URI prefix every party can read (messages only).
    :param site_storage: URI prefix only this site uses (its encrypted round state).
    :param key_conn_id: the site's ``privacy_keys`` connection (default ``privacy_keys_<site>``).
    :param round_name: name of the round within the DAG run (the task group id).
    """

    template_fields: Sequence[str] = ("source", "shared_storage", "site_storage")
    ui_color = "#f5ecd5"

    def __init__(
        self,
        *,
        step: str,
        site: str,
        sites: Sequence[str],
        bounds: tuple[float, float],
        shared_storage: str,
        site_storage: str,
        source: str | None = None,
        threshold: int | None = None,
        frac_bits: int = 20,
        key_conn_id: str | None = None,
        round_name: str = "secure_sum",
        length: int | None = None,
        dp: dict[str, Any] | None = None,
        config_factory: Callable[[str], SecureSumConfig] | None = None,
        vector_reader: Callable[..., tuple[np.ndarray, np.ndarray | None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if step not in SITE_STEPS + PAILLIER_SITE_STEPS:
            raise InvalidParameterError("step", step, f"expected one of {SITE_STEPS + PAILLIER_SITE_STEPS}")
        if site not in sites:
            raise InvalidParameterError("site", site, f"expected one of {list(sites)}")
        if step in ("mask", "encrypt") and not source and vector_reader is None:
            raise InvalidParameterError("source", source, "the mask step needs the site's vector URI")
        self.step = step
        self.site = site
        self.source = source.replace("{site}", site) if source else None
        self.site_storage = site_storage
        self.key_conn_id = key_conn_id or f"privacy_keys_{site}"
        self.vector_reader = vector_reader
        self._init_round(sites, bounds, threshold, frac_bits, shared_storage, round_name, length, dp, config_factory)

    # -- site-local, encrypted state ----------------------------------------------------------
    def _state_path(self, context: Context, step: str) -> str:
        digest = hashlib.sha256(self._round_id(context).encode()).hexdigest()[:16]
        return f"{self.site_storage.rstrip('/')}/{self.round_name}/{digest}/{step}.state.enc"

    def _save_state(self, context, ring, step: str, state: bytes) -> None:
        io.write_bytes(encrypt_bytes(state, ring, associated_data=f"{self._round_id(context)}|{self.site}|{step}"),
                       self._state_path(context, step))

    def _load_state(self, context, ring, step: str) -> bytes:
        path = self._state_path(context, step)
        if not io.exists(path):
            raise AirflowSkipException(f"site {self.site} has no state from step {step!r}: it dropped out earlier")
        return decrypt_bytes(io.read_bytes(path), ring, associated_data=f"{self._round_id(context)}|{self.site}|{step}")

    def _paillier_encrypt(self, context: Context, config: SecureSumConfig, ring) -> dict[str, Any]:
        path = self._msg(context, "encrypt", self.site)
        if io.exists(path):
            # A retry re-emits what was sent: a second, freshly randomized (and re-rounded)
            # ciphertext of the round could be added into a second aggregate.
            self.log.info("Site %s already sent its encrypted vector this round", self.site)
            return {"site": self.site, "step": self.step, "message": path}
        public_key = self._input(context, "keygen")
        vector = read_vector(self.source)
        self.log.info("Site %s encrypts a vector of %d values under the key holder's Paillier key",
                      self.site, len(vector))
        message = paillier_encrypt(config, public_key, self.site, vector,
                                   noise_share=self._noise_share(context, ring))
        io.write_bytes(message, path)
        return {"site": self.site, "step": self.step, "message": path}

    def _noise_share(self, context: Context, ring) -> np.ndarray | None:
        """This site's distributed-DP share: drawn once from the CSPRNG, kept encrypted in
        site storage, and re-used verbatim by a retry (a fresh share would leak the
        difference of two shares through two masked vectors)."""
        noise = self._noise()
        if noise is None:
            return None
        path = self._state_path(context, "noise")
        if io.exists(path):
            raw = decrypt_bytes(io.read_bytes(path), ring, associated_data=f"{self._round_id(context)}|{self.site}|noise")
            return np.frombuffer(raw, dtype="<i8").astype(np.int64)
        share = noise.draw(default_random_source())
        io.write_bytes(encrypt_bytes(share.astype("<i8").tobytes(), ring,
                                     associated_data=f"{self._round_id(context)}|{self.site}|noise"), path)
        return share

    def _input(self, context: Context, step: str) -> bytes:
        path = self._msg(context, step)
        if not io.exists(path):
            raise AirflowFailException(f"aggregator message of step {step!r} is missing at {path}")
        return io.read_bytes(path)

    def execute(self, context: Context) -> dict[str, Any]:
        config = self._config(self._round_id(context))
        try:
            # inside the try: an empty or malformed key ring fails without retry
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
            if self.step == "encrypt":
                return self._paillier_encrypt(context, config, ring)
            if self.step == "advertise":
                published = self._msg(context, "advertise", self.site)
                if io.exists(self._state_path(context, "advertise")) and io.exists(published):
                    # A retry after publishing keeps the advertised keys; before publishing,
                    # nobody has seen them, so fresh ones are as good.
                    self.log.info("Site %s already advertised keys this round", self.site)
                    return {"site": self.site, "step": self.step, "message": published}
                out = advertise_keys(config, self.site)
            elif self.step == "share":
                roster = self._input(context, "collect")
                out = share_keys(config, self._load_state(context, ring, "advertise"), roster)
            elif self.step == "mask":
                bundles = self._input(context, "route")
                bundle = _bundle_for(bundles, self.site)
                if bundle is None:
                    raise AirflowSkipException(f"site {self.site} is not in this round's roster")
                # On a retry start from this step's own saved state: it records a digest of
                # what was sent, so a different input under the same masks is refused.
                own = self._state_path(context, "mask")
                state = self._load_state(context, ring, "mask" if io.exists(own) else "share")
                if self.vector_reader is not None:
                    vector, noise_share = self.vector_reader(self, context, ring)
                else:
                    vector, noise_share = read_vector(self.source), self._noise_share(context, ring)
                self.log.info("Site %s masks a vector of %d values", self.site, len(vector))
                out = mask_input(config, state, bundle, vector, noise_share=noise_share)
            else:
                request = self._input(context, "request")
                # A re-run must start from this step's own saved state: it records which
                # shares were revealed, and from the mask state a re-run request could obtain
                # both shares of a site and unmask its input (Bonawitz et al. 2017, Sec. 4).
                own = self._state_path(context, "reveal")
                state = self._load_state(context, ring, "reveal" if io.exists(own) else "mask")
                out = reveal_shares(config, state, request)
        except PrivacyError as exc:
            raise AirflowFailException(f"site {self.site}, step {self.step}: {exc}") from exc
        # Persist the state before publishing: a retry then sees what was sent.
        self._save_state(context, ring, self.step, out.state)
        path = self._msg(context, self.step, self.site)
        io.write_bytes(out.message, path)
        return {"site": self.site, "step": self.step, "message": path}
