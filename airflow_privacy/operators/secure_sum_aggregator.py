"""The aggregator's task of a secure-sum round (:mod:`.secure_sum`): ``SecureSumOperator``,
which holds no secrets, waits (deferred) for missing site messages, charges the distributed-DP
cost and releases the sum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.dp.accounting import PrivacyCost
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    collect_keys,
    paillier_add,
    request_survivors,
    request_unmask,
    route_shares,
    unmask_sum,
)
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.operators._release import announce_alerts, charge_identity, privacy_summary
from airflow_privacy.operators.links import PrivacyBudgetLink
from airflow_privacy.operators.secure_sum_round import (
    _SITE_MESSAGES,
    AGGREGATOR_STEPS,
    PAILLIER_AGGREGATOR_STEPS,
    _pack_bundles,
    _RoundMixin,
    _seconds,
)
from airflow_privacy.triggers.site_messages import SiteMessagesTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


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
