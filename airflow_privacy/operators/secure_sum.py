"""Secure sum across data sites as Airflow tasks (Bonawitz et al. 2017 double masking).

``secure_sum_group(...)`` wires one round: per-site tasks (``SecureShareOperator``, each on
its site's queue with its site's key ring) and aggregator tasks (``SecureSumOperator``)
exchange messages through shared storage. Threat model: see
:mod:`airflow_privacy.core.secure_sum`. What each party writes where:

* shared storage (``shared_storage``): public keys, encrypted key shares, masked vectors,
  unmask requests and revealed shares of the round -- and the released sum.
* site storage (``site_storage``, per site): the site's round state (seeds, private keys),
  envelope-encrypted under the site's own key ring (``privacy_keys_<site>``), so it is
  useless to anyone without that site's key even if the storage is shared.
* XCom: paths, counts, survivors. Never a vector, a state or a key.

Dropouts: a site task that fails (or a site whose worker is gone) is simply absent from the
next aggregator step, which runs with ``trigger_rule="all_done"``; the protocol removes the
dropped site's masks from the survivors' shares. Fewer than ``threshold`` survivors fails
the round and releases nothing.

Waiting: within one DAG the aggregator steps wait for the site tasks as Airflow dependencies
(the scheduler waits; no task runs meanwhile). Sites that run *outside* the DAG (another
deployment writing to the same shared storage) are waited for with ``wait_for_sites``: a
step that finds site messages missing defers to
:class:`~airflow_privacy.triggers.site_messages.SiteMessagesTrigger` -- the wait runs in the
triggerer and holds no worker slot -- and resumes when they are all there or the wait is
over, absent sites then counting as dropped.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from airflow.sdk import BaseOperator, TaskGroup
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import decrypt_bytes, encrypt_bytes
from airflow_privacy.core.dp.accounting import PrivacyCost
from airflow_privacy.core.dp.distributed import DistributedGaussian, calibrate_distributed_gaussian
from airflow_privacy.core.dp.noise import default_random_source
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    advertise_keys,
    collect_keys,
    default_threshold,
    mask_input,
    paillier_add,
    paillier_decrypt,
    paillier_encrypt,
    paillier_keygen,
    request_survivors,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    unmask_sum,
)
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators._release import announce_alerts, charge_identity, privacy_summary
from airflow_privacy.operators.links import PrivacyBudgetLink
from airflow_privacy.triggers.site_messages import SiteMessagesTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

SITE_STEPS = ("advertise", "share", "mask", "reveal")
AGGREGATOR_STEPS = ("collect", "route", "request", "unmask")
PAILLIER_SITE_STEPS = ("encrypt",)
PAILLIER_AGGREGATOR_STEPS = ("charge", "add")
KEYHOLDER_STEPS = ("keygen", "decrypt")
PROTOCOLS = ("masking", "paillier")
_SITE_MESSAGES = {"collect": "advertise", "route": "share", "request": "mask", "unmask": "reveal", "add": "encrypt"}
"""The site messages each aggregator step reads (``unmask``: of the survivors the request names)."""


class _RoundMixin:
    """Shared parameters and storage layout of one secure-sum round."""

    def _init_round(self, sites, bounds, threshold, frac_bits, shared_storage, round_name, length, dp,
                    config_factory=None) -> None:
        self.config_factory = config_factory
        self.sites = list(sites)
        self.bounds = tuple(bounds)
        self.threshold = threshold
        self.frac_bits = frac_bits
        self.shared_storage = shared_storage
        self.round_name = round_name
        self.length = length
        self.dp = _check_dp(dp, length)
        # Validate the public parameters at parse time (round_id is filled in at run time);
        # a config_factory (federated rounds) is only evaluated on the workers.
        if config_factory is None:
            self._config("parse-check")

    def _noise(self) -> DistributedGaussian | None:
        if not self.dp:
            return None
        threshold = self.threshold or default_threshold(len(self.sites))
        return calibrate_distributed_gaussian(
            epsilon=self.dp["epsilon"], delta=self.dp["delta"], l2_sensitivity=self.dp["l2_sensitivity"],
            dimension=self.length, min_shares=threshold, frac_bits=self.frac_bits)

    def _config(self, round_id: str) -> SecureSumConfig:
        if self.config_factory is not None:
            return self.config_factory(round_id)
        noise = self._noise()
        return SecureSumConfig(round_id=round_id, sites=self.sites, bounds=self.bounds,
                               threshold=self.threshold, frac_bits=self.frac_bits, length=self.length,
                               noise_bound=noise.noise_bound if noise else 0)

    def _round_id(self, context: Context) -> str:
        ti = context["ti"]
        return f"{ti.dag_id}/{ti.run_id}/{self.round_name}"

    def _msg(self, context: Context, step: str, site: str | None = None) -> str:
        digest = hashlib.sha256(self._round_id(context).encode()).hexdigest()[:16]
        name = f"{site}.msg" if site else "aggregator.msg"
        return f"{self.shared_storage.rstrip('/')}/{self.round_name}/{digest}/{step}/{name}"

    def _read_present(self, context: Context, step: str, sites: Sequence[str] | None = None) -> dict[str, bytes]:
        out = {}
        for site in self.sites if sites is None else sites:
            path = self._msg(context, step, site)
            if io.exists(path):
                out[site] = io.read_bytes(path)
        return out


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


class SecureSumOperator(_RoundMixin, BaseOperator):
    """An aggregator step of a secure-sum round; holds no secrets.

    :param step: ``collect`` | ``route`` | ``request`` | ``unmask``.
    :param destination: for ``unmask``: URI of the released sum (Parquet, column ``value``).
    :param wait_for_sites: how long (seconds or ``timedelta``) the step waits, deferred, for site
        messages that are missing when it starts; ``None`` (default): proceed at once -- right
        when the sites are upstream tasks of the same DAG, as in :func:`secure_sum_group`.
    :param poll_interval: seconds between the trigger's checks of the shared storage.
    (other parameters as :class:`SecureShareOperator`)
    """

    template_fields: Sequence[str] = ("destination", "shared_storage")
    # With ``dp`` the round is charged (``route``) and released (``unmask``) by these steps.
    operator_extra_links = (PrivacyBudgetLink(),)
    ui_color = "#f5ecd5"

    def __init__(
        self,
        *,
        step: str,
        sites: Sequence[str],
        bounds: tuple[float, float],
        shared_storage: str,
        destination: str | None = None,
        threshold: int | None = None,
        frac_bits: int = 20,
        round_name: str = "secure_sum",
        length: int | None = None,
        dp: dict[str, Any] | None = None,
        config_factory: Callable[[str], SecureSumConfig] | None = None,
        wait_for_sites: float | timedelta | None = None,
        poll_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")  # dropped sites must not block the round
        super().__init__(**kwargs)
        if step not in AGGREGATOR_STEPS + PAILLIER_AGGREGATOR_STEPS:
            raise InvalidParameterError("step", step, f"expected one of {AGGREGATOR_STEPS + PAILLIER_AGGREGATOR_STEPS}")
        if step == "unmask" and not destination:
            raise InvalidParameterError("destination", destination, "the unmask step writes the sum")
        self.step = step
        self.destination = destination
        self.wait_for_sites = _seconds("wait_for_sites", wait_for_sites)
        self.poll_interval = _seconds("poll_interval", poll_interval)
        self._init_round(sites, bounds, threshold, frac_bits, shared_storage, round_name, length, dp, config_factory)

    def execute(self, context: Context) -> dict[str, Any]:
        if self.wait_for_sites and self.step in _SITE_MESSAGES:
            awaited = _SITE_MESSAGES[self.step]
            sites = self.sites
            if self.step == "unmask":  # the reveals of the survivors the request names
                sites = request_survivors(self._config(self._round_id(context)), self._input_msg(context, "request"))
            missing = [self._msg(context, awaited, s) for s in sites if not io.exists(self._msg(context, awaited, s))]
            if missing:
                self.log.info("Waiting up to %gs for %d site message(s) of step %r, deferred (no worker slot held)",
                              self.wait_for_sites, len(missing), awaited)
                self.defer(trigger=SiteMessagesTrigger(paths=missing, deadline=time.time() + self.wait_for_sites,
                                                       poll_interval=self.poll_interval),
                           method_name="execute_complete")
        return self._run_step(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resumed from :class:`SiteMessagesTrigger`: run the step with the messages present."""
        if event and event.get("timed_out"):
            self.log.warning("Gave up waiting for %d site message(s); their sites count as dropped: %s",
                             len(event["missing"]), event["missing"])
        return self._run_step(context)

    def _run_step(self, context: Context) -> dict[str, Any]:
        config = self._config(self._round_id(context))
        try:
            if self.step == "collect":
                adverts = self._read_present(context, "advertise")
                self.log.info("Keys advertised by %s", sorted(adverts))
                message = collect_keys(config, adverts.values())
            elif self.step == "route":
                self._charge(context)  # before any site draws noise or masks its input
                shares = self._read_present(context, "share")
                bundles = route_shares(config, io.read_bytes(self._msg(context, "collect")), shares.values())
                message = _pack_bundles(bundles)
            elif self.step == "charge":
                self._charge(context)
                return {"step": self.step}
            elif self.step == "add":
                encrypted = self._read_present(context, "encrypt")
                self.log.info("Adding the ciphertexts of %s; dropped: %s", sorted(encrypted),
                              sorted(set(self.sites) - set(encrypted)))
                message = paillier_add(config, self._input_msg(context, "keygen"), encrypted.values())
            elif self.step == "request":
                masked = self._read_present(context, "mask")
                self.log.info("Masked inputs from %s; dropped: %s", sorted(masked),
                              sorted(set(self.sites) - set(masked)))
                message = request_unmask(config, masked.values())
            else:
                return self._unmask(context, config)
        except PrivacyError as exc:
            raise AirflowFailException(f"secure sum {self.step}: {exc}") from exc
        path = self._msg(context, self.step)
        io.write_bytes(message, path)
        return {"step": self.step, "message": path}

    def _input_msg(self, context: Context, step: str) -> bytes:
        path = self._msg(context, step)
        if not io.exists(path):
            raise AirflowFailException(f"message of step {step!r} is missing at {path}")
        return io.read_bytes(path)

    def _unmask(self, context: Context, config: SecureSumConfig) -> dict[str, Any]:
        request = io.read_bytes(self._msg(context, "request"))
        # Only the sites the request names: a masked vector that arrived after the request
        # (its site counted as dropped) must not abort the round.
        survivors = request_survivors(config, request)
        result = unmask_sum(
            config,
            io.read_bytes(self._msg(context, "collect")),
            request,
            self._read_present(context, "mask", survivors).values(),
            self._read_present(context, "reveal", survivors).values(),
        )
        return self._release(context, result)

    def _release(self, context: Context, result) -> dict[str, Any]:
        rows = io.write_batch(pd.DataFrame({"value": result.total}), self.destination)
        self.log.info("Released the sum of %s (dropped: %s) to %s", result.survivors, result.dropped, self.destination)
        out = {"output": self.destination, "rows": rows, "survivors": result.survivors, "dropped": result.dropped}
        if self.dp:
            ledger = PrivacyBudgetHook(self.dp.get("budget_conn_id", PrivacyBudgetHook.default_conn_name)).get_ledger()
            rid = self._release_id(context)
            ledger.mark_released(self.dp["dataset"], rid, self.destination)
            charge = ledger.get_release(self.dp["dataset"], rid)
            out["privacy"] = privacy_summary(self.dp["dataset"], rid, charge.epsilon, charge.delta,
                                             ledger.status(self.dp["dataset"]))
            context["ti"].xcom_push(key="privacy_budget", value=out["privacy"])
        return out

    def _release_id(self, context: Context) -> str:
        return self._round_id(context)

    def _charge(self, context: Context) -> None:
        noise = self._noise()
        if noise is None:
            return
        ledger = PrivacyBudgetHook(self.dp.get("budget_conn_id", PrivacyBudgetHook.default_conn_name)).get_ledger()
        try:
            if self.dp.get("budget_cap"):
                ledger.ensure_budget(self.dp["dataset"], epsilon=self.dp["budget_cap"][0], delta=self.dp["budget_cap"][1],
                                     param="dp['budget_cap']")
            done = ledger.charge(self.dp["dataset"], release_id=self._release_id(context),
                                 cost=PrivacyCost(noise.epsilon, noise.delta, [noise.event()]),
                                 output=self.destination, **charge_identity(context))
        except (PrivacyError, KeyError) as exc:
            raise AirflowFailException(str(exc)) from exc
        announce_alerts(self, context, done, ledger)
        self.log.info("Distributed DP: each site adds discrete Gaussian noise sigma=%.4g (fixed-point units); "
                      "charged epsilon=%.4g delta=%.3g to %r%s", math.sqrt(float(noise.share_sigma2)), noise.epsilon,
                      noise.delta, self.dp["dataset"], " (retry: already charged)" if done.replayed else "")


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


def _seconds(name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
        raise InvalidParameterError(name, value, "expected a positive number of seconds or a timedelta")
    return float(seconds)


def _check_dp(dp: dict[str, Any] | None, length: int | None) -> dict[str, Any] | None:
    if dp is None:
        return None
    required = {"epsilon", "delta", "l2_sensitivity", "dataset"}
    optional = {"budget_conn_id", "budget_cap"}
    if not isinstance(dp, dict) or not required <= set(dp) or set(dp) - required - optional:
        raise InvalidParameterError("dp", dp, f"expected keys {sorted(required)} (+ optional {sorted(optional)})")
    if length is None:
        raise InvalidParameterError("length", length, "distributed DP needs the declared vector length")
    return dict(dp)


def read_vector(source: str) -> np.ndarray:
    """A site's vector: every numeric column of the Parquet/CSV batch, row-major."""
    df = io.read_batch(source)
    numeric = df.select_dtypes("number")
    if numeric.empty:
        raise PrivacyError(f"{source} has no numeric column to sum")
    return numeric.to_numpy(dtype=float).ravel()


def _pack_bundles(bundles: dict[str, bytes]) -> bytes:
    import json

    return json.dumps({site: b.hex() for site, b in sorted(bundles.items())}).encode()


def _bundle_for(packed: bytes, site: str) -> bytes | None:
    import json

    hexed = json.loads(packed).get(site)
    return None if hexed is None else bytes.fromhex(hexed)


def secure_sum_group(
    group_id: str,
    *,
    sites: Sequence[str],
    source: str,
    destination: str,
    bounds: tuple[float, float],
    shared_storage: str,
    site_storage: str,
    threshold: int | None = None,
    frac_bits: int = 20,
    key_conn_id_template: str = "privacy_keys_{site}",
    length: int | None = None,
    dp: dict[str, Any] | None = None,
    protocol: str = "masking",
    keyholder: str = "keyholder",
    keyholder_storage: str | None = None,
    config_factory: Callable[[str], SecureSumConfig] | None = None,
    vector_reader: Callable[..., tuple[np.ndarray, np.ndarray | None]] | None = None,
    wait_for_sites: float | timedelta | None = None,
) -> TaskGroup:
    """One secure-sum round as a task group: write one line in a DAG.

    :param group_id: task group id (also names the round).
    :param sites: the cohort (>= 3); each site's tasks run on ``queue=<site>``.
    :param source: URI template of each site's local vector; ``{site}`` is replaced.
    :param destination: URI of the released sum.
    :param bounds: clipping bounds of every coordinate.
    :param shared_storage: URI prefix for protocol messages.
    :param site_storage: URI template of each site's private storage; ``{site}`` replaced.
    :param threshold: survivors needed (default majority).
    :param frac_bits: fixed-point precision.
    :param key_conn_id_template: each site's key ring connection.
    :param length: declared vector length (checked by every party; required with ``dp``).
    :param dp: distributed differential privacy (Kairouz-Liu-Steinke 2021): ``{"epsilon",
        "delta", "l2_sensitivity", "dataset"[, "budget_conn_id"]}``. The cost is charged to the
        dataset's budget before any site masks; each site adds a discrete Gaussian share
        calibrated for ``threshold`` survivors, so only the noisy sum is ever in the clear.
    :param wait_for_sites: passed to every aggregator step (:class:`SecureSumOperator`): how
        long it waits, deferred in the triggerer, for site messages missing when it starts --
        for sites whose tasks run outside this DAG; ``None``: the site tasks here are upstream.
    """
    if protocol not in PROTOCOLS:
        raise InvalidParameterError("protocol", protocol, f"expected one of {PROTOCOLS}")
    with TaskGroup(group_id=group_id) as group:
        # The round is named by the group's full id, so nested groups (one per federated
        # round) never share protocol messages or masks.
        common = dict(sites=list(sites), bounds=tuple(bounds), threshold=threshold, frac_bits=frac_bits,
                      shared_storage=shared_storage, round_name=group.group_id, length=length, dp=dp,
                      config_factory=config_factory)

        def site_task(step: str, site: str) -> SecureShareOperator:
            return SecureShareOperator(
                task_id=f"{step}_{site}", step=step, site=site, queue=site,
                source=source if step in ("mask", "encrypt") else None,
                site_storage=site_storage.replace("{site}", site),
                key_conn_id=key_conn_id_template.replace("{site}", site),
                vector_reader=vector_reader if step == "mask" else None, **common,
            )

        if protocol == "paillier":
            if not keyholder_storage:
                raise InvalidParameterError("keyholder_storage", keyholder_storage, "the paillier protocol needs it")
            keygen = PaillierKeyHolderOperator(task_id="keygen", step="keygen", queue=keyholder,
                                               keyholder_storage=keyholder_storage,
                                               key_conn_id=key_conn_id_template.replace("{site}", keyholder), **common)
            charge = SecureSumOperator(task_id="charge", step="charge", trigger_rule="all_success", **common)
            encrypts = [site_task("encrypt", site) for site in sites]
            add = SecureSumOperator(task_id="add", step="add", wait_for_sites=wait_for_sites, **common)
            decrypt = PaillierKeyHolderOperator(task_id="decrypt", step="decrypt", queue=keyholder,
                                                destination=destination, keyholder_storage=keyholder_storage,
                                                key_conn_id=key_conn_id_template.replace("{site}", keyholder),
                                                **common)
            keygen >> charge >> encrypts >> add >> decrypt
            return group
        previous = None
        for site_step, agg_step in zip(SITE_STEPS, AGGREGATOR_STEPS, strict=True):
            site_tasks = [site_task(site_step, site) for site in sites]
            aggregate = SecureSumOperator(
                task_id=agg_step, step=agg_step,
                destination=destination if agg_step == "unmask" else None, wait_for_sites=wait_for_sites, **common,
            )
            if previous is not None:
                previous >> site_tasks
            site_tasks >> aggregate
            previous = aggregate
    return group
