"""ε of a composition of two PLDs, read off without forming their convolution.

The ledger keeps a dataset's long history as one stored PLD ``X`` (hundreds of thousands of
grid points after 10,000 releases) and composes a release's small PLD ``R`` with it at every
charge. Convolving them costs an FFT of the whole history; the cap check only needs the
hockey-stick divergence of ``X ⊗ R``, and that is a *sum over R* of suffix sums of ``X``:

with ``c = x * r`` (the composition's PMF, Koskela, Jälkö & Honkela 2020) and the loss of
composed index ``m`` equal to ``lx_{m-j} + lr_j``,

* ``A_m = Σ_{n>=m} c_n = Σ_j r_j SX(m - j)``, ``SX(k) = Σ_{i>=k} x_i``;
* ``e^{l_m} B_m = e^{l_m} Σ_{n>=m} c_n e^{-l_n} = Σ_j r_j TX(m - j)``,
  ``TX(k) = Σ_{i>=k} x_i e^{-(i-k)·INTERVAL}`` (a suffix sum scaled to its own start, so it
  never overflows: ``0 <= TX(k) <= SX(k) <= 1``).

So ``δ(l_m) = inf + A_{m+1} - e^{-INTERVAL}·e^{l_{m+1}} B_{m+1}`` costs two dot products of
the length of ``R``; δ is non-increasing in ε, so a bisection over the grid finds the cell
that holds ε, and inside it ε has :meth:`pld._Pmf.epsilon_for_delta`'s closed form. The
suffix sums of ``X`` are computed once per PMF (O(len X)) and cached on it.

The result is the ε of the *exact* grid convolution; :meth:`pld._Pmf.compose` also moves at
most :data:`pld.TAIL` of mass to the tails (pessimistically) and carries FFT round-off, so
the two agree to that (``tests/core/dp/test_pld_product.py``). Every grid discretisation
stays the accountant's own: this changes how the composed δ is summed, not what is summed.
"""

from __future__ import annotations

import math

import numpy as np

from airflow_privacy.core.dp import pld

_MAX_SPAN = 600.0  # TX's scaling uses e^{span}: beyond this many nats, convolve instead


_GROWTH: np.ndarray = np.ones(1)  # e^{iΔ}, i = 0, 1, ...: one table for every PMF


def _growth(n: int) -> np.ndarray:
    global _GROWTH
    if _GROWTH.size < n:
        _GROWTH = np.exp(np.arange(max(n, 2 * _GROWTH.size)) * pld.INTERVAL)
    return _GROWTH[:n]


def _suffixes(x: pld._Pmf) -> tuple[np.ndarray, np.ndarray]:
    """``(SX, TX)`` of ``x`` (module docstring), cached on the PMF (a frozen dataclass, so
    beside its fields)."""
    cached = x.__dict__.get("_suffixes")
    if cached is None:
        up = _growth(x.probs.size)[::-1]  # e^{(n-1-i)Δ} <= e^{_MAX_SPAN}
        cached = (np.cumsum(x.probs[::-1])[::-1], np.cumsum((x.probs * up)[::-1])[::-1] / up)
        x.__dict__["_suffixes"] = cached
    return cached


def epsilon_of_composition(x: pld._Pmf, r: pld._Pmf, delta: float) -> float:
    """Smallest ε >= 0 with δ(ε) <= ``delta`` for the composition ``x ⊗ r`` (module docstring);
    equal to ``x.compose(r).epsilon_for_delta(delta)`` up to its tail truncation and round-off."""
    if r.probs.size > x.probs.size:
        x, r = r, x
    n, m_len = x.probs.size, r.probs.size
    infinity = x.infinity + r.infinity - x.infinity * r.infinity
    if infinity > delta:
        return math.inf
    if (n - 1) * pld.INTERVAL > _MAX_SPAN:
        return x.compose(r).epsilon_for_delta(delta)
    sx, tx = _suffixes(x)
    sr, tr = _suffixes(r)
    rr = r.probs[::-1]
    lower = x.lower + r.lower
    top = n + m_len - 2  # last composed index

    def sums(m: int) -> tuple[float, float]:
        """(A_m, e^{l_m} B_m) for composed index m (0 <= m <= top + 1): over the r-indices j
        with x-index m - j inside x, a dot product; those with m - j < 0 see all of x
        (SX = SX(0), TX(m - j) = e^{(m-j)Δ} TX(0)), summed by r's own suffixes; m - j >= n
        see nothing."""
        j0, j1 = max(0, m - n + 1), min(m_len - 1, m)
        a = e = 0.0
        if j0 <= j1:
            a = float(rr[m_len - 1 - j1:m_len - j0] @ sx[m - j1:m - j0 + 1])
            e = float(rr[m_len - 1 - j1:m_len - j0] @ tx[m - j1:m - j0 + 1])
        if m + 1 < m_len:
            a += sx[0] * sr[m + 1]
            e += tx[0] * math.exp(-pld.INTERVAL) * tr[m + 1]
        return a, e

    first = max(0, 1 - lower)  # first composed index with a positive loss
    if first > top:
        return 0.0
    a0, e0 = sums(first)
    loss0 = (lower + first) * pld.INTERVAL
    if infinity + a0 - math.exp(-loss0) * e0 <= delta:  # δ(0): sums over positive losses
        return 0.0
    shrink = math.exp(-pld.INTERVAL)

    def above(m: int) -> bool:  # δ(l_m) > delta: sums over losses strictly above l_m
        a, e = sums(m + 1)
        return infinity + a - shrink * e > delta

    lo, hi = first - 1, top  # invariant: above(lo) (or lo = first - 1), not above(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if above(mid):
            lo = mid
        else:
            hi = mid
    i = lo + 1  # ε lies in (l_{i-1}, l_i]
    a, e = sums(i)
    loss = (lower + i) * pld.INTERVAL
    if e <= 0.0:
        return max(0.0, loss - pld.INTERVAL) if i > first else 0.0
    return max(0.0, loss + math.log(infinity + a - delta) - math.log(e))
