"""Rounds 0 and 1 of the double-masking secure sum (:mod:`.masking`): the sites advertise
their X25519 public keys, the aggregator broadcasts the roster ``U1``, each site Shamir-shares
its secrets encrypted to every roster site, and the aggregator routes the shares (``U2``).
"""

from __future__ import annotations

from collections.abc import Iterable

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum import shamir
from airflow_privacy.core.secure_sum.config import SecureSumConfig
from airflow_privacy.core.secure_sum.masking_state import (
    _CIPHERTEXT_BYTES,
    _MIN_SITE_SECRET,
    _check_site,
    _load_state,
    _parse_roster,
    _require_threshold,
    _share_cipher,
    _SiteSecrets,
    _SiteState,
)
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.prg import (
    SEED_BYTES,
    RandomSource,
    derive_key,
    keystream_source,
    system_random,
)
from airflow_privacy.core.secure_sum.results import SiteOutput

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
