"""Offline detection and replacement of PII in free text with validated regex recognizers.

What it finds (``ENTITIES``) and how:

* ``EMAIL`` -- ``local@domain.tld`` with Unicode letters and digits (RFC 5322 dot-atoms,
  no quoted local parts).
* ``CREDIT_CARD`` -- 13-19 digits, contiguous or grouped 4-4-4-x / 4-6-5 by one space,
  dash or dot character (``4111.1111.1111.1111``); accepted only when the first digit is 2-6 (the ISO/IEC 7812 major
  industry identifiers used by card schemes) **and** the Luhn checksum holds (ISO/IEC
  7812-1 Annex B). A 16-digit number failing Luhn is left alone.
* ``SSN`` -- ``AAA-GG-SSSS`` (dashes or spaces; also glued to a label, ``SSN-123-45-6789``),
  or nine bare digits right after an ``SSN`` / ``Social Security (Number|No.)`` keyword
  (``SSN: 123456789``; the keyword stays), accepted only inside the ranges the Social
  Security Administration issues: area not 000, 666 or 900-999, group not 00, serial not
  0000. ``000-12-3456``, ``912-34-5678`` (an ITIN) or nine digits without the keyword are
  left alone.
* ``IP`` -- IPv4 dotted quads with every octet <= 255 (``999.1.1.1`` is left alone) and
  IPv6 in any RFC 4291/5952 spelling (``::``, embedded IPv4), validated by
  :mod:`ipaddress` (so times like ``10:30:15`` and MAC addresses are left alone).
* ``DATE`` -- ISO 8601 dates (with an optional time part), US numeric dates
  (``1/5/2026``, ``01-05-26``) and month-name dates (``Jan 5, 2026``, ``5 January 2026``,
  ``March 2026``); months 1-12 and days 1-31 are enforced by the pattern.
* ``PHONE`` -- US numbers in the North American Numbering Plan: ``(518) 916-3293``,
  ``(518)-916-3293``, ``518-916-3293``, ``518.916.3293``, ``+1 518 916 3293``,
  ``+15189163293``, ``5189163293``, optional extension (``x12``, ``ext. 12``, also glued:
  ``5189163293x12``); area code and exchange start with 2-9.

Each match is replaced by ``<ENTITY>`` (no digits, so a later recognizer never re-matches
a replacement). Recognizers run in a fixed order -- EMAIL, CREDIT_CARD, SSN, IP, DATE,
PHONE -- so that a long or validated pattern claims its digits before a looser one could
take part of them (a card's digit groups are never half-replaced as a phone number).

Not found: names, street addresses, medical record numbers or anything else that needs
context rather than shape. Those need a named-entity model; this module ships none (no
model is downloaded, ever). Card or SSN digits glued to further digit groups (``1234 4111
1111 1111 1111``) are examined as one candidate and may be missed.

Vectorization: the text is deduplicated (:mod:`.dedupe`); the recognizers that need no
validation (EMAIL, DATE, PHONE) run as RE2 regexes in Arrow's compute kernels
(``replace_substring_regex``) over the distinct texts; the others first select candidate
texts with one RE2 ``match_substring_regex`` pass and run Python ``re`` on those texts
only: SSN and IPv4, whose validity is a regular language, as one ``subn`` per text with
the ranges in the pattern; cards (Luhn) and IPv6 (:mod:`ipaddress`) with a validating
callable per match.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_privacy.core.deid.dedupe import Distinct, distinct, text_of, to_series
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["ENTITIES", "scrub_pii"]

ENTITIES: tuple[str, ...] = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD", "IP", "DATE")
"""Entity types :func:`scrub_pii` recognizes; the replacement of a match is ``<ENTITY>``."""

# -- patterns ------------------------------------------------------------------------------
# RE2 syntax (Arrow kernels) for the unvalidated recognizers: no look-around, no
# back-references; [0-9] rather than \d so that Python and RE2 agree on what a digit is.

_EMAIL_RE2 = (
    r"[\p{L}\p{N}_%+'-]+(?:\.[\p{L}\p{N}_%+'-]+)*"
    r"@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+\p{L}{2,}"
)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"(?:3[01]|[12][0-9]|0?[1-9])"
_MONTH_NUM = r"(?:1[0-2]|0?[1-9])"
_TIME = r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
_DATE_RE2 = "|".join(
    [
        # ISO 8601 (and 2026/01/05), optional time part
        rf"\b[0-9]{{4}}[-/.](?:1[0-2]|0[1-9])[-/.](?:3[01]|[12][0-9]|0[1-9]){_TIME}\b",
        # US numeric: 1/5/2026, 01-05-26
        rf"\b{_MONTH_NUM}[/-]{_DAY}[/-](?:[0-9]{{4}}|[0-9]{{2}})\b",
        # Jan 5, 2026 / January 5th 2026
        rf"\b(?i:{_MONTH})\.? {_DAY}(?:st|nd|rd|th)?,? [0-9]{{4}}\b",
        # 5 January 2026 / 5 Jan, 2026
        rf"\b{_DAY} (?i:{_MONTH})\.?,? [0-9]{{4}}\b",
        # March 2026
        rf"\b(?i:{_MONTH})\.?,? [0-9]{{4}}\b",
    ]
)

_AREA = r"(?:\([2-9][0-9]{2}\)[-. ]?|[2-9][0-9]{2}[-. ]?)"
_PHONE_RE2 = (
    # "+1" glued to the area code ("+15189163293") has no word boundary before the area code,
    # so that alternative carries none; a bare area code must start at one.
    rf"(?:\+1[-. ]?{_AREA}|(?:\b1[-. ])?(?:\([2-9][0-9]{{2}}\)[-. ]?|\b[2-9][0-9]{{2}}[-. ]?))"
    # an extension may be glued on ("5189163293x12"): then there is no boundary after the
    # subscriber number, so the extension is tried first and the boundary only without one
    r"[2-9][0-9]{2}[-. ]?[0-9]{4}(?: ?(?i:x|ext\.?) ?[0-9]{1,5}\b|\b)"
)

# Python regexes for the validated recognizers, each with an RE2 pre-filter that selects
# the texts worth calling Python on. A leading look-behind would stop Python's engine from
# skipping ahead to a possible first character (it would try the whole pattern at every
# position, ~4x slower), so the patterns start with a character class and assert on the
# context behind their first character instead: ``[0-9](?<![0-9][0-9])`` is
# ``(?<![0-9])[0-9]``.
_CARD = re.compile(
    r"[0-9](?<![0-9][0-9])(?:[0-9]{3}([ .-])[0-9]{4}\1[0-9]{4}\1[0-9]{1,7}"
    r"|[0-9]{3}([ .-])[0-9]{6}\2[0-9]{4,5}|[0-9]{12,18})(?![0-9])"
)
_CARD_FILTER = r"(?:[0-9][ .-]?){12}[0-9]"
# SSN and IPv4 validity is a regular language, so it is part of the pattern and a match is
# replaced with no Python callback. This equals matching the loose shape (``[0-9]{3}[- ]
# [0-9]{2}[- ][0-9]{4}``, four dot-separated runs of 1-3 digits) and skipping the invalid
# ones: the look-arounds forbid a match to start inside such a span (each position in it
# follows a digit, a dot or "digit-", or starts a digit run too short or too long), so
# skipping an invalid span never uncovers another match.
# Area 001-899 except 666, group 01-99, serial 0001-9999, as the SSA issues them. A dash
# before the area is fine ("SSN-123-45-6789"); a digit and a dash is a longer number.
_SSN_AREA = r"(?:0(?!00)|6(?!66)|[1-578])(?<![0-9][0-9])(?<![0-9]-[0-9])[0-9]{2}"
_SSN = re.compile(_SSN_AREA + r"([- ])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}(?![0-9]|-[0-9])")
_SSN_FILTER = r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}"
# Nine bare digits are an SSN only right after the keyword; the keyword (group 1) is kept.
_SSN_KEYWORD = r"\b(?i:ssn|social security(?: number| no\.?)?)[ \t]*(?:[:#=-][ \t]*)?"
_SSN_BARE = re.compile(
    rf"({_SSN_KEYWORD}){_SSN_AREA}(?!00)[0-9]{{2}}(?!0000)[0-9]{{4}}(?![0-9])"
)
_SSN_BARE_FILTER = _SSN_KEYWORD + r"[0-9]{9}"
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z:]|\.[0-9])"
)
_IPV6_FILTER = r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:"
# The rest of an octet 0-255 (leading zeros allowed: "010" is 10) after its first digit.
_OCTET_REST = r"(?:(?<=[01])[0-9]{0,2}|(?<=2)(?:[0-4][0-9]?|5[0-5]?|[6-9])?|(?<=[3-9])[0-9]?)"
_IPV4 = re.compile(
    rf"[0-9](?<![0-9.][0-9]){_OCTET_REST}(?:\.[0-9]{_OCTET_REST}){{3}}(?![0-9]|\.[0-9])"
)
_IPV4_FILTER = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"

_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, less 9 when above 9
_SEPARATORS = str.maketrans("", "", " .-")  # all a _CARD match holds besides digits


def _luhn_ok(candidate: str) -> bool:
    """Major industry identifier 2-6 and the Luhn checksum of a ``_CARD`` match."""
    digits = candidate.translate(_SEPARATORS)
    if not 13 <= len(digits) <= 19 or not "2" <= digits[0] <= "6":
        return False
    backwards = digits[::-1]
    doubled = backwards[1::2].translate(_LUHN_DOUBLED)
    return (sum(map(int, backwards[::2])) + sum(map(int, doubled))) % 10 == 0


def _ipv6_ok(candidate: str) -> bool:
    if not any(c not in ":" for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Validated:
    """A Python regex. Without ``valid`` every match is an entity, replaced by ``<ENTITY>``
    after the ``keep`` template (``\1``: a keyword that stays); with it, only the matches it
    accepts are, the others stay as they are."""

    entity: str
    pattern: re.Pattern[str]
    prefilter: str
    valid: Callable[[str], bool] | None = None
    keep: str = ""


@dataclass(frozen=True)
class _Plain:
    entity: str
    pattern: str
    literal: str | None = None  # every match contains it: a cheap pre-filter


_RECOGNIZERS: tuple[_Plain | _Validated, ...] = (
    _Plain("EMAIL", _EMAIL_RE2, literal="@"),
    _Validated("CREDIT_CARD", _CARD, _CARD_FILTER, valid=_luhn_ok),
    _Validated("SSN", _SSN, _SSN_FILTER),
    _Validated("SSN", _SSN_BARE, _SSN_BARE_FILTER, keep=r"\1"),
    _Validated("IP", _IPV6, _IPV6_FILTER, valid=_ipv6_ok),
    _Validated("IP", _IPV4, _IPV4_FILTER),
    _Plain("DATE", _DATE_RE2),
    _Plain("PHONE", _PHONE_RE2),
)


def check_entities(entities: object, name: str = "entities") -> tuple[str, ...]:
    """Validate a list of entity names (see :data:`ENTITIES`); returns them as a tuple."""
    if isinstance(entities, str) or not isinstance(entities, Sequence) or not entities:
        raise InvalidParameterError(
            name, entities, f"expected a non-empty list of {list(ENTITIES)}"
        )
    unknown = [e for e in entities if e not in ENTITIES]
    if unknown:
        raise InvalidParameterError(
            name, unknown, f"unknown entities; expected some of {list(ENTITIES)}"
        )
    return tuple(dict.fromkeys(entities))


def scrub_texts(texts: pa.Array, entities: Sequence[str]) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """Scrub an Arrow string array (no deduplication here).

    :return: the scrubbed array and, per entity, how many matches each element had.
    """
    wanted = set(entities)
    found: dict[str, np.ndarray] = {e: np.zeros(len(texts), dtype=np.int64) for e in entities}
    for recognizer in _RECOGNIZERS:
        if recognizer.entity not in wanted or len(texts) == 0:
            continue
        if isinstance(recognizer, _Plain):
            texts = _plain_pass(texts, recognizer, found[recognizer.entity])
        else:
            texts = _validated_pass(texts, recognizer, found[recognizer.entity])
    return texts, found


def _plain_pass(texts: pa.Array, recognizer: _Plain, counter: np.ndarray) -> pa.Array:
    """One RE2 replace over the texts (those holding ``literal``, when there is one)."""
    token = f"<{recognizer.entity}>"
    if recognizer.literal is not None:
        holds = pc.fill_null(pc.match_substring(texts, recognizer.literal), False)
        subset = np.flatnonzero(holds.to_numpy(zero_copy_only=False))
        if len(subset) == 0:
            return texts
        selected = texts.take(pa.array(subset))
    else:
        subset, selected = None, texts
    replaced = pc.replace_substring_regex(selected, recognizer.pattern, token)
    changed = pc.fill_null(pc.not_equal(selected, replaced), False).to_numpy(zero_copy_only=False)
    if not changed.any():
        return texts
    rows = np.flatnonzero(changed)
    hits = pc.count_substring_regex(selected.take(pa.array(rows)), recognizer.pattern)
    positions = rows if subset is None else subset[rows]
    counter[positions] += hits.to_numpy(zero_copy_only=False)
    if subset is None:
        return replaced
    mask = np.zeros(len(texts), dtype=bool)
    mask[positions] = True
    return pc.replace_with_mask(texts, pa.array(mask), replaced.take(pa.array(rows)))


def _validated_pass(texts: pa.Array, recognizer: _Validated, counter: np.ndarray) -> pa.Array:
    """Python ``re`` on the pre-filtered candidates only."""
    candidates = pc.fill_null(pc.match_substring_regex(texts, recognizer.prefilter), False)
    rows = np.flatnonzero(candidates.to_numpy(zero_copy_only=False))
    if len(rows) == 0:
        return texts
    selected = texts.take(pa.array(rows)).to_pylist()
    token = f"<{recognizer.entity}>"
    valid = recognizer.valid
    if valid is None:
        results = list(map(recognizer.pattern.subn, repeat(recognizer.keep + token), selected))
        new_values = [text for text, _ in results]
        counter[rows] += np.fromiter((n for _, n in results), np.int64, len(rows))
    else:
        # Numbers repeat across notes (a patient's card on every visit): validate each once.
        # A local cache, dropped with this pass, so no identifier outlives the call.
        valid = functools.lru_cache(maxsize=None)(valid)
        hits = [0]

        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            if valid(found):
                hits[0] += 1
                return token
            return found

        new_values = []
        for row, text in zip(rows.tolist(), selected, strict=True):
            hits[0] = 0
            new_values.append(recognizer.pattern.sub(replace, text))
            counter[row] += hits[0]
    mask = np.zeros(len(texts), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(texts, pa.array(mask), pa.array(new_values, texts.type))


def scrub_pii(
    series: pd.Series, entities: Sequence[str] = ENTITIES
) -> tuple[pd.Series, dict[str, int]]:
    """Replace PII in a text column by ``<ENTITY>`` placeholders.

    What counts as each entity, and what is deliberately left alone, is described in the
    module docstring. Nulls stay nulls; non-string values are scrubbed as their ``str()``.

    :param series: the text column; it is not modified.
    :param entities: which recognizers run, any of :data:`ENTITIES` (default all).
    :return: the scrubbed column (pandas ``str`` dtype) and the number of matches replaced
        per entity.
    """
    entities = check_entities(entities)
    scrubbed, totals = scrub_distinct(distinct(series), entities)
    return to_series(scrubbed, series.index, series.name), totals


def scrub_distinct(column: Distinct, entities: Sequence[str]) -> tuple[pa.Array, dict[str, int]]:
    """Scrub a factorized column: the per-row Arrow result and the matches per entity."""
    scrubbed, found = scrub_texts(text_of(column.uniques), entities)
    weights = column.counts()
    totals = {e: int(found[e] @ weights) for e in entities}
    return column.take(scrubbed), totals
