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
    3. The primitive queries and the budget split are planned from parameters and public
       schema facts only (:mod:`.plan`): queries are shared where the parameters make them
       equal (the selection's noisy count is the row count: of units = rows with Linf = 1, of
       rows with Linf > 1 unless count_units is asked; a column that
       cannot hold NaN -- integer/bool dtype, or ``missing_values="refuse"`` -- takes the row
       count as its value count; else rows with and without a value are one "cells" count;
       a sum beside its column's mean is normsum + mid·n), and ε is split by the cube-root
       rule ε_q ∝ a_q^(1/3) (:func:`.plan.budget_weights`; selection gets at least 1/k).
       ``result.cost`` (what the ledger charges) is the *tight* composition of the
       mechanisms that ran, at δ, under the dataset's ``accountant``: the common scale of the
       shares is searched (:func:`.plan.common_share`, after dp-accounting's
       ``calibrate_dp_mechanism``) until the cost is within 1 % of ε and never above it.
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
    6. Private partition selection (:mod:`.selection`): the candidates are only the groups
       that still hold a unit after bounding. Thresholding: a group is released when its noisy
       count (unit count, or row count when that is the released count; discrete Laplace or
       discrete Gaussian) reaches an exact integer threshold that a group of one unit (1 unit,
       <= Linf rows) reaches with probability <= δ_T/L0 (Korolova et al. 2009; Wilson et al.
       2020; Gopi et al. 2020). Truncated geometric (Desfontaines et al. 2022), when no metric
       reuses the selection's count: each group kept with the optimal probability π(n) of its
       unit count at (ε/L0, δ/L0), computed exactly in integers. Which one runs is decided
       from the parameters: the lowest half-keep count (:func:`.selection.plan_selection`).

Steps 4-6 and the table's assembly run after the charge, in :func:`.release.draw_release`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from airflow_privacy.core.dp import accuracy
from airflow_privacy.core.dp.accounting import ACCOUNTANTS, PrivacyCost
from airflow_privacy.core.dp.bounding import check_contribution_bounds
from airflow_privacy.core.dp.calibration import (
    check_delta,
    check_epsilon,
)
from airflow_privacy.core.dp.engines import (
    AggregateRequest,
    SumQuery,
    choose_engine,
    is_dataset,
    load_engine,
)
from airflow_privacy.core.dp.engines.dataset import resolve
from airflow_privacy.core.dp.noise import (
    RandomSource,
    default_random_source,
)
from airflow_privacy.core.dp.plan import (
    SELECTION,
    NoiseSpec,
    budget_weights,
    common_share,
    primitive_queries,
    sum_grid,
)
from airflow_privacy.core.dp.release import DPResult, draw_release
from airflow_privacy.core.dp.selection import (
    THRESHOLD_EPSILON,
    plan_selection,
    truncated_geometric_table,
)
from airflow_privacy.core.dp.spec import (
    MECHANISMS,
    apply_bins,
    check_bounds,
    parse_metrics,
    public_frame,
)
from airflow_privacy.core.errors import InvalidParameterError

MAX_DELTA = 0.5
"""δ of one release is below 1/2 (issue 17 §6: δ = 0.999 broke the budget search)."""
MISSING_VALUES = ("skip", "refuse")


def dp_aggregate(
    df: pd.DataFrame | str | Sequence[str],
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
    missing_values: str = "skip",
    error_bars: Sequence[str] | str | None = (),
    engine: str | None = None,
) -> DPResult:
    """Release differentially private statistics of ``df``, grouped by ``by``.

    :param df: input rows: a DataFrame, or a Parquet dataset (file, glob, hive-partitioned
        folder, fsspec URI, or a list of them; files in sorted order).
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
    :param missing_values: NaN in a value column: ``"skip"`` leaves it out of that column's
        statistics (it still counts as a row; a float column then needs a value count of its
        own), ``"refuse"`` raises :class:`SchemaError` before anything is charged -- the column
        is then known to hold a value in every row, and its value count is the row count (one
        query fewer). Integer and boolean columns cannot hold NaN: always the latter.
    :param error_bars: ``"sd"`` and/or ``"ci95"``: add the columns ``<metric>_sd`` (noise
        standard deviation) and ``<metric>_ci95`` (half-width of an interval holding the
        bounded statistic with probability >= 95 %) per metric but quantiles, computed from
        public parameters and released values only (:mod:`.accuracy`: exact for counts and
        sums, approximate for means, variances and std). Whatever is asked, every metric is
        rounded to the power of ten at or below its sd/10 and ``result.accuracy`` holds them.
    :param engine: where bounding and the integer aggregates run (:mod:`.engines`):
        ``"pandas"`` (in memory) or ``"duckdb"`` (out of core over a Parquet dataset, within a
        memory limit, spilling to disk); ``None`` chooses by input size
        (:func:`.engines.choose_engine`). Noise, selection and accounting are the same for every
        engine. Quantiles, medians and ``bins`` need ``"pandas"``.
    :param on_cost: called with the release's :class:`PrivacyCost` after validation, planning
        and the engine's pre-noise aggregates (so a dataset that cannot be read is never
        charged), but *before any noise is drawn* -- the budget ledger charges here; if it
        raises, nothing is released.
    :returns: :class:`DPResult`.
    :raises InvalidParameterError: a parameter is out of range (message names it).
    :raises SchemaError: a named column is missing or not numeric.
    """
    if not (isinstance(df, pd.DataFrame) or is_dataset(df)):
        raise InvalidParameterError("df", type(df).__name__, "expected a pandas DataFrame or a Parquet dataset URI")
    engine = choose_engine(df, engine)
    runner = load_engine(engine)
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    if delta >= MAX_DELTA:
        raise InvalidParameterError(
            "delta", delta, f"expected a number in [0, {MAX_DELTA:g}): at delta >= 1/2 a group or value held by a "
            "single unit may be released every other time, which protects no one")
    if missing_values not in MISSING_VALUES:
        raise InvalidParameterError("missing_values", missing_values, f"expected one of {MISSING_VALUES}")
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
    error_bars = accuracy.check_error_bars(error_bars)
    bar_names = [f"{m.name}_{e}" for m in specs if m.kind != "quantile" for e in error_bars]
    clash = sorted(set(bar_names) & ({m.name for m in specs} | set(by)))
    if clash:
        raise InvalidParameterError("error_bars", list(error_bars), f"its columns {clash} clash with a metric or group column")
    l0, linf = check_contribution_bounds(max_groups_per_unit, max_rows_per_group)
    if privacy_unit is None:
        l0 = linf = 1
    value_cols = {m.column for m in specs if m.column is not None}
    needed = set(by) | value_cols | ({privacy_unit} if privacy_unit else set())
    if engine != "pandas" and (bins or any(m.kind == "quantile" for m in specs)):
        raise InvalidParameterError("engine", engine, "quantiles, medians and bins need engine='pandas' "
                                    "(they use the rows, not only the integer aggregates)")
    if engine == "pandas" and not isinstance(df, pd.DataFrame):
        df = resolve(df).to_pandas(sorted(needed))
    col_bounds = check_bounds(bounds, value_cols)
    nan_free = runner.inspect(df, needed=needed, value_cols=value_cols, privacy_unit=privacy_unit,
                              missing_values=missing_values,
                              kinds={c: sorted(m.kind for m in specs if m.column == c) for c in value_cols})
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
    rng = default_random_source(random_source)

    # -- the primitive queries and the budget split (parameters and public schema only) -----
    # nan_free (the engine's inspect): public facts only -- the declared policy, or a numpy
    # integer/boolean dtype (no NaN possible).
    queries, sources = primitive_queries(specs, private_selection=private_selection, linf=linf, nan_free=nan_free)
    parts = ([SELECTION] if private_selection else []) + queries
    weights = budget_weights(specs, sources, parts, col_bounds, l0, linf)
    k = len(parts)
    n_gauss = len([q for q in queries if q[0] != "quantile"]) if mechanism == "gaussian" else 0
    selection = None
    delta_gauss = delta / n_gauss if n_gauss else 0.0
    sel_per_group = 1  # the most one unit adds to a selection count
    if private_selection:
        reused = any(q == SELECTION for src in sources.values() for q in src.values())
        # With Linf > 1 a selection reused as the row count (or a value count) thresholds rows
        if linf > 1 and any(q == SELECTION and role in ("rows", "n")
                            for src in sources.values() for role, q in src.items()):
            sel_per_group = linf

        def select(w: dict[tuple, float]) -> Any:
            return plan_selection(l0=l0, eps_sel=epsilon * w[SELECTION], delta=delta, gaussian_queries=n_gauss,
                                  reused=reused, accountant=accountant, per_group=sel_per_group)

        selection = select(weights)
        if reused and mechanism == "laplace" and selection.mechanism == "gaussian":
            # The weights priced the reused count at Laplace variance; it runs Gaussian (more
            # groups kept), whose variance at that share is another: weigh it by the ratio.
            eps_sel = epsilon * weights[SELECTION]
            gauss = NoiseSpec.calibrate("gaussian", eps_sel, selection.delta_gauss, sel_per_group, l0, exact=False,
                                        accountant=accountant)
            ratio = float(gauss.sigma2) / (2 * (l0 * sel_per_group / eps_sel) ** 2)
            reweighed = budget_weights(specs, sources, parts, col_bounds, l0, linf, variance_factor={SELECTION: ratio})
            again = select(reweighed)
            if again.mechanism == "gaussian":
                weights, selection = reweighed, again
        delta_gauss = selection.delta_gauss
    delta_t = selection.delta_t if selection else 0.0

    def plan(share: float, search: bool = False):
        """Noise of every part at its ε share ``share·k·w_q`` (and its δ share). ``search``:
        the scalar discrete Gaussian takes the analytic σ (cheap) instead of the σ checked
        against its exact PLD (never smaller) -- for the search below only."""
        noise: dict[tuple, NoiseSpec] = {}
        grids: dict[tuple, tuple[float, float, float]] = {}  # query -> (gamma, magnitude, offset)
        events: list[dict[str, Any]] = []
        eps_of = {q: share * k * w for q, w in weights.items()}
        if selection is not None and selection.mechanism == "truncated_geometric":
            events.append({"kind": "approx", "epsilon": eps_of[SELECTION] / l0, "delta": delta_t / l0, "count": l0})
        elif selection is not None:
            noise[SELECTION] = NoiseSpec.calibrate(selection.mechanism, eps_of[SELECTION], delta_gauss, sel_per_group, l0,
                                                   exact=not search, accountant=accountant)
            events += [noise[SELECTION].event, {"kind": "approx", "epsilon": THRESHOLD_EPSILON, "delta": delta_t}]
        for q in queries:
            kind, eps_q = q[0], eps_of[q]
            if kind == "quantile":
                events.append({"kind": "exponential", "epsilon": eps_q})
                continue
            if kind in ("rows", "n", "cells"):
                per_group = linf
            elif kind == "units":
                per_group = 1
            else:
                lo, hi = col_bounds[q[1]]
                half = (hi - lo) / 2
                magnitude, offset = {"sum": (max(abs(lo), abs(hi)), 0.0), "normsum": (half, 0.0),
                                     "normsq": (half * half / 2, half * half / 2)}[kind]
                gamma = sum_grid(mechanism, l0, linf, magnitude, eps_q, delta_gauss, accountant)
                grids[q] = (gamma, magnitude, offset)
                per_group = linf * math.ceil(magnitude / gamma)
            noise[q] = NoiseSpec.calibrate(mechanism, eps_q, delta_gauss, per_group, l0, exact=not search,
                                           accountant=accountant)
            events.append(noise[q].event)
        return noise, grids, events, eps_of

    # The threshold's (THRESHOLD_EPSILON, δ_T) event is paid off the top, so the total stays <= ε.
    budget = epsilon - THRESHOLD_EPSILON if private_selection else epsilon
    (noise, grids, events, eps_of), spent = common_share(plan, budget, delta, k, accountant)
    accuracy.label_events(noise, grids, sources, {m.name: m.kind for m in specs}, col_bounds)  # for the ledger
    cost = PrivacyCost(epsilon=spent, delta=delta, events=events)
    if not cost.epsilon <= epsilon * (1 + 1e-9):  # never release more than was asked for
        raise InvalidParameterError(
            "epsilon", epsilon, f"too small for this release: its {len(events)} mechanism(s) compose to "
            f"epsilon={cost.epsilon:.3g} at delta={delta:.3g}; ask for fewer metrics, a larger epsilon or delta")
    tg_table = None  # the truncated geometric's keep probabilities at the charged (ε/L0, δ/L0)
    if selection is not None and selection.mechanism == "truncated_geometric":
        tg_table = truncated_geometric_table(eps_of[SELECTION] / l0, delta_t / l0)
    # -- the engine: bounding, clamping, rounding, integer aggregates -- before the charge, so
    # unreadable data is never charged; nothing computed here is released -------------------
    sum_queries = {}
    for q, (gamma, magnitude, offset) in grids.items():
        lo, hi = col_bounds[q[1]]
        sum_queries[q] = SumQuery(q[0], q[1], lo, hi, gamma, offset, math.ceil(magnitude / gamma))
    request = AggregateRequest(
        by=tuple(by), privacy_unit=privacy_unit,
        public_groups=None if public_groups is None else public_frame(public_groups, by),
        l0=l0, linf=linf, private_selection=private_selection,
        count_columns=tuple(dict.fromkeys(q[1] for q in queries if q[0] in ("n", "cells"))),
        sums=tuple(sum_queries.values()))
    agg = runner.aggregate(df, request, rng)
    if on_cost is not None:
        on_cost(cost)  # e.g. the ledger's atomic check-and-charge; raising aborts the release

    return draw_release(
        agg, rng, cost=cost, specs=specs, sources=sources, queries=queries, noise=noise, grids=grids,
        sum_queries=sum_queries, eps_of=eps_of, col_bounds=col_bounds, by=by, l0=l0, linf=linf,
        selection=selection, sel_per_group=sel_per_group, delta_t=delta_t, tg_table=tg_table,
        error_bars=error_bars)
