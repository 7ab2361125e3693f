"""``dp_aggregate``: differentially private group-by statistics over a DataFrame.

Guarantee
    The released table (group keys and metric values) is (ε, δ)-differentially private
    under the **add/remove-one-privacy-unit** neighbouring relation: two inputs are
    neighbours when one is the other plus all rows of one unit (``privacy_unit`` column;
    each row is its own unit when it is ``None``). ``result.cost`` lists the mechanisms that
    ran and their tightly composed ε at the requested δ (≤ the requested ε).

Construction
    1. Rows outside ``public_groups`` are dropped (when given); then contributions are bounded
       (:mod:`.bounding`): ≤ L0 groups per unit, ≤ Linf rows per (unit, group).
    2. Values are clamped to their declared ``bounds``; NaN values are left out of that
       column's sum, mean, variance and quantiles (they still count as rows).
    3. The budget is split **equally** over the primitive queries the metrics need -- row
       count, unit count, per-column value count, per-column normalized sum, per-column
       normalized sum of squares, per-(column, q) quantile -- plus private partition
       selection when there are no public groups: every part gets the same ε share s.
       Queries shared by metrics (a mean and a variance of one column share its count and
       sum) are run once. δ goes to partition selection (Laplace) or is split between
       selection and the Gaussian queries. ``result.cost`` (what the ledger charges) is the
       *tight* PLD composition of the mechanisms that ran, at δ, and s is chosen so that it
       spends ε: s = ε/k composes to ε under basic composition but, with δ > 0, far less
       under PLD (k Gaussian shares at (ε/k, δ/k) compose to only ~43-56 % of ε), so s is
       searched in [ε/k, ε] against that same PLD composition (:func:`_common_share`, after
       dp-accounting's ``calibrate_dp_mechanism``) until the cost is within 1 % of ε and
       never above it. With δ = 0 (Laplace only) composition is the basic sum and s = ε/k
       already spends ε. The search composes with the ``accountant`` the dataset's ledger
       uses (``DPAggregateOperator`` passes it), so the release spends at most ε as the
       ledger counts it: under ``basic`` that keeps s = ε/k.
    4. Counts and fixed-point sums get exact discrete Laplace (or discrete Gaussian) noise
       (CKS20, :mod:`.noise`). Sums are computed in int64 on a power-of-two grid γ: each
       clamped (and shifted) value x becomes ``floor(x/γ)`` or ``ceil(x/γ)`` by *unbiased
       stochastic rounding* (:func:`.noise.stochastic_round`, bits from the random source),
       so the fixed-point sum of n values is unbiased with rounding sd ≤ sqrt(n)·γ/2 --
       deterministic rounding would add a bias of up to n·γ/2 that grows with n while the
       noise does not. The rounded value stays within ``ceil(magnitude/γ)`` steps, and
       sensitivities are counted in those steps, so rounding never increases them. γ is
       chosen from parameters only: the largest power of two at which the noise (Laplace
       scale, Gaussian σ) spans at least 2^12 steps, unless that would put more than 2^14
       steps in one value's range (large ε: the exact PLD of the discrete mechanisms grows
       with the sensitivity in steps). The rounding sd then stays below the noise sd for up
       to ~2^26 values per group (below ~1 % extra variance up to 10^5 values, ~10 % at 10^7).
       Mean and variance use the normalized-sum construction (values shifted by the bounds'
       midpoint; mean = S/N + m, variance = Q/N − (S/N)²) with a noisy count N -- never a
       "public n".
    5. Quantiles: exponential mechanism over a fixed power-of-two grid of ~2^12 candidates
       in the bounds (clamped values rounded to the grid), rank utility with ties handled
       (Smith, STOC 2011), sensitivity Linf, ε/L0 per group, sampled exactly with integer
       arithmetic and the random source (rejection with CKS20's exact Bernoulli(exp(−γ)); cf.
       Ilvento, CCS 2020). See :func:`.quantiles.dp_quantiles`.
    6. Private partition selection: the candidates are only the groups that still hold a unit
       after bounding (a group bounding emptied is never a candidate), and a group is released
       when its noisy unit count
       (discrete Laplace, L1 sensitivity L0) reaches the integer threshold
       ``T = 1 + ceil(ln(δ(1+p)/L0) / ln p)``, p = e^{-1/scale}, so a group with a single
       unit appears with probability ≤ δ/L0 (Korolova et al. 2009; Wilson et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from airflow_privacy.core.dp.accounting import ACCOUNTANTS, PrivacyCost, compose_epsilon
from airflow_privacy.core.dp.bounding import bound_contributions, check_contribution_bounds
from airflow_privacy.core.dp.calibration import (
    analytic_gaussian_sigma,
    check_delta,
    check_epsilon,
    discrete_gaussian_sigma,
    zcdp_rho,
)
from airflow_privacy.core.dp.noise import (
    RandomSource,
    default_random_source,
    discrete_gaussian,
    discrete_gaussian_variance,
    discrete_laplace,
    discrete_laplace_variance,
    numpy_generator,
    rational_at_least,
    stochastic_round,
)
from airflow_privacy.core.dp.quantiles import dp_quantiles
from airflow_privacy.core.dp.spec import (
    MECHANISMS,
    apply_bins,
    check_bounds,
    parse_metrics,
    public_frame,
)
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

_NOISE_STEPS = 1 << 12  # the noise of a fixed-point sum spans at least this many grid steps...
_MAX_ROW_STEPS = 1 << 14  # ...unless one value's range would need more than this many


@dataclass(frozen=True)
class DPResult:
    """A differentially private release.

    :ivar table: group columns + one column per metric.
    :ivar cost: the mechanisms that ran and their composed (ε, δ).
    :ivar noise_sd: standard deviation of the noise added to each primitive query, in the
        metric's unit -- data-independent, safe to publish as an error bar.
    :ivar grid: the fixed-point grid step γ of each sum query (data-independent); its
        stochastic rounding adds an unbiased error of sd ≤ sqrt(n)·γ/2 over n values.
    """

    table: pd.DataFrame
    cost: PrivacyCost
    noise_sd: dict[str, float] = field(default_factory=dict)
    grid: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _NoiseSpec:
    """Calibrated noise for one integer query: decided from parameters only, before any draw."""

    event: dict[str, Any]
    scale: Fraction | None = None  # discrete Laplace
    sigma2: Fraction | None = None  # discrete Gaussian

    @classmethod
    def calibrate(cls, mechanism: str, eps: float, delta: float, per_group: int, l0: int,
                  exact: bool = True) -> _NoiseSpec:
        """Noise for a per-group query where a unit changes up to ``l0`` groups by at most the
        integer ``per_group`` each: L1 sensitivity ``l0 * per_group``, L2 ``sqrt(l0) * per_group``.

        ``exact=False`` (planning searches only, never a release): the scalar discrete Gaussian
        takes the continuous analytic σ, skipping the exact-PLD check that may raise it."""
        if mechanism == "laplace":
            sensitivity = l0 * per_group
            scale = rational_at_least(sensitivity / eps)
            return cls({"kind": "discrete_laplace", "parameter": float(1 / scale), "sensitivity": sensitivity}, scale=scale)
        if l0 == 1:  # one coordinate: the exact PLD of the scalar discrete Gaussian
            sigma = discrete_gaussian_sigma(eps, delta, per_group) if exact else analytic_gaussian_sigma(eps, delta, per_group)
            sigma2 = rational_at_least(sigma**2)
            event = {"kind": "discrete_gaussian", "sigma": math.sqrt(float(sigma2)), "sensitivity": per_group,
                     "epsilon": eps, "delta": delta}
            return cls(event, sigma2=sigma2)
        # Several coordinates: the multivariate discrete Gaussian is Δ2²/2σ²-zCDP (CKS20 Thm 14).
        l2_squared = l0 * per_group**2
        sigma2 = rational_at_least(l2_squared / (2 * zcdp_rho(eps, delta)))
        event = {"kind": "zcdp", "rho": float(Fraction(l2_squared) / (2 * sigma2)), "mechanism": "discrete_gaussian",
                 "sigma": math.sqrt(float(sigma2)), "l2_sensitivity": math.sqrt(l2_squared)}
        return cls(event, sigma2=sigma2)

    def draw(self, rng: RandomSource, size: int) -> np.ndarray:
        if self.scale is not None:
            return discrete_laplace(rng, self.scale, size)
        return discrete_gaussian(rng, self.sigma2, size)

    @property
    def sd(self) -> float:
        if self.scale is not None:
            return math.sqrt(discrete_laplace_variance(self.scale))
        return math.sqrt(discrete_gaussian_variance(self.sigma2))


def _sum_grid(mechanism: str, l0: int, linf: int, magnitude: float, eps: float, delta: float) -> float:
    """Power-of-two grid step γ of a fixed-point sum whose per-row magnitude is ``magnitude``.

    From parameters only (module docstring, step 4): the noise scale -- Laplace scale
    L0·Linf·c/ε, or the Gaussian σ, whose ratio to the sensitivity does not depend on the
    unit of the values -- spans at least 2^12 steps, and one value at most 2^14 steps.
    """
    if mechanism == "laplace":
        scale = l0 * linf * magnitude / eps
    elif l0 == 1:
        scale = analytic_gaussian_sigma(eps, delta, linf * magnitude)
    else:
        scale = math.sqrt(l0) * linf * magnitude / math.sqrt(2 * zcdp_rho(eps, delta))
    fine = 2.0 ** math.floor(math.log2(scale / _NOISE_STEPS))
    coarsest_needed = 2.0 ** math.ceil(math.log2(magnitude / _MAX_ROW_STEPS))
    return max(fine, coarsest_needed)


_SEARCH_STEPS = 32  # the search's stand-in puts at most this many lattice steps in a sensitivity
_TARGET = 0.995  # the search aims its stand-in at this fraction of ε (it must end in [0.99, 1])


def _coarsened(ev: dict[str, Any]) -> dict[str, Any]:
    """A cheap stand-in for one event, for the search of :func:`_common_share` only.

    The exact PLD of a discrete mechanism costs time linear in its noise scale in lattice
    steps (~10^4 for fixed-point sums, ~0.3 s each). The same noise-to-sensitivity ratio on a
    lattice with at most ``_SEARCH_STEPS`` steps per sensitivity has nearly the same PLD
    (a finer lattice only approaches the continuous mechanism), at a hundredth of the cost.
    Nothing is charged from it: the chosen plan is composed exactly afterwards.
    """
    steps = ev.get("sensitivity", 1)
    if ev["kind"] not in ("discrete_laplace", "discrete_gaussian") or steps <= _SEARCH_STEPS:
        return ev
    f = steps / _SEARCH_STEPS
    if ev["kind"] == "discrete_laplace":
        return {**ev, "parameter": ev["parameter"] * f, "sensitivity": _SEARCH_STEPS}
    return {**ev, "sigma": ev["sigma"] / f, "sensitivity": _SEARCH_STEPS}


def _common_share(plan: Callable[..., tuple], epsilon: float, delta: float, n_parts: int,
                  accountant: str = "pld") -> tuple[tuple, float]:
    """The common ε share of every part such that the release's *tight* composition spends as
    much of ε as it can without exceeding it (the equal weights of the parts are kept).

    Equal shares ε/n compose to ε under basic composition, but PLD composition at δ is far
    tighter (~43-56 % of ε for several Gaussian queries), so ε/n leaves budget unused. Like
    dp-accounting's ``mechanism_calibration.calibrate_dp_mechanism`` (which searches one
    mechanism parameter against an accountant with Brent's method), this searches one scalar
    -- the share s in [ε/n, ε] -- against the dataset's accountant as the ledger composes it
    (:func:`.accounting.compose_epsilon`; PLD by default, where the gain is largest; under
    ``basic`` the equal split is already tight and is kept): a secant step on log ε(s) (ε(s) is close to a
    power of s) kept inside a bisection bracket, on the stand-in events of :func:`_coarsened`,
    aiming at ``_TARGET``·ε. The caller composes the chosen plan exactly; if that exceeded ε
    the share is lowered by the excess (and, as a last resort, falls back to ε/n).

    Pure DP (δ = 0) needs no search: composition at δ = 0 is the basic sum, which the equal
    split already spends in full; a single part likewise gets all of ε.

    :returns: ``(plan(share), its exact composed ε at δ)``.
    """
    base = epsilon / n_parts

    def exact(share: float) -> tuple[tuple, float]:
        planned = plan(share)
        return planned, compose_epsilon(planned[2], delta, accountant)

    if n_parts == 1 or delta == 0:
        return exact(base)

    def approx(share: float) -> float:
        return compose_epsilon([_coarsened(ev) for ev in plan(share, search=True)[2]], delta, accountant)

    target = _TARGET * epsilon
    lo, c_lo = base, approx(base)
    if not c_lo < 0.99 * epsilon:  # already tight (or over: the caller reports it)
        return exact(base)
    hi, c_hi = epsilon, math.inf
    share = lo * target / c_lo  # ε(s) ~ s to first order
    for _ in range(12):
        share = min(max(share, lo * 1.0001), hi / 1.0001)
        c = approx(share)
        if c <= target:
            lo, c_lo = share, c
        else:
            hi, c_hi = share, c
        if c_lo >= 0.99 * epsilon or hi / lo < 1.001:
            break
        if math.isfinite(c_hi):  # secant on (log s, log ε) between the bracket's ends
            k = math.log(c_hi / c_lo) / math.log(hi / lo)
            share = lo * (target / c_lo) ** (1 / k) if k > 0 else math.sqrt(lo * hi)
        else:
            share = lo * target / c_lo
    # The exact plan's σ (checked against the discrete PLD) is never below the stand-in's;
    # still, verify with the exact composition and back off if the stand-in was optimistic.
    for _ in range(4):
        planned, spent = exact(lo)
        if spent <= epsilon:
            return planned, spent
        lo *= epsilon / spent * 0.998
        if lo <= base:
            break
    return exact(base)


def dp_aggregate(
    df: pd.DataFrame,
    *,
    epsilon: float,
    delta: float = 0.0,
    metrics: Mapping[str, Any],
    by: Sequence[str] = (),
    privacy_unit: str | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_groups_per_unit: int = 1,
    max_rows_per_group: int = 1,
    public_groups: pd.DataFrame | Mapping[str, Sequence[Any]] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    mechanism: str = "laplace",
    random_source: RandomSource | int | None = None,
    on_cost: Callable[[PrivacyCost], Any] | None = None,
    accountant: str = "pld",
) -> DPResult:
    """Release differentially private statistics of ``df``, grouped by ``by``.

    :param df: input rows.
    :param epsilon: total ε of this release, a real number in [1e-6, 100]
        (:data:`.calibration.MIN_EPSILON`, :data:`.calibration.MAX_EPSILON`).
    :param delta: total δ of this release, in [0, 1); must be > 0 for private partition
        selection (``by`` given and ``public_groups`` None) or ``mechanism="gaussian"``.
    :param metrics: ``{output column: spec}``; spec is ``"count"``, ``"count_units"``,
        ``("sum"|"mean"|"variance"|"std", column)``, ``("quantile", column, q)`` or
        ``("median", column)``.
    :param by: group-by columns (empty: one global row). Rows with a missing key in any of
        them belong to no group and are dropped -- unless ``public_groups`` lists the missing
        value (NaN/None), which then is a group like any other.
    :param privacy_unit: column identifying the protected individual; ``None`` protects rows.
        It may hold no missing values (``SchemaError`` naming the column and their count).
    :param bounds: ``{column: (lo, hi)}`` for every value column; values are clamped.
    :param max_groups_per_unit: L0 bound (ignored, = 1, when ``privacy_unit`` is None).
    :param max_rows_per_group: Linf bound (ignored, = 1, when ``privacy_unit`` is None). Each
        is an integer >= 1 and their product at most
        :data:`.bounding.MAX_CONTRIBUTIONS` (2^24 rows of one unit).
    :param public_groups: known group keys (DataFrame with the ``by`` columns, or
        ``{column: values}`` for their product). Every public group appears in the output,
        other groups are dropped, no δ is needed for selection.
    :param bins: ``{column: edges}`` -- histograms: each listed ``by`` column is replaced by
        its bin label ``"[lo, hi)"`` (last bin closed; values outside the edges go to the
        nearest end bin; NaN stays NaN). The bin labels are public, so a histogram over binned
        columns alone (``by`` = binned columns) needs no δ: every bin is released.
    :param mechanism: ``"laplace"`` (discrete Laplace, pure DP for the values) or
        ``"gaussian"`` (discrete Gaussian; requires δ > 0. With ``max_groups_per_unit`` 1 it is
        accounted by its exact PLD; above 1 a unit moves several groups at once, and the
        multivariate discrete Gaussian is accounted as Δ2²/2σ²-zCDP with Δ2 = sqrt(L0)·Linf·c,
        CKS20 Thm 14 -- noise grows with sqrt(L0), not L0 as for Laplace).
    :param random_source: tests only -- a seeded ``random.Random`` or an int seed; the
        default is the operating system's CSPRNG.
    :param accountant: how the budget this release is charged to composes (``"pld"``,
        ``"rdp"`` or ``"basic"``, the dataset's accountant in the ledger): the ε share of the
        queries is chosen so the release composes to at most ``epsilon`` under it, and
        ``result.cost.epsilon`` is that composition.
    :param on_cost: called with the release's :class:`PrivacyCost` after validation and
        planning but *before any noise is drawn* -- the budget ledger charges here; if it
        raises, nothing is computed or released.
    :returns: :class:`DPResult`.
    :raises InvalidParameterError: a parameter is out of range (message names it).
    :raises SchemaError: a named column is missing or not numeric.
    """
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError("df", type(df).__name__, "expected a pandas DataFrame")
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise InvalidParameterError("accountant", accountant, f"expected one of {ACCOUNTANTS}")
    specs = parse_metrics(metrics)
    if isinstance(by, str):
        by = [by]
    by = list(by)
    if len(set(by)) != len(by):
        raise InvalidParameterError("by", by, "group columns must be distinct")
    clash = [m.name for m in specs if m.name in by]
    if clash:
        raise InvalidParameterError("metrics", clash, f"output names must differ from the group columns {by}")
    if mechanism not in MECHANISMS:
        raise InvalidParameterError("mechanism", mechanism, f"expected one of {MECHANISMS}")
    l0, linf = check_contribution_bounds(max_groups_per_unit, max_rows_per_group)
    if privacy_unit is None:
        l0 = linf = 1
    value_cols = {m.column for m in specs if m.column is not None}
    needed = set(by) | value_cols | ({privacy_unit} if privacy_unit else set())
    missing = sorted(c for c in needed if c not in df.columns)
    if missing:
        raise SchemaError(f"input lacks column(s) {missing}; it has {list(df.columns)}")
    col_bounds = check_bounds(bounds, value_cols)
    for col in value_cols:
        if not (pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])):
            raise SchemaError(f"column {col!r} must be numeric for {sorted(m.kind for m in specs if m.column == col)}, got {df[col].dtype}")
    if bins:
        df, public_groups = apply_bins(df, bins, by, public_groups)
    private_selection = bool(by) and public_groups is None
    if private_selection and delta == 0:
        raise InvalidParameterError(
            "delta", delta, "private partition selection (by without public_groups) needs delta > 0; "
            "pass public_groups to release a known set of groups with delta = 0"
        )
    if mechanism == "gaussian":
        if delta == 0:
            raise InvalidParameterError("delta", delta, "mechanism='gaussian' needs delta > 0")
    if public_groups is not None and not by:
        raise InvalidParameterError("public_groups", public_groups, "only meaningful with `by` columns")
    if privacy_unit is not None:
        n_missing = int(df[privacy_unit].isna().sum())
        if n_missing:
            # Merging them into one "missing" unit would let many people share one contribution
            # bound; dropping them silently would hide a data problem. The caller decides.
            raise SchemaError(
                f"privacy_unit column {privacy_unit!r} has {n_missing} missing value(s); every row must "
                "belong to a known unit -- fill or drop those rows before the release")

    rng = default_random_source(random_source)
    nprng = numpy_generator(rng)

    # -- groups and bounding ----------------------------------------------------------------
    data = df[list(needed)]
    if public_groups is not None:
        groups = public_frame(public_groups, by)
        if len(by) == 1:  # a flat index: no n-row MultiIndex to build
            group_codes = pd.Index(groups[by[0]]).get_indexer(data[by[0]])
        else:
            group_codes = pd.MultiIndex.from_frame(groups).get_indexer(pd.MultiIndex.from_frame(data[by]))
        inside = group_codes >= 0
        data, group_codes = data[inside], group_codes[inside]
    elif by:
        # A missing key is not a group: those rows are dropped (never released as "NaN"); list
        # NaN in public_groups to release it as a group of its own.
        data = data[data[by].notna().all(axis=1).to_numpy()]
        group_codes, uniques = pd.MultiIndex.from_frame(data[by]).factorize()
        groups = uniques.to_frame(index=False)
        groups.columns = by
    else:
        groups = pd.DataFrame(index=[0])
        group_codes = np.zeros(len(data), dtype=np.int64)
    n_groups = len(groups)
    group_codes = np.asarray(group_codes, dtype=np.int64)
    if privacy_unit is None:
        unit_codes = np.arange(len(data), dtype=np.int64)
    else:
        unit_codes, _ = pd.factorize(data[privacy_unit])  # no missing values (checked above)
    kept = bound_contributions(unit_codes, group_codes, l0, linf, nprng)
    data = data.iloc[kept]
    gcodes = group_codes[kept]
    ucodes = np.asarray(unit_codes, dtype=np.int64)[kept]
    if private_selection:
        # Candidates are only the groups that still hold a unit *after* bounding. A group that
        # bounding emptied must not even get a noisy count: one unit with rows in G >> L0 groups
        # would otherwise raise the chance that some of its groups is released to ~G·δ/L0,
        # unbounded in G. After bounding a unit touches <= L0 candidate groups, which is what
        # the threshold's δ/L0 per group assumes (Korolova et al. 2009; Desfontaines et al. 2022,
        # and pipeline-dp, which select on the bounded data).
        present = np.flatnonzero(np.bincount(gcodes, minlength=n_groups))
        recode = np.full(n_groups, -1, dtype=np.int64)
        recode[present] = np.arange(len(present), dtype=np.int64)
        gcodes = recode[gcodes]
        groups = groups.iloc[present].reset_index(drop=True)
        n_groups = len(present)

    # -- the primitive queries and the budget split -----------------------------------------
    queries: list[tuple] = []
    kinds = {m.kind for m in specs}
    if "count" in kinds:
        queries.append(("rows",))
    if "count_units" in kinds and not private_selection:
        queries.append(("units",))
    for m in specs:
        if m.kind in ("sum", "mean", "variance", "std"):
            if m.kind != "sum":
                queries.append(("n", m.column))
            queries.append(("sum" if m.kind == "sum" else "normsum", m.column))
            if m.kind in ("variance", "std"):
                queries.append(("normsq", m.column))
        elif m.kind == "quantile":
            queries.append(("quantile", m.column, m.q))
    queries = list(dict.fromkeys(queries))
    n_parts = len(queries) + (1 if private_selection else 0)
    n_gauss = len([q for q in queries if q[0] != "quantile"]) if mechanism == "gaussian" else 0
    # Selection keeps 0.1 % of its δ share unused: PLD accounting of an (ε, δ) event needs a
    # sliver of slack above δ for its tail truncation, or the composed ε is infinite.
    delta_sel = (delta if n_gauss == 0 else delta / 2) * 0.999 if private_selection else 0.0
    delta_gauss = (delta - delta_sel) / n_gauss if n_gauss else 0.0

    # -- plan: every noise parameter and accounting event, from parameters only -------------
    def plan(share: float, search: bool = False):
        """Noise of every part calibrated to the common ε share ``share`` (and its δ share).
        ``search``: the scalar discrete Gaussian takes the analytic σ (cheap) instead of the
        σ checked against its exact PLD (never smaller) -- for the search below only."""
        specs_by_query: dict[tuple, _NoiseSpec] = {}
        grids: dict[tuple, tuple[float, float, float]] = {}  # query -> (gamma, magnitude, offset)
        events: list[dict[str, Any]] = []
        sel_scale = None
        if private_selection:
            sel_scale = rational_at_least(l0 / share)
            events.append({"kind": "approx", "epsilon": share, "delta": delta_sel})
        for q in queries:
            kind = q[0]
            if kind == "quantile":
                events.append({"kind": "exponential", "epsilon": share})
                continue
            if kind in ("rows", "n"):
                per_group = linf
            elif kind == "units":
                per_group = 1
            else:
                lo, hi = col_bounds[q[1]]
                half = (hi - lo) / 2
                magnitude, offset = {"sum": (max(abs(lo), abs(hi)), 0.0), "normsum": (half, 0.0),
                                     "normsq": (half * half / 2, half * half / 2)}[kind]
                gamma = _sum_grid(mechanism, l0, linf, magnitude, share, delta_gauss)
                grids[q] = (gamma, magnitude, offset)
                per_group = linf * math.ceil(magnitude / gamma)
            specs_by_query[q] = _NoiseSpec.calibrate(mechanism, share, delta_gauss, per_group, l0, exact=not search)
            events.append(specs_by_query[q].event)
        return specs_by_query, grids, events, sel_scale, share

    (specs_by_query, grids, events, sel_scale, share), spent = _common_share(plan, epsilon, delta, n_parts, accountant)
    cost = PrivacyCost(epsilon=spent, delta=delta, events=events)
    if not cost.epsilon <= epsilon * (1 + 1e-9):  # never release more than was asked for
        raise InvalidParameterError(
            "epsilon", epsilon, f"too small for this release: its {len(events)} mechanism(s) compose to "
            f"epsilon={cost.epsilon:.3g} at delta={delta:.3g}; ask for fewer metrics, a larger epsilon or delta")
    if on_cost is not None:
        on_cost(cost)  # e.g. the ledger's atomic check-and-charge; raising aborts the release

    # -- private partition selection --------------------------------------------------------
    answers: dict[tuple, Any] = {}
    noise_sd: dict[str, float] = {}
    grid: dict[str, float] = {}
    release = np.ones(n_groups, dtype=bool)
    if private_selection:
        pairs = np.unique(ucodes * n_groups + gcodes)
        units = np.bincount(pairs % n_groups, minlength=n_groups).astype(np.int64)
        noisy_units = units + discrete_laplace(rng, sel_scale, n_groups)
        p = math.exp(-1 / float(sel_scale))
        threshold = 1 + math.ceil(math.log(delta_sel * (1 + p) / l0) / math.log(p))
        release = noisy_units >= threshold
        answers[("units",)] = noisy_units.astype(float)
        noise_sd["count_units"] = math.sqrt(discrete_laplace_variance(sel_scale))

    # -- counts and fixed-point sums --------------------------------------------------------
    for q, spec in specs_by_query.items():
        kind = q[0]
        if kind == "rows":
            exact = np.bincount(gcodes, minlength=n_groups).astype(np.int64)
            answers[q], noise_sd["count"] = (exact + spec.draw(rng, n_groups)).astype(float), spec.sd
        elif kind == "units":
            pairs = np.unique(ucodes * n_groups + gcodes)
            exact = np.bincount(pairs % n_groups, minlength=n_groups).astype(np.int64)
            answers[q], noise_sd["count_units"] = (exact + spec.draw(rng, n_groups)).astype(float), spec.sd
        elif kind == "n":
            valid = data[q[1]].notna().to_numpy()
            exact = np.bincount(gcodes[valid], minlength=n_groups).astype(np.int64)
            answers[q], noise_sd[f"count({q[1]})"] = (exact + spec.draw(rng, n_groups)).astype(float), spec.sd
        else:
            col = q[1]
            lo, hi = col_bounds[col]
            mid = (lo + hi) / 2
            gamma, magnitude, offset = grids[q]
            vals = data[col].to_numpy(dtype=float, na_value=np.nan)
            valid = ~np.isnan(vals)
            v = np.clip(vals[valid], lo, hi)
            x = {"sum": v, "normsum": v - mid, "normsq": (v - mid) ** 2 - offset}[kind] if len(v) else v
            steps = math.ceil(magnitude / gamma)  # |x| <= magnitude, so rounding stays within this
            fixed = np.clip(stochastic_round(x / gamma, rng), -steps, steps)
            exact = _int_group_sums(fixed, gcodes[valid], n_groups)
            noisy = (exact + spec.draw(rng, n_groups)) * gamma
            answers[q] = (noisy, offset) if kind == "normsq" else noisy
            noise_sd[f"{kind}({col})"] = spec.sd * gamma
            grid[f"{kind}({col})"] = gamma

    # -- quantiles (exponential mechanism) --------------------------------------------------
    for q in queries:
        if q[0] == "quantile":
            col, qq = q[1], q[2]
            answers[q] = dp_quantiles(data[col].to_numpy(dtype=float, na_value=np.nan), gcodes, n_groups,
                                       col_bounds[col], qq, share / l0, linf, rng)

    # -- assemble the table (post-processing only) ------------------------------------------
    out = groups.copy() if by else pd.DataFrame(index=range(1))
    for m in specs:
        if m.kind == "count":
            out[m.name] = np.maximum(np.rint(answers[("rows",)]), 0).astype(np.int64)
        elif m.kind == "count_units":
            out[m.name] = np.maximum(np.rint(answers[("units",)]), 0).astype(np.int64)
        elif m.kind == "sum":
            out[m.name] = answers[("sum", m.column)]
        elif m.kind == "quantile":
            out[m.name] = answers[("quantile", m.column, m.q)]
        else:
            lo, hi = col_bounds[m.column]
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            n = np.maximum(answers[("n", m.column)], 1.0)
            mean_c = np.clip(answers[("normsum", m.column)] / n, -half, half)
            if m.kind == "mean":
                out[m.name] = mean_c + mid
            else:
                sq, offset = answers[("normsq", m.column)]
                var = np.clip((sq / n + offset) - mean_c**2, 0.0, half * half)
                out[m.name] = var if m.kind == "variance" else np.sqrt(var)
    out = out[release].reset_index(drop=True) if by else out
    return DPResult(table=out, cost=cost, noise_sd=noise_sd, grid=grid)


def _int_group_sums(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Exact int64 per-group sums (float bincount is exact while |total| < 2^53)."""
    if len(values) == 0:
        return np.zeros(n_groups, dtype=np.int64)
    if len(values) * int(np.abs(values).max()) < 2**53:
        return np.rint(np.bincount(codes, weights=values, minlength=n_groups)).astype(np.int64)
    sums = np.zeros(n_groups, dtype=np.int64)
    np.add.at(sums, codes, values)
    return sums


