"""Optional secure sum with the Paillier cryptosystem (P. Paillier, EUROCRYPT 1999).

Parties: the sites, the aggregator and a separate **key holder**.

1. key holder: :func:`paillier_keygen` -> public key (published), private key (kept);
2. site: :func:`paillier_encrypt` quantizes its vector exactly like the masking protocol
   (clip, scale by ``2**frac_bits``, unbiased stochastic rounding), offsets it to be
   non-negative and packs many values per plaintext, then encrypts under the public key;
3. aggregator: :func:`paillier_add` multiplies ciphertexts modulo ``n**2`` -- the plaintexts
   add (``E(a) * E(b) = E(a + b)``) -- holding no key at all;
4. key holder: :func:`paillier_decrypt` decrypts the aggregate only, and only if it covers
   at least ``t`` sites.

Threat model: semi-honest aggregator and key holder that **do not collude** (together they
could decrypt single inputs); semantic security rests on the decisional composite
residuosity assumption. Dropouts need no recovery: the aggregate covers whoever sent. The key
holder must decrypt one aggregate per round (two aggregates differing by one site would
reveal that site's input); it cannot check that the aggregator really summed the sites it
names -- that is the semi-honest assumption.

Packing (vectorized with numpy, no per-value Python): with ``zmin, zmax`` the fixed-point range
and ``w = zmax - zmin + 2 * noise_bound``, each value becomes ``z - zmin + noise_bound`` in
``[0, w]``; a slot is ``b = bitlen(n_sites * w)`` bits wide, so the sum of all ``n_sites``
slots cannot carry into its neighbour; ``floor((bitlen(N) - 3) / b)`` slots fill one
plaintext, which keeps every packed sum below ``N / 3`` -- the range ``phe`` decodes as a
positive integer. All ciphertexts are plain Paillier encryptions of integers with
``g = N + 1`` -- in ``phe`` terms ``EncryptedNumber(public_key, c, exponent=0)`` -- so they add
without any re-encoding and decrypt with ``phe``'s private key.

``phe`` is GPL-3.0 and therefore an optional extra (``pip install 'airflow-privacy[paillier]'``);
it is imported lazily, with ``gmpy2`` making it fast.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum.config import SecureSumConfig
from airflow_privacy.core.secure_sum.fixed_point import (
    decode,
    quantize,
    validate_noise_share,
    validate_vector,
)
from airflow_privacy.core.secure_sum.messages import Kind
from airflow_privacy.core.secure_sum.prg import RandomSource, system_random
from airflow_privacy.core.secure_sum.results import SecureSumResult

PROTOCOL = "paillier"
MIN_KEY_BITS = 2048
DEFAULT_KEY_BITS = 2048  # ~112-bit security; pass 3072 for ~128-bit
_MAX_SLOT_BITS = 62
_PACK_CHUNK = 1024  # ciphertexts packed per numpy batch (bounds memory)


def _phe() -> Any:
    try:
        import phe
    except ImportError as exc:
        raise InvalidParameterError(
            "protocol",
            PROTOCOL,
            "needs the optional dependency 'phe' (GPL-3.0): pip install 'airflow-privacy[paillier]'",
        ) from exc
    return phe


@dataclass(frozen=True)
class PaillierKeyPair:
    """:ivar public_key: publish to sites and aggregator. :ivar private_key: key holder only."""

    public_key: bytes
    private_key: bytes


@dataclass(frozen=True)
class PackingLayout:
    """How quantized values sit in a Paillier plaintext."""

    slot_bits: int
    slots: int  # values per ciphertext
    offset: int  # added to each fixed-point value to make it non-negative
    width: int  # largest offset value one site can contribute


def paillier_keygen(key_bits: int = DEFAULT_KEY_BITS) -> PaillierKeyPair:
    """Key holder: a fresh Paillier key pair with an ``key_bits``-bit modulus (>= 2048)."""
    phe = _phe()
    if not isinstance(key_bits, int) or key_bits < MIN_KEY_BITS or key_bits % 8:
        raise InvalidParameterError(
            "key_bits", key_bits, f"expected a multiple of 8 >= {MIN_KEY_BITS}"
        )
    public, private = phe.generate_paillier_keypair(n_length=key_bits)
    pub = json.dumps({"type": "paillier-public-key", "v": 1, "n": format(public.n, "x")})
    priv = json.dumps(
        {
            "type": "paillier-private-key",
            "v": 1,
            "n": format(public.n, "x"),
            "p": format(private.p, "x"),
            "q": format(private.q, "x"),
        }
    )
    return PaillierKeyPair(pub.encode(), priv.encode())


def _load_key(raw: Any, kind: str, name: str) -> dict[str, int]:
    try:
        data = json.loads(raw)
        if data.get("type") != kind or data.get("v") != 1:
            raise ValueError("wrong type")
        fields = {k: int(v, 16) for k, v in data.items() if k not in ("type", "v")}
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError):
        raise InvalidParameterError(
            name, "<key>", f"expected a {kind} from paillier_keygen"
        ) from None
    if fields.get("n", 0).bit_length() < MIN_KEY_BITS:
        raise InvalidParameterError(name, "<key>", f"modulus must have >= {MIN_KEY_BITS} bits")
    return fields


def load_public_key(public_key: bytes) -> Any:
    """The ``phe.PaillierPublicKey`` of serialized ``public_key``."""
    return _phe().PaillierPublicKey(_load_key(public_key, "paillier-public-key", "public_key")["n"])


def load_private_key(private_key: bytes) -> Any:
    """The ``phe.PaillierPrivateKey`` of serialized ``private_key``."""
    phe = _phe()
    f = _load_key(private_key, "paillier-private-key", "private_key")
    try:
        return phe.PaillierPrivateKey(phe.PaillierPublicKey(f["n"]), f["p"], f["q"])
    except (KeyError, ValueError):
        raise InvalidParameterError("private_key", "<key>", "p * q must equal n") from None


def _fingerprint(n: int) -> str:
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()[:32]


def packing_layout(config: SecureSumConfig, modulus_bits: int) -> PackingLayout:
    """Slot width and count for ``config`` under a ``modulus_bits``-bit Paillier modulus."""
    zmin, zmax = config.fixed_range
    width = zmax - zmin + 2 * config.noise_bound
    slot_bits = (config.n * width).bit_length()  # n * width < 2**slot_bits: no carry
    if slot_bits > _MAX_SLOT_BITS:
        raise InvalidParameterError(
            "bounds",
            config.bounds,
            f"no headroom: a Paillier slot would need {slot_bits} bits (> {_MAX_SLOT_BITS}); "
            "narrow the bounds or lower frac_bits",
        )
    slots = (modulus_bits - 3) // slot_bits
    if slots < 1:
        raise InvalidParameterError(
            "key_bits", modulus_bits, f"too small for {slot_bits}-bit slots"
        )
    return PackingLayout(slot_bits, slots, config.noise_bound - zmin, width)


def _pack(values: np.ndarray, layout: PackingLayout) -> list[int]:
    """Non-negative uint64 values -> one Python int per ``layout.slots`` values (little end first)."""
    shifts = np.arange(layout.slot_bits, dtype=np.uint64)
    n_ct = math.ceil(values.size / layout.slots)
    padded = np.zeros(n_ct * layout.slots, dtype=np.uint64)
    padded[: values.size] = values
    out = []
    for start in range(0, n_ct, _PACK_CHUNK):
        rows = padded[start * layout.slots : (start + _PACK_CHUNK) * layout.slots]
        bits = ((rows[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        packed = np.packbits(
            bits.reshape(-1, layout.slots * layout.slot_bits), axis=1, bitorder="little"
        )
        out += [int.from_bytes(row.tobytes(), "little") for row in packed]
    return out


def _unpack(plaintexts: list[int], layout: PackingLayout, length: int) -> np.ndarray:
    """Inverse of :func:`_pack`: uint64 slot values (each < ``2**slot_bits``)."""
    nbytes = (layout.slots * layout.slot_bits + 7) // 8
    raw = np.frombuffer(b"".join(p.to_bytes(nbytes, "little") for p in plaintexts), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(plaintexts), nbytes), axis=1, bitorder="little")
    bits = bits[:, : layout.slots * layout.slot_bits].reshape(-1, layout.slot_bits)
    values = np.zeros(bits.shape[0], dtype=np.uint64)
    for j in range(layout.slot_bits):
        values |= bits[:, j].astype(np.uint64) << np.uint64(j)
    return values[:length]


def paillier_encrypt(
    config: SecureSumConfig,
    public_key: bytes,
    site: str,
    values: Any,
    *,
    noise_share: np.ndarray | None = None,
    random: RandomSource | None = None,
) -> bytes:
    """Site: quantize, pack and encrypt ``values`` under the key holder's public key.

    Privacy: the message is a vector of Paillier ciphertexts, semantically secure (DCR) for
    anyone without the private key -- in particular for the aggregator.

    :param values: 1-D real vector, clipped to ``config.bounds``.
    :param noise_share: distributed-DP hook, integer fixed-point units, ``|noise| <=
        config.noise_bound`` (see the masking protocol).
    :param random: source of stochastic-rounding bits and encryption randomness (default
        ``os.urandom``; tests pass a deterministic one).
    """
    if not isinstance(site, str) or site not in config.sites:
        raise InvalidParameterError("site", site, f"expected one of {list(config.sites)}")
    arr = validate_vector(values, config)
    pk = load_public_key(public_key)
    layout = packing_layout(config, pk.n.bit_length())
    source = random or system_random
    d = arr.size
    z = quantize(arr, config, np.frombuffer(source(8 * d), dtype="<u8"))
    if noise_share is not None:
        z += validate_noise_share(noise_share, config, d)
    plaintexts = _pack((z + layout.offset).astype(np.uint64), layout)
    r_bytes = (pk.n.bit_length() + 64 + 7) // 8  # r mod n is 2**-64-close to uniform
    ct_bytes = (2 * pk.n.bit_length() + 7) // 8
    chunks = []
    for m in plaintexts:
        r = int.from_bytes(source(r_bytes), "big") % pk.n
        chunks.append(int(pk.raw_encrypt(m, r_value=r or 1)).to_bytes(ct_bytes, "big"))
    header = {
        "site": site,
        "length": d,
        "ciphertexts": len(plaintexts),
        "key": _fingerprint(pk.n),
        "slot_bits": layout.slot_bits,
        "slots": layout.slots,
    }
    return wire.pack(Kind.PAILLIER_INPUT, config, header, b"".join(chunks))


@dataclass(frozen=True)
class _Ciphertexts:
    header: dict[str, Any]
    values: list[int]


def _parse_ciphertexts(config: SecureSumConfig, message: Any, kind: Kind, n: int) -> _Ciphertexts:
    env = wire.unpack(message, kind, config)
    h = env.header
    if wire.get_field(h, "key", str) != _fingerprint(n):
        raise ProtocolError(f"{kind.name} message was encrypted under another Paillier key")
    layout = packing_layout(config, n.bit_length())
    length = wire.get_field(h, "length", int)
    count = wire.get_field(h, "ciphertexts", int)
    if (wire.get_field(h, "slot_bits", int), wire.get_field(h, "slots", int)) != (
        layout.slot_bits,
        layout.slots,
    ):
        raise ProtocolError(f"{kind.name} message uses another packing layout")
    if length < 1 or (config.length is not None and length != config.length):
        raise ProtocolError(f"{kind.name} message has length {length}")
    if count != math.ceil(length / layout.slots):
        raise ProtocolError(f"{kind.name} message has {count} ciphertexts for {length} values")
    ct_bytes = (2 * n.bit_length() + 7) // 8
    if len(env.payload) != count * ct_bytes:
        raise ProtocolError(f"{kind.name} message is truncated or padded")
    raw = bytes(env.payload)
    nsquare = n * n
    values = [int.from_bytes(raw[i : i + ct_bytes], "big") for i in range(0, len(raw), ct_bytes)]
    if any(not 0 < c < nsquare for c in values):
        raise ProtocolError(f"{kind.name} message holds a value outside Z*_(n^2)")
    return _Ciphertexts(h, values)


def paillier_add(config: SecureSumConfig, public_key: bytes, inputs: Iterable[bytes]) -> bytes:
    """Aggregator: the homomorphic sum of the sites' ciphertexts (no key needed).

    :raises ProtocolError: below ``t`` contributing sites, or on any malformed input.
    """
    pk = load_public_key(public_key)
    nsquare = pk.n * pk.n
    by_site: dict[str, _Ciphertexts] = {}
    for message in inputs:
        parsed = _parse_ciphertexts(config, message, Kind.PAILLIER_INPUT, pk.n)
        site = wire.site(parsed.header.get("site"), config, "encrypting site")
        if site in by_site and by_site[site].values != parsed.values:
            raise ProtocolError(f"site {site!r} sent two different encrypted inputs")
        by_site[site] = parsed
    if len(by_site) < config.threshold:
        raise ProtocolError(
            f"only {len(by_site)} of {config.n} sites sent an encrypted input; the threshold is "
            f"t={config.threshold}, so nothing is aggregated"
        )
    lengths = {p.header["length"] for p in by_site.values()}
    if len(lengths) != 1:
        raise ProtocolError("encrypted inputs have different lengths")
    sites = sorted(by_site)
    acc = list(by_site[sites[0]].values)
    for site in sites[1:]:
        acc = [a * c % nsquare for a, c in zip(acc, by_site[site].values, strict=True)]
    ct_bytes = (2 * pk.n.bit_length() + 7) // 8
    header = {**by_site[sites[0]].header, "sites": sites}
    del header["site"]
    return wire.pack(
        Kind.PAILLIER_AGGREGATE, config, header, b"".join(c.to_bytes(ct_bytes, "big") for c in acc)
    )


def paillier_decrypt(
    config: SecureSumConfig, private_key: bytes, aggregate: bytes
) -> SecureSumResult:
    """Key holder: decrypt the aggregate -- and only an aggregate of at least ``t`` sites.

    Guarantee: the key holder learns the sum of the named sites' fixed-point inputs and
    nothing else, provided it decrypts one aggregate per round and does not collude with
    the aggregator.
    """
    sk = load_private_key(private_key)
    n = sk.public_key.n
    parsed = _parse_ciphertexts(config, aggregate, Kind.PAILLIER_AGGREGATE, n)
    sites = wire.site_list(wire.get_field(parsed.header, "sites", list), config, "aggregate sites")
    if len(sites) < config.threshold:
        raise ProtocolError(
            f"the aggregate covers {len(sites)} sites, below the threshold t={config.threshold}; "
            "refusing to decrypt"
        )
    layout = packing_layout(config, n.bit_length())
    bound = 1 << (layout.slots * layout.slot_bits)
    plaintexts = [int(sk.raw_decrypt(c)) for c in parsed.values]
    if any(p >= bound for p in plaintexts):
        raise ProtocolError("decrypted aggregate overflows its packing: corrupted or foreign input")
    slot_sums = _unpack(plaintexts, layout, parsed.header["length"])
    if int(slot_sums.max()) > len(sites) * layout.width:
        raise ProtocolError("decrypted aggregate exceeds what the named sites can contribute")
    fixed = slot_sums.astype(np.int64) - len(sites) * layout.offset
    return SecureSumResult(
        total=decode(fixed, config),
        fixed_total=fixed,
        survivors=sites,
        dropped=[v for v in config.sites if v not in sites],
        protocol=PROTOCOL,
        frac_bits=config.frac_bits,
    )
