"""Run a whole secure-sum round in one process, through the public step functions.

Every party (sites, aggregator, and for Paillier the key holder) runs exactly the steps the
Airflow operators run, with messages passed as bytes; nothing is shortcut. Use it in
notebooks, tests and benchmarks, and to rehearse dropouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from airflow_privacy.core.errors import InvalidParameterError
from airflow_privacy.core.secure_sum import masking, paillier
from airflow_privacy.core.secure_sum.config import SecureSumConfig
from airflow_privacy.core.secure_sum.fixed_point import validate_vector
from airflow_privacy.core.secure_sum.prg import (
    RandomSource,
    deterministic_random_source,
    system_random,
)
from airflow_privacy.core.secure_sum.results import SecureSumResult

PROTOCOLS = ("masking", "paillier")
DROP_ROUNDS = {
    0: "never advertises keys",
    1: "advertises keys, never shares them",
    2: "shares keys, never sends a masked input (default)",
    3: "sends its masked input, never answers the unmask request",
}


def simulate(
    vectors: Mapping[str, Any],
    *,
    bounds: tuple[float, float],
    protocol: str = "masking",
    threshold: int | None = None,
    drop: Iterable[str] | Mapping[str, int] = (),
    frac_bits: int = 20,
    ring_bits: int = 64,
    round_id: str = "simulation",
    noise_shares: Mapping[str, np.ndarray] | None = None,
    noise_bound: int = 0,
    random: RandomSource | int | None = None,
    key_bits: int = paillier.DEFAULT_KEY_BITS,
) -> SecureSumResult:
    """Secure sum of ``vectors`` (``{site: 1-D vector}``) with every party simulated.

    Guarantee (masking): the aggregator's view -- ``res.transcript`` -- is simulatable from the
    sum of the survivors' quantized inputs (Bonawitz et al. 2017); see the package docstring
    for the threat model. ``res.total`` is within ``len(res.survivors) * 2**-frac_bits`` of
    the sum of the survivors' clipped inputs, per coordinate.

    :param bounds: ``(lo, hi)`` every coordinate is clipped to.
    :param protocol: ``"masking"`` (default) or ``"paillier"`` (needs the ``paillier`` extra).
    :param threshold: ``t`` (default ``n // 2 + 1``).
    :param drop: sites that drop out. A list drops them after round 1 (keys shared, no masked
        input: the case double masking exists for); a mapping ``{site: round}`` stops a site
        before round 0-3 (see ``DROP_ROUNDS``). With Paillier a dropped site sends nothing.
    :param noise_shares: optional per-site distributed-DP noise (integer fixed-point units).
    :param random: random source or an int seed for reproducible runs (default ``os.urandom``).
    :param key_bits: Paillier modulus size.
    :raises ProtocolError: fewer than ``threshold`` sites survive a round; nothing released.
    """
    if protocol not in PROTOCOLS:
        raise InvalidParameterError("protocol", protocol, f"expected one of {PROTOCOLS}")
    if not isinstance(vectors, Mapping):
        raise InvalidParameterError("vectors", type(vectors).__name__, "expected {site: vector}")
    config = SecureSumConfig(
        round_id=round_id,
        sites=tuple(vectors),
        bounds=bounds,
        threshold=threshold,
        frac_bits=frac_bits,
        ring_bits=ring_bits,
        noise_bound=noise_bound,
    )
    arrays = {s: validate_vector(v, config, name=f"vectors[{s!r}]") for s, v in vectors.items()}
    lengths = {s: a.size for s, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InvalidParameterError("vectors", lengths, "all vectors must have the same length")
    config = replace(config, length=next(iter(lengths.values())))
    drop_at = _drop_rounds(drop, config)
    noise = dict(noise_shares or {})
    unknown = sorted(set(noise) - set(config.sites))
    if unknown:
        raise InvalidParameterError(
            "noise_shares", unknown, f"expected sites of {list(config.sites)}"
        )
    if isinstance(random, int) and not isinstance(random, bool):
        source = deterministic_random_source(random)
    elif random is None:
        source = system_random
    elif callable(random):
        source = random
    else:
        raise InvalidParameterError(
            "random", random, "expected a random source, an int seed or None"
        )

    if protocol == "paillier":
        keys = paillier.paillier_keygen(key_bits)
        inputs = [
            paillier.paillier_encrypt(
                config, keys.public_key, s, arrays[s], noise_share=noise.get(s), random=source
            )
            for s in config.sites
            if s not in drop_at
        ]
        aggregate = paillier.paillier_add(config, keys.public_key, inputs)
        result = paillier.paillier_decrypt(config, keys.private_key, aggregate)
        return replace(result, transcript=inputs)

    def active(round_: int) -> list[str]:
        return [s for s in config.sites if drop_at.get(s, len(DROP_ROUNDS)) > round_]

    transcript: list[bytes] = []
    states: dict[str, bytes] = {}

    advertisements = []
    for s in active(0):
        out = masking.advertise_keys(config, s, random=source)
        states[s] = out.state
        advertisements.append(out.message)
    transcript += advertisements
    roster = masking.collect_keys(config, advertisements)

    key_shares = []
    for s in active(1):
        out = masking.share_keys(config, states[s], roster)
        states[s] = out.state
        key_shares.append(out.message)
    transcript += key_shares
    bundles = masking.route_shares(config, roster, key_shares)

    masked = []
    for s in active(2):
        out = masking.mask_input(config, states[s], bundles[s], arrays[s], noise_share=noise.get(s))
        states[s] = out.state
        masked.append(out.message)
    transcript += masked
    request = masking.request_unmask(config, masked)

    reveals = []
    for s in active(3):  # every such site sent a masked input, so it is a survivor
        out = masking.reveal_shares(config, states[s], request)
        states[s] = out.state
        reveals.append(out.message)
    transcript += reveals
    result = masking.unmask_sum(config, roster, request, masked, reveals)
    return replace(result, transcript=transcript)


def _drop_rounds(
    drop: Iterable[str] | Mapping[str, int], config: SecureSumConfig
) -> dict[str, int]:
    if isinstance(drop, str):
        raise InvalidParameterError("drop", drop, "expected a list of sites or {site: round}")
    rounds = dict(drop) if isinstance(drop, Mapping) else dict.fromkeys(drop, 2)
    for site, round_ in rounds.items():
        if site not in config.sites:
            raise InvalidParameterError("drop", site, f"expected sites of {list(config.sites)}")
        if round_ not in DROP_ROUNDS or isinstance(round_, bool):
            raise InvalidParameterError(
                "drop", {site: round_}, f"round must be one of {sorted(DROP_ROUNDS)}"
            )
    return rounds
