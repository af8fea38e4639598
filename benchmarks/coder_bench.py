"""Coder throughput: symbols per second for push and pop, CDF evaluation included.

Cases (every push is decoded and checked bit-for-bit):
  * 10-bit logistic latents, per-dimension mu/scale, equal-width bins per
    dimension (lower layers) and the equal-mass prior bins (top layer):
    1 and 100 independent chains coding a 256-dim latent per call (the
    experiments' layout), and 3,072 interleaved lanes on one message;
  * 8-bit discretized-logistic pixels on 3,072 interleaved lanes;
  * constriction 0.5.0 (AnsCoder + per-symbol Categorical over 1,024 / 256
    bins, tables formed from the same logistic) for comparison, when installed.

Usage: python benchmarks/coder_bench.py [--quick] [--repeats N]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import ans, cli  # noqa: E402
from utils.distributions import (Bins, DiscretizedLogistic, LogisticBins,  # noqa: E402
                                 logistic_cdf, prior_bins)

QUANTBITS = 10
K = 1 << QUANTBITS
DIMS = 256


def latent_endpoints(rng, dims, equal_mass):
    """Top layer: the equal-mass prior bins; lower layers: equal-width bins
    between per-dimension bounds (as KBinsDiscretizer 'uniform' yields)."""
    if equal_mass:
        return Bins(prior_bins(QUANTBITS)[0])
    lo = rng.uniform(-6, -3, size=dims)
    hi = rng.uniform(3, 6, size=dims)
    return Bins(lo[:, None] + (hi - lo)[:, None] * np.arange(1, K)[None, :] / K)


def latent_problem(rng, batch, bins):
    """mu/scale per (image, dim); symbols = bins of draws from the continuous
    logistic (typical data)."""
    dims = DIMS
    if bins.kind == "equal_mass":
        mu = rng.normal(0, 0.5, size=(batch, dims))
        scale = np.exp(rng.normal(-0.3, 0.3, size=(batch, dims)))
    else:
        mu = rng.normal(0, 1, size=(batch, dims))
        scale = np.exp(rng.normal(-1.5, 0.5, size=(batch, dims)))
    z = mu + scale * np.log(1 / rng.uniform(size=mu.shape) - 1)
    e = bins.endpoints
    sym = np.empty(mu.shape, dtype=np.int64)
    for d in range(dims):
        sym[:, d] = np.searchsorted(e[d % e.shape[0]], z[:, d])
    return mu, scale, sym


def pixel_problem(rng, n):
    mu = rng.uniform(-1, 1, size=n)
    scale = np.exp(rng.normal(-3.5, 0.5, size=n))
    x = (mu + scale * np.log(1 / rng.uniform(size=n) - 1)) * 127.5 + 127.5
    return mu, scale, np.clip(np.round(x), 0, 255).astype(np.int64)


def info_bits(msg):
    """Exact information content: 32 bits per stack word plus log2 of each
    head above its 2^32 floor (fractional), so coder overhead is not hidden
    by the integer bit length of the heads."""
    words = msg.stack_words()
    return 32.0 * np.sum(words) + float(np.sum(np.log2(msg.head.astype(np.float64)) - 32.0))


def timed(fn, repeats):
    best = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best.append(time.perf_counter() - t)
    return float(np.median(best)), out


def bench_independent(rng, lanes, calls, repeats, equal_mass):
    """`calls` codec calls, each coding one 256-dim latent on every chain."""
    bins = latent_endpoints(rng, DIMS, equal_mass)
    probs = [latent_problem(rng, lanes, bins) for _ in range(calls)]

    def push():
        msg = ans.Message.random(lanes, 8, seed=1)
        for mu, scale, sym in probs:
            LogisticBins(mu, scale, bins).push(msg, sym)
        return msg

    t_push, msg = timed(push, repeats)
    ideal = sum(ideal_bits_latent(mu, scale, bins, sym) for mu, scale, sym in probs)
    start = ans.Message.random(lanes, 8, seed=1)
    size = (info_bits(msg) - info_bits(start), msg.bits() - start.bits())

    def pop():
        m = msg.copy()
        outs = [LogisticBins(mu, scale, bins).pop(m) for mu, scale, _ in reversed(probs)]
        return m, outs

    t_pop, (m, outs) = timed(pop, repeats)
    assert all((o == p[2]).all() for o, p in zip(outs, reversed(probs))), "round trip failed"
    assert m == ans.Message.random(lanes, 8, seed=1), "initial message not restored"
    n = lanes * DIMS * calls
    return n / t_push, n / t_pop, size, ideal, lanes


def bench_interleaved(rng, lanes, steps, repeats, kind):
    n = lanes * steps
    if kind == "pixels":
        mu, scale, sym = pixel_problem(rng, n)
        make = lambda: DiscretizedLogistic(mu, scale)  # noqa: E731
        ideal = ideal_bits_pixels(mu, scale, sym)
    else:
        bins = latent_endpoints(rng, DIMS, kind == "prior")
        mu, scale, sym = latent_problem(rng, n // DIMS, bins)
        make = lambda: LogisticBins(mu, scale, bins)  # noqa: E731
        ideal = ideal_bits_latent(mu, scale, bins, sym)

    def push():
        msg = ans.InterleavedMessage.empty(lanes)
        make().push(msg, sym)
        return msg

    t_push, msg = timed(push, repeats)
    start = ans.InterleavedMessage.empty(lanes)
    size = (info_bits(msg) - info_bits(start), msg.bits() - start.bits())

    def pop():
        m = msg.copy()
        return m, make().pop(m)

    t_pop, (m, out) = timed(pop, repeats)
    assert (out == sym).all() and m == ans.InterleavedMessage.empty(lanes), "round trip failed"
    return sym.size / t_push, sym.size / t_pop, size, ideal, lanes


def ideal_bits_latent(mu, scale, bins, sym):
    """-log2 of the continuous bin masses (float64), the ideal code length."""
    e = bins.endpoints
    row = np.arange(mu.shape[-1]) if e.shape[0] > 1 else np.zeros(mu.shape[-1], dtype=np.int64)
    row = np.broadcast_to(row, mu.shape)
    lo = np.where(sym > 0, e[row, np.clip(sym - 1, 0, K - 2)], -np.inf)
    hi = np.where(sym < K - 1, e[row, np.clip(sym, 0, K - 2)], np.inf)
    return _ideal_bits(lo, hi, mu, scale)


def _ideal_bits(lo, hi, mu, scale):
    """-log2(F(hi) - F(lo)) summed, computed on the tail side of mu so that
    far-tail bins do not cancel to zero in float64."""
    upper = lo > mu                   # bin right of mu: use survival functions
    p_left = logistic_cdf(hi, mu, scale) - logistic_cdf(lo, mu, scale)
    p_right = logistic_cdf(-lo, -mu, scale) - logistic_cdf(-hi, -mu, scale)
    return float(-np.log2(np.where(upper, p_right, p_left)).sum())


def ideal_bits_pixels(mu, scale, x):
    c = (x - 127.5) / 127.5
    hi = np.where(x < 255, c + 1 / 255, np.inf)
    lo = np.where(x > 0, c - 1 / 255, -np.inf)
    return _ideal_bits(lo, hi, mu, scale)


def bench_constriction(rng, n, repeats, kind):
    """constriction's AnsCoder with a per-symbol Categorical whose table is
    formed from the same logistic (table construction included)."""
    try:
        import constriction
    except ImportError:
        return None
    if kind == "pixels":
        mu, scale, sym = pixel_problem(rng, n)
        edges = np.concatenate([[-np.inf], (2 * np.arange(1, 256) - 1) / 255 - 1, [np.inf]])
        edges = np.broadcast_to(edges, (n, 257))
    else:
        bins = latent_endpoints(rng, DIMS, False)
        mu, scale, sym = latent_problem(rng, n // DIMS, bins)
        mu, scale, sym = mu.ravel(), scale.ravel(), sym.ravel()
        e = np.broadcast_to(bins.endpoints, (n // DIMS, DIMS, K - 1)).reshape(n, K - 1)
        edges = np.concatenate([np.full((n, 1), -np.inf), e, np.full((n, 1), np.inf)], axis=1)
    family = constriction.stream.model.Categorical(perfect=False)

    def tables():
        return np.diff(logistic_cdf(edges, mu[:, None], scale[:, None]), axis=1)

    t_tables, probs = timed(tables, repeats)

    def push():
        enc = constriction.stream.stack.AnsCoder()
        enc.encode_reverse(sym.astype(np.int32), family, probs)
        return enc.get_compressed()

    t_push, data = timed(push, repeats)

    def pop():
        dec = constriction.stream.stack.AnsCoder(data)
        return dec.decode(family, probs)

    t_pop, out = timed(pop, repeats)
    assert (out == sym).all()
    return n / (t_push + t_tables), n / (t_pop + t_tables), n / t_push, n / t_pop


def main():
    ap = cli.parser("coder_bench.py", __doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (~20 s)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (median reported)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    rng = np.random.default_rng(0)
    scale_steps = 40 if args.quick else 200
    rows = []

    def row(name, res):
        push, pop, (info, size), ideal, lanes = res
        over = (info - ideal) / ideal * 100
        per_lane = (size - ideal) / lanes
        rows.append((name, push / 1e6, pop / 1e6, over))
        print(f"{name:<52s} {push / 1e6:8.2f} {pop / 1e6:8.2f} {over:+10.5f}% {per_lane:+10.1f}", flush=True)

    print(f"{'case (M symbols/s)':<52s} {'push':>8s} {'pop':>8s} {'overhead':>11s} {'bits/lane':>10s}")
    row("latents 10-bit, 1 chain x 256 dims/call",
        bench_independent(rng, 1, 10 if args.quick else 40, repeats, False))
    row("latents 10-bit, 100 chains x 256 dims/call",
        bench_independent(rng, 100, 4 if args.quick else 16, repeats, False))
    row("latents 10-bit, 100 chains, prior bins",
        bench_independent(rng, 100, 4 if args.quick else 16, repeats, True))
    row("latents 10-bit, 3072 interleaved lanes",
        bench_interleaved(rng, 3072, scale_steps, repeats, "latents"))
    row("latents 10-bit, 3072 interleaved lanes, prior bins",
        bench_interleaved(rng, 3072, scale_steps, repeats, "prior"))
    row("pixels 8-bit, 3072 interleaved lanes",
        bench_interleaved(rng, 3072, scale_steps, repeats, "pixels"))
    print("overhead: growth of the message's information (stack words + log2 heads) over the\n"
          "float64 ideal code length; bits/lane: growth of bits() (integer head lengths) minus\n"
          "the ideal, per lane (the per-lane head constant, between -1 and +32 bits)")
    for kind, name in (("latents", "constriction AnsCoder+Categorical, 1024 bins"),
                       ("pixels", "constriction AnsCoder+Categorical, 256 bins")):
        n = 256 * (8 if args.quick else 40) * (1 if kind == "latents" else 4)
        res = bench_constriction(rng, n, repeats, kind)
        if res is None:
            print(f"{name:<52s} (constriction not installed)")
        else:
            print(f"{name:<52s} {res[0] / 1e6:8.2f} {res[1] / 1e6:8.2f}   (with the tables)")
            print(f"{'  same, tables prebuilt (coding only)':<52s} {res[2] / 1e6:8.2f} {res[3] / 1e6:8.2f}")


if __name__ == "__main__":
    main()
