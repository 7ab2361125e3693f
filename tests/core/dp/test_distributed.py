from __future__ import annotations

import math
import random

import numpy as np
import pytest

from airflow_privacy.core.dp.calibration import analytic_gaussian_sigma
from airflow_privacy.core.dp.distributed import calibrate_distributed_gaussian, kls_rho
from airflow_privacy.core.errors import InvalidParameterError


def test_calibration_meets_target_and_is_close_to_central():
    dg = calibrate_distributed_gaussian(epsilon=1.0, delta=1e-6, l2_sensitivity=1.0, dimension=8,
                                        min_shares=3, frac_bits=10)
    assert dg.epsilon <= 1.0
    total_sd = math.sqrt(3 * float(dg.share_sigma2)) / 2**10
    central = analytic_gaussian_sigma(1.0, 1e-6, 1.0)
    # RDP conversion of the zCDP bound costs a little over the analytic Gaussian, not 2x.
    assert central < total_sd < 1.3 * central


def test_kls_tau_vanishes_for_large_sigma_and_matches_gaussian_rho():
    rho = kls_rho(1e6, 3, l1=10.0, l2=10.0, d=1)
    assert rho == pytest.approx(100 / (2 * 3e6), rel=1e-9)


def test_share_sum_variance():
    dg = calibrate_distributed_gaussian(epsilon=2.0, delta=1e-5, l2_sensitivity=0.01, dimension=4000,
                                        min_shares=2, frac_bits=6)
    rng = random.Random(3)
    total = dg.draw(rng) + dg.draw(rng)
    var = 2 * float(dg.share_sigma2)
    assert abs(total.var() / var - 1) < 5 * math.sqrt(2 / 4000)
    assert np.abs(total).max() < dg.noise_bound


@pytest.mark.parametrize("kwargs, name", [
    ({"delta": 0.0}, "delta"), ({"epsilon": 0}, "epsilon"), ({"l2_sensitivity": -1.0}, "l2_sensitivity"),
    ({"dimension": 0}, "dimension"), ({"min_shares": 0}, "min_shares"),
])
def test_validation(kwargs, name):
    args = dict(epsilon=1.0, delta=1e-6, l2_sensitivity=1.0, dimension=4, min_shares=2, frac_bits=8) | kwargs
    with pytest.raises(InvalidParameterError, match=name):
        calibrate_distributed_gaussian(**args)
