"""Model-side probability math (torch) and the quantized codecs the coder uses.

Pixels are 8-bit values scaled into [-1, 1] by (x - 127.5) / 127.5, so a pixel
bin has width 2/255; the two edge bins absorb the tails (PixelCNN++ style).
"""
import math

import torch
import torch.nn.functional as F


def logistic_logp(x, mu, scale):
    """Log-density of Logistic(mu, scale) at x (elementwise)."""
    y = (x - mu) / scale
    return -y - torch.log(scale) - 2.0 * F.softplus(-y)


def discretized_logistic_logp(x, mu, scale):
    """Log-probability of 8-bit pixels ``x`` (values 0..255) under a
    logistic over 256 bins of width 2/255 in [-1, 1], edge bins open."""
    x = (x - 127.5) / 127.5
    centered = x - mu
    inv = 1.0 / scale
    plus_in = inv * (centered + 1.0 / 255.0)
    min_in = inv * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)      # log F(upper), for bin 0
    log_one_minus_cdf_min = -F.softplus(min_in)       # log(1 - F(lower)), bin 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv * centered
    log_pdf_mid = mid_in - torch.log(scale) - 2.0 * F.softplus(mid_in)
    # Where the bin mass underflows in float32, fall back to density * width.
    log_prob_mid = torch.where(cdf_delta > 1e-5,
                               torch.log(torch.clamp(cdf_delta, min=1e-10)),
                               log_pdf_mid - math.log(127.5))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_prob_mid))


# ----------------------------------------------------------------------------
# Quantized codecs (numpy, float64) for utils/ans.py messages.
#
# Integer CDF of K bins at precision p:  C(k) = floor(F(e_k) * (2^p - K)) + k,
# C(0) = 0, C(K) = 2^p, with F the continuous CDF at the inner endpoint e_k.
# F is non-decreasing in k, so C is strictly increasing: every bin has
# frequency >= 1 and the total is exactly 2^p.  C(k) is computed on its own
# wherever it is needed (a push: C(s), C(s+1); a pop: a closed-form guess of
# the bin through the logistic quantile, an exact integer check, and an exact
# integer binary search for the lanes the guess missed).  Encoder and decoder
# run the same function (_cdf) on the same float64 inputs, so their integers
# are bit-identical.
# ----------------------------------------------------------------------------
import numpy as np  # noqa: E402

from utils import ans  # noqa: E402


def logistic_cdf(x, mu=0.0, scale=1.0):
    """CDF of Logistic(mu, scale), float64 numpy, saturating to exact 0/1."""
    z = (np.asarray(x, dtype=np.float64) - mu) / scale
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def logistic_quantile(u, mu=0.0, scale=1.0):
    """Inverse CDF of Logistic(mu, scale) (u in (0, 1)), float64 numpy."""
    u = np.asarray(u, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return mu + scale * (np.log(u) - np.log1p(-u))


def prior_bins(quantbits):
    """Equal-mass bins of Logistic(0, 1) with 2^quantbits bins.

    Returns (inner endpoints, shape (2^q - 1,): quantiles at k / 2^q;
    centres, shape (2^q,): quantiles at (k + 0.5) / 2^q), float64."""
    if not isinstance(quantbits, (int, np.integer)) or not 1 <= quantbits <= 20:
        raise ValueError(f"quantbits must be an integer in [1, 20], got {quantbits!r}")
    K = 1 << int(quantbits)
    k = np.arange(K, dtype=np.float64)
    return logistic_quantile(k[1:] / K), logistic_quantile((k + 0.5) / K)


def _as_float_array(name, a):
    if hasattr(a, "detach"):                       # a torch tensor slipped through
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real-valued array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_logistic_params(mu, scale):
    mu = _as_float_array("mu", mu)
    scale = _as_float_array("scale", scale)
    if (scale <= 0).any():
        raise ValueError("scale must be > 0 everywhere")
    mu, scale = np.broadcast_arrays(mu, scale)
    return mu, scale


class Bins:
    """Validated inner bin endpoints, shape (rows, K-1) or (K-1,), plus the
    cached shape analysis the pop's closed-form guess uses:

    * ``'equal_mass'``: every row is the equal-mass logistic prior grid
      (endpoints = logit(k/K)): guess ``k = floor(sigmoid(t) * K)``;
    * ``'uniform'``: every row is equally spaced: guess from (first, width);
    * ``'general'``: sorted but irregular: vectorized search over the row.

    The analysis only steers the guess; exactness comes from the integer
    check against the actual endpoints.  Build one per layer and reuse it.
    """

    def __init__(self, endpoints):
        e = _as_float_array("endpoints", endpoints)
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] < 1:
            raise ValueError(f"endpoints must be shaped (rows, K-1) or (K-1,), got {e.shape}")
        if e.shape[1] > 1 and not (np.diff(e, axis=1) > 0).all():
            raise ValueError("endpoints must be strictly increasing along each row")
        self.endpoints = np.ascontiguousarray(e)
        self.rows, self.K = e.shape[0], e.shape[1] + 1
        self.flat = self.endpoints.ravel()
        K = self.K
        grid = logistic_quantile(np.arange(1, K) / K)
        width = (e[:, -1] - e[:, 0]) / max(K - 2, 1)
        if np.allclose(e, grid[None, :], rtol=0, atol=1e-9):
            self.kind = "equal_mass"
        elif K > 2 and np.allclose(e, e[:, :1] + width[:, None] * np.arange(K - 1)[None, :],
                                   rtol=0, atol=1e-9 * (1 + np.abs(e).max())):
            self.kind = "uniform"
        else:
            self.kind = "general"
        self.first = e[:, 0].copy()
        self.inv_width = 1.0 / np.where(width > 0, width, 1.0)


class _QuantizedCodec:
    """Shared push/pop driver.  Subclasses provide, in the message's
    step-major flat layout: ``_cdf(k, ix)`` (int64 C(k) for elements ``ix``)
    and ``_guess(cf, ix)`` (a candidate bin per element)."""

    K: int

    def __init__(self, shape, precision):
        self.precision = ans._check_precision(precision)
        if (1 << self.precision) < 2 * self.K:
            raise ValueError(f"precision {precision} too small for {self.K} bins")
        self.shape = tuple(shape)
        self._scaled = float((1 << self.precision) - self.K)
        self._total = 1 << self.precision
        self._layout = None

    # -- layout: parameters rearranged into the message's step-major order --
    def _prepare(self, message):
        if self.precision != message.precision:
            raise ValueError(f"codec precision {self.precision} != message precision {message.precision}")
        key = (type(message), message.lanes)
        if self._layout != key:
            self._to_steps(message)
            self._layout = key

    def _to_steps(self, message):
        raise NotImplementedError

    def _interval(self, k, ix):
        lo = self._cdf(k, ix)
        hi = self._cdf(k + 1, ix)
        return lo, hi

    def push(self, message, symbols):
        """Push ``symbols`` (same shape as the parameters) onto ``message``."""
        symbols = np.asarray(symbols)
        if symbols.shape != self.shape:
            raise ValueError(f"symbols shape {symbols.shape} != parameter shape {self.shape}")
        if symbols.dtype.kind not in "iu":
            if symbols.dtype.kind == "f" and np.isfinite(symbols).all() and (symbols == np.round(symbols)).all():
                symbols = symbols.astype(np.int64)
            else:
                raise ValueError("symbols must be integers")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= self.K):
            raise ValueError(f"symbol out of support: symbols must lie in [0, {self.K - 1}]")
        self._prepare(message)
        s, n = message.to_steps(symbols.astype(np.int64))
        lo, hi = self._interval(s, slice(None))
        message._push_steps(lo.astype(np.uint64), (hi - lo).astype(np.uint64), n)

    def pop(self, message):
        """Pop symbols shaped like the parameters from ``message``."""
        self._prepare(message)
        n = message.to_steps(np.empty(self.shape, dtype=np.int8))[1]
        flat = message._pop_steps(n, self._lookup)
        return message.from_steps(flat, n, self.shape)

    def _lookup(self, sl, cf):
        cf = cf.astype(np.int64)
        k = self._guess(cf, sl)
        lo, hi = self._interval(k, sl)
        bad = (cf < lo) | (cf >= hi)
        if bad.any():
            idx = np.flatnonzero(bad)
            kk = self._search(cf[idx], k[idx], lo[idx], sl.start + idx)
            k[idx] = kk
            lo[idx], hi[idx] = self._interval(kk, sl.start + idx)
        return k, lo.astype(np.uint64), (hi - lo).astype(np.uint64)

    def _search(self, cf, k, lo_c, ix):
        """Exact integer search: largest k with C(k) <= cf (C(lo) <= cf < C(hi))."""
        below = cf < lo_c
        lo = np.where(below, 0, k + 1)
        hi = np.where(below, k, self.K)
        # Try the neighbour first: most misses are off by one bin.
        cand = np.where(below, k - 1, k + 1)
        cand = np.clip(cand, 0, self.K - 1)
        c_lo, c_hi = self._interval(cand, ix)
        hit = (c_lo <= cf) & (cf < c_hi)
        if hit.all():
            return cand
        rest = np.flatnonzero(~hit)
        lo_r, hi_r, cf_r, ix_r = lo[rest], hi[rest], cf[rest], ix[rest]
        while True:
            active = hi_r - lo_r > 1
            if not active.any():
                break
            mid = (lo_r + hi_r) // 2
            ok = self._cdf(mid, ix_r) <= cf_r
            lo_r = np.where(active & ok, mid, lo_r)
            hi_r = np.where(active & ~ok, mid, hi_r)
        cand[rest] = lo_r
        return cand


class LogisticBins(_QuantizedCodec):
    """Logistic(mu, scale) quantized over per-dimension bins (latents).

    ``mu``, ``scale``: arrays broadcast together, last axis = dimension;
    ``endpoints``: :class:`Bins` or an array (dims, K-1) (or (K-1,) shared)
    of inner endpoints; outer bins are open to -inf / +inf.  Symbols are
    bin indices 0..K-1 with the shape of the broadcast parameters.
    """

    def __init__(self, mu, scale, endpoints, precision=ans.DEFAULT_PRECISION):
        self.bins = endpoints if isinstance(endpoints, Bins) else Bins(endpoints)
        self.K = self.bins.K
        self.mu, self.scale = _check_logistic_params(mu, scale)
        if self.mu.ndim == 0:
            raise ValueError("mu must have at least one axis (the dimension axis)")
        if self.bins.rows not in (1, self.mu.shape[-1]):
            raise ValueError(f"endpoints have {self.bins.rows} rows but the parameters have "
                             f"{self.mu.shape[-1]} dimensions")
        super().__init__(self.mu.shape, precision)

    def _to_steps(self, message):
        self._mu = message.to_steps(self.mu)[0]
        self._inv_scale = message.to_steps(1.0 / self.scale)[0]
        self._scale_s = message.to_steps(self.scale)[0]
        if self.bins.rows == 1:
            self._row = None
        else:
            row = np.broadcast_to(np.arange(self.bins.rows), self.shape)
            self._row = message.to_steps(row)[0].astype(np.int64)
            self._rowoff = self._row * (self.K - 1)

    def _cdf(self, k, ix):
        K = self.K
        j = np.clip(k - 1, 0, K - 2)
        if self._row is not None:
            j = j + self._rowoff[ix]
        e = self.bins.flat[j]
        z = (e - self._mu[ix]) * self._inv_scale[ix]
        with np.errstate(over="ignore"):
            F = 1.0 / (1.0 + np.exp(-z))
        c = np.floor(F * self._scaled).astype(np.int64) + k
        c = np.where(k <= 0, 0, c)
        return np.where(k >= K, self._total, c)

    def _guess(self, cf, ix):
        K = self.K
        u = (cf + 0.5) * (1.0 / self._total)
        t = self._mu[ix] + self._scale_s[ix] * np.log(u / (1.0 - u))
        kind = self.bins.kind
        if kind == "equal_mass":
            with np.errstate(over="ignore"):
                g = K / (1.0 + np.exp(-t))
        elif kind == "uniform":
            if self._row is None:
                g = (t - self.bins.first[0]) * self.bins.inv_width[0] + 1.0
            else:
                r = self._row[ix]
                g = (t - self.bins.first[r]) * self.bins.inv_width[r] + 1.0
        else:
            return self._float_search(t, ix)
        return np.clip(g, 0, K - 1).astype(np.int64)

    def _float_search(self, t, ix):
        """Bin of t by vectorized binary search over irregular endpoints."""
        lo = np.zeros(t.shape, dtype=np.int64)            # bin index: e_lo <= t
        hi = np.full(t.shape, self.K, dtype=np.int64)
        off = 0 if self._row is None else self._rowoff[ix]
        while (hi - lo > 1).any():
            mid = (lo + hi) // 2
            ok = self.bins.flat[off + mid - 1] <= t
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        return lo


class DiscretizedLogistic(_QuantizedCodec):
    """Logistic(mu, scale) over the 256 pixel bins of width 2/255 in [-1, 1]
    (bin k centred at -1 + 2k/255; the edge bins absorb the tails).
    Symbols are the 8-bit pixel values 0..255."""

    K = 256

    def __init__(self, mu, scale, precision=ans.DEFAULT_PRECISION):
        self.mu, self.scale = _check_logistic_params(mu, scale)
        super().__init__(self.mu.shape, precision)

    def _to_steps(self, message):
        self._mu = message.to_steps(self.mu)[0]
        self._inv_scale = message.to_steps(1.0 / self.scale)[0]
        self._scale_s = message.to_steps(self.scale)[0]

    def _cdf(self, k, ix):
        e = (2.0 * k - 1.0) * (1.0 / 255.0) - 1.0
        z = (e - self._mu[ix]) * self._inv_scale[ix]
        with np.errstate(over="ignore"):
            F = 1.0 / (1.0 + np.exp(-z))
        c = np.floor(F * self._scaled).astype(np.int64) + k
        c = np.where(k <= 0, 0, c)
        return np.where(k >= 256, self._total, c)

    def _guess(self, cf, ix):
        u = (cf + 0.5) * (1.0 / self._total)
        t = self._mu[ix] + self._scale_s[ix] * np.log(u / (1.0 - u))
        return np.clip((t + 1.0) * 127.5 + 0.5, 0, 255).astype(np.int64)
