"""Privacy-ledger side of the federated operators (see :mod:`.federated`).

``_ClientAccounting``: a site's record-level DP -- its ledger dataset, the earlier events
DP-SGD plans against, the charge of its update. ``_RoundAccounting``: the site-level round
charge, the fail-closed check that a round was charged, and the round's result with its
privacy summary (the ledger's figures) pushed to XCom.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.dp.accounting import PrivacyCost
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.operators._release import announce_alerts, charge_identity, privacy_summary
from airflow_privacy.operators.federated_setup import _dimension, _FederatedMixin, _setup, setup

if TYPE_CHECKING:
    from airflow.sdk import Context


class _ClientAccounting(_FederatedMixin):
    @property
    def site_dataset(self) -> str:
        return f"{self.dataset}_{self.site}"

    def _release_id(self, context: Context) -> str:
        return f"{self._round_id(context)}/{self.site}"

    def _prior_events(self, context: Context, config) -> list[dict[str, Any]] | None:
        """Record-level DP: every earlier event of the site's ledger dataset (rounds that were
        charged but never aggregated included) -- the ledger is the source of truth."""
        from airflow_privacy.core.federated import RecordDP
        from airflow_privacy.core.federated.accounting import EVENT_KINDS

        dp = config.dp
        if not isinstance(dp, RecordDP):
            return None
        ledger = PrivacyBudgetHook().get_ledger()
        if dp.epsilon is not None:  # the training's target is the site's cap
            # One patient is in one site: the site's dataset is a disjoint partition of the
            # DAG's population (`dataset`) when that has a cap, so each patient's worst case
            # there composes the population's releases with their own site's training.
            parent = self.dataset if self.dataset in {s.dataset for s in ledger.datasets()} else None
            ledger.ensure_budget(self.site_dataset, epsilon=dp.epsilon, delta=dp.delta, parent=parent,
                                 param="training['dp'] epsilon/delta")
        rid = self._release_id(context)
        events = [dict(e) for c in ledger.history(self.site_dataset) if c.release_id != rid for e in c.events]
        foreign = sorted({str(e.get("kind")) for e in events} - set(EVENT_KINDS))
        if foreign:
            raise InvalidParameterError(
                "dataset", self.site_dataset,
                f"it also holds releases of kind(s) {foreign}; DP-SGD plans its noise over "
                f"{list(EVENT_KINDS)} events only: give record-level training a dataset of its own",
            )
        return events

    def _charge_record_level(self, context: Context, update) -> None:
        from airflow_privacy.core.federated import RecordDP

        if not isinstance(setup(self.training)[1].dp, RecordDP) or not update.events:
            return
        ledger = PrivacyBudgetHook().get_ledger()
        try:
            done = ledger.charge(self.site_dataset, release_id=self._release_id(context),
                                 cost=PrivacyCost(0.0, 0.0, [dict(e) for e in update.events]),
                                 **charge_identity(context))
        except KeyError as exc:
            raise AirflowFailException(f"{exc.args[0]}: record-level DP needs a cap on {self.site_dataset!r}") from exc
        announce_alerts(self, context, done, ledger)


class _RoundAccounting(_FederatedMixin):
    def _charge(self, context: Context) -> dict[str, Any]:
        """Site-level DP: charge the round before any site draws its noise share or masks.

        The cost is :func:`~airflow_privacy.core.federated.distributed_dp.charged_round_event`
        (the worst admissible number of survivors: they are not known yet). Check-and-charge
        is one ledger transaction, idempotent on the round's release id (a retry spends
        nothing); over the cap it raises and the clients -- downstream -- never run, so no
        noise is drawn and no sum or checkpoint is written.
        """
        from airflow_privacy.core.federated import SiteDP, compose_federated_epsilon
        from airflow_privacy.core.federated.distributed_dp import charged_round_event

        training_json = json.dumps(self.training, sort_keys=True, default=list)
        _, config = _setup(training_json)
        if not isinstance(config.dp, SiteDP):
            raise InvalidParameterError("step", self.step, "the charge step is for site-level DP")
        event = charged_round_event(config, _dimension(training_json), len(self.sites))
        cost = PrivacyCost(0.0, 0.0, [event])  # zCDP: the ledger composes it at the cap's delta
        rid = self._round_id(context)
        ledger = PrivacyBudgetHook().get_ledger()
        try:
            done = ledger.charge(self.dataset, release_id=rid, cost=cost, **charge_identity(context))
        except KeyError as exc:
            raise AirflowFailException(f"{exc.args[0]}: site-level DP needs a cap on {self.dataset!r}") from exc
        announce_alerts(self, context, done, ledger)
        if done.replayed and done.events != cost.events:
            raise PrivacyError(f"round {rid} was charged with different parameters; refusing to train it")
        privacy = privacy_summary(self.dataset, rid, done.epsilon, done.delta, ledger.status(self.dataset))
        context["ti"].xcom_push(key="privacy_budget", value=privacy)
        self.log.info("Charged site-level DP of this round (%d-%d survivors, worst case rho=%.4g: epsilon=%.4g "
                      "alone at delta=%g); %r has spent %.4g of %.4g%s", config.cohort_minimum(len(self.sites)),
                      len(self.sites), event["rho"], compose_federated_epsilon([event], config.dp.delta),
                      config.dp.delta, self.dataset, privacy["spent_epsilon"], privacy["cap_epsilon"],
                      " (retry: already charged)" if done.replayed else "")
        return {"privacy": privacy}

    def _check_charged(self, context: Context, config) -> None:
        """Fail closed: a site-level round is applied only if the charge step charged it."""
        from airflow_privacy.core.federated import SiteDP

        if isinstance(config.dp, SiteDP) and PrivacyBudgetHook().get_ledger().get_release(
                self.dataset, self._round_id(context)) is None:
            raise AirflowFailException(f"round {self._round_id(context)} was not charged to {self.dataset!r}; "
                                       "nothing is applied")

    def _result(self, context: Context, ckpt, config) -> dict[str, Any]:
        from airflow_privacy.core.federated import privacy_spent

        spent = privacy_spent(ckpt, config)
        metrics = dict(ckpt.history[-1]) if ckpt.history else {}
        privacy = None
        if spent.get("level"):
            # Every figure of the XCom is the ledger's, under the dataset's own accountant (PLD by
            # default): ``epsilon`` is the training's composed spend (the dataset's own events).
            # The checkpoint's history is planned under ``dp.accountant`` (RDP by default, a
            # looser bound of the same events) and is not mixed in here.
            ledger = PrivacyBudgetHook().get_ledger()
            if spent["level"] == "site":
                status = ledger.status(self.dataset)
                privacy = privacy_summary(self.dataset, self._round_id(context), status.own_epsilon,
                                          spent["delta"], status)
            else:  # record level: one budget per site; XCom shows the most-spent site
                statuses = {s: ledger.status(f"{self.dataset}_{s}") for s in (spent.get("per_site") or {})}
                worst = max(statuses, key=lambda s: statuses[s].spent_epsilon)
                privacy = privacy_summary(f"{self.dataset}_{worst}", self._round_id(context),
                                          statuses[worst].own_epsilon, spent["delta"], statuses[worst])
                privacy["per_site"] = {s: round(st.spent_epsilon, 6) for s, st in statuses.items()}
            privacy["level"] = spent["level"]
            context["ti"].xcom_push(key="privacy_budget", value=privacy)
        return {"checkpoint": self.latest, "round": ckpt.round, "metrics": metrics, "privacy": privacy}
