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

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum import shamir
from airflow_privacy.core.secure_sum.config import SecureSumConfig
from airflow_privacy.core.secure_sum.fixed_point import (
    decode,
    from_ring,
    quantize,
    to_ring,
    validate_noise_share,
    validate_vector,
)
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.prg import (
    BLOCK_WORDS,
    SEED_BYTES,
    Keystream,
    RandomSource,
    derive_key,
    encode_parts,
    keystream_source,
    system_random,
)
from airflow_privacy.core.secure_sum.results import SecureSumResult, SiteOutput

PROTOCOL = "masking"
_NONCE_BYTES = 12
_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES
_CIPHERTEXT_BYTES = _NONCE_BYTES + _PLAINTEXT_BYTES + 16
_MIN_SITE_SECRET = 16

# ---------------------------------------------------------------------------------------
# site state and key derivation
# ---------------------------------------------------------------------------------------


@dataclass
class _SiteState:
    site: str
    seed: bytes
    roster: dict[str, tuple[bytes, bytes]] | None = None  # U1: site -> (c_pk, s_pk)
    senders: list[str] | None = None  # U2 as used for masking
    held: dict[str, tuple[int, int]] | None = None  # v -> (share of b_v, share of s_v)
    sent_digest: str | None = None  # SHA-256 of the masked-input message sent
    revealed_self_mask: list[str] = field(default_factory=list)
    revealed_key: list[str] = field(default_factory=list)

    def to_bytes(self, config: SecureSumConfig) -> bytes:
        header = {
            "site": self.site,
            "seed": wire.b64(self.seed),
            "roster": None
            if self.roster is None
            else {v: [wire.b64(c), wire.b64(s)] for v, (c, s) in self.roster.items()},
            "senders": self.senders,
            "held": None
            if self.held is None
            else {
                v: [wire.b64(shamir.share_to_bytes(b)), wire.b64(shamir.share_to_bytes(s))]
                for v, (b, s) in self.held.items()
            },
            "sent_digest": self.sent_digest,
            "revealed_self_mask": sorted(self.revealed_self_mask),
            "revealed_key": sorted(self.revealed_key),
        }
        return wire.pack(Kind.SITE_STATE, config, header)

    @classmethod
    def from_bytes(cls, config: SecureSumConfig, data: Any) -> _SiteState:
        h = wire.unpack(data, Kind.SITE_STATE, config).header
        site = wire.site(h.get("site"), config, "state site")
        state = cls(site, wire.as_bytes(h.get("seed"), "state seed", SEED_BYTES))
        if h.get("roster") is not None:
            state.roster = _parse_keys(wire.site_map(h["roster"], config, "state roster"))
        if h.get("senders") is not None:
            state.senders = wire.site_list(h["senders"], config, "state senders")
        if h.get("held") is not None:
            state.held = {
                v: _parse_share_pair(pair, "state share")
                for v, pair in wire.site_map(h["held"], config, "state shares").items()
            }
        digest = h.get("sent_digest")
        if digest is not None and not isinstance(digest, str):
            raise ProtocolError("state sent_digest must be text")
        state.sent_digest = digest
        state.revealed_self_mask = wire.site_list(h.get("revealed_self_mask", []), config, "state")
        state.revealed_key = wire.site_list(h.get("revealed_key", []), config, "state")
        return state


class _SiteSecrets:
    """Everything secret a site uses in one round, derived from its seed (HKDF, RFC 5869)."""

    def __init__(self, config: SecureSumConfig, state: _SiteState) -> None:
        salt = config.config_id
        seed = state.seed
        self.site = state.site
        self.encryption_key = X25519PrivateKey.from_private_bytes(
            derive_key(seed, salt=salt, label="share-encryption-key")
        )
        self.mask_key_bytes = derive_key(seed, salt=salt, label="mask-agreement-key")
        self.mask_key = X25519PrivateKey.from_private_bytes(self.mask_key_bytes)
        self.self_mask_seed = derive_key(seed, salt=salt, label="self-mask-seed")
        self.shamir_seed = derive_key(seed, salt=salt, label="shamir-coefficients")
        self.rounding_seed = derive_key(seed, salt=salt, label="stochastic-rounding")
        self._seed, self._salt = seed, salt

    def nonce_for(self, recipient: str) -> bytes:
        return derive_key(
            self._seed, salt=self._salt, label="share-nonce", parts=[recipient], length=_NONCE_BYTES
        )

    @property
    def public_keys(self) -> tuple[bytes, bytes]:
        return (
            self.encryption_key.public_key().public_bytes_raw(),
            self.mask_key.public_key().public_bytes_raw(),
        )


def _load_state(config: SecureSumConfig, state: Any) -> _SiteState:
    return _SiteState.from_bytes(config, state)


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise ProtocolError(f"invalid X25519 public key: {exc}") from None


def _share_cipher(
    config: SecureSumConfig,
    private: X25519PrivateKey,
    peer_public: bytes,
    sender: str,
    recipient: str,
) -> tuple[AESGCM, bytes]:
    # Directional key and associated data: a ciphertext from u to v is useless as one from
    # v to u, in another round, or for another pair.
    shared = _exchange(private, peer_public)
    key = derive_key(
        shared, salt=config.config_id, label="share-encryption", parts=[sender, recipient]
    )
    ad = config.config_id + encode_parts([sender, recipient])
    return AESGCM(key), ad


def _pair_seed(
    config: SecureSumConfig, private: X25519PrivateKey, peer_public: bytes, u: str, v: str
) -> bytes:
    shared = _exchange(private, peer_public)
    return derive_key(shared, salt=config.config_id, label="pairwise-mask", parts=sorted([u, v]))


def _self_mask_commitment(config: SecureSumConfig, site: str, seed: bytes) -> str:
    # Hiding because the seed is 256 uniformly random bits; binding by collision resistance.
    # Lets the aggregator detect a corrupted share before it releases a wrong sum.
    return hashlib.sha256(
        b"self-mask-commitment" + config.config_id + encode_parts([site]) + seed
    ).hexdigest()


def _parse_keys(raw: Mapping[str, Any]) -> dict[str, tuple[bytes, bytes]]:
    keys = {}
    for v, pair in raw.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise ProtocolError(f"public keys of {v!r} must be a pair")
        keys[v] = (
            wire.as_bytes(pair[0], "public key", 32),
            wire.as_bytes(pair[1], "public key", 32),
        )
    return keys


def _parse_share_pair(pair: Any, what: str) -> tuple[int, int]:
    if not isinstance(pair, list) or len(pair) != 2:
        raise ProtocolError(f"{what} must be a pair")
    return (
        shamir.share_from_bytes(wire.as_bytes(pair[0], what)),
        shamir.share_from_bytes(wire.as_bytes(pair[1], what)),
    )


def _require_threshold(config: SecureSumConfig, count: int, what: str) -> None:
    if count < config.threshold:
        raise ProtocolError(
            f"only {count} of {config.n} sites {what}; the threshold is t={config.threshold}, "
            "so the round is aborted and nothing is released"
        )


def _check_site(config: SecureSumConfig, site: Any) -> str:
    if not isinstance(site, str) or site not in config.sites:
        raise InvalidParameterError("site", site, f"expected one of {list(config.sites)}")
    return site


# ---------------------------------------------------------------------------------------
# round 0: advertise keys
# ---------------------------------------------------------------------------------------


def advertise_keys(
    config: SecureSumConfig,
    site: str,
    *,
    site_secret: bytes | None = None,
    random: RandomSource | None = None,
) -> SiteOutput:
    """Round 0 (site): create the site's round state and publish its two X25519 public keys.

    :param site: this site's name (in ``config.sites``).
    :param site_secret: optional long-term site secret (>= 16 bytes, site-local). When given,
        the round state is ``HKDF(site_secret, config)``, so a lost state can be re-derived;
        but a re-derived state has forgotten what it already sent -- never use it to redo
        :func:`mask_input` with a different input.
    :param random: random source for the seed when no ``site_secret`` is given (default
        ``os.urandom``; tests pass a deterministic one).
    :returns: ``state`` (secret, keep on the site) and the advertisement message.
    """
    _check_site(config, site)
    if site_secret is not None:
        if random is not None:
            raise InvalidParameterError(
                "random", random, "give either site_secret or random, not both"
            )
        if not isinstance(site_secret, bytes) or len(site_secret) < _MIN_SITE_SECRET:
            raise InvalidParameterError(
                "site_secret", "<redacted>", f"expected at least {_MIN_SITE_SECRET} random bytes"
            )
        seed = derive_key(site_secret, salt=config.config_id, label="site-seed", parts=[site])
    else:
        seed = (random or system_random)(SEED_BYTES)
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise InvalidParameterError(
                "random", random, f"must return {SEED_BYTES} bytes when asked"
            )
    state = _SiteState(site, seed)
    c_pk, s_pk = _SiteSecrets(config, state).public_keys
    message = wire.pack(
        Kind.ADVERTISEMENT, config, {"site": site, "c_pk": wire.b64(c_pk), "s_pk": wire.b64(s_pk)}
    )
    return SiteOutput(state.to_bytes(config), message)


def collect_keys(config: SecureSumConfig, advertisements: Iterable[bytes]) -> bytes:
    """Round 0 (aggregator): the roster ``U1`` of public keys, to broadcast to every site.

    Raises :class:`ProtocolError` if fewer than ``t`` sites advertised.
    """
    keys: dict[str, tuple[bytes, bytes]] = {}
    for message in advertisements:
        h = wire.unpack(message, Kind.ADVERTISEMENT, config).header
        site = wire.site(h.get("site"), config, "advertising site")
        pair = (wire.as_bytes(h.get("c_pk"), "c_pk", 32), wire.as_bytes(h.get("s_pk"), "s_pk", 32))
        if keys.setdefault(site, pair) != pair:
            raise ProtocolError(f"site {site!r} advertised two different key pairs")
    _require_threshold(config, len(keys), "advertised keys")
    roster = {v: [wire.b64(c), wire.b64(s)] for v, (c, s) in sorted(keys.items())}
    return wire.pack(Kind.ROSTER, config, {"keys": roster})


def _parse_roster(config: SecureSumConfig, roster: Any) -> dict[str, tuple[bytes, bytes]]:
    h = wire.unpack(roster, Kind.ROSTER, config).header
    keys = _parse_keys(wire.site_map(wire.get_field(h, "keys", dict), config, "roster"))
    _require_threshold(config, len(keys), "are in the roster")
    return keys


# ---------------------------------------------------------------------------------------
# round 1: share keys
# ---------------------------------------------------------------------------------------


def share_keys(config: SecureSumConfig, state: bytes, roster: bytes) -> SiteOutput:
    """Round 1 (site): Shamir-share ``b_u`` and ``s_u`` t-of-``|U1|``, encrypted per recipient.

    Each recipient ``v`` gets ``AES-256-GCM(k, share of b_u || share of s_u)`` with
    ``k = HKDF(X25519(c_u, c_v), config, u, v)`` and associated data (config digest, u, v).

    :param state: the state returned by :func:`advertise_keys`.
    :param roster: the aggregator's :func:`collect_keys` output.
    :returns: updated state (now holding the roster) and the encrypted-shares message.
    """
    st = _load_state(config, state)
    keys = _parse_roster(config, roster)
    secrets = _SiteSecrets(config, st)
    if keys.get(st.site) != secrets.public_keys:
        raise ProtocolError(f"the roster does not carry site {st.site!r}'s own public keys")
    if st.roster is not None and st.roster != keys:
        raise ProtocolError(f"site {st.site!r} already shared its keys with a different roster")
    coefficients = keystream_source(secrets.shamir_seed)
    points = {v: config.site_index(v) for v in keys}
    b_shares = shamir.split(secrets.self_mask_seed, config.threshold, points.values(), coefficients)
    s_shares = shamir.split(secrets.mask_key_bytes, config.threshold, points.values(), coefficients)
    ciphertexts = {}
    for v, (c_pk, _) in sorted(keys.items()):
        aead, ad = _share_cipher(config, secrets.encryption_key, c_pk, st.site, v)
        nonce = secrets.nonce_for(v)
        plaintext = shamir.share_to_bytes(b_shares[points[v]]) + shamir.share_to_bytes(
            s_shares[points[v]]
        )
        ciphertexts[v] = wire.b64(nonce + aead.encrypt(nonce, plaintext, ad))
    st.roster = keys
    message = wire.pack(Kind.KEY_SHARES, config, {"site": st.site, "ciphertexts": ciphertexts})
    return SiteOutput(st.to_bytes(config), message)


def route_shares(
    config: SecureSumConfig, roster: bytes, key_shares: Iterable[bytes]
) -> dict[str, bytes]:
    """Round 1 (aggregator): one bundle per site of ``U2`` with the ciphertexts addressed to it.

    :returns: ``{site: bundle}`` -- deliver each bundle to its site (only to it).
    """
    keys = _parse_roster(config, roster)
    received: dict[str, dict[str, str]] = {}
    for message in key_shares:
        h = wire.unpack(message, Kind.KEY_SHARES, config).header
        sender = wire.site(h.get("site"), config, "sharing site")
        if sender not in keys:
            raise ProtocolError(f"site {sender!r} shared keys but is not in the roster")
        cts = wire.site_map(wire.get_field(h, "ciphertexts", dict), config, "ciphertexts")
        if set(cts) != set(keys):
            raise ProtocolError(f"site {sender!r} did not address exactly the roster's sites")
        for ct in cts.values():
            wire.as_bytes(ct, "share ciphertext", _CIPHERTEXT_BYTES)
        if received.setdefault(sender, cts) != cts:
            raise ProtocolError(f"site {sender!r} sent two different sets of key shares")
    senders = sorted(received)
    _require_threshold(config, len(senders), "shared their keys")
    return {
        v: wire.pack(
            Kind.SHARE_BUNDLE,
            config,
            {
                "recipient": v,
                "senders": senders,
                "ciphertexts": {u: received[u][v] for u in senders},
            },
        )
        for v in senders
    }


# ---------------------------------------------------------------------------------------
# round 2: masked input
# ---------------------------------------------------------------------------------------


def mask_input(
    config: SecureSumConfig,
    state: bytes,
    bundle: bytes,
    values: Any,
    *,
    noise_share: np.ndarray | None = None,
) -> SiteOutput:
    """Round 2 (site): quantize ``values`` and send them under self and pairwise masks.

    Privacy: the message is ``x_u`` plus ``PRG(b_u)``, a mask the aggregator can only remove
    with ``t`` shares of ``b_u`` (revealed only if ``u`` survives, when the pairwise masks
    still hide ``x_u`` individually). The sent words are computationally uniform.

    :param state: the state returned by :func:`share_keys`.
    :param bundle: this site's bundle from :func:`route_shares`.
    :param values: 1-D real vector; clipped to ``config.bounds``.
    :param noise_share: distributed-DP hook: integer vector in fixed-point units (``value *
        2**frac_bits``), ``|noise| <= config.noise_bound``, added before masking. It must be the
        same on a retry (derive it from site-local state).
    :returns: updated state (records the digest of what is sent) and the masked vector message.
    :raises ProtocolError: if this site already sent a *different* masked vector this round.
    """
    arr = validate_vector(values, config)
    st = _load_state(config, state)
    if st.roster is None:
        raise ProtocolError(f"site {st.site!r} has not shared its keys (run share_keys first)")
    env = wire.unpack(bundle, Kind.SHARE_BUNDLE, config)
    h = env.header
    recipient = wire.site(h.get("recipient"), config, "bundle recipient")
    if recipient != st.site:
        raise ProtocolError(f"share bundle is addressed to {recipient!r}, not to {st.site!r}")
    senders = wire.site_list(wire.get_field(h, "senders", list), config, "bundle senders")
    if not set(senders) <= set(st.roster) or st.site not in senders:
        raise ProtocolError("bundle senders must be roster sites and include this site")
    _require_threshold(config, len(senders), "shared their keys")
    if st.senders is not None and st.senders != senders:
        raise ProtocolError(f"site {st.site!r} already masked its input for another set of sites")
    cts = wire.site_map(wire.get_field(h, "ciphertexts", dict), config, "bundle ciphertexts")
    if set(cts) != set(senders):
        raise ProtocolError("bundle ciphertexts do not match its senders")
    secrets = _SiteSecrets(config, st)
    held = {}
    for u in senders:
        raw = wire.as_bytes(cts[u], "share ciphertext", _CIPHERTEXT_BYTES)
        aead, ad = _share_cipher(config, secrets.encryption_key, st.roster[u][0], u, st.site)
        try:
            plaintext = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], ad)
        except InvalidTag:
            raise ProtocolError(f"key shares from {u!r} failed authentication") from None
        held[u] = (
            shamir.share_from_bytes(plaintext[: shamir.SHARE_BYTES]),
            shamir.share_from_bytes(plaintext[shamir.SHARE_BYTES :]),
        )

    d = arr.size
    noise = None if noise_share is None else validate_noise_share(noise_share, config, d)
    header = {
        "site": st.site,
        "senders": senders,
        "length": d,
        "self_mask_commitment": _self_mask_commitment(config, st.site, secrets.self_mask_seed),
    }
    head = wire.pack(Kind.MASKED_INPUT, config, header)
    rounding = Keystream(secrets.rounding_seed, np.uint64)
    masks = [(Keystream(secrets.self_mask_seed, config.dtype), +1)]
    for v in senders:
        if v != st.site:
            seed = _pair_seed(config, secrets.mask_key, st.roster[v][1], st.site, v)
            masks.append((Keystream(seed, config.dtype), +1 if st.site < v else -1))
    y = np.empty(d, dtype=config.dtype)
    hasher = hashlib.sha256(head)
    # One pass in cache-sized blocks: quantize, add every mask, hash what will be sent.
    for start in range(0, d, BLOCK_WORDS):
        stop = min(start + BLOCK_WORDS, d)
        z = quantize(arr[start:stop], config, rounding.next(stop - start))
        if noise is not None:
            z += noise[start:stop]
        block = y[start:stop]
        block[:] = to_ring(z, config)
        for stream, sign in masks:
            stream.add_to(block, sign)
        hasher.update(block)
    message = b"".join([head, memoryview(y).cast("B")])
    digest = hasher.hexdigest()
    if st.sent_digest is not None and st.sent_digest != digest:
        raise ProtocolError(
            f"site {st.site!r} already sent a different masked input in round {config.round_id!r}; "
            "a retry must submit the same input (and noise share): a second vector under the "
            "same masks would reveal the difference between the two"
        )
    st.senders, st.held, st.sent_digest = senders, held, digest
    return SiteOutput(st.to_bytes(config), message)


@dataclass(frozen=True)
class _Masked:
    site: str
    senders: list[str]
    commitment: str
    words: np.ndarray


def _parse_masked(config: SecureSumConfig, message: Any) -> _Masked:
    env = wire.unpack(message, Kind.MASKED_INPUT, config)
    h = env.header
    site = wire.site(h.get("site"), config, "masking site")
    senders = wire.site_list(wire.get_field(h, "senders", list), config, "masked input senders")
    length = wire.get_field(h, "length", int)
    commitment = wire.get_field(h, "self_mask_commitment", str)
    if site not in senders:
        raise ProtocolError(f"masked input of {site!r} does not list its own site")
    if length < 1 or (config.length is not None and length != config.length):
        raise ProtocolError(f"masked input of {site!r} has length {length}")
    if len(env.payload) != length * config.dtype.itemsize:
        raise ProtocolError(f"masked input of {site!r} is truncated or padded")
    words = np.frombuffer(env.payload, dtype=config.dtype, count=length)
    return _Masked(site, senders, commitment, words)


def _collect_masked(config: SecureSumConfig, masked_inputs: Iterable[bytes]) -> dict[str, _Masked]:
    by_site: dict[str, _Masked] = {}
    raw: dict[str, Any] = {}
    for message in masked_inputs:
        m = _parse_masked(config, message)
        if m.site in raw and bytes(raw[m.site]) != bytes(message):
            raise ProtocolError(f"site {m.site!r} sent two different masked inputs")
        raw[m.site] = message
        by_site[m.site] = m
    if len({tuple(m.senders) for m in by_site.values()}) > 1:
        raise ProtocolError("sites masked their inputs for different sets of peers")
    if len({m.words.size for m in by_site.values()}) > 1:
        raise ProtocolError("masked inputs have different lengths")
    return by_site


def request_unmask(config: SecureSumConfig, masked_inputs: Iterable[bytes]) -> bytes:
    """Round 2 (aggregator): the unmask request naming ``U2`` and the survivors ``U3``.

    Broadcast it to every survivor. Raises :class:`ProtocolError` below ``t`` survivors.
    """
    by_site = _collect_masked(config, masked_inputs)
    _require_threshold(config, len(by_site), "sent a masked input")
    senders = next(iter(by_site.values())).senders
    survivors = sorted(by_site)
    return wire.pack(Kind.UNMASK_REQUEST, config, {"senders": senders, "survivors": survivors})


def _parse_request(config: SecureSumConfig, request: Any) -> tuple[list[str], list[str]]:
    h = wire.unpack(request, Kind.UNMASK_REQUEST, config).header
    senders = wire.site_list(wire.get_field(h, "senders", list), config, "request senders")
    survivors = wire.site_list(wire.get_field(h, "survivors", list), config, "request survivors")
    if not set(survivors) <= set(senders):
        raise ProtocolError("unmask request names survivors that never shared keys")
    _require_threshold(config, len(survivors), "survived")
    return senders, survivors


def request_survivors(config: SecureSumConfig, request: bytes) -> list[str]:
    """The survivors ``U3`` an unmask request names, validated as :func:`unmask_sum` does.

    ``U3`` is fixed when the request is sent (Bonawitz et al. 2017, Fig. 4, round 2): a
    masked input that arrives later is not part of the sum, so callers collecting inputs
    from storage read only these sites'.
    """
    return _parse_request(config, request)[1]


# ---------------------------------------------------------------------------------------
# round 3: unmask
# ---------------------------------------------------------------------------------------


def reveal_shares(config: SecureSumConfig, state: bytes, request: bytes) -> SiteOutput:
    """Round 3 (site): reveal shares of ``b_v`` for survivors, of ``s_v`` for dropped sites.

    The site refuses (:class:`ProtocolError`) to reveal, across all its calls this round,
    both kinds of share for the same site, and to answer a request whose ``U2`` differs
    from the one it masked with.

    :param state: the state returned by :func:`mask_input`.
    :param request: the aggregator's :func:`request_unmask` output.
    """
    st = _load_state(config, state)
    if st.sent_digest is None or st.held is None or st.senders is None:
        raise ProtocolError(f"site {st.site!r} has not sent a masked input this round")
    senders, survivors = _parse_request(config, request)
    if senders != st.senders:
        raise ProtocolError("unmask request disagrees with the sites this site masked with")
    if st.site not in survivors:
        raise ProtocolError(f"unmask request lists site {st.site!r} as dropped")
    dropped = [v for v in senders if v not in survivors]
    conflict = sorted(
        set(survivors) & set(st.revealed_key) | set(dropped) & set(st.revealed_self_mask)
    )
    if conflict:
        raise ProtocolError(
            f"refusing to reveal both the self-mask share and the key share of {conflict}: "
            "together they would unmask an individual input"
        )
    self_mask_shares = {v: wire.b64(shamir.share_to_bytes(st.held[v][0])) for v in survivors}
    key_shares = {v: wire.b64(shamir.share_to_bytes(st.held[v][1])) for v in dropped}
    st.revealed_self_mask = sorted(set(st.revealed_self_mask) | set(survivors))
    st.revealed_key = sorted(set(st.revealed_key) | set(dropped))
    message = wire.pack(
        Kind.SHARE_REVEAL,
        config,
        {"site": st.site, "self_mask_shares": self_mask_shares, "key_shares": key_shares},
    )
    return SiteOutput(st.to_bytes(config), message)


def unmask_sum(
    config: SecureSumConfig,
    roster: bytes,
    request: bytes,
    masked_inputs: Iterable[bytes],
    reveals: Iterable[bytes],
) -> SecureSumResult:
    """Round 3 (aggregator): reconstruct the needed secrets and release the sum of ``U3``.

    Guarantee (semi-honest aggregator): its whole view is simulatable from the sum of the
    survivors' fixed-point inputs (Bonawitz et al. 2017, Thm. 6.2/6.3). Raises
    :class:`ProtocolError` -- and releases nothing -- if fewer than ``t`` survivors revealed
    shares, a site revealed both share kinds of the same site, a share is inconsistent with
    its commitment, or any message is malformed or from another round.
    """
    keys = _parse_roster(config, roster)
    senders, survivors = _parse_request(config, request)
    if not set(senders) <= set(keys):
        raise ProtocolError("unmask request names sites outside the roster")
    dropped = [v for v in senders if v not in survivors]
    by_site = _collect_masked(config, masked_inputs)
    if sorted(by_site) != survivors:
        raise ProtocolError(
            f"masked inputs are from {sorted(by_site)}, the request names survivors {survivors}"
        )
    if next(iter(by_site.values())).senders != senders:
        raise ProtocolError("masked inputs disagree with the request about who shared keys")

    self_mask_shares: dict[str, dict[int, int]] = {u: {} for u in survivors}
    key_shares: dict[str, dict[int, int]] = {v: {} for v in dropped}
    revealers: set[str] = set()
    for message in reveals:
        h = wire.unpack(message, Kind.SHARE_REVEAL, config).header
        revealer = wire.site(h.get("site"), config, "revealing site")
        if revealer not in survivors:
            raise ProtocolError(f"site {revealer!r} revealed shares but is not a survivor")
        b_part = wire.site_map(
            wire.get_field(h, "self_mask_shares", dict), config, "self-mask shares"
        )
        s_part = wire.site_map(wire.get_field(h, "key_shares", dict), config, "key shares")
        both = sorted(set(b_part) & set(s_part))
        if both:
            raise ProtocolError(f"site {revealer!r} revealed both share kinds of {both}")
        if set(b_part) != set(survivors) or set(s_part) != set(dropped):
            raise ProtocolError(f"shares revealed by {revealer!r} do not answer this request")
        x = config.site_index(revealer)
        for v, raw in b_part.items():
            share = shamir.share_from_bytes(wire.as_bytes(raw, "share"))
            if self_mask_shares[v].setdefault(x, share) != share:
                raise ProtocolError(f"site {revealer!r} revealed two different shares")
        for v, raw in s_part.items():
            share = shamir.share_from_bytes(wire.as_bytes(raw, "share"))
            if key_shares[v].setdefault(x, share) != share:
                raise ProtocolError(f"site {revealer!r} revealed two different shares")
        revealers.add(revealer)
    _require_threshold(config, len(revealers), "answered the unmask request")

    # Reconstruct and check every secret before touching the vectors.
    masks: list[tuple[Keystream, int]] = []
    for u in survivors:
        seed = shamir.reconstruct(self_mask_shares[u], config.threshold)
        if _self_mask_commitment(config, u, seed) != by_site[u].commitment:
            raise ProtocolError(
                f"reconstructed self-mask seed of {u!r} does not match its commitment"
            )
        masks.append((Keystream(seed, config.dtype), -1))
    for v in dropped:
        secret = shamir.reconstruct(key_shares[v], config.threshold)
        key = X25519PrivateKey.from_private_bytes(secret)
        if key.public_key().public_bytes_raw() != keys[v][1]:
            raise ProtocolError(
                f"reconstructed mask key of dropped site {v!r} does not match its public key"
            )
        for u in survivors:
            # u added sign(u, v) * PRG(s_uv); v's opposite term never arrived: remove u's.
            seed = _pair_seed(config, key, keys[u][1], u, v)
            masks.append((Keystream(seed, config.dtype), -1 if u < v else +1))
    length = next(iter(by_site.values())).words.size
    total = np.zeros(length, dtype=config.dtype)
    for start in range(0, length, BLOCK_WORDS):
        block = total[start : start + BLOCK_WORDS]
        for u in survivors:
            block += by_site[u].words[start : start + BLOCK_WORDS]
        for stream, sign in masks:
            stream.add_to(block, sign)
    fixed = from_ring(total, config)
    return SecureSumResult(
        total=decode(fixed, config),
        fixed_total=fixed,
        survivors=survivors,
        dropped=[v for v in config.sites if v not in survivors],
        protocol=PROTOCOL,
        frac_bits=config.frac_bits,
    )
