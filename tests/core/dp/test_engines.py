"""The engines' seam: given the same key and data, pandas and DuckDB produce identical
pre-noise integer aggregates; candidates are only groups holding a unit after bounding;
bad datasets fail by name before anything is read into a release."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from airflow_privacy.core.dp.engines import (
    AggregateRequest,
    SumQuery,
    choose_engine,
    duckdb_engine,
    load_engine,
    pandas_engine,
)
from airflow_privacy.core.dp.engines.keyed import ReleaseKey, keyed_words
from airflow_privacy.core.errors import InvalidParameterError, SchemaError

SUMS = (SumQuery("sum", "x", 0, 10, 2**-6, 0.0, 640), SumQuery("normsum", "x", 0, 10, 2**-6, 0.0, 320),
        SumQuery("normsq", "x", 0, 10, 2**-4, 12.5, 200))


def _data(n: int = 20_000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"u": rng.integers(0, 500, n), "g": rng.choice(list("abcdefgh"), n),
                       "h": rng.integers(0, 3, n), "x": rng.normal(5, 4, n)})
    df.loc[::17, "x"] = np.nan
    return df


def _write(df: pd.DataFrame, folder, parts: int = 3) -> str:
    n = len(df)
    for i in range(parts):
        df.iloc[i * n // parts:(i + 1) * n // parts].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder)


def _sorted(agg, by):
    order = agg.groups.sort_values(list(by)).index.to_numpy() if by else np.array([0])
    out = {"groups": agg.groups.iloc[order].reset_index(drop=True), "rows": agg.rows[order],
           "units": agg.units[order], **{f"n_{c}": v[order] for c, v in agg.values.items()},
           **{q.domain: s[order] for q, s in agg.sums.items()}}
    return out


def _assert_same(a, b, by):
    a, b = _sorted(a, by), _sorted(b, by)
    pd.testing.assert_frame_equal(a.pop("groups"), b.pop("groups"), check_dtype=False)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize(("by", "unit", "l0", "linf"), [
    (("g",), "u", 2, 3), (("g", "h"), "u", 1, 1), (("g",), None, 1, 1), ((), "u", 1, 2)])
def test_pandas_and_duckdb_give_identical_pre_noise_integers(tmp_path, by, unit, l0, linf):
    df = _data()
    source = _write(df, tmp_path)
    req = AggregateRequest(by=by, privacy_unit=unit, public_groups=None, l0=l0, linf=linf,
                           private_selection=bool(by), count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    a = pandas_engine.aggregate(df, req, None)
    b = duckdb_engine.aggregate(source, req, None)
    _assert_same(a, b, by)
    assert a.rows.sum() < len(df) or unit is None  # bounding did drop rows
    # another key, other choices (the choices do depend on the key)
    c = duckdb_engine.aggregate(source, AggregateRequest(**{**req.__dict__, "key": ReleaseKey.fresh()}), None)
    assert any((_sorted(b, by)[q.domain] != _sorted(c, by)[q.domain]).any() for q in SUMS)


def test_public_groups_identical_and_complete(tmp_path):
    df = _data()
    pub = pd.DataFrame({"g": ["a", "c", "zz"]})  # "zz" is in no row: released with zeros
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=pub, l0=1, linf=2, private_selection=False,
                           count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    a = pandas_engine.aggregate(df, req, None)
    b = duckdb_engine.aggregate(_write(df, tmp_path), req, None)
    assert list(b.groups["g"]) == ["a", "c", "zz"]
    _assert_same(a, b, ("g",))
    assert b.rows[2] == 0 and b.units[2] == 0


@pytest.mark.parametrize("engine", ["pandas", "duckdb"])
def test_candidates_only_groups_holding_a_unit_after_bounding(tmp_path, engine):
    # One unit has rows in 40 groups; with L0 = 2 only 2 of them may even be candidates.
    df = pd.DataFrame({"u": [7] * 40 + list(range(100, 110)), "g": [f"s{i}" for i in range(40)] + ["pub"] * 10,
                       "x": 1.0})
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=2, linf=1, private_selection=True,
                           key=ReleaseKey.fresh())
    data = df if engine == "pandas" else _write(df, tmp_path, parts=2)
    agg = load_engine(engine).aggregate(data, req, None)
    secret = [g for g in agg.groups["g"] if g.startswith("s")]
    assert len(secret) == 2 and (agg.units > 0).all()
    assert agg.units[list(agg.groups["g"]).index("pub")] == 10


def test_keyed_choice_of_groups_is_uniform_whatever_the_group_sizes():
    # A unit with 4 groups of 1, 2, 5 and 20 rows keeps L0 = 1 group: each with probability
    # 1/4 over fresh keys (a min-hash over rows would favour the 20-row group).
    sizes = [1, 2, 5, 20]
    df = pd.DataFrame({"u": 0, "g": np.repeat(np.arange(4), sizes)})
    trials = 800
    chosen = np.zeros(4, dtype=int)
    for _ in range(trials):
        req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=1, linf=1,
                               private_selection=True, key=ReleaseKey.fresh())
        chosen[int(pandas_engine.aggregate(df, req, None).groups["g"].iloc[0])] += 1
    p = stats.chisquare(chosen).pvalue
    print(f"{trials} keys, group chosen counts {chosen.tolist()}, chi-square p = {p:.3f}")
    assert p > 1e-4  # fails with probability 1e-4 under uniformity


def test_keyed_words_are_uniform_bits():
    words = keyed_words(ReleaseKey.fresh(), "rows", np.arange(1 << 16))
    ones = np.unpackbits(words.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 6 * 0.5 / np.sqrt(64 * (1 << 16))  # 6 sd of a fair bit's mean


def test_schema_differing_between_partitions_is_named(tmp_path):
    pd.DataFrame({"u": [1], "x": [1.0]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"u": [1], "x": ["one"]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"source .*b\.parquet.*differs"):
        duckdb_engine.inspect(str(tmp_path), needed={"u", "x"}, value_cols={"x"}, privacy_unit="u",
                              missing_values="skip", kinds={"x": ["sum"]})


def test_empty_dataset_and_no_files_name_source(tmp_path):
    with pytest.raises(InvalidParameterError, match="source.*matches no Parquet file"):
        duckdb_engine.inspect(str(tmp_path / "*.parquet"), needed=set(), value_cols=set(), privacy_unit=None,
                              missing_values="skip", kinds={})
    pd.DataFrame({"u": pd.Series([], dtype="int64")}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(InvalidParameterError, match="source.*hold none"):
        duckdb_engine.inspect(str(tmp_path), needed=set(), value_cols=set(), privacy_unit=None,
                              missing_values="skip", kinds={})


def test_hive_partitioned_folder_and_glob(tmp_path):
    df = _data(3000)
    for g, part in df.groupby("g"):
        (tmp_path / f"g={g}").mkdir()
        part.drop(columns="g").to_parquet(tmp_path / f"g={g}" / "data.parquet", index=False)
    req = AggregateRequest(by=("g",), privacy_unit=None, public_groups=None, l0=1, linf=1, private_selection=True,
                           key=ReleaseKey.fresh())
    agg = duckdb_engine.aggregate(str(tmp_path), req, None)
    assert dict(zip(agg.groups["g"], agg.rows, strict=True)) == df.groupby("g").size().to_dict()
    glob = duckdb_engine.aggregate(str(tmp_path / "g=a" / "*.parquet"), AggregateRequest(
        by=(), privacy_unit=None, public_groups=None, l0=1, linf=1, private_selection=False), None)
    assert glob.rows.tolist() == [int((df["g"] == "a").sum())]


def test_engine_choice_and_unknown_engine(tmp_path):
    assert choose_engine(pd.DataFrame({"a": [1]}), None) == "pandas"
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "a.parquet")
    assert choose_engine(str(tmp_path), None) == "pandas"  # a few bytes: under PANDAS_MAX_BYTES
    with pytest.raises(InvalidParameterError, match="engine.*'polars'.*expected one of"):
        choose_engine(str(tmp_path), "polars")
    with pytest.raises(InvalidParameterError, match="engine.*DataFrame runs on engine='pandas'"):
        choose_engine(pd.DataFrame({"a": [1]}), "duckdb")


def test_engine_not_installed_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "duckdb", None)  # import duckdb -> ImportError
    with pytest.raises(InvalidParameterError, match="engine.*duckdb is not installed: pip install duckdb"):
        load_engine("duckdb")


def test_dp_aggregate_on_duckdb_releases_the_bounded_counts(tmp_path):
    from airflow_privacy.core.dp import dp_aggregate

    df = _data()
    source = _write(df, tmp_path)
    charged = []
    res = dp_aggregate(source, engine="duckdb", epsilon=50, delta=1e-6, by=["g"], privacy_unit="u",
                       metrics={"n": "count", "avg": ("mean", "x"), "total": ("sum", "x")}, bounds={"x": (0, 10)},
                       max_groups_per_unit=8, max_rows_per_group=100, on_cost=charged.append, random_source=3)
    assert len(charged) == 1 and res.cost.epsilon <= 50
    exact = df.groupby("g").agg(n=("x", "size"), avg=("x", lambda v: v.clip(0, 10).mean()))
    out = res.table.set_index("g").sort_index()
    assert list(out.index) == list(exact.index)  # every group holds ~40 units: all released
    # Noise sd of the count at epsilon=50 with c = 800 is ~ sqrt(2)*800/eps_count: well under 200.
    assert (abs(out["n"] - exact["n"]) < 200).all()
    assert (abs(out["avg"] - exact["avg"]) < 0.5).all()


def test_dp_aggregate_unreadable_dataset_is_never_charged(tmp_path):
    from airflow_privacy.core.dp import dp_aggregate

    pd.DataFrame({"u": [1], "x": [1.0]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"u": [1], "x": ["one"]}).to_parquet(tmp_path / "b.parquet")
    charged = []
    with pytest.raises(SchemaError, match="differs"):
        dp_aggregate(str(tmp_path), engine="duckdb", epsilon=1, metrics={"n": "count"}, privacy_unit="u",
                     on_cost=charged.append)
    with pytest.raises(InvalidParameterError, match="engine.*quantiles, medians and bins need engine='pandas'"):
        dp_aggregate(str(tmp_path), engine="duckdb", epsilon=1, metrics={"m": ("median", "x")},
                     bounds={"x": (0, 1)}, on_cost=charged.append)
    assert charged == []


@pytest.fixture(scope="module")
def local_spark():
    pytest.importorskip("pyspark")
    import os

    os.environ.setdefault("AIRFLOW_PRIVACY_SPARK_MASTER", "local[2]")
    spark = load_engine("spark").session()
    yield spark
    spark.stop()


@pytest.mark.slow
@pytest.mark.parametrize(("by", "unit", "l0", "linf", "public"), [
    (("g",), "u", 2, 3, False), (("g", "h"), None, 1, 1, False), (("g", "h"), "u", 1, 1, False),
    ((), "u", 1, 2, False), (("g",), "u", 1, 2, True), (("g",), "u", 3, 40, False)])
def test_spark_equals_pandas_and_duckdb(local_spark, tmp_path, by, unit, l0, linf, public):
    # every path of the Spark plan: min_by (L0 = 1) and the window (L0 > 1), pairs over Linf
    # sent back to their rows (and none over Linf = 40), no unit, no group, public groups
    df = _data(5000)
    source = _write(df, tmp_path)
    pub = pd.DataFrame({"g": ["a", "c", "zz"]}) if public else None
    req = AggregateRequest(by=by, privacy_unit=unit, public_groups=pub, l0=l0, linf=linf,
                           private_selection=not public, count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    spark = load_engine("spark").aggregate(source, req, None)
    _assert_same(pandas_engine.aggregate(df, req, None), spark, by)
    _assert_same(duckdb_engine.aggregate(source, req, None), spark, by)


@pytest.mark.slow
def test_spark_shuffle_join_of_pairs_over_linf_equals_pandas(local_spark, tmp_path, monkeypatch):
    # more pairs over Linf than Spark may broadcast: the second scan joins them by a shuffle
    from airflow_privacy.core.dp.engines import spark_engine

    monkeypatch.setattr(spark_engine, "BROADCAST_PAIRS", 0)
    df = _data(5000)
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=2, linf=1, private_selection=True,
                           count_columns=("x",), sums=SUMS, key=ReleaseKey.fresh())
    _assert_same(pandas_engine.aggregate(df, req, None), spark_engine.aggregate(_write(df, tmp_path), req, None),
                 ("g",))


@pytest.mark.slow
def test_dp_aggregate_on_spark(local_spark, tmp_path):
    from airflow_privacy.core.dp import dp_aggregate

    df = _data(5000)
    res = dp_aggregate(_write(df, tmp_path), engine="spark", epsilon=50, delta=1e-6, by=["g"], privacy_unit="u",
                       metrics={"n": "count"}, max_groups_per_unit=8, max_rows_per_group=100, random_source=1)
    exact = df.groupby("g").size()
    out = res.table.set_index("g")["n"].sort_index()
    assert list(out.index) == list(exact.index) and (abs(out - exact) < 200).all()


def test_missing_privacy_unit_or_refused_nan_named_before_any_charge(tmp_path):
    pd.DataFrame({"u": [1.0, None], "x": [1.0, np.nan]}).to_parquet(tmp_path / "a.parquet")
    args = {"needed": {"u", "x"}, "value_cols": {"x"}, "kinds": {"x": ["sum"]}}
    with pytest.raises(SchemaError, match="privacy_unit column 'u' has missing values"):
        duckdb_engine.inspect(str(tmp_path), privacy_unit="u", missing_values="skip", **args)
    with pytest.raises(SchemaError, match=r"missing_values='refuse'.*\{'x': 1\}"):
        duckdb_engine.inspect(str(tmp_path), privacy_unit=None, missing_values="refuse", **args)
