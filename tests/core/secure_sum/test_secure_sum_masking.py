"""Double-masking secure sum: correct sums, dropouts, aborts, retries, strict messages."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from airflow_privacy.core.errors import InvalidParameterError, ProtocolError
from airflow_privacy.core.secure_sum import (
    SecureSumConfig,
    advertise_keys,
    collect_keys,
    deterministic_random_source,
    mask_input,
    request_survivors,
    request_unmask,
    reveal_shares,
    route_shares,
    share_keys,
    simulate,
    unmask_sum,
)
from airflow_privacy.core.secure_sum import messages as wire
from airflow_privacy.core.secure_sum.messages import Kind

SITES = ("site_a", "site_b", "site_c", "site_d", "site_e")


def _vectors(d: int = 64, seed: int = 0, sites=SITES, lo=-10.0, hi=10.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.uniform(lo, hi, d) for s in sites}


@dataclass
class Run:
    """The protocol driven step by step, as the operators will drive it."""

    config: SecureSumConfig
    vectors: dict[str, np.ndarray]
    states: dict[str, bytes] = field(default_factory=dict)
    adverts: dict[str, bytes] = field(default_factory=dict)
    shares: dict[str, bytes] = field(default_factory=dict)
    masked: dict[str, bytes] = field(default_factory=dict)
    reveals: dict[str, bytes] = field(default_factory=dict)
    roster: bytes = b""
    bundles: dict[str, bytes] = field(default_factory=dict)
    request: bytes = b""

    @classmethod
    def start(cls, vectors, threshold=None, seed=0, **kwargs) -> Run:
        d = len(next(iter(vectors.values())))
        cfg = SecureSumConfig(
            round_id="dag/run-1/secure_sum",
            sites=tuple(vectors),
            bounds=kwargs.pop("bounds", (-10.0, 10.0)),
            threshold=threshold,
            length=d,
            **kwargs,
        )
        run = cls(cfg, dict(vectors))
        run.source = deterministic_random_source(seed)
        return run

    def advertise(self, sites=None):
        for s in sites or self.config.sites:
            out = advertise_keys(self.config, s, random=self.source)
            self.states[s], self.adverts[s] = out.state, out.message
        self.roster = collect_keys(self.config, self.adverts.values())
        return self

    def share(self, sites=None):
        for s in sites or list(self.adverts):
            out = share_keys(self.config, self.states[s], self.roster)
            self.states[s], self.shares[s] = out.state, out.message
        self.bundles = route_shares(self.config, self.roster, self.shares.values())
        return self

    def mask(self, sites=None):
        for s in sites or list(self.bundles):
            out = mask_input(self.config, self.states[s], self.bundles[s], self.vectors[s])
            self.states[s], self.masked[s] = out.state, out.message
        self.request = request_unmask(self.config, self.masked.values())
        return self

    def reveal(self, sites=None):
        for s in sites or list(self.masked):
            out = reveal_shares(self.config, self.states[s], self.request)
            self.states[s], self.reveals[s] = out.state, out.message
        return self

    def result(self):
        return unmask_sum(
            self.config, self.roster, self.request, self.masked.values(), self.reveals.values()
        )


def _rewrite(message: bytes, **changes) -> bytes:
    """Re-pack a message with header fields changed (what a buggy or curious party might send)."""
    prefix = wire._PREFIX.size
    kind, header_len = message[5], int.from_bytes(message[6:10], "big")
    header = json.loads(message[prefix : prefix + header_len])
    header.update(changes)
    raw = json.dumps(header).encode()
    return (
        message[:5]
        + bytes([kind])
        + len(raw).to_bytes(4, "big")
        + raw
        + message[prefix + header_len :]
    )


# -- sums --------------------------------------------------------------------------------


def test_integer_inputs_sum_exactly():
    rng = np.random.default_rng(3)
    vectors = {s: rng.integers(-1000, 1000, 500) for s in SITES[:4]}
    res = simulate(vectors, bounds=(-1000, 1000), frac_bits=0, threshold=3, random=1)
    expected = sum(vectors.values())
    assert res.fixed_total.dtype == np.int64
    assert np.array_equal(res.fixed_total, expected)
    assert np.array_equal(res.total, expected.astype(float))


def test_large_integers_sum_exactly_beyond_float_precision():
    vectors = {s: np.array([2**58 + 1, -(2**58) - 7, 3], dtype=np.int64) for s in SITES[:4]}
    res = simulate(vectors, bounds=(-(2**59), 2**59), frac_bits=0, random=2)
    assert res.fixed_total.tolist() == [4 * (2**58 + 1), 4 * (-(2**58) - 7), 12]


def test_example_from_the_issue():
    v = _vectors(d=1000, sites=SITES[:4])
    res = simulate(v, protocol="masking", threshold=3, drop=["site_d"], bounds=(-10.0, 10.0))
    assert res.survivors == ["site_a", "site_b", "site_c"]
    assert res.dropped == ["site_d"]
    assert res.protocol == "masking"
    exact = v["site_a"] + v["site_b"] + v["site_c"]
    assert np.all(np.abs(res.total - exact) < 3 * 2.0**-20)
    # transcript: 4 advertisements, 4 key-share messages, 3 masked inputs, 3 reveals
    kinds = [m[5] for m in res.transcript]
    assert (
        kinds
        == [Kind.ADVERTISEMENT] * 4
        + [Kind.KEY_SHARES] * 4
        + [Kind.MASKED_INPUT] * 3
        + [Kind.SHARE_REVEAL] * 3
    )
    assert all(isinstance(m, bytes) for m in res.transcript)


@pytest.mark.parametrize("frac_bits", [0, 6, 12, 30])
def test_float_sums_are_within_the_quantization_bound(frac_bits):
    # Each site's stochastic rounding error is < 2**-f, so the sum's is < n * 2**-f.
    v = _vectors(d=20_000, seed=frac_bits)
    res = simulate(v, bounds=(-10.0, 10.0), frac_bits=frac_bits, random=frac_bits)
    err = res.total - sum(v.values())
    n = len(SITES)
    assert np.all(np.abs(err) < n * 2.0**-frac_bits + 1e-9)
    if frac_bits < 30:
        # Unbiased: the mean error over d coordinates has sd <= sqrt(n / 4 / d) * 2**-f.
        assert abs(err.mean()) < 5 * np.sqrt(n / 4 / err.size) * 2.0**-frac_bits


def test_values_outside_bounds_are_clipped():
    v = {s: np.array([100.0, -100.0, 0.5]) for s in SITES[:3]}
    res = simulate(v, bounds=(-10.0, 10.0), frac_bits=16, random=4)
    assert np.allclose(res.total, [30.0, -30.0, 1.5], atol=3 * 2.0**-16)


@pytest.mark.parametrize("ring_bits", [16, 32, 64])
def test_smaller_rings_at_the_headroom_edge(ring_bits):
    # 4 sites at the extreme bound: |sum| = 2**(k-1) - 4, the largest the config allows.
    m = (2 ** (ring_bits - 1) - 4) // 4
    for sign in (1, -1):
        v = {s: np.array([sign * m, 0, -sign * m], dtype=np.int64) for s in SITES[:4]}
        res = simulate(v, bounds=(-m, m), frac_bits=0, ring_bits=ring_bits, random=ring_bits)
        assert res.fixed_total.tolist() == [4 * sign * m, 0, -4 * sign * m]


def test_noise_share_hook_adds_integer_noise_before_masking():
    v = {s: np.zeros(4, dtype=np.int64) for s in SITES[:3]}
    noise = {"site_a": np.array([1, -2, 3, 0]), "site_c": np.array([5, 5, -5, 0])}
    res = simulate(v, bounds=(-10, 10), frac_bits=0, noise_shares=noise, noise_bound=5, random=5)
    assert res.fixed_total.tolist() == [6, 3, -2, 0]


# -- dropouts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drop",
    [
        [],
        ["site_c"],
        ["site_b", "site_e"],  # n - t = 2 with n = 5, t = 3
        {"site_a": 0, "site_b": 1},  # never advertised / advertised only
        {"site_a": 1, "site_e": 2},
        {"site_d": 0, "site_e": 2},
    ],
)
def test_dropouts_up_to_n_minus_t(drop):
    v = _vectors(d=300, seed=7)
    res = simulate(v, bounds=(-10.0, 10.0), threshold=3, drop=drop, random=6)
    survivors = [s for s in SITES if s not in drop]
    assert res.survivors == survivors
    assert np.all(np.abs(res.total - sum(v[s] for s in survivors)) < len(survivors) * 2.0**-20)


def test_site_that_stops_after_sending_its_input_is_still_counted():
    v = _vectors(d=50, seed=8)
    res = simulate(v, bounds=(-10.0, 10.0), threshold=3, drop={"site_a": 3, "site_b": 3}, random=7)
    assert res.survivors == list(SITES)
    assert np.all(np.abs(res.total - sum(v.values())) < 5 * 2.0**-20)


def test_masked_input_arriving_after_the_request_is_not_part_of_the_sum():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    run.mask(["site_a", "site_b", "site_c", "site_d"])
    late = mask_input(run.config, run.states["site_e"], run.bundles["site_e"], run.vectors["site_e"]).message
    survivors = request_survivors(run.config, run.request)
    assert survivors == ["site_a", "site_b", "site_c", "site_d"]
    run.reveal(survivors)
    # every masked input present would name a site the request calls dropped ...
    with pytest.raises(ProtocolError, match="request names survivors"):
        unmask_sum(run.config, run.roster, run.request, [*run.masked.values(), late], run.reveals.values())
    # ... the survivors' inputs give their sum
    res = run.result()
    assert res.dropped == ["site_e"]
    assert np.all(np.abs(res.total - sum(run.vectors[s] for s in survivors)) < 4 * 2.0**-20)


def test_threshold_equal_to_cohort_needs_everyone():
    v = _vectors(d=10, sites=SITES[:3])
    assert simulate(v, bounds=(-10.0, 10.0), threshold=3, random=8).survivors == list(SITES[:3])
    with pytest.raises(ProtocolError):
        simulate(v, bounds=(-10.0, 10.0), threshold=3, drop=["site_a"], random=8)


@pytest.mark.parametrize(
    ("drop", "where"),
    [
        ({"site_a": 0, "site_b": 0, "site_c": 0}, "advertised"),
        ({"site_a": 1, "site_b": 1, "site_c": 0}, "shared"),
        (["site_a", "site_b", "site_c"], "masked input"),
        ({"site_a": 2, "site_b": 3, "site_c": 3}, "answered"),
    ],
)
def test_abort_below_threshold_at_every_round(drop, where):
    v = _vectors(d=10)
    with pytest.raises(ProtocolError, match=where):
        simulate(v, bounds=(-10.0, 10.0), threshold=3, drop=drop, random=9)


def test_aggregator_cannot_release_with_fewer_than_t_reveals():
    run = (
        Run.start(_vectors(d=8), threshold=3)
        .advertise()
        .share()
        .mask()
        .reveal(["site_a", "site_b"])
    )
    with pytest.raises(ProtocolError, match="answered the unmask request"):
        run.result()
    run.reveal(["site_c"])
    assert run.result().survivors == list(SITES)


# -- retries -----------------------------------------------------------------------------


def test_site_secret_rederives_the_same_state_and_keys():
    cfg = SecureSumConfig(round_id="r1", sites=SITES, bounds=(-1, 1))
    a = advertise_keys(cfg, "site_a", site_secret=b"s" * 32)
    assert a == advertise_keys(cfg, "site_a", site_secret=b"s" * 32)
    other_round = SecureSumConfig(round_id="r2", sites=SITES, bounds=(-1, 1))
    b = advertise_keys(other_round, "site_a", site_secret=b"s" * 32)
    assert json.loads(a.message[10:])["c_pk"] != json.loads(b.message[10:])["c_pk"]


def test_retried_steps_re_emit_identical_bytes():
    run = Run.start(_vectors(d=100), threshold=3).advertise()
    s0 = run.states["site_a"]
    first = share_keys(run.config, s0, run.roster)
    assert share_keys(run.config, s0, run.roster) == first
    assert share_keys(run.config, first.state, run.roster) == first
    run.share()
    s1 = run.states["site_a"]
    x = run.vectors["site_a"]
    sent = mask_input(run.config, s1, run.bundles["site_a"], x)
    # retry from the state before the step (state not persisted) or after it: same bytes
    assert mask_input(run.config, s1, run.bundles["site_a"], x).message == sent.message
    assert (
        mask_input(run.config, sent.state, run.bundles["site_a"], x.copy()).message == sent.message
    )


def test_retry_with_a_different_input_is_refused():
    run = Run.start(_vectors(d=100), threshold=3).advertise().share()
    x = run.vectors["site_a"]
    sent = mask_input(run.config, run.states["site_a"], run.bundles["site_a"], x)
    changed = x.copy()
    changed[17] += 1.0
    with pytest.raises(ProtocolError, match="different masked input"):
        mask_input(run.config, sent.state, run.bundles["site_a"], changed)
    # a fresh state for the same site cannot help either: its masks would differ, and the
    # recorded state is what the operator keeps
    assert mask_input(run.config, sent.state, run.bundles["site_a"], x) == sent


def test_retry_with_different_noise_share_is_refused():
    run = Run.start(_vectors(d=10), threshold=3, noise_bound=4).advertise().share()
    x, bundle = run.vectors["site_a"], run.bundles["site_a"]
    sent = mask_input(run.config, run.states["site_a"], bundle, x, noise_share=np.full(10, 2))
    assert mask_input(run.config, sent.state, bundle, x, noise_share=np.full(10, 2)) == sent
    with pytest.raises(ProtocolError, match="different masked input"):
        mask_input(run.config, sent.state, bundle, x, noise_share=np.full(10, -2))


def test_protocol_with_retried_steps_and_duplicate_deliveries_still_sums_correctly():
    run = Run.start(_vectors(d=40), threshold=3).advertise().share()
    run.mask(["site_a", "site_b", "site_c", "site_d"])
    retry = mask_input(
        run.config, run.states["site_b"], run.bundles["site_b"], run.vectors["site_b"]
    )
    masked = [*run.masked.values(), retry.message]
    run.request = request_unmask(run.config, masked)
    run.reveal()
    again = reveal_shares(run.config, run.states["site_a"], run.request)
    assert again.message == run.reveals["site_a"]
    res = unmask_sum(
        run.config, run.roster, run.request, masked, [*run.reveals.values(), again.message]
    )
    exact = sum(run.vectors[s] for s in res.survivors)
    assert res.survivors == ["site_a", "site_b", "site_c", "site_d"]
    assert np.all(np.abs(res.total - exact) < 4 * 2.0**-20)


def test_aggregator_rejects_two_different_inputs_from_one_site():
    run = Run.start(_vectors(d=40), threshold=3).advertise().share().mask()
    other = Run.start(_vectors(d=40, seed=99), threshold=3, seed=0).advertise().share().mask()
    assert other.masked["site_a"] != run.masked["site_a"]
    with pytest.raises(ProtocolError, match="two different masked inputs"):
        request_unmask(run.config, [*run.masked.values(), other.masked["site_a"]])


# -- never both shares -------------------------------------------------------------------


def test_site_refuses_to_reveal_both_share_kinds_for_the_same_site():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share().mask().reveal(["site_a"])
    # The aggregator now pretends site_e dropped: site_a would reveal s_e after b_e.
    lying = request_unmask(run.config, [m for s, m in run.masked.items() if s != "site_e"])
    with pytest.raises(ProtocolError, match="both"):
        reveal_shares(run.config, run.states["site_a"], lying)
    # and the other order: first the key share of a "dropped" site, then its self-mask share
    run2 = Run.start(_vectors(d=8), threshold=3).advertise().share().mask()
    lying2 = request_unmask(run2.config, [m for s, m in run2.masked.items() if s != "site_e"])
    first = reveal_shares(run2.config, run2.states["site_a"], lying2)
    with pytest.raises(ProtocolError, match="both"):
        reveal_shares(run2.config, first.state, run2.request)


def test_aggregator_rejects_a_reveal_with_both_share_kinds():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    run.mask(["site_a", "site_b", "site_c", "site_d"]).reveal()
    h = json.loads(run.reveals["site_a"][10:])
    both = dict(h["key_shares"])
    both["site_a"] = h["self_mask_shares"]["site_a"]
    forged = _rewrite(run.reveals["site_a"], key_shares=both)
    reveals = [forged, *(m for s, m in run.reveals.items() if s != "site_a")]
    with pytest.raises(ProtocolError, match="both share kinds"):
        unmask_sum(run.config, run.roster, run.request, run.masked.values(), reveals)


def test_site_does_not_reveal_if_it_is_named_dropped_or_never_sent():
    run = (
        Run.start(_vectors(d=8), threshold=3)
        .advertise()
        .share()
        .mask(["site_a", "site_b", "site_c"])
    )
    with pytest.raises(ProtocolError, match="has not sent a masked input"):
        reveal_shares(run.config, run.states["site_d"], run.request)


# -- strict messages ---------------------------------------------------------------------


def test_messages_from_another_round_are_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    other_cfg = SecureSumConfig(
        round_id="dag/run-2/secure_sum", sites=SITES, bounds=(-10.0, 10.0), threshold=3, length=8
    )
    with pytest.raises(ProtocolError, match="round"):
        collect_keys(other_cfg, run.adverts.values())
    with pytest.raises(ProtocolError, match="round"):
        share_keys(other_cfg, run.states["site_a"], run.roster)
    with pytest.raises(ProtocolError, match="round"):
        mask_input(other_cfg, run.states["site_a"], run.bundles["site_a"], run.vectors["site_a"])


def test_bundle_for_another_site_is_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    with pytest.raises(ProtocolError, match="addressed to 'site_b'"):
        mask_input(run.config, run.states["site_a"], run.bundles["site_b"], run.vectors["site_a"])


def test_swapped_roster_keys_are_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise()
    h = json.loads(run.roster[10:])
    keys = h["keys"]
    keys["site_a"], keys["site_b"] = keys["site_b"], keys["site_a"]
    with pytest.raises(ProtocolError, match="own public keys"):
        share_keys(run.config, run.states["site_a"], _rewrite(run.roster, keys=keys))


def test_tampered_share_ciphertext_fails_authentication():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    h = json.loads(run.bundles["site_a"][10:])
    raw = bytearray(base64.b64decode(h["ciphertexts"]["site_c"]))
    raw[20] ^= 1
    h["ciphertexts"]["site_c"] = base64.b64encode(bytes(raw)).decode()
    bad = _rewrite(run.bundles["site_a"], ciphertexts=h["ciphertexts"])
    with pytest.raises(ProtocolError, match="failed authentication"):
        mask_input(run.config, run.states["site_a"], bad, run.vectors["site_a"])


def test_share_ciphertext_cannot_be_replayed_to_another_recipient():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    h = json.loads(run.bundles["site_a"][10:])
    other = json.loads(run.bundles["site_b"][10:])
    h["ciphertexts"]["site_c"] = other["ciphertexts"]["site_c"]  # c's shares meant for b
    bad = _rewrite(run.bundles["site_a"], ciphertexts=h["ciphertexts"])
    with pytest.raises(ProtocolError, match="failed authentication"):
        mask_input(run.config, run.states["site_a"], bad, run.vectors["site_a"])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m[:7],
        lambda m: b"XXXX" + m[4:],
        lambda m: m[:4] + b"\x09" + m[5:],
        lambda m: m[:10] + b"{not json" + m[19:],
        lambda m: m[:-1],
        lambda m: m + b"\x00" * 8,
        lambda m: "text",
    ],
)
def test_malformed_masked_inputs_are_rejected(mangle):
    run = Run.start(_vectors(d=8), threshold=3).advertise().share().mask()
    bad = mangle(run.masked["site_a"])
    with pytest.raises(ProtocolError):
        request_unmask(run.config, [bad, *(m for s, m in run.masked.items() if s != "site_a")])


def test_wrong_message_kind_is_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    with pytest.raises(ProtocolError, match="expected a SHARE_BUNDLE message, got KEY_SHARES"):
        mask_input(run.config, run.states["site_a"], run.shares["site_a"], run.vectors["site_a"])
    with pytest.raises(ProtocolError, match="SITE_STATE"):
        share_keys(run.config, run.adverts["site_a"], run.roster)


def test_unknown_site_in_a_message_is_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise()
    forged = _rewrite(run.adverts["site_a"], site="mallory")
    with pytest.raises(ProtocolError, match="not in the cohort"):
        collect_keys(run.config, [forged, *run.adverts.values()])


def test_corrupted_revealed_share_is_detected():
    run = (
        Run.start(_vectors(d=8), threshold=3)
        .advertise()
        .share()
        .mask()
        .reveal(["site_a", "site_b", "site_c"])
    )
    h = json.loads(run.reveals["site_a"][10:])
    shares = h["self_mask_shares"]
    raw = bytearray(base64.b64decode(shares["site_d"]))
    raw[-1] ^= 1
    shares["site_d"] = base64.b64encode(bytes(raw)).decode()
    run.reveals["site_a"] = _rewrite(run.reveals["site_a"], self_mask_shares=shares)
    with pytest.raises(ProtocolError, match="commitment|inconsistent"):
        run.result()


def test_values_are_validated_by_the_site_step():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    for bad in ([1.0] * 7, [np.nan] * 8, []):
        with pytest.raises(InvalidParameterError) as err:
            mask_input(run.config, run.states["site_a"], run.bundles["site_a"], bad)
        assert err.value.name == "values"


def test_mask_input_requires_shared_keys():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share()
    fresh = advertise_keys(run.config, "site_a", random=deterministic_random_source(1))
    with pytest.raises(ProtocolError, match="share_keys first"):
        mask_input(run.config, fresh.state, run.bundles["site_a"], run.vectors["site_a"])


def test_reveal_refuses_a_request_for_another_set_of_senders():
    run = Run.start(_vectors(d=8), threshold=3).advertise().share().mask()
    forged = _rewrite(
        run.request,
        senders=["site_a", "site_b", "site_c", "site_d"],
        survivors=["site_a", "site_b", "site_c", "site_d"],
    )
    with pytest.raises(ProtocolError, match="disagrees"):
        reveal_shares(run.config, run.states["site_a"], forged)


def test_state_from_another_round_is_rejected():
    run = Run.start(_vectors(d=8), threshold=3).advertise()
    other = SecureSumConfig(
        round_id="other", sites=SITES, bounds=(-10.0, 10.0), threshold=3, length=8
    )
    other_roster = collect_keys(other, [advertise_keys(other, s).message for s in SITES])
    with pytest.raises(ProtocolError, match="SITE_STATE message belongs to round"):
        share_keys(other, run.states["site_a"], other_roster)


def test_simulate_runs_exactly_the_public_steps():
    # Same seed, same round: simulate's transcript is byte for byte what the step functions
    # produce when driven by hand, and the results agree.
    v = _vectors(d=32, seed=12)
    run = Run.start(v, threshold=3, seed=77).advertise().share()
    run.mask([s for s in SITES if s != "site_e"]).reveal()
    res = simulate(
        v,
        bounds=(-10.0, 10.0),
        threshold=3,
        drop=["site_e"],
        round_id=run.config.round_id,
        random=77,
    )
    manual = [
        *run.adverts.values(),
        *run.shares.values(),
        *run.masked.values(),
        *run.reveals.values(),
    ]
    assert res.transcript == manual
    assert np.array_equal(res.fixed_total, run.result().fixed_total)
