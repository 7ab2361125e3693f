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

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
from airflow.sdk import TaskGroup

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.secure_sum import SecureSumConfig
from airflow_privacy.operators.secure_sum_aggregator import SecureSumOperator
from airflow_privacy.operators.secure_sum_keyholder import PaillierKeyHolderOperator
from airflow_privacy.operators.secure_sum_round import (
    AGGREGATOR_STEPS,
    KEYHOLDER_STEPS,
    PAILLIER_AGGREGATOR_STEPS,
    PAILLIER_SITE_STEPS,
    PROTOCOLS,
    SITE_STEPS,
    read_vector,
)
from airflow_privacy.operators.secure_sum_site import SecureShareOperator

__all__ = [
    "AGGREGATOR_STEPS",
    "KEYHOLDER_STEPS",
    "PAILLIER_AGGREGATOR_STEPS",
    "PAILLIER_SITE_STEPS",
    "PROTOCOLS",
    "SITE_STEPS",
    "PaillierKeyHolderOperator",
    "SecureShareOperator",
    "SecureSumOperator",
    "read_vector",
    "secure_sum_group",
]


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
