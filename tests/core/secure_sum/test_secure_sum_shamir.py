"""Shamir t-of-n sharing over GF(2**256 + 297)."""

from __future__ import annotations

import itertools
import random as pyrandom

import pytest

from airflow_privacy.core.errors import ProtocolError
from airflow_privacy.core.secure_sum import deterministic_random_source
from airflow_privacy.core.secure_sum.shamir import PRIME, reconstruct, split


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = pyrandom.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_every_32_byte_secret():
    assert PRIME > 2**256
    assert _is_probable_prime(PRIME)


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5), (4, 4), (5, 9)])
def test_any_t_shares_reconstruct(t, n):
    source = deterministic_random_source(f"{t}-{n}")
    secret = source(32)
    shares = split(secret, t, range(1, n + 1), source)
    for subset in itertools.combinations(shares, t):
        assert reconstruct({x: shares[x] for x in subset}, t) == secret


def test_fewer_than_t_shares_refuse_and_wrong_shares_are_detected_or_differ():
    source = deterministic_random_source(1)
    secret = b"\xff" * 32
    shares = split(secret, 3, range(1, 6), source)
    with pytest.raises(ProtocolError):
        reconstruct({1: shares[1], 2: shares[2]}, 3)
    # Interpolating t-1 real shares plus a forged one yields something else entirely.
    forged = {1: shares[1], 2: shares[2], 3: (shares[3] + 1) % PRIME}
    try:
        assert reconstruct(forged, 3) != secret
    except ProtocolError:
        pass


def test_every_split_draws_fresh_coefficients():
    # One share of a 2-of-n split is f(1) = s + a1 with a1 uniform: alone it says nothing
    # about s -- provided a1 is fresh for every split.
    source = deterministic_random_source(2)
    secret = b"\x07" * 32
    assert split(secret, 2, [1], source)[1] != split(secret, 2, [1], source)[1]
