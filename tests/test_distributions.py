"""Quantized logistic codecs (utils/distributions.py): exact round trips on
both message layouts, extreme distributions, the integer-CDF invariants,
size against the ideal code length, bad input, and the reference vectors."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import DATA
from utils import ans
from utils.densities import discretized_logistic_logp, logistic_logp
from utils.distributions import (Bins, DiscretizedLogistic, LogisticBins, logistic_cdf,
                                 logistic_quantile, prior_bins)

REFERENCE = os.path.join(DATA, "reference_vectors.pt")


def uniform_endpoints(rng, dims, K):
    lo = rng.uniform(-5, -1, size=dims)
    hi = rng.uniform(1, 5, size=dims)
    return lo[:, None] + (hi - lo)[:, None] * np.arange(1, K)[None, :] / K


def irregular_endpoints(rng, dims, K):
    return np.sort(rng.normal(0, 2, size=(dims, K - 1)), axis=1) + np.arange(K - 1) * 1e-6


def make_endpoints(kind, rng, dims, K):
    if kind == "equal_mass":
        return prior_bins(int(np.log2(K)))[0]
    if kind == "uniform":
        return uniform_endpoints(rng, dims, K)
    return irregular_endpoints(rng, dims, K)


def round_trip(codec, msg, symbols):
    before = msg.copy()
    codec.push(msg, symbols)
    out = codec.pop(msg)
    np.testing.assert_array_equal(out, symbols)
    assert msg == before


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), quantbits=st.integers(1, 10),
       precision=st.integers(16, 31), lanes=st.integers(1, 6), dims=st.integers(1, 7),
       kind=st.sampled_from(["equal_mass", "uniform", "general"]), independent=st.booleans(),
       log_scale=st.floats(-12, 3))
def test_logistic_bins_round_trip(seed, quantbits, precision, lanes, dims, kind, independent, log_scale):
    rng = np.random.default_rng(seed)
    K = 1 << quantbits
    if (1 << precision) < 2 * K:
        precision = 16
    endpoints = make_endpoints(kind, rng, dims, K)
    mu = rng.normal(0, 3, size=(lanes, dims))
    scale = np.exp(log_scale + rng.normal(0, 1, size=(lanes, dims)))
    symbols = rng.integers(0, K, size=(lanes, dims))
    symbols[0, 0] = 0
    symbols[-1, -1] = K - 1                       # both edges, whatever their mass
    codec = LogisticBins(mu, scale, endpoints, precision=precision)
    if independent:
        msg = ans.Message.random(lanes, 2, seed, precision=precision)
    else:
        msg = ans.InterleavedMessage.random(max(1, lanes * dims // 3), 2, seed, precision=precision)
    round_trip(codec, msg, symbols)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31), precision=st.integers(16, 31), lanes=st.integers(1, 40),
       log_scale=st.floats(-14, 2), independent=st.booleans())
def test_pixels_round_trip(seed, precision, lanes, log_scale, independent):
    rng = np.random.default_rng(seed)
    n = 3 * lanes + 1
    mu = rng.uniform(-1.5, 1.5, size=(lanes, n) if independent else n)
    scale = np.exp(log_scale + rng.normal(0, 0.5, size=mu.shape))
    x = rng.integers(0, 256, size=mu.shape)
    x.flat[0], x.flat[-1] = 0, 255
    msg = (ans.Message.empty(lanes, precision) if independent
           else ans.InterleavedMessage.empty(lanes, precision))
    round_trip(DiscretizedLogistic(mu, scale, precision), msg, x)


@pytest.mark.parametrize("kind", ["equal_mass", "uniform", "general"])
def test_extreme_distributions_round_trip(kind):
    """A bin with probability ~1, tails of mass ~1e-300 and below, both edges."""
    rng = np.random.default_rng(0)
    K = 1024
    endpoints = make_endpoints(kind, rng, 8, K)
    mu = np.array([[0.0, 0.0, 50.0, -50.0, 1e3, -1e3, 0.3, 0.0]] * 3)
    scale = np.array([[1e-9, 1e-300, 0.05, 0.05, 1.0, 1.0, 1e-12, 1e6]] * 3)
    symbols = np.array([[0, K - 1, 0, K - 1, 0, K - 1, 512, 3],
                        [K - 1, 0, K - 1, 0, K - 1, 0, 511, K - 4],
                        [512, 511, 17, 1000, 3, 7, 513, 512]])
    for msg in (ans.Message.random(3, 4, seed=1), ans.InterleavedMessage.random(5, 4, seed=1)):
        round_trip(LogisticBins(mu, scale, endpoints), msg, symbols)
    x = symbols % 256
    for msg in (ans.Message.random(3, 4, seed=2), ans.InterleavedMessage.random(5, 4, seed=2)):
        round_trip(DiscretizedLogistic(np.clip(mu, -1e3, 1e3), scale), msg, x)


def test_integer_cdf_invariants():
    """C(0) = 0, C(K) = 2^p, strictly increasing (every freq >= 1)."""
    rng = np.random.default_rng(3)
    K, p = 64, 16
    mu = rng.normal(0, 5, size=(2, 5))
    scale = np.exp(rng.normal(-3, 3, size=(2, 5)))
    codec = LogisticBins(mu, scale, uniform_endpoints(rng, 5, K), precision=p)
    msg = ans.Message.empty(2, p)
    codec._prepare(msg)
    n = mu.size
    C = np.stack([codec._cdf(np.full(n, k), slice(None)) for k in range(K + 1)])
    assert (C[0] == 0).all() and (C[K] == 1 << p).all()
    assert (np.diff(C, axis=0) >= 1).all()
    pix = DiscretizedLogistic(mu, scale, precision=p)
    pix._prepare(msg)
    C = np.stack([pix._cdf(np.full(n, k), slice(None)) for k in range(257)])
    assert (C[0] == 0).all() and (C[256] == 1 << p).all() and (np.diff(C, axis=0) >= 1).all()


def ideal_bits_pixels(mu, scale, x):
    c = (x - 127.5) / 127.5
    hi = np.where(x < 255, c + 1 / 255, np.inf)
    lo = np.where(x > 0, c - 1 / 255, -np.inf)
    return float(-np.log2(logistic_cdf(hi, mu, scale) - logistic_cdf(lo, mu, scale)).sum())


@pytest.mark.parametrize("lanes, independent", [(1, True), (16, True), (64, False)])
def test_size_within_tenth_of_a_percent_of_ideal_plus_heads(lanes, independent):
    rng = np.random.default_rng(5)
    n = 20000 // lanes * lanes
    mu = rng.uniform(-0.9, 0.9, size=n)
    scale = np.exp(rng.uniform(-4, -1, size=n))
    x = np.clip(np.round((mu + scale * logistic_quantile(rng.uniform(size=n))) * 127.5 + 127.5),
                0, 255).astype(np.int64)
    ideal = ideal_bits_pixels(mu, scale, x)
    if independent:
        msg = ans.Message.empty(lanes)
        shape = (lanes, n // lanes)
    else:
        msg = ans.InterleavedMessage.empty(lanes)
        shape = (n,)
    start = msg.bits()
    DiscretizedLogistic(mu.reshape(shape), scale.reshape(shape)).push(msg, x.reshape(shape))
    grown = msg.bits() - start
    assert grown <= ideal * 1.001 + 32 * lanes
    assert grown >= ideal - 1 * lanes          # heads' integer bit length loses < 1 bit/lane
    total = len(msg.to_bytes()) * 8
    assert total <= ideal * 1.001 + 64 * lanes + 32 * 6 + 32 * lanes * independent


def test_codec_cost_matches_model_log_density():
    """The quantized pixel codec charges -log2 of the model's discretized
    logistic (utils.densities.discretized_logistic_logp) up to rounding."""
    rng = np.random.default_rng(6)
    n = 4096
    mu = rng.uniform(-1, 1, size=n)
    scale = np.exp(rng.uniform(-4, -1, size=n))
    x = rng.integers(0, 256, size=n)
    codec = DiscretizedLogistic(mu, scale)
    msg = ans.InterleavedMessage.empty(n)
    codec._prepare(msg)
    lo, hi = codec._interval(x, slice(None))
    bits = -np.log2((hi - lo) / 2.0 ** msg.precision)
    logp = discretized_logistic_logp(torch.tensor(x, dtype=torch.float64), torch.tensor(mu),
                                     torch.tensor(scale)).numpy()
    model_bits = -logp / np.log(2)
    mass_ok = model_bits < 15                      # float32-free region of the model formula
    np.testing.assert_allclose(bits[mass_ok], model_bits[mass_ok], atol=1e-3)


@pytest.mark.parametrize("layout", [ans.Message, ans.InterleavedMessage])
def test_bad_input_named_and_message_unchanged(layout):
    rng = np.random.default_rng(7)
    e = prior_bins(4)[0]
    mu = rng.normal(size=(2, 3))
    scale = np.ones((2, 3))
    msg = layout.random(2, 3, seed=0)
    before = msg.copy()
    good = rng.integers(0, 16, size=(2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        LogisticBins(np.where(good == good[0, 0], np.nan, mu), scale, e)
    with pytest.raises(ValueError, match="NaN or inf"):
        DiscretizedLogistic(mu, np.full((2, 3), np.inf))
    with pytest.raises(ValueError, match="scale must be > 0"):
        LogisticBins(mu, np.zeros((2, 3)), e)
    with pytest.raises(ValueError, match="scale must be > 0"):
        DiscretizedLogistic(mu, -scale)
    with pytest.raises(ValueError, match="out of support"):
        LogisticBins(mu, scale, e).push(msg, np.where(good == good[0, 0], 16, good))
    with pytest.raises(ValueError, match="out of support"):
        DiscretizedLogistic(mu, scale).push(msg, np.full((2, 3), -1))
    with pytest.raises(ValueError, match="shape"):
        DiscretizedLogistic(mu, scale).push(msg, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="non-decreasing"):
        LogisticBins(mu, scale, e[::-1])
    with pytest.raises(ValueError, match="precision"):
        LogisticBins(mu, scale, e, precision=20).push(msg, good)
    assert msg == before
    # Popping from an empty message raises and leaves it as it was.
    empty = layout.empty(2)
    with pytest.raises(ValueError, match="bottom"):
        DiscretizedLogistic(np.zeros((2, 50)), np.full((2, 50), 0.01)).pop(empty)
    assert empty == layout.empty(2)


def test_repeated_endpoints_still_code_every_bin():
    """Equal adjacent endpoints (empty bins, as the authors' files may hold)
    keep frequency >= 1, so every symbol, the empty bins included, round-trips."""
    rng = np.random.default_rng(4)
    e = np.sort(rng.normal(0, 1, size=(3, 15)), axis=1)
    e[:, 5:9] = e[:, 5:6]                       # bins 6, 7, 8 empty in every row
    e[2, :] = 0.25                              # a constant dimension: all endpoints equal
    mu, scale = rng.normal(0, 1, size=(4, 3)), np.full((4, 3), 0.3)
    codec = LogisticBins(mu, scale, e, precision=24)
    symbols = np.stack([np.full(3, k) for k in (0, 6, 7, 15)])
    round_trip(codec, ans.Message.random(4, 2, 1, precision=24), symbols)


def test_bins_kind_detection_only_steers_the_guess():
    rng = np.random.default_rng(8)
    assert Bins(prior_bins(10)[0]).kind == "equal_mass"
    assert Bins(uniform_endpoints(rng, 4, 1024)).kind == "uniform"
    assert Bins(irregular_endpoints(rng, 4, 1024)).kind == "general"
    # the authors' float32 values of the same grids take the same fast paths
    assert Bins(prior_bins(10)[0].astype(np.float32)).kind == "equal_mass"
    assert Bins(uniform_endpoints(rng, 4, 1024).astype(np.float32)).kind == "uniform"


def test_logistic_cdf_quantile_inverse():
    u = np.linspace(1e-9, 1 - 1e-9, 101)
    np.testing.assert_allclose(logistic_cdf(logistic_quantile(u, 0.3, 2.0), 0.3, 2.0), u, rtol=1e-9)
    assert logistic_cdf(-1e6) == 0.0 and logistic_cdf(1e6) == 1.0


def reference():
    return torch.load(REFERENCE, weights_only=True)


def test_prior_bins_match_reference():
    ref = reference()
    for name in ref:
        ends_ref, centres_ref = ref[name]["prior_bins_precision4"]
        ends, centres = prior_bins(4)
        # The reference stores one row per latent dimension; every row is the same grid.
        e = ends_ref.reshape(-1, 15).numpy()
        c = centres_ref.reshape(-1, 16).numpy()
        np.testing.assert_allclose(e, np.broadcast_to(ends, e.shape), rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, np.broadcast_to(centres, c.shape), rtol=0, atol=1e-12)


def test_log_densities_match_reference():
    ref = reference()
    for name in ref:
        r = ref[name]
        mu, scale = r["generate"][0]
        lp = discretized_logistic_logp(r["x"], mu, scale).flatten(1)
        torch.testing.assert_close(lp, r["discretized_logistic_logp_x_given_z1"], atol=1e-5, rtol=1e-5)
        want = r["logistic_logp_z1_given_x"]
        got = logistic_logp(r["z"][0], *r["infer"][0]).reshape(want.shape)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_coder_path_imports_no_torch():
    """utils/ans.py and the codecs run without torch (a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import sys, utils.ans, utils.distributions; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(DATA)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
