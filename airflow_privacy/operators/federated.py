"""Federated learning rounds as Airflow tasks (DESIGN §9).

``federated_round_group(...)`` wires, per DAG run, an ``init`` task (create or validate the
global checkpoint) and ``rounds_per_run`` rounds of:

* ``charge`` (site-level DP only) -- :class:`FederatedRoundOperator`: charges the round's
  cost to ``dataset`` before any site draws its noise share or masks; over the cap the round
  stops here and releases nothing;
* ``train_<site>`` -- :class:`FederatedClientOperator` on the site's queue: loads the global
  checkpoint, trains on the site's own batch, keeps its update in site storage (encrypted
  under the site's key ring; a retry resubmits the same update), plans and charges
  record-level DP against the site's own ledger dataset, writes its training diagnostics
  to its own storage and publishes only a report (site, round, config hash, spent epsilon);
* ``secure_sum`` -- the masking secure sum of the sites' ``[weight * delta, weight]`` (site-
  level DP noise shares added before masking), see :mod:`.secure_sum`;
* ``aggregate`` -- :class:`FederatedRoundOperator`: applies the server optimizer to the sum,
  evaluates, writes the next checkpoint (and a PNG of the metrics) atomically and returns
  ``{"checkpoint", "round", "metrics", "privacy"}``.

Shared storage, XCom, the ledger and the task logs therefore hold checkpoints, masked
updates, reports, public-plan privacy events and aggregate metrics -- never a site's rows,
unmasked update, row count, loss or norm. Task logs count as shared: Airflow serves them to
every user of its UI. Under record-level DP the published epsilon and the ledger events do
not depend on a site's row count either (DP-SGD is planned from the declared ``max_rows``,
see :class:`~airflow_privacy.core.federated.RecordDP`).

The parse-time checks and cached setup of the training parameters are in
:mod:`.federated_setup`; the ledger charges and privacy summaries of both operators in
:mod:`.federated_accounting`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, TaskGroup
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core import io
from airflow_privacy.core.crypto import decrypt_bytes, encrypt_bytes
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.hooks.budget import PrivacyBudgetHook
from airflow_privacy.hooks.keys import PrivacyKeyHook
from airflow_privacy.operators.federated_accounting import _ClientAccounting, _RoundAccounting
from airflow_privacy.operators.federated_setup import _secure_config_factory, check_training, setup
from airflow_privacy.operators.links import PrivacyBudgetLink
from airflow_privacy.operators.secure_sum import secure_sum_group

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "ROUND_STEPS",
    "FederatedClientOperator",
    "FederatedRoundOperator",
    "check_training",
    "federated_round_group",
    "setup",
]

ROUND_STEPS = ("init", "charge", "aggregate")


class FederatedClientOperator(_ClientAccounting, BaseOperator):
    """One site's local training for one round; runs on the site's queue.

    :param site: this site.
    :param sites: the cohort.
    :param source: URI template of the site's batch (``{site}`` replaced), templated.
    :param training: ``simulate()``-style parameters: features, label, ranges, categories,
        model, local_epochs, batch_size, lr, strategy, dp, rounds (the planned total), ...
    :param checkpoint_dir: shared URI prefix of the global checkpoints.
    :param shared_storage: shared URI prefix for the round's reports and messages.
    :param site_storage: the site's private URI prefix (its encrypted update).
    :param dataset: privacy budget scope; record-level DP charges ``<dataset>_<site>``.
    :param key_conn_id: the site's key ring connection (default ``privacy_keys_<site>``).

    Returns (and writes to shared storage) only ``update.report()``: site, round, config
    hash and, under record-level DP, the site's spent ``(epsilon, delta)``. Its training
    diagnostics (rows, loss, update norm, clipping: statistics of its rows, not DP) go to
    ``<site_storage>/federated/<round>/<digest>/diagnostics.json`` in the site's own
    storage; the task log, which every Airflow UI user can read, names only that file.
    """

    template_fields: Sequence[str] = ("source",)
    ui_color = "#f5d5d5"
    operator_extra_links = (PrivacyBudgetLink(),)

    def __init__(self, *, site: str, sites: Sequence[str], source: str, training: Mapping[str, Any],
                 checkpoint_dir: str, shared_storage: str, site_storage: str, round_name: str = "round",
                 dataset: str = "patients", key_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if site not in sites:
            raise InvalidParameterError("site", site, f"expected one of {sorted(sites)}")
        self.site = site
        self.source = source.replace("{site}", site)
        self.site_storage = site_storage.replace("{site}", site)
        self.key_conn_id = key_conn_id or f"privacy_keys_{site}"
        self._init_federated(sites, training, checkpoint_dir, shared_storage, round_name, dataset)

    def _site_round_dir(self, context: Context) -> str:
        return f"{self.site_storage.rstrip('/')}/federated/{self.round_name}/{self._digest(context)}"

    def update_path(self, context: Context) -> str:
        return f"{self._site_round_dir(context)}/update.enc"

    def diagnostics_path(self, context: Context) -> str:
        return f"{self._site_round_dir(context)}/diagnostics.json"

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_privacy.core.federated import ClientUpdate, client_update

        spec, config = setup(self.training)
        path, aad = self.update_path(context), f"{self._round_id(context)}|{self.site}|update"
        try:  # an empty or malformed key ring, or a tampered saved update: fail without retry
            ring = PrivacyKeyHook(self.key_conn_id).get_keyring()
            saved = decrypt_bytes(io.read_bytes(path), ring, associated_data=aad) if io.exists(path) else None
        except PrivacyError as exc:
            raise AirflowFailException(f"site {self.site}: {exc}") from exc
        if saved is not None:  # a retry resubmits the update it already made (same masks, same input)
            update = ClientUpdate.from_bytes(saved)
            self.log.info("Site %s resubmits its update of round %d", self.site, update.round)
        else:
            df = io.read_batch(self.source)
            self.log.info("Site %s trains on %s", self.site, self.source)
            try:
                prior = self._prior_events(context, config)
                update = client_update(self.latest, df, spec, config, site=self.site, prior_events=prior)
                self._charge_record_level(context, update)
            except PrivacyError as exc:
                raise AirflowFailException(f"site {self.site}: {exc}") from exc
            io.write_bytes(encrypt_bytes(update.to_bytes(), ring, associated_data=aad), path)
        # Statistics of the site's rows (not DP): its own storage, never the task log.
        io.write_bytes(json.dumps(update.metrics, default=float).encode(), self.diagnostics_path(context))
        self.log.info("Site %s, update for round %d: training diagnostics (site-private) in %s",
                      self.site, update.round + 1, self.diagnostics_path(context))
        report = update.report()
        io.write_bytes(json.dumps(report).encode(), self._report_path(context, self.site))
        return report

    @property
    def privacy_dataset(self) -> str | None:
        """The dataset this task charges (its *Privacy budget* link): record-level DP only."""
        return self.site_dataset if self._dp_level == "record" else None


class FederatedRoundOperator(_RoundAccounting, BaseOperator):
    """The aggregator of one round: server optimizer, DP accounting, evaluation, checkpoint.

    :param step: ``"init"`` (create the first checkpoint, or validate the existing one against
        the configuration), ``"charge"`` (site-level DP: check-and-charge the round's cost to
        ``dataset`` before any site draws noise or masks; idempotent on the round's release
        id) or ``"aggregate"``.
    :param sum_task_id: task id of the secure sum's ``unmask`` step (aggregate only).
    :param sum_destination: URI where that step wrote the summed vector.
    :param eval_source: URI of a held-out batch evaluated after the round (templated).
    (other parameters as :class:`FederatedClientOperator`)
    """

    template_fields: Sequence[str] = ("eval_source", "sum_destination")
    ui_color = "#f5d5d5"
    operator_extra_links = (PrivacyBudgetLink(),)

    @property
    def privacy_dataset(self) -> str | None:
        """The dataset this task charges (its *Privacy budget* link): site-level DP only
        (record-level DP is charged by each site's client task)."""
        return self.dataset if self._dp_level == "site" else None

    def __init__(self, *, step: str, sites: Sequence[str], training: Mapping[str, Any], checkpoint_dir: str,
                 shared_storage: str, round_name: str = "round", dataset: str = "patients",
                 sum_task_id: str | None = None, sum_destination: str | None = None,
                 eval_source: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if step not in ROUND_STEPS:
            raise InvalidParameterError("step", step, f"expected one of {ROUND_STEPS}")
        self.step = step
        self.sum_task_id = sum_task_id
        self.sum_destination = sum_destination
        self.eval_source = eval_source
        self._init_federated(sites, training, checkpoint_dir, shared_storage, round_name, dataset)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            if self.step == "charge":
                return self._charge(context)
            return self._init() if self.step == "init" else self._aggregate(context)
        except PrivacyError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _init(self) -> dict[str, Any]:
        from airflow_privacy.core.dp.noise import default_random_source
        from airflow_privacy.core.federated import init_checkpoint, load_checkpoint, save_checkpoint

        spec, config = setup(self.training)
        if io.exists(self.latest):
            ckpt = load_checkpoint(self.latest, spec=spec, config=config)  # config change -> error
            self.log.info("Resuming from %s at round %d", self.latest, ckpt.round)
        else:
            ckpt = init_checkpoint(spec, config, seed=default_random_source().getrandbits(63))
            save_checkpoint(ckpt, self.latest)
            self.log.info("Created the initial global model at %s", self.latest)
        return {"checkpoint": self.latest, "round": ckpt.round}

    def _aggregate(self, context: Context) -> dict[str, Any]:
        from airflow_privacy.core.federated import (
            SiteDP,
            load_checkpoint,
            privacy_spent,
            save_checkpoint,
            server_aggregate,
            split_total,
        )

        spec, config = setup(self.training)
        ckpt = load_checkpoint(self.latest, spec=spec, config=config)
        summed = context["ti"].xcom_pull(task_ids=self.sum_task_id)
        if not summed:
            raise AirflowFailException("the secure sum released nothing this round")
        reports = [json.loads(io.read_bytes(self._report_path(context, s))) for s in summed["survivors"]]
        base = {r["round"] for r in reports}
        if base != {ckpt.round}:
            if base == {ckpt.round - 1}:  # a retry after the checkpoint was written
                self.log.info("Round %d was already aggregated; returning it", ckpt.round)
                return self._result(context, ckpt, config)
            raise AirflowFailException(f"updates are for round(s) {sorted(base)}, the model is at {ckpt.round}")
        self._check_charged(context, config)
        total = io.read_batch(self.sum_destination)["value"].to_numpy()
        vector, weight = split_total(total)
        eval_df = io.read_batch(self.eval_source) if self.eval_source else None
        nxt = server_aggregate(ckpt, vector, weight, config, spec=spec, reports=reports, eval_data=eval_df,
                               extra_metrics={"bytes_up": int(total.size * 8 * len(reports))})
        round_uri = f"{self.checkpoint_dir.rstrip('/')}/round-{nxt.round:05d}.pt"
        save_checkpoint(nxt, round_uri)
        save_checkpoint(nxt, self.latest)
        if isinstance(config.dp, SiteDP):
            PrivacyBudgetHook().get_ledger().mark_released(self.dataset, self._round_id(context), round_uri)
        self._plot(nxt, privacy_spent(nxt, config))
        self.log.info("Round %d aggregated from %s: %s", nxt.round, summed["survivors"], nxt.history[-1])
        return self._result(context, nxt, config)

    def _plot(self, ckpt, spent) -> None:
        """Held-out accuracy, AUC and loss and epsilon per round as a PNG next to the checkpoint."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # the federated extra brings matplotlib; the plot is optional
            return
        hist = ckpt.history
        rounds = [h["round"] for h in hist]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in ("eval_accuracy", "eval_auc", "eval_loss"):
            if any(h.get(key) is not None for h in hist):
                ax.plot(rounds, [h.get(key) for h in hist], marker="o", label=key)
        if any(h.get("epsilon") is not None for h in hist):
            ax2 = ax.twinx()
            ax2.plot(rounds, [h.get("epsilon") for h in hist], color="black", linestyle="--", label="epsilon")
            ax2.set_ylabel("epsilon")
        ax.set_xlabel("round")
        if ax.get_lines():  # without an eval set only epsilon is plotted
            ax.legend(loc="lower left", fontsize=8)
        ax.set_title(f"federated training, round {ckpt.round}")
        import io as _io

        buf = _io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        io.write_bytes(buf.getvalue(), f"{self.checkpoint_dir.rstrip('/')}/metrics.png")


def _update_reader(clients: Mapping[str, FederatedClientOperator]):
    """vector_reader of the secure sum's mask step: the site's own saved update."""

    def read(op, context: Context, ring):
        from airflow_privacy.core.federated import ClientUpdate

        client = clients[op.site]
        aad = f"{client._round_id(context)}|{op.site}|update"
        blob = decrypt_bytes(io.read_bytes(client.update_path(context)), ring, associated_data=aad)
        return ClientUpdate.from_bytes(blob).secure_input()

    return read


def federated_round_group(
    group_id: str,
    *,
    sites: Sequence[str],
    source: str,
    training: Mapping[str, Any],
    checkpoint_dir: str,
    shared_storage: str,
    site_storage: str,
    rounds_per_run: int = 1,
    eval_source: str | None = None,
    dataset: str = "patients",
    wait_for_sites: float | timedelta | None = None,
) -> TaskGroup:
    """``rounds_per_run`` federated rounds (plus the ``init`` task) as one task group.

    :param sites: the cohort (>= 3); site tasks run on ``queue=<site>``.
    :param source: URI template of each site's batch (``{site}`` replaced), templated.
    :param training: ``simulate()``-style parameters (features, label, ranges, categories,
        model, rounds = planned total, local_epochs, batch_size, lr, strategy, dp, ...),
        validated here, at parse time (:func:`check_training`). Robust aggregators are
        rejected: they need single updates, which secure sum never reveals.
    :param checkpoint_dir: shared URI prefix of the checkpoints (persist across runs).
    :param shared_storage: shared URI prefix of protocol messages and reports.
    :param site_storage: URI template of each site's private storage.
    :param rounds_per_run: rounds trained per DAG run.
    :param eval_source: held-out batch the aggregator evaluates after every round.
    :param dataset: privacy budget scope (record-level DP: ``<dataset>_<site>`` per site,
        charged by each site's task; site-level DP: ``<dataset>``, charged by each round's
        ``charge`` task before any site trains or masks).
    :param wait_for_sites: how long each round's secure-sum aggregator steps wait, deferred
        (no worker slot), for site messages missing when they start (see :func:`secure_sum_group`).
    :raises InvalidParameterError: a training parameter, the cohort or ``rounds_per_run``
        is invalid (the message names it, its value and what is accepted).
    """
    if not isinstance(rounds_per_run, int) or rounds_per_run < 1:
        raise InvalidParameterError("rounds_per_run", rounds_per_run, "expected an int >= 1")
    sites = sorted(sites)
    training = check_training(training, len(sites))
    _, config = setup(training)
    if rounds_per_run > config.rounds:
        raise InvalidParameterError("rounds_per_run", rounds_per_run, f"expected <= training rounds={config.rounds}")
    site_level = config.dp is not None and config.dp.level == "site"
    common = dict(sites=sites, training=training, checkpoint_dir=checkpoint_dir, shared_storage=shared_storage,
                  dataset=dataset)
    with TaskGroup(group_id=group_id) as group:
        previous = FederatedRoundOperator(task_id="init", step="init", round_name=f"{group_id}.init", **common)
        for r in range(1, rounds_per_run + 1):
            name = f"{group_id}.round_{r}"
            with TaskGroup(group_id=f"round_{r}"):
                clients = {
                    site: FederatedClientOperator(task_id=f"train_{site}", site=site, source=source, queue=site,
                                                  site_storage=site_storage, round_name=name, **common)
                    for site in sites
                }
                sum_dest = f"{shared_storage.rstrip('/')}/{name}/sum-{{{{ run_id | replace(':', '_') }}}}.parquet"

                ss = secure_sum_group(
                    "secure_sum", sites=sites, source=None, destination=sum_dest, bounds=(-1, 1),
                    shared_storage=shared_storage, site_storage=site_storage,
                    config_factory=_secure_config_factory(training, sites), vector_reader=_update_reader(clients),
                    wait_for_sites=wait_for_sites,
                )
                for site, client in clients.items():
                    client >> ss.children[f"{group_id}.round_{r}.secure_sum.mask_{site}"]
                aggregate = FederatedRoundOperator(
                    task_id="aggregate", step="aggregate", round_name=name, eval_source=eval_source,
                    sum_task_id=f"{group_id}.round_{r}.secure_sum.unmask", sum_destination=sum_dest, **common)
                ss >> aggregate
                if site_level:  # charged before any site draws its noise share (in training) or masks
                    charge = FederatedRoundOperator(task_id="charge", step="charge", round_name=name, **common)
                    previous >> charge >> list(clients.values())
                else:
                    previous >> list(clients.values())
                previous >> ss
            previous = aggregate
    return group
