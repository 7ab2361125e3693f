"""Secure sum across data sites: the aggregator learns the sum, never one site's vector.

Threat model
------------
- **Aggregator and shared storage: semi-honest.** They run the protocol as specified but try
  to learn individual inputs from everything they see.
- **Sites: honest-but-curious.** They follow the protocol and may pool what they see (with
  each other or the aggregator); a coalition of the aggregator with fewer than ``t`` sites
  learns nothing beyond the sum of the other survivors' inputs (Bonawitz et al. 2017,
  Thm. 6.3). Sites are trusted to submit well-formed inputs: nothing here stops a site from
  biasing the sum within its declared bounds.
- **Dropouts.** Up to ``n - t`` sites may drop out at any round; the sum of the survivors is
  still released. Fewer than ``t`` survivors at any step raises :class:`ProtocolError` and
  nothing is released.
- **What reaches the aggregator.** Public keys, key shares encrypted site-to-site (AES-GCM),
  masked vectors (computationally uniform words) and, in the unmask round, exactly the Shamir
  shares it needs: of the self-mask seed of each survivor, of the mask key of each dropped
  site -- never both for the same site (each site enforces and records this). Its whole view
  is simulatable from the sum alone. Raw vectors, private keys and the site state stay on the
  sites.
- **Parameters.** Cohort of at least 3 sites, threshold ``2 <= t <= n``, default majority
  ``t = n // 2 + 1``. A majority threshold also keeps the per-site "never both" rule
  sufficient if the aggregator lies about who dropped (it would need two disjoint sets of
  ``t`` sites); below majority, rely on the semi-honest assumption.
- **Not covered.** An actively malicious aggregator (it could, e.g., substitute public keys
  in the roster: Bonawitz's PKI, signatures and consistency round are not implemented),
  traffic analysis, denial of service.

Protocols
---------
``masking`` (default, :mod:`.masking`)
    Bonawitz et al. double masking: X25519 key agreement, HKDF seeds bound to the round,
    AES-CTR keystream masks over ``Z / 2**k``, Shamir t-of-n recovery of dropped sites.
``paillier`` (optional, :mod:`.paillier`, needs ``phe``)
    Additively homomorphic encryption under a separate key holder's key, with several
    fixed-point values packed per ciphertext.

Encoding and error
------------------
Floats are clipped to the declared ``bounds``, scaled by ``2**frac_bits`` and rounded
*stochastically* (unbiased, CSPRNG bits), so the released sum differs from the exact sum of
the clipped inputs by less than ``n * 2**-frac_bits`` per coordinate (``n`` survivors).
Integer inputs with integral bounds are exact. The worst-case sum must fit the ring:
``n * max|bound| * 2**frac_bits < 2**(k-1)``, checked when the configuration is built, before
anything is sent.

Distributed DP hook
-------------------
``mask_input(..., noise_share=...)`` / ``paillier_encrypt(..., noise_share=...)`` add an
integer noise vector (fixed-point units, ``|noise| <= config.noise_bound``) to the quantized
input before it is masked, so the sum carries the sum of the shares. Sampling the shares
(e.g. discrete Gaussian, ``core/dp``) and accounting for them are not done here.

Usage
-----
>>> from airflow_privacy.core.secure_sum import simulate
>>> res = simulate({"a": [1, 2], "b": [3, 4], "c": [5, 6], "d": [7, 8]},
...                bounds=(-10, 10), frac_bits=0, threshold=3, drop=["d"])
>>> res.total.tolist(), res.survivors
([9.0, 12.0], ['a', 'b', 'c'])

The Airflow operators run the step functions of :mod:`.masking` (site steps on the site's
queue, with the site state kept site-local) and pass the messages through shared storage.
"""

from airflow_privacy.core.secure_sum.config import SecureSumConfig, default_threshold
from airflow_privacy.core.secure_sum.masking import (
    advertise_keys,
    collect_keys,
    mask_input,
    request_survivors,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    unmask_sum,
)
from airflow_privacy.core.secure_sum.paillier import (
    PaillierKeyPair,
    packing_layout,
    paillier_add,
    paillier_decrypt,
    paillier_encrypt,
    paillier_keygen,
)
from airflow_privacy.core.secure_sum.prg import (
    RandomSource,
    deterministic_random_source,
    system_random,
)
from airflow_privacy.core.secure_sum.results import SecureSumResult, SiteOutput
from airflow_privacy.core.secure_sum.simulation import simulate

__all__ = [
    "PaillierKeyPair",
    "RandomSource",
    "SecureSumConfig",
    "SecureSumResult",
    "SiteOutput",
    "advertise_keys",
    "collect_keys",
    "default_threshold",
    "deterministic_random_source",
    "mask_input",
    "packing_layout",
    "paillier_add",
    "paillier_decrypt",
    "paillier_encrypt",
    "paillier_keygen",
    "request_survivors",
    "request_unmask",
    "reveal_shares",
    "route_shares",
    "share_keys",
    "simulate",
    "system_random",
    "unmask_sum",
]
