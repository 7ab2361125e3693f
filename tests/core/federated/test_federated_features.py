"""FeatureSpec: declared encodings, identical at every site; clear schema errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airflow_privacy.core.errors import InvalidParameterError, SchemaError
from airflow_privacy.core.federated import FeatureSpec

SPEC = FeatureSpec.build(
    ["age", "sex", "dx"],
    "outcome",
    ranges={"age": (20, 80)},
    categories={"sex": ["F", "M"], "dx": ["A", "B", "C"]},
)


def test_encoding_uses_declared_ranges_and_vocabularies_not_site_statistics():
    site_1 = pd.DataFrame({"age": [20, 50, 80], "sex": ["F", "M", "F"], "dx": ["A", "C", "B"], "outcome": [0, 1, 1]})
    site_2 = pd.DataFrame({"age": [50], "sex": ["M"], "dx": ["C"], "outcome": [1]})
    x1, y1 = SPEC.encode(site_1)
    x2, _ = SPEC.encode(site_2)
    assert SPEC.width == 6
    assert SPEC.input_names == ["age", "sex=F", "sex=M", "dx=A", "dx=B", "dx=C"]
    np.testing.assert_allclose(x1[:, 0], [-1.0, 0.0, 1.0])  # (age - 50) / 30
    np.testing.assert_array_equal(x1[1, 1:], [0, 1, 0, 0, 1])
    # the same row encodes identically whatever else the site holds
    np.testing.assert_array_equal(x2[0], x1[1])
    np.testing.assert_array_equal(y1, [0, 1, 1])
    assert x1.dtype == np.float32


def test_values_outside_bounds_are_clipped_and_unknown_categories_encode_as_zeros():
    df = pd.DataFrame({"age": [5, 200], "sex": ["X", "M"], "dx": ["A", None], "outcome": [True, False]})
    x, y = SPEC.encode(df)
    np.testing.assert_allclose(x[:, 0], [-1.0, 1.0])
    np.testing.assert_array_equal(x[0, 1:3], [0, 0])
    np.testing.assert_array_equal(x[1, 3:], [0, 0, 0])
    np.testing.assert_array_equal(y, [1, 0])


def test_missing_columns_empty_batch_and_bad_labels_are_schema_errors():
    good = pd.DataFrame({"age": [30], "sex": ["F"], "dx": ["A"], "outcome": [1]})
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) \['dx'\]"):
        SPEC.encode(good.drop(columns="dx"))
    with pytest.raises(SchemaError, match="lacks label column 'outcome'"):
        SPEC.encode(good.drop(columns="outcome"))
    with pytest.raises(SchemaError, match="is empty"):
        SPEC.encode(good.iloc[:0])
    with pytest.raises(SchemaError, match=r"label 'outcome' must take the binary values \[0, 1\]; found \[2\]"):
        SPEC.encode(good.assign(outcome=[2]))
    with pytest.raises(SchemaError, match="missing or non-finite"):
        SPEC.encode(good.assign(age=[np.nan]))
    with pytest.raises(SchemaError, match="must be numeric"):
        SPEC.encode(good.assign(age=["thirty"]))


def test_every_feature_needs_a_declared_encoding():
    with pytest.raises(InvalidParameterError, match="features") as exc:
        FeatureSpec.build(["age", "cost"], "outcome", ranges={"age": (0, 100)})
    assert exc.value.value == ["cost"]
    with pytest.raises(InvalidParameterError, match=r"ranges\['age'\]"):
        FeatureSpec.build(["age"], "outcome", ranges={"age": (10, 10)})
    with pytest.raises(InvalidParameterError, match="label"):
        FeatureSpec.build(["age"], "age", ranges={"age": (0, 1)})


def test_spec_round_trips_through_its_dict_form():
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
