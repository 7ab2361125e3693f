"""Information loss of a k-anonymous release (NCP, discernibility) against hand-computed
values, the warn-or-fail policy, and a maximum generalization level per quasi-identifier
(issue 18 §4: with k = 50 every quasi-identifier became "*" and the run still succeeded)."""

from __future__ import annotations

import datetime as dt
import warnings

import pandas as pd
import pytest

from airflow_privacy.core.crypto import KeyRing
from airflow_privacy.core.deid import (
    InformationLossError,
    InformationLossWarning,
    check_request,
    deidentify,
)
from airflow_privacy.core.errors import InvalidParameterError, PrivacyError
from airflow_privacy.demo.data import generate_batch

QIS = ["age", "zip", "sex"]
RULES = {"name": "drop", "email": {"hash": {}}, "patient_id": {"tokenize": {}}, "ssn": "redact",
         "phone": "redact", "birth_date": "drop", "note": "drop", "visit_date": "drop",
         "zip": {"generalize": {"prefix": 3}}, "age": {"bucket": {"width": 10}}}


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    """The demo batch where k = 50 turns every quasi-identifier into "*"."""
    return generate_batch("site_b", dt.date(2026, 9, 1))


def _k(k: int, **extra) -> dict:
    return {"quasi_identifiers": QIS, "k": k, "entity": "patient_id", "max_suppression": 0.05, **extra}


def test_ncp_and_discernibility_by_hand():
    df = pd.DataFrame({"age": [10, 15, 30, 35], "sex": ["F", "M", "F", "M"]})
    # ages in buckets of 20: classes {10, 15} and {30, 35}; span 5 of the range 25 each
    _, report = deidentify(df, {"age": {"bucket": {"width": 20}}}, unlisted="drop",
                           k_anonymity={"quasi_identifiers": ["age"], "k": 2})
    loss = report["information_loss"]
    assert loss["ncp_by_column"] == {"age": pytest.approx(5 / 25)} and loss["ncp"] == pytest.approx(0.2)
    assert loss["discernibility"] == 2**2 + 2**2 and loss["discernibility_normalized"] == pytest.approx(8 / 16)
    assert loss["exceeded"] is False and loss["policy"] == {"max_ncp": 0.5, "max_discernibility": None,
                                                            "on_exceed": "warn"}

    # 4 distinct ages per class: sex must become "*", each row's value stands for both values
    # (u/|A| = 2/2); the sensitive column is no quasi-identifier and not counted
    with pytest.warns(InformationLossWarning, match=r"NCP 1.000 > information_loss.max_ncp=0.4"):
        _, report = deidentify(df, {"age": "keep", "sex": "keep"}, information_loss={"max_ncp": 0.4},
                               k_anonymity={"quasi_identifiers": ["sex"], "k": 2, "max_suppression": 0.0},
                               l_diversity={"sensitive": "age", "l": 4})
    assert report["information_loss"]["ncp_by_column"] == {"sex": 1.0}

    # one row suppressed of 5 (k=2 over ages 10, 11, 30, 31 and an outlier 99; 25 % allowed)
    df = pd.DataFrame({"age": [10, 11, 30, 31, 99]})
    _, report = deidentify(df, {"age": "keep"}, k_anonymity={"quasi_identifiers": ["age"], "k": 2,
                                                              "max_suppression": 0.25,
                                                              "max_generalization": {"age": 1}})
    loss = report["information_loss"]
    assert report["suppressed"] == 1
    # level 1 = buckets of the nice width 5 ({10, 11}, {30, 31}): spans 1/89 each, the
    # suppressed row costs 1
    assert loss["ncp"] == pytest.approx((4 * 1 / 89 + 1) / 5, abs=1e-6)  # the report rounds to 6 places
    assert loss["discernibility"] == 2**2 + 2**2 + 1 * 5


def test_k50_turns_every_qi_to_star_and_warns_by_default(batch):
    ring = KeyRing.generate()
    with pytest.warns(InformationLossWarning) as caught:
        out, report = deidentify(batch, RULES, keyring=ring, k_anonymity=_k(50))
    levels = report["k_anonymity"]["levels"]
    print({c: v["description"] for c, v in levels.items()}, report["information_loss"])
    # one value per quasi-identifier ("*", or a bucket/prefix spanning them all): one class
    assert all(out[q].nunique() == 1 for q in QIS) and levels["sex"]["description"] == "*"
    loss = report["information_loss"]
    assert loss["ncp"] == 1.0 and loss["exceeded"] is True and loss["discernibility_normalized"] == 1.0
    (message,) = [str(w.message) for w in caught if w.category is InformationLossWarning]
    assert "NCP 1.000 > information_loss.max_ncp=0.5" in message and "sex -> '*'" in message

    # k = 5 keeps most of the information: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", InformationLossWarning)
        _, report = deidentify(batch, RULES, keyring=ring, k_anonymity=_k(5))
    assert report["information_loss"]["ncp"] < 0.5 and report["information_loss"]["exceeded"] is False


def test_the_policy_can_fail_the_release(batch):
    with pytest.raises(InformationLossError, match=r"lost too much information: NCP 1.000 > "
                                                   r"information_loss.max_ncp=0.8.*sex -> '\*'"):
        deidentify(batch, RULES, keyring=KeyRing.generate(), k_anonymity=_k(50),
                   information_loss={"max_ncp": 0.8, "on_exceed": "fail"})
    with pytest.raises(InformationLossError, match=r"normalized discernibility 1.000 > "
                                                   r"information_loss.max_discernibility=0.5"):
        deidentify(batch, RULES, keyring=KeyRing.generate(), k_anonymity=_k(50),
                   information_loss={"max_ncp": None, "max_discernibility": 0.5, "on_exceed": "fail"})


def test_max_generalization_caps_the_ladder(batch):
    ring = KeyRing.generate()
    # k = 5 climbs age to buckets of 20 on this batch; capped at level 0 (the rule's buckets
    # of 10) the search generalizes the others instead, or fails saying why
    _, free = deidentify(batch, RULES, keyring=ring, k_anonymity=_k(5))
    assert free["k_anonymity"]["levels"]["age"]["level"] == 1
    _, capped = deidentify(batch, RULES, keyring=ring, k_anonymity=_k(5, max_generalization={"age": 0}))
    levels = capped["k_anonymity"]["levels"]
    assert levels["age"] == {"level": 0, "description": "bucket width 10", "max_level": 0}
    assert capped["k_achieved"] >= 5

    # k = 50 cannot hold while ages stay out of "*" (level 3 = buckets of 80)
    with pytest.raises(PrivacyError, match=r"generalized as far as max_generalization allows \(\{'age': 3\}"):
        deidentify(batch, RULES, keyring=ring, k_anonymity=_k(50, max_generalization={"age": 3}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k_anonymity": _k(5, max_generalization={"height": 1})},
     "invalid k_anonymity.max_generalization='height': not one of the quasi-identifiers"),
    ({"k_anonymity": _k(5, max_generalization={"age": -1})},
     "invalid k_anonymity.max_generalization['age']=-1: expected an integer level >= 0"),
    ({"k_anonymity": _k(5), "l_diversity": {"sensitive": "diagnosis", "l": 2, "max_generalization": {"age": 1}}},
     "invalid l_diversity.max_generalization={'age': 1}: set max_generalization in k_anonymity"),
    ({"k_anonymity": _k(5), "information_loss": {"max_ncp": 1.5}},
     "invalid information_loss.max_ncp=1.5: expected a fraction in [0, 1] or None"),
    ({"k_anonymity": _k(5), "information_loss": {"on_exceed": "raise"}},
     "invalid information_loss.on_exceed='raise': expected one of ['warn', 'fail']"),
    ({"k_anonymity": _k(5), "information_loss": {"max_nc": 0.3}},
     "invalid information_loss.max_nc=0.3: unknown key"),
    ({"information_loss": {"max_ncp": 0.3}},
     "only meaningful with k_anonymity or l_diversity"),
])
def test_bad_parameters_are_refused_without_data(kwargs, message):
    with pytest.raises(InvalidParameterError) as err:
        check_request(RULES, **kwargs)
    assert message in str(err.value)
