"""Double-masking secure aggregation (Bonawitz et al., CCS 2017), as resumable step functions.

Reference: K. Bonawitz, V. Ivanov, B. Kreuter, A. Marcedone, H. B. McMahan, S. Patel,
D. Ramage, A. Segal, K. Seth, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 -- the semi-honest protocol of its Figure 4 / Section 4 (no signatures,
no consistency-check round). Notation: ``U1`` sites that advertised keys, ``U2`` sites that
shared keys, ``U3`` sites that sent a masked input ("survivors"), ``D = U2 - U3`` dropped.

Each site ``u`` sends ``y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} sign(u, v) PRG(s_uv)``
mod ``2**k`` where ``x_u`` is its fixed-point input, ``b_u`` a fresh self-mask seed,
``s_uv = HKDF(X25519(s_u, s_v))`` the pairwise seed and ``sign(u, v) = +1`` if ``u < v``
(cohort order) else ``-1``. Pairwise masks of surviving pairs cancel in the sum; the
aggregator removes self masks of survivors (``b_u`` reconstructed from ``t`` Shamir shares)
and the pairwise masks between survivors and dropped sites (``s_v`` reconstructed). A site
reveals, for each other site ``v``, *either* a share of ``b_v`` (``v`` survived) *or* a share of
``s_v`` (``v`` dropped), never both, and records what it revealed: with both secrets of a
survivor the aggregator could unmask that survivor's individual input.

Step functions, in order (site steps take and return the site's secret ``state`` bytes; all
inputs and outputs are bytes or numpy arrays, so Airflow tasks can store them as files):

======  =================================  ===========================================
round   site ``u``                          aggregator
======  =================================  ===========================================
0       :func:`advertise_keys`             :func:`collect_keys` -> roster (broadcast)
1       :func:`share_keys`                 :func:`route_shares` -> one bundle per site
2       :func:`mask_input`                 :func:`request_unmask` -> request (broadcast)
3       :func:`reveal_shares`              :func:`unmask_sum` -> :class:`SecureSumResult`
======  =================================  ===========================================

Retries. Every site secret (both X25519 keys, ``b_u``, Shamir coefficients, AES-GCM nonces and
the stochastic-rounding stream) is derived by HKDF from one 32-byte site seed kept in the
state -- drawn from ``os.urandom`` or re-derived from a long-term ``site_secret`` and the
round's configuration -- so a retried step with the same state and input re-emits identical
bytes. :func:`mask_input` also records the SHA-256 of the masked vector it produced and
refuses (:class:`ProtocolError`) to emit a different one for the round: two different
inputs under the same masks would reveal their difference. Persist the returned state
*before* publishing the message.

Distributed DP hook: :func:`mask_input` takes ``noise_share``, an integer vector in
fixed-point units added to the quantized input before masking (bounded by
``config.noise_bound``, which the headroom check accounts for). The noise samplers live in
``core/dp``; this module only carries the shares.
"""


from airflow_privacy.core.secure_sum.masking_keys import (
    advertise_keys,
    collect_keys,
    route_shares,
    share_keys,
)
from airflow_privacy.core.secure_sum.masking_state import PROTOCOL
from airflow_privacy.core.secure_sum.masking_sum import (
    mask_input,
    request_survivors,
    request_unmask,
    reveal_shares,
    unmask_sum,
)

__all__ = [
    "PROTOCOL",
    "advertise_keys",
    "collect_keys",
    "mask_input",
    "request_survivors",
    "request_unmask",
    "reveal_shares",
    "route_shares",
    "share_keys",
    "unmask_sum",
]
