"""The Spark engine's native keyed hash: Spark's signed 64-bit arithmetic gives numpy's
uint64 words and roundings bit for bit (so the cross-engine test in test_engines.py can hold),
the subkeys never appear in a query plan, and Spark targets are checked before any session
starts."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from airflow_privacy.core.dp.engines.keyed import ReleaseKey, keyed_round, keyed_words
from airflow_privacy.core.dp.engines.spark_session import parse_target, probe
from airflow_privacy.core.errors import InvalidParameterError

POSITIONS = np.array([0, 1, 2, 3, 12345, 2**31 - 1, 2**31, 2**32 + 7, 2**53 + 1, 2**62, 2**63 - 1], dtype=np.int64)


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from airflow_privacy.core.dp.engines.spark_session import spark_on

    with spark_on("local[1]") as session:
        yield session


@pytest.mark.slow
def test_native_words_and_rounding_equal_numpy(spark):
    import pandas as pd
    from pyspark.sql import functions as F

    from airflow_privacy.core.dp.engines import spark_engine

    key = ReleaseKey.fresh()
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1e3, len(POSITIONS) - 3), [-0.5, 0.0, 7.0]])
    df = spark.createDataFrame(pd.DataFrame({"pos": POSITIONS, "x": x}))
    df = df.crossJoin(spark_engine._keys(key, ["rows", "round:sum:x"]))
    with spark_engine._wrapping(spark):
        out = spark_engine._words(df, {"w": ("pos", 0), "r": ("pos", 1)})
        out = out.select("pos", F.col("w"), spark_engine._rounded(F.col("x"), F.col("r")).alias("f"),
                         spark_engine._rank(F.col("w")).alias("rank")).orderBy("pos").toPandas()
    words = keyed_words(key, "rows", POSITIONS)
    assert (out["w"].to_numpy().view(np.uint64) == words).all()
    assert (out["f"].to_numpy() == keyed_round(key, "round:sum:x", x, POSITIONS)).all()
    # ranking by the signed w XOR 2^63 is ranking by the unsigned word
    assert (np.argsort(out["rank"].to_numpy(), kind="stable") == np.argsort(words, kind="stable")).all()


@pytest.mark.slow
def test_subkeys_never_appear_in_the_plan(spark, tmp_path):
    import pandas as pd

    from airflow_privacy.core.dp.engines import AggregateRequest, SumQuery, spark_engine
    from airflow_privacy.core.dp.engines.dataset import resolve

    pd.DataFrame({"u": [1, 1, 2], "g": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "p.parquet")
    key = ReleaseKey.fresh()
    req = AggregateRequest(by=("g",), privacy_unit="u", public_groups=None, l0=1, linf=1, private_selection=True,
                           sums=(SumQuery("sum", "x", 0, 10, 2**-6, 0.0, 640),), key=key)
    with spark_engine._wrapping(spark), contextlib.ExitStack() as stack:
        plan = spark_engine._plan(spark, resolve(str(tmp_path)), req, ["g0"], stack)
        text = plan._jdf.queryExecution().toString()  # parsed, analysed, optimised and physical plans
    secrets = [str(spark_engine._signed(k)) for d in ("groups", "rows", "round:sum:x") for k in key.subkeys(d)]
    assert "__k0_0" in text  # the keys' table is in the plan, its values are not
    assert not [s for s in secrets if s in text]


@pytest.mark.parametrize(("url", "kind", "endpoints"), [
    ("local[2]", "local", ()), ("spark://m:7077", "standalone", (("m", 7077),)),
    ("spark://a:7077,b:7078", "standalone", (("a", 7077), ("b", 7078))),
    ("sc://c", "connect", (("c", 15002),)), ("sc://c:443/;token=abc;use_ssl=true", "connect", (("c", 443),))])
def test_targets_parsed(url, kind, endpoints):
    target = parse_target(url)
    assert (target.kind, target.endpoints) == (kind, endpoints)
    assert "abc" not in target.display and "abc" not in repr(target)


@pytest.mark.parametrize("url", ["yarn", "spark://m", "sc://", "k8s://https://api:443", "", 7077,
                                 "sc://h:99999/;token=abc"])
def test_bad_targets_named(url):
    with pytest.raises(InvalidParameterError, match="spark_conn_id") as err:
        parse_target(url, "spark_conn_id", "conn")
    assert "abc" not in str(err.value)


def test_unreachable_target_fails_fast_without_its_token():
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(InvalidParameterError, match=f"cannot reach Spark at sc://127.0.0.1:{port}") as err:
            probe(parse_target(f"sc://127.0.0.1:{port}/;token=abc"))
    assert time.monotonic() - t0 < 5 and "abc" not in str(err.value)
