"""Site state and key derivation of the double-masking secure sum (:mod:`.masking`).

The site's round state (what it must keep between rounds, serialized as bytes), the round
secrets HKDF-derived from its seed, the X25519 key agreements (share encryption, pairwise
mask seeds), the self-mask commitment, and the message-parsing and threshold checks that
the round steps of :mod:`.masking_keys` and :mod:`.masking_sum` share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum import shamir
from airflow_privacy.core.secure_sum.config import SecureSumConfig
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.prg import SEED_BYTES, derive_key, encode_parts

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


def _parse_roster(config: SecureSumConfig, roster: Any) -> dict[str, tuple[bytes, bytes]]:
    h = wire.unpack(roster, Kind.ROSTER, config).header
    keys = _parse_keys(wire.site_map(wire.get_field(h, "keys", dict), config, "roster"))
    _require_threshold(config, len(keys), "are in the roster")
    return keys


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
