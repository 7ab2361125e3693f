"""Contribution bounding: the stability step that makes user-level DP possible.

After :func:`bound_contributions`, every privacy unit contributes rows to at most
``max_groups_per_unit`` (L0) groups and at most ``max_rows_per_group`` (Linf) rows per group.
The kept groups of a unit are a uniformly random subset of its groups, and the kept rows of
a (unit, group) pair a uniformly random subset of its rows: one sort, then a partial
Fisher-Yates shuffle per segment -- the same distribution as the random-priority bounding of
Wilson et al., "Differentially Private SQL with Bounded User Contribution", PoPETs 2020.
Selection of one unit's rows depends only on that unit's rows and fresh randomness, so
adding or removing a unit changes the bounded data by at most that unit's bounded rows.
"""

from __future__ import annotations

import numpy as np

from airflow_privacy.core.errors import InvalidParameterError

MAX_CONTRIBUTIONS = 1 << 24
"""Largest ``max_groups_per_unit * max_rows_per_group``: 16,777,216 rows of one person. A
larger bound cannot be meant (the noise would be at least that many times a single row's
effect), and it would push the sensitivities and noise of the exact samplers past 2^62."""


def check_contribution_bounds(max_groups_per_unit: object, max_rows_per_group: object) -> tuple[int, int]:
    """``(L0, Linf)`` as ints if each is an integer >= 1 and their product is at most
    :data:`MAX_CONTRIBUTIONS`; else :class:`InvalidParameterError` naming the parameter."""
    out = []
    for name, value in (("max_groups_per_unit", max_groups_per_unit), ("max_rows_per_group", max_rows_per_group)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_CONTRIBUTIONS:
            raise InvalidParameterError(name, value, f"expected an integer in [1, {MAX_CONTRIBUTIONS:,}]")
        out.append(int(value))
    l0, linf = out
    if l0 * linf > MAX_CONTRIBUTIONS:
        raise InvalidParameterError(
            "max_groups_per_unit * max_rows_per_group", f"{l0} * {linf}",
            f"expected at most {MAX_CONTRIBUTIONS:,} rows per privacy unit in total")
    return l0, linf


def rank_within(segments: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal values (input sorted)."""
    n = len(segments)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = _run_starts(segments)
    run_start = np.repeat(starts, np.diff(starts, append=n))
    return np.arange(n, dtype=np.int64) - run_start


def _run_starts(segments: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values (input sorted)."""
    first = np.empty(len(segments), dtype=bool)
    first[:1] = True
    np.not_equal(segments[1:], segments[:-1], out=first[1:])
    return np.flatnonzero(first)


def first_in_run(segments: np.ndarray, limit: int) -> np.ndarray:
    """Mask of the first ``limit`` elements of each run of equal values (input sorted).

    Element i is among its run's first ``limit`` iff the element ``limit`` places earlier
    belongs to another run -- one vectorized comparison, no ranks materialized.
    """
    n = len(segments)
    mask = np.ones(n, dtype=bool)
    if limit < n:
        mask[limit:] = segments[limit:] != segments[:-limit]
    return mask


def bound_contributions(
    unit_codes: np.ndarray,
    group_codes: np.ndarray,
    max_groups_per_unit: int,
    max_rows_per_group: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices (ascending) of the rows kept after L0/Linf bounding (:func:`bound_with_unit_counts`)."""
    return bound_with_unit_counts(unit_codes, group_codes, max_groups_per_unit, max_rows_per_group, rng)[0]


def bound_with_unit_counts(
    unit_codes: np.ndarray,
    group_codes: np.ndarray,
    max_groups_per_unit: int,
    max_rows_per_group: int,
    rng: np.random.Generator,
    n_groups: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) of the rows kept after L0/Linf bounding; vectorized, O(n log n);
    and the number of distinct units each group keeps (length ``n_groups``; the kept
    (unit, group) pairs counted per group -- no second sort).

    One value sort of ``pair << b | row`` (a SIMD sort of plain int64 values, ~5-10x faster
    than an argsort) groups the rows by (unit, group) pair, and the pairs by unit; then a
    vectorized partial Fisher-Yates shuffle (Knuth, TAOCP vol. 2, Alg. 3.4.2 P) inside every
    segment that is larger than its bound draws a uniformly random subset of exactly the
    bound's size: Linf rows of each pair, L0 pairs of each unit. Unbiased integers come from
    ``rng.integers`` (Lemire's method). Cost O(n log n + L0 * U' + Linf * P'), U' and P' the
    units and pairs above their bound.

    :param unit_codes: non-negative int codes of each row's privacy unit.
    :param group_codes: non-negative int codes of each row's group.
    :param max_groups_per_unit: L0 bound.
    :param max_rows_per_group: Linf bound.
    :param rng: source of the random choices.
    """
    n = len(unit_codes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(n_groups, dtype=np.int64)
    unit_codes = np.asarray(unit_codes)
    group_codes = np.asarray(group_codes)
    # In-place arithmetic throughout: at 10 M rows every fresh n-sized array costs more in
    # page faults than the arithmetic itself; positions are int32 below 2^31 rows.
    key = unit_codes.astype(np.int64)
    key *= int(group_codes.max()) + 1
    key += group_codes  # the (unit, group) pair; sorted pairs are sorted by unit
    row_bits = max(1, (n - 1).bit_length())
    if int(key.max()) >= 1 << (63 - row_bits):
        key = np.unique(key, return_inverse=True)[1].astype(np.int64)  # dense, same order
    key <<= row_bits
    for start in range(0, n, 1 << 20):  # the row index, without an n-sized temporary
        key[start:start + (1 << 20)] |= np.arange(start, min(n, start + (1 << 20)), dtype=np.int64)
    key.sort()
    index_type = np.int32 if n < 1 << 31 else np.int64
    rows = np.empty(n, dtype=index_type)
    np.bitwise_and(key, (1 << row_bits) - 1, out=rows, casting="unsafe")
    sorted_pair = key
    sorted_pair >>= row_bits
    pair_start = _run_starts(sorted_pair).astype(index_type)
    pair_sizes = np.diff(pair_start, append=index_type(n))

    # Linf: the first Linf rows of each pair segment, after shuffling them into place.
    _sample_prefixes(rows, pair_start, max_rows_per_group, rng, pair_sizes)
    keep = first_in_run(sorted_pair, max_rows_per_group)
    del key, sorted_pair

    # L0: the distinct pairs, in order, are grouped by unit; keep the first L0 of each unit.
    pair_unit = unit_codes[rows[pair_start]]
    pair_ids = np.arange(len(pair_start), dtype=index_type)
    _sample_prefixes(pair_ids, _run_starts(pair_unit), max_groups_per_unit, rng)
    kept_pair = np.zeros(len(pair_start), dtype=bool)
    kept_pair[pair_ids[first_in_run(pair_unit, max_groups_per_unit)]] = True
    del pair_unit, pair_ids
    keep &= kept_pair if len(pair_start) == n else np.repeat(kept_pair, pair_sizes)
    units = np.bincount(group_codes[rows[pair_start[kept_pair]]], minlength=n_groups)
    # Ascending kept rows by an O(n) mask rather than a second O(n log n) sort.
    kept_rows = np.zeros(n, dtype=bool)
    kept_rows[rows[keep]] = True
    return np.flatnonzero(kept_rows), units


_VECTOR_STEPS = 64  # segments needing more swaps than this are sampled one by one


def _sample_prefixes(values: np.ndarray, starts: np.ndarray, k: int, rng: np.random.Generator,
                     sizes: np.ndarray | None = None) -> None:
    """In place: the first ``min(k, size)`` entries of each segment become a uniformly random
    subset (without replacement) of that segment. Segments are ``values[starts[i]:starts[i + 1]]``;
    the last ends at the end.

    A segment of size m > k needs min(k, m - k) swaps of a partial Fisher-Yates shuffle (Knuth,
    TAOCP vol. 2, Alg. 3.4.2 P): k swaps that draw the kept entries to the front, or m - k
    that draw the dropped entries to the back -- either leaves a uniformly random k-subset in
    front. Segments needing at most ``_VECTOR_STEPS`` swaps are shuffled together, one
    vectorized step per swap; each larger one (each holds > 2·_VECTOR_STEPS entries, so there
    are few) draws its subset with ``Generator.choice(replace=False)``. The work is bounded by
    the data, O(n), whatever k is: segments within their bound are kept whole, untouched.
    ``sizes``: the segments' sizes, when the caller has them.
    """
    if sizes is None:
        sizes = np.diff(starts, append=len(values))
    big = sizes > k
    first, sizes = starts[big], sizes[big]
    swaps = np.minimum(k, sizes - k)
    few = swaps <= _VECTOR_STEPS
    front = few & (k <= sizes - k)
    _shuffle_front(values, first[front], sizes[front], k, rng)
    _shuffle_back(values, first[few & ~front], sizes[few & ~front], sizes[few & ~front] - k, rng)
    for a, m in zip(first[~few].tolist(), sizes[~few].tolist(), strict=True):
        chosen = np.zeros(m, dtype=bool)
        chosen[rng.choice(m, size=k, replace=False, shuffle=False)] = True
        segment = values[a:a + m]
        values[a:a + m] = np.concatenate((segment[chosen], segment[~chosen]))


def _shuffle_front(values: np.ndarray, first: np.ndarray, sizes: np.ndarray, k: int, rng: np.random.Generator) -> None:
    """k steps of a partial Fisher-Yates shuffle in every segment at once: position j takes
    an entry uniform over the segment's not yet drawn rest."""
    for j in range(k if len(first) else 0):
        here = first + j
        there = here + rng.integers(0, sizes - j)
        values[here], values[there] = values[there], values[here]


def _shuffle_back(values: np.ndarray, first: np.ndarray, sizes: np.ndarray, drops: np.ndarray,
                  rng: np.random.Generator) -> None:
    """``drops[i]`` steps of a partial Fisher-Yates shuffle from the back of segment i: the
    last ``drops[i]`` positions take entries uniform over the segment's undrawn front."""
    for j in range(int(drops.max(initial=0))):
        on = drops > j
        last = first[on] + sizes[on] - 1 - j
        there = first[on] + rng.integers(0, sizes[on] - j)
        values[last], values[there] = values[there], values[last]
