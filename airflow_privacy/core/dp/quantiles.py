"""Differentially private quantiles: the exponential mechanism over a fixed grid, sampled
exactly with integer arithmetic and the release's random source (see :func:`dp_quantiles`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from airflow_privacy.core.dp.noise import RandomSource, bernoulli_exp_ratio, uniform_below
from airflow_privacy.core.errors import InvalidParameterError

QUANTILE_CANDIDATES = 1 << 12  # quantile outputs: a power-of-two grid of ~this many points


def quantile_grid(bounds: tuple[float, float], candidates: int) -> tuple[float, int, int]:
    """``(g, first, m)``: the candidates are ``(first + k)·g``, k < m, with ``g`` the finest power
    of two giving at most ``candidates + 1`` of them inside the bounds (data-independent)."""
    lo, hi = bounds
    g = 2.0 ** math.ceil(math.log2((hi - lo) / candidates))
    first, last = math.ceil(lo / g), math.floor(hi / g)
    return g, first, last - first + 1


def quantile_rate(eps_group: float, linf: int) -> tuple[int, int]:
    """``(A, F)``: the exponential mechanism's rate ε_group/(2·Linf) rounded *down* to A/2^F with
    2^20 <= A < 2^21 (relative loss < 2^-20; rounding down only adds privacy)."""
    rate = Fraction(eps_group) / (2 * linf)
    log2_den = 20 - math.floor(math.log2(rate))
    if log2_den > 52:
        raise InvalidParameterError("epsilon", eps_group, "too small for a quantile (rate below 2^-32)")
    return math.floor(rate * (1 << log2_den)), log2_den


def dp_quantiles(
    values: np.ndarray,
    gcodes: np.ndarray,
    n_groups: int,
    bounds: tuple[float, float],
    q: float,
    eps_group: float,
    linf: int,
    rng: RandomSource,
    candidates: int = QUANTILE_CANDIDATES,
) -> np.ndarray:
    """Per-group ε_group-DP q-quantile: the exponential mechanism (McSherry-Talwar 2007) over a
    fixed grid of candidates, sampled *exactly* (no floating-point Gumbel or uniform).

    Candidates: the power-of-two grid of :func:`quantile_grid` over the bounds, the same for
    every group and independent of the data; clamped values are rounded to their nearest
    candidate (a fixed per-row map, error <= g/2), so tied values sit on a candidate. With
    L(c) = #{x < c}, E(c) = #{x = c}, n values and target rank t = floor(q·n), the score is

        s(c) = max(L(c) - t, t - L(c) - E(c), 0)   (utility -s; = |L(c) - q·n| up to rounding
                                                   of q·n wherever E(c) = 0)

    so a candidate holding the quantile among ties scores 0 (the plain |L - q·n| would score
    every candidate alike when all values tie). Adding or removing one value moves L, E, t
    and n by at most one each, in ways that change s by at most 1 (Smith, STOC 2011, for the
    rank utility), so a unit's <= Linf values change it by <= Linf: sampling
    P[c] ∝ exp(-A/2^F · s(c)) with A/2^F <= ε_group/(2·Linf) is ε_group-DP.

    Sampling: rejection from the uniform proposal over the candidates, accepting c with
    probability exp(-A/2^F · (s(c) - min s)) by the exact Bernoulli(exp(-γ)) of
    Canonne-Kamath-Steinke 2020 (Algorithm 1) on rational γ with uniform integers from the
    random source -- the output distribution is exactly the exponential mechanism's, as
    Ilvento ("Implementing the Exponential Mechanism with Base-2 Differential Privacy",
    CCS 2020) requires of an implementation; the rational rate plays the role of her base-2
    parameter. All groups draw batches of proposals at once (first acceptance per group
    wins); expected proposals per group <= the number of candidates.
    """
    lo, hi = bounds
    g, first, m = quantile_grid(bounds, candidates)
    base = first * g
    rate_num, log2_den = quantile_rate(eps_group, linf)
    valid = ~np.isnan(values)
    idx = np.clip(np.rint((np.clip(values[valid], lo, hi) - base) / g), 0, m - 1).astype(np.int64)
    gv = gcodes[valid]
    out = np.empty(n_groups, dtype=float)
    qq = Fraction(q)
    chunk = max(1, (1 << 22) // m)  # groups per block: a block's score matrix holds <= 2^22 entries
    order = np.argsort(gv, kind="stable")
    gv, idx = gv[order], idx[order]
    starts = np.searchsorted(gv, np.arange(0, n_groups + chunk, chunk))
    for b, g0 in enumerate(range(0, n_groups, chunk)):
        k = min(chunk, n_groups - g0)
        rows = slice(starts[b], starts[b + 1])
        counts = np.bincount((gv[rows] - g0) * m + idx[rows], minlength=k * m).reshape(k, m)
        n = counts.sum(axis=1)
        t = np.array([int(qq * int(x)) for x in n], dtype=np.int64)[:, None]  # floor(q·n), exact
        below = np.cumsum(counts, axis=1) - counts
        score = np.maximum(np.maximum(below - t, t - below - counts), 0)
        score -= score.min(axis=1, keepdims=True)
        chosen = np.full(k, -1, dtype=np.int64)
        todo, batch = np.arange(k), 64
        while todo.size:
            props = uniform_below(rng, m, todo.size * batch).astype(np.int64).reshape(todo.size, batch)
            accept = bernoulli_exp_ratio(rng, rate_num * score[todo[:, None], props].ravel(), 1 << log2_den)
            accept = accept.reshape(todo.size, batch)
            hit = accept.any(axis=1)
            chosen[todo[hit]] = props[hit, accept[hit].argmax(axis=1)]
            todo, batch = todo[~hit], min(batch * 2, 1 << 12)
        out[g0:g0 + k] = base + chosen * g
    return np.clip(out, lo, hi)
