"""scrub_pii's fast recognizers against their specification on random text.

The specification is the straightforward form of each validated recognizer: a loose
pattern of the entity's shape, whose every match is handed to a validator that accepts or
leaves it (Luhn and ISO/IEC 7812 for cards, the SSA's issued ranges for SSNs, octets <= 255
for IPv4, :mod:`ipaddress` for IPv6). The implementation bakes the SSN and IPv4 ranges into
the patterns and reorders look-behinds for speed; on any text it must give the same
output and the same counts, in the same recognizer order.
"""

from __future__ import annotations

import ipaddress
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from airflow_privacy.core.deid import ENTITIES, pii

_CARD = re.compile(
    r"(?<![0-9])(?:[0-9]{4}([ .-])[0-9]{4}\1[0-9]{4}\1[0-9]{1,7}"
    r"|[0-9]{4}([ .-])[0-9]{6}\2[0-9]{4,5}|[0-9]{13,19})(?![0-9])"
)
_SSN = re.compile(
    r"(?<![0-9])(?<![0-9]-)(?P<area>[0-9]{3})([- ])(?P<group>[0-9]{2})\2(?P<serial>[0-9]{4})"
    r"(?![0-9]|-[0-9])"
)
_SSN_KEYWORD = r"\b(?i:ssn|social security(?: number| no\.?)?)[ \t]*(?:[:#=-][ \t]*)?"
_SSN_BARE = re.compile(
    _SSN_KEYWORD + r"(?P<value>(?P<area>[0-9]{3})(?P<group>[0-9]{2})(?P<serial>[0-9]{4}))(?![0-9])"
)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z:]|\.[0-9])"
)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")


def _luhn(m: re.Match[str]) -> bool:
    digits = [int(c) for c in m.group(0) if c.isdigit()]
    if not 13 <= len(digits) <= 19 or not 2 <= digits[0] <= 6:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (2 * d - 9 if 2 * d > 9 else 2 * d) if i % 2 else d
    return total % 10 == 0


def _ssn(m: re.Match[str]) -> bool:
    area, group, serial = m.group("area"), m.group("group"), m.group("serial")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ipv4(m: re.Match[str]) -> bool:
    return all(int(octet) <= 255 for octet in m.group(0).split("."))


def _ipv6(m: re.Match[str]) -> bool:
    if set(m.group(0)) == {":"}:
        return False
    try:
        ipaddress.IPv6Address(m.group(0))
    except ValueError:
        return False
    return True


# (entity, RE2 pattern) or (entity, Python pattern, validator), in the documented order
SPEC = [
    ("EMAIL", pii._EMAIL_RE2),
    ("CREDIT_CARD", _CARD, _luhn),
    ("SSN", _SSN, _ssn),
    ("SSN", _SSN_BARE, _ssn),
    ("IP", _IPV6, _ipv6),
    ("IP", _IPV4, _ipv4),
    ("DATE", pii._DATE_RE2),
    ("PHONE", pii._PHONE_RE2),
]


def _specified(texts: list[str], entities: list[str]) -> tuple[list[str], dict[str, list]]:
    found = {e: np.zeros(len(texts), dtype=np.int64) for e in entities}
    for entity, pattern, *validator in SPEC:
        if entity not in entities:
            continue
        token = f"<{entity}>"
        if not validator:
            array = pa.array(texts, pa.large_string())
            found[entity] += pc.count_substring_regex(array, pattern).to_numpy()
            texts = pc.replace_substring_regex(array, pattern, token).to_pylist()
            continue
        (valid,) = validator
        for i, text in enumerate(texts):
            hits = []

            def replace(m: re.Match[str], hits=hits, valid=valid, token=token) -> str:
                if not valid(m):
                    return m.group(0)
                hits.append(m)
                if "value" in m.re.groupindex:  # the keyword stays
                    return m.group(0)[: m.start("value") - m.start()] + token
                return token

            texts[i] = pattern.sub(replace, text)
            found[entity][i] += len(hits)
    return texts, found


FRAGMENTS = [
    *"0123456789",
    "00",
    "000",
    "0000",
    "666",
    "25",
    "255",
    "256",
    "010",
    " ",
    "-",
    ".",
    ":",
    "::",
    "/",
    "\t",
    "x",
    "ext. ",
    "+1",
    "(",
    ")",
    "@",
    "a",
    "f",
    "Z",
    "T",
    "SSN",
    "ssn: ",
    "SSN-",
    "Social Security No. ",
    "social security number ",
    "#",
    "4111",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "123-45-6789",
    "001-01-0001",
    "192.168.1.1",
    "999.1.1.1",
    "2001:db8::1",
    "fe80::",
    "10:30:15",
    "Jan ",
    "5, 2026",
    "2026-01-05",
    "518",
    "916",
    "3293",
    "é",
    "<SSN>",
    "<IP>",
    "Visit",
    "\n",
    "١",
    "²",
]


def _fragments(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 14)))


def _ssn_like(rng: random.Random) -> str:
    out = [rng.choice(["", "1", "1-", "-", " ", "SSN ", "ssn:", "SSN-", "Social Security No. "])]
    for _ in range(rng.randint(1, 4)):
        sep = rng.choice(["-", " ", ""])
        out += [
            rng.choice(["000", "001", "100", "665", "666", "667", "899", "900", "999", "66"]),
            sep,
            rng.choice(["00", "01", "99", "0"]),
            sep if rng.random() < 0.8 else rng.choice("- "),
            rng.choice(["0000", "0001", "9999", "000", "00000"]),
            rng.choice(["", " ", "-", "-1", "1", " SSN ", "ssn: ", "x"]),
        ]
    return "".join(out)


def _ip_like(rng: random.Random) -> str:
    octets = ["0", "00", "000", "1", "01", "010", "99", "199", "200", "249", "250", "255",
              "256", "260", "299", "300", "999", "2", "25", "1000"]  # fmt: skip
    out = [rng.choice(["", ".", "1", " ", "a"])]
    for _ in range(rng.randint(1, 4)):
        out.append(".".join(rng.choice(octets) for _ in range(rng.choice([3, 4, 4, 5]))))
        out.append(rng.choice([" ", ".", "", "-", ":", "a", "..", "1"]))
    return "".join(out)


def _card_like(rng: random.Random) -> str:
    out = [rng.choice(["", "1", " ", "-"])]
    for _ in range(rng.randint(1, 3)):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 20)))
        for check in "0123456789":  # complete most to a valid Luhn number
            if rng.random() < 0.6 and _luhn(re.match(".*", digits + check)):
                digits += check
                break
        sep = rng.choice(" .-")
        if rng.random() < 0.5 and len(digits) >= 13:
            digits = sep.join([digits[:4], digits[4:8], digits[8:12], digits[12:]])
        elif rng.random() < 0.3:
            digits = sep.join([digits[:4], digits[4:10], digits[10:]])
        out += [digits, rng.choice(["", " ", "-", "1", ".", " card "])]
    return "".join(out)


@pytest.mark.parametrize(
    "make, entities",
    [
        (make, entities)
        for make, own in [
            (_fragments, None),
            (_ssn_like, "SSN"),
            (_ip_like, "IP"),
            (_card_like, "CREDIT_CARD"),
        ]
        for entities in ([list(ENTITIES)] + ([[own]] if own else []))
    ],
    ids=lambda v: getattr(v, "__name__", None) or ("all" if len(v) > 1 else v[0]),
)
def test_scrubbing_equals_the_specification_on_random_text(make, entities):
    rng = random.Random(f"{make.__name__}-{entities}")
    texts = [make(rng) for _ in range(3000)]
    expected, expected_found = _specified(list(texts), entities)
    scrubbed, found = pii.scrub_texts(pa.array(texts, pa.large_string()), entities)
    assert scrubbed.to_pylist() == expected
    for entity in entities:
        assert found[entity].tolist() == expected_found[entity].tolist(), entity
    assert sum(int(found[e].sum()) for e in entities) > 0  # the corpus does exercise them
