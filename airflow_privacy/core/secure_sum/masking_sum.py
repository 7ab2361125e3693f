"""Rounds 2 and 3 of the double-masking secure sum (:mod:`.masking`): each site sends its
input under self and pairwise masks, the aggregator names the survivors ``U3``, the survivors
reveal shares, and the aggregator removes the masks and releases the sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from airflow_privacy.core.errors import ProtocolError
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
from airflow_privacy.core.secure_sum.masking_state import (
    _CIPHERTEXT_BYTES,
    _NONCE_BYTES,
    PROTOCOL,
    _load_state,
    _pair_seed,
    _parse_roster,
    _require_threshold,
    _self_mask_commitment,
    _share_cipher,
    _SiteSecrets,
)
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.prg import BLOCK_WORDS, Keystream
from airflow_privacy.core.secure_sum.results import SecureSumResult, SiteOutput

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
