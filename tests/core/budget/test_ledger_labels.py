"""Event labels (``accounting.LABEL``: what a noise event noised, for the dashboard's error bars)
are metadata: they change neither what a release spends nor whether a retry replays it."""

from __future__ import annotations

import json

from airflow_privacy.core.budget import PrivacyLedger
from airflow_privacy.core.dp import PrivacyCost
from airflow_privacy.core.dp.accounting import LABEL, compose_epsilon

EVENTS = [{"kind": "discrete_laplace", "parameter": 0.25, "sensitivity": 2},
          {"kind": "discrete_laplace", "parameter": 0.25, "sensitivity": 2}]
LABELLED = [{**ev, LABEL: json.dumps({"query": q})} for ev, q in zip(EVENTS, ("rows", "units"), strict=True)]


def test_labels_do_not_change_the_composition():
    for accountant in ("pld", "rdp", "basic"):
        assert compose_epsilon(LABELLED, 1e-6, accountant) == compose_epsilon(EVENTS, 1e-6, accountant)


def test_a_retry_with_labelled_events_replays_a_charge_made_without_them(tmp_path):
    """A task charged by a package that did not label its events, retried after an upgrade that
    does: the same mechanisms, so the stored charge is returned and nothing more is spent."""
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/l.db")
    ledger.set_budget("d", epsilon=10.0)
    first = ledger.charge("d", release_id="dag/r/t/-1", cost=PrivacyCost(0.0, 0.0, EVENTS))
    again = ledger.charge("d", release_id="dag/r/t/-1", cost=PrivacyCost(0.0, 0.0, LABELLED))
    assert again.replayed and again.epsilon == first.epsilon and ledger.status("d").releases == 1
