"""Free-text PII scrubbing: a corpus with planted PII and look-alikes that must survive."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.deid import ENTITIES, scrub_pii
from airflow_privacy.core.errors import InvalidParameterError

PLANTED: dict[str, list[str]] = {
    "EMAIL": [
        "jane.doe@example.com",
        "o'brien+tag@sub.example.co.uk",
        "josé.núñez@exämple.com",
        "UPPER_CASE@EXAMPLE.ORG",
        "a1@b2.io",
    ],
    "PHONE": [
        "(518) 916-3293",
        "518-916-3293",
        "518.916.3293",
        "+1 518 916 3293",
        "1-800-555-0199",
        "5189163293",
        "(212)555-0143",
        "+15189163293",
        "(518)-916-3293",
        "5189163293x12",
        "518-916-3293 ext. 4",
    ],
    "SSN": [
        "425-16-3144",
        "123 45 6789",
        "665-01-0001",
        "001-01-0001",
        "SSN-123-45-6789",
        "SSN 425163144",
        "ssn: 123456789",
    ],
    "CREDIT_CARD": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        "3782 822463 10005",
        "6011 1111 1111 1117",
        "3056 9309 0259 04",
        "4111.1111.1111.1111",
    ],
    "IP": [
        "192.168.10.7",
        "8.8.8.8",
        "255.255.255.255",
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:10.0.0.1",
    ],
    "DATE": [
        "2026-01-05",
        "2026-01-05T10:30:00Z",
        "01/05/2026",
        "1/5/26",
        "03-15-2026",
        "Jan 5, 2026",
        "January 5th, 2026",
        "5 March 2026",
        "Sept. 30 2025",
    ],
}

LOOK_ALIKES = [
    "4111 1111 1111 1112",  # fails Luhn
    "1234 5678 9012 3456",  # no card scheme starts with 1, and fails Luhn
    "000-12-3456",  # SSN area 000 is never issued
    "666-12-3456",
    "912-34-5678",  # 9xx: ITIN, not an SSN
    "123-00-4567",  # group 00
    "123-45-0000",  # serial 0000
    "999.1.1.1",  # octet > 255
    "256.10.10.10",
    "10.1.2",  # three parts
    "10:30:15",  # a time, not IPv6
    "00:1a:2b:3c:4d:5e",  # a MAC address
    "13/45/2026",  # no month 13
    "2026-13-01",
    "E11.9",
    "12.5 mg",
    "room 1234",
    "123-456-789",  # 3-3-3 digits
    "012-345-6789",  # area codes never start with 0
    "version 2.10.3",
    "4111.1111.1111.1112",  # dotted, fails Luhn
    "SSN-000-12-3456",  # labelled, but area 000
    "SSN 912345678",  # keyword, but 9xx
    "SSN 666123456",
    "MRN 123456789",  # nine digits without the SSN keyword
    "(012)-345-6789",
    "+1 012 345 6789",
]

TEMPLATES = [
    "Pt seen today; contact {x} re: follow-up.",
    "{x} noted at intake.",
    "Per chart ({x}), stable. Next review pending.",
    "Ref: {x}. Continue current medication for E11.",
]


def build_corpus(
    rng: np.random.Generator,
) -> tuple[list[str], list[Counter], list[list[str]], list[list[str]]]:
    notes, expected, planted, kept = [], [], [], []
    items = [(e, v) for e, vs in PLANTED.items() for v in vs]
    for i in range(300):
        picks = [items[j] for j in rng.choice(len(items), size=rng.integers(0, 3), replace=False)]
        fakes = [
            LOOK_ALIKES[j]
            for j in rng.choice(len(LOOK_ALIKES), size=rng.integers(0, 3), replace=False)
        ]
        parts = [TEMPLATES[(i + k) % len(TEMPLATES)].format(x=v) for k, (_, v) in enumerate(picks)]
        parts += [TEMPLATES[(i + k + 1) % len(TEMPLATES)].format(x=v) for k, v in enumerate(fakes)]
        order = rng.permutation(len(parts))
        notes.append(" ".join(parts[o] for o in order) or "Nothing to report.")
        expected.append(Counter(e for e, _ in picks))
        planted.append([v for _, v in picks])
        kept.append(fakes)
    # every planted value and every look-alike appears at least once
    for entity, values in PLANTED.items():
        for v in values:
            notes.append(f"Single: {v} end.")
            expected.append(Counter({entity: 1}))
            planted.append([v])
            kept.append([])
    for v in LOOK_ALIKES:
        notes.append(f"Look-alike: {v} end.")
        expected.append(Counter())
        planted.append([])
        kept.append([v])
    return notes, expected, planted, kept


def test_corpus_recall_is_one_and_look_alikes_survive():
    notes, expected, planted, kept = build_corpus(np.random.default_rng(2026))
    out, found = scrub_pii(pd.Series(notes, dtype="str"))
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for text, want, secrets, fakes in zip(out.tolist(), expected, planted, kept, strict=True):
        for entity in ENTITIES:
            got = text.count(f"<{entity}>")
            tp[entity] += min(got, want[entity])
            fp[entity] += max(0, got - want[entity])
            fn[entity] += max(0, want[entity] - got)
        for secret in secrets:
            assert secret not in text, (secret, text)
        for fake in fakes:
            if fake not in text:
                fp["look-alike"] += 1
    print("\nentity        precision  recall  (tp/fp/fn)")
    for entity in ENTITIES:
        p = tp[entity] / max(1, tp[entity] + fp[entity])
        r = tp[entity] / max(1, tp[entity] + fn[entity])
        print(f"{entity:<12}  {p:9.3f}  {r:6.3f}  ({tp[entity]}/{fp[entity]}/{fn[entity]})")
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    precision = total_tp / (total_tp + total_fp)
    recall = total_tp / (total_tp + total_fn)
    print(
        f"overall       {precision:9.3f}  {recall:6.3f}  (look-alikes destroyed: {fp['look-alike']})"
    )
    assert recall == 1.0
    assert fp["look-alike"] == 0
    assert precision == 1.0
    assert found == {e: tp[e] for e in ENTITIES}


@pytest.mark.parametrize("fake", LOOK_ALIKES)
def test_each_look_alike_survives_verbatim(fake):
    text = f"Look-alike: {fake} end."
    out, found = scrub_pii(pd.Series([text]))
    assert out.iloc[0] == text and sum(found.values()) == 0


def test_replacements_and_recognizer_order():
    out, _ = scrub_pii(
        pd.Series(["card 4111 1111 1111 1111 then call 212-555-0143 from 10.0.0.1 on 2026-01-05"])
    )
    assert out.iloc[0] == "card <CREDIT_CARD> then call <PHONE> from <IP> on <DATE>"


def test_entities_subset_leaves_the_rest():
    out, found = scrub_pii(pd.Series(["a@b.org, 212-555-0143"]), entities=["PHONE"])
    assert out.iloc[0] == "a@b.org, <PHONE>" and found == {"PHONE": 1}


def test_nulls_unicode_non_strings_and_empty():
    s = pd.Series(["ünïcødé ✓ 8.8.8.8", None, 4111111111111111, "", np.nan], dtype=object)
    out, found = scrub_pii(s)
    assert out.tolist()[0] == "ünïcødé ✓ <IP>"
    assert pd.isna(out.iloc[1]) and pd.isna(out.iloc[4])
    assert out.iloc[2] == "<CREDIT_CARD>" and out.iloc[3] == ""
    assert found["IP"] == 1 and found["CREDIT_CARD"] == 1
    empty, counts = scrub_pii(pd.Series([], dtype="str"))
    assert len(empty) == 0 and set(counts.values()) == {0}


def test_repeated_notes_are_counted_per_row():
    out, found = scrub_pii(pd.Series(["mail a@b.org"] * 5 + ["none"]))
    assert found["EMAIL"] == 5 and (out.iloc[:5] == "mail <EMAIL>").all()


def test_unknown_entity_is_rejected():
    with pytest.raises(InvalidParameterError, match="NAME"):
        scrub_pii(pd.Series(["x"]), entities=["EMAIL", "NAME"])


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("SSN 425163144 on file", "SSN <SSN> on file"),
        ("Social Security Number: 425163144", "Social Security Number: <SSN>"),
        ("SSN-123-45-6789", "SSN-<SSN>"),
        ("call +15189163293x12 now", "call <PHONE> now"),
        ("card 4111.1111.1111.1111.", "card <CREDIT_CARD>."),
    ],
)
def test_labels_stay_and_only_the_identifier_goes(text, scrubbed):
    out, found = scrub_pii(pd.Series([text]))
    assert out.iloc[0] == scrubbed and sum(found.values()) == 1
