"""The DuckDB engine's fast plan (issue 15): the native SQL keyed hash and rounding equal
:mod:`..engines.keyed`'s numpy functions bit for bit; each of the plan's paths (pairs within
Linf kept whole, overflowing pairs trimmed on a second scan, units within L0 kept whole, NULL
public groups) gives exactly the pandas engine's pre-noise integers; the subkeys never appear
in SQL text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.dp.engines import AggregateRequest, SumQuery, duckdb_engine, pandas_engine
from airflow_privacy.core.dp.engines.keyed import GROUPS, ROWS, ReleaseKey, keyed_round, keyed_words
from tests.core.dp.test_engines import _write

SUMS = (SumQuery("sum", "x", -3, 10, 2**-6, 0.0, 832), SumQuery("normsum", "x", -3, 10, 2**-5, 0.0, 208),
        SumQuery("normsq", "x", -3, 10, 2**-3, 21.0, 400))


def _native(sql_expr: str, params: dict, positions: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    with duckdb_engine._connect() as con:
        frame = pd.DataFrame({"pos": positions, "v_x": values if values is not None else 0.0})
        con.register("t", frame)
        con.register("ap_keys", duckdb_engine._key_table(params))
        return con.execute(f"SELECT {sql_expr} AS w FROM t CROSS JOIN ap_keys ORDER BY pos").df()["w"].to_numpy()


def test_native_words_equal_numpy_bit_for_bit():
    key = ReleaseKey.fresh()
    rng = np.random.default_rng(5)
    # small, large and extreme positions: every product wraps mod 2^64
    pos = np.unique(np.concatenate([np.arange(2000), rng.integers(0, 2**63 - 1, 2000, dtype=np.int64),
                                    [2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1]]))
    for domain in (GROUPS, ROWS, "round:sum:x"):
        params: dict[str, int] = {}
        got = _native(duckdb_engine._words("pos", domain, params, key), params, pos).astype(np.uint64)
        np.testing.assert_array_equal(got, keyed_words(key, domain, pos), err_msg=domain)


@pytest.mark.parametrize("q", SUMS, ids=lambda q: q.kind)
def test_native_rounding_equals_keyed_round(q):
    key = ReleaseKey.fresh()
    rng = np.random.default_rng(6)
    n = 20_000
    # fractional parts near 0 and 1, exact grid points, values outside the bounds, NaN
    x = np.concatenate([rng.uniform(-5, 12, n - 8), [-3.0, 10.0, 2**-50, 1 - 2**-53, -1e300, 1e300, np.nan, 0.0]])
    pos = np.arange(n, dtype=np.int64) * 7919
    params: dict[str, int] = {}
    got = _native(duckdb_engine._fixed_expr(q, duckdb_engine._words("pos", q.domain, params, key)), params, pos, x)
    valid = ~np.isnan(x)
    v = np.clip(x[valid], q.lo, q.hi)
    if q.kind != "sum":
        v -= (q.lo + q.hi) / 2
    if q.kind == "normsq":
        v = v * v - q.offset
    want = np.clip(keyed_round(key, q.domain, v / q.gamma, pos[valid]), -q.steps, q.steps)
    np.testing.assert_array_equal(got[valid].astype(np.int64), want)
    assert pd.isna(got[~valid]).all()


def _data(seed: int) -> pd.DataFrame:
    """Units of very different sizes: some with 1-2 pairs of 1-2 rows (kept whole), some
    with many groups (over L0) and pairs of many rows (over Linf)."""
    rng = np.random.default_rng(seed)
    small = pd.DataFrame({"u": rng.integers(0, 400, 1500), "g": rng.choice(list("abcdef"), 1500)})
    heavy = pd.DataFrame({"u": rng.integers(1000, 1010, 3000), "g": rng.choice(list("abcdef"), 3000)})
    df = pd.concat([small, heavy]).sample(frac=1, random_state=seed).reset_index(drop=True)
    df["x"] = rng.normal(3, 5, len(df))
    df.loc[::13, "x"] = np.nan
    return df


def _assert_identical(a, b) -> None:
    def table(agg):
        t = agg.groups.copy()
        t["rows"], t["units"] = agg.rows, agg.units
        for c, v in agg.values.items():
            t[f"n_{c}"] = v
        for q, s in agg.sums.items():
            t[q.domain] = s
        return t.sort_values(list(agg.groups.columns), na_position="last").reset_index(drop=True)
    pd.testing.assert_frame_equal(table(a), table(b), check_dtype=False)


@pytest.mark.parametrize(("l0", "linf"), [(2, 3), (1, 1), (6, 1000), (3, 40)])
def test_every_path_of_the_plan_matches_pandas(tmp_path, l0, linf):
    df = _data(7)
    pair_sizes = df.groupby(["u", "g"]).size()
    groups_per_unit = df.groupby("u")["g"].nunique()
    # the data holds both kinds of pairs and units, so each parametrization takes both paths
    # (or, with Linf = 1000 and L0 = 6, only the no-trim path)
    print(f"L0={l0} Linf={linf}: pairs over Linf {(pair_sizes > linf).sum()} / {len(pair_sizes)}, "
          f"units over L0 {(groups_per_unit > l0).sum()} / {len(groups_per_unit)}")
    assert (pair_sizes <= linf).any() and (groups_per_unit <= l0).any()
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=l0, linf=linf, private_selection=True,
                           count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    a = pandas_engine.aggregate(df, req, None)
    b = duckdb_engine.aggregate(_write(df, tmp_path), req, None)
    _assert_identical(a, b)
    if l0 >= groups_per_unit.max():  # every pair kept: the rows are exactly sum(min(n, Linf))
        assert b.rows.sum() == np.minimum(pair_sizes, linf).sum()


def _at_the_bounds(l0: int, linf: int) -> pd.DataFrame:
    """Half the units hold exactly L0 groups, half L0 + 1; their pairs hold exactly Linf or
    Linf + 1 rows -- the edges of the plan's "kept whole" and "cut" paths."""
    cells = [(unit, f"g{j}") for unit in range(60) for j in range(l0 + unit % 2)
             for _ in range(linf + (unit // 2 + j) % 2)]
    df = pd.DataFrame(cells, columns=["u", "g"]).sample(frac=1, random_state=l0).reset_index(drop=True)
    df["x"] = np.random.default_rng(l0).normal(3, 5, len(df))
    return df


@pytest.mark.parametrize(("l0", "linf"), [(1, 1), (3, 2)])
@pytest.mark.parametrize("figures", [True, False], ids=["sums", "counts-only"])
def test_units_and_pairs_at_and_just_over_the_bounds_match_pandas(tmp_path, l0, linf, figures):
    df = _at_the_bounds(l0, linf)
    groups_per_unit = df.groupby("u")["g"].nunique()
    assert set(groups_per_unit) == {l0, l0 + 1} and set(df.groupby(["u", "g"]).size()) == {linf, linf + 1}
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=l0, linf=linf, private_selection=True,
                           count_columns=("x",) if figures else (), sums=SUMS if figures else (),
                           key=ReleaseKey.fresh())
    a = pandas_engine.aggregate(df, req, None)
    b = duckdb_engine.aggregate(_write(df, tmp_path), req, None)
    _assert_identical(a, b)
    assert b.units.sum() == len(groups_per_unit) * l0  # every unit keeps exactly L0 pairs...
    assert b.rows.sum() == b.units.sum() * linf  # ...of exactly Linf rows each


def test_null_public_group_is_a_group_on_both_engines(tmp_path):
    # public_groups may list a missing key: its rows are a group of their own (encoding.py);
    # the plan must not lose them in a join on equality
    df = _data(8)
    df["g"] = df["g"].where(df.index % 5 != 0, None)
    pub = pd.DataFrame({"g": ["a", None, "zz"]})
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=pub, l0=2, linf=2, private_selection=False,
                           count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    a = pandas_engine.aggregate(df, req, None)
    b = duckdb_engine.aggregate(_write(df, tmp_path), req, None)
    assert b.rows[1] > 0 and b.rows[2] == 0
    _assert_identical(a, b)


def test_subkeys_never_in_sql_text_nor_in_the_profiled_plan(tmp_path, monkeypatch):
    key = ReleaseKey.fresh()
    profile = tmp_path / "profile.json"
    secrets = {str(int(k)) for d in (GROUPS, ROWS, *(q.domain for q in SUMS)) for k in key.subkeys(d)}
    seen: list[str] = []
    connect = duckdb_engine._connect

    class Recording:
        """The real connection; records the text of every statement."""

        def __init__(self) -> None:
            self.opened = connect()

        def __enter__(self):
            self.con = self.opened.__enter__()
            self.con.execute(f"PRAGMA enable_profiling='json'; PRAGMA profiling_output='{profile}'")
            return self

        def __exit__(self, *exc) -> None:
            self.opened.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.con, name)

        def execute(self, sql, params=None):
            seen.append(sql)
            return self.con.execute(sql, params)

    monkeypatch.setattr(duckdb_engine, "_connect", Recording)
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=2, linf=3, private_selection=True,
                           count_columns=("x",), sums=SUMS, key=key)
    duckdb_engine.aggregate(_write(_data(9), tmp_path), req, None)
    assert seen and not any(s in sql for s in secrets for sql in seen)
    plan = profile.read_text()  # every operator, expression and constant of the executed plan
    assert not [s for s in secrets if s in plan]
    assert "ap_words" in plan or "UHUGEINT" in plan  # the hash's expressions are in it


@pytest.mark.slow
def test_pairs_beyond_memory_limit_spill_instead_of_failing(tmp_path, monkeypatch):
    # ~1 M units, ~2 M (unit, group) pairs under a 128 MB memory_limit: the plan must stream
    # and spill them and still give pandas' integers. The previous plan (a materialized pairs
    # table read twice, a top-L0 list aggregate per unit joined back) failed here with DuckDB's
    # out-of-memory error -- as it did at 200 M rows under the default 2 GB.
    monkeypatch.setattr(duckdb_engine, "MEMORY_LIMIT", "128MB")
    rng = np.random.default_rng(7)
    n = 2_000_000
    df = pd.DataFrame({"u": rng.integers(0, n // 2, n), "g": rng.integers(0, 1000, n).astype(np.int32),
                       "x": rng.normal(3, 5, n)})
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=4, linf=5, private_selection=True,
                           count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    spilled = duckdb_engine.aggregate(_write(df, tmp_path, parts=4), req, None)
    _assert_identical(pandas_engine.aggregate(df, req, None), spilled)
