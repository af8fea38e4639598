"""The quantized codecs the entropy coder uses (numpy float64 only; no torch,
so the coding path imports none).

Owns: ``logistic_cdf`` / ``logistic_quantile``; the equal-mass prior bins
``prior_bins(quantbits)``; the per-dimension ``Bins``; and the codecs
``LogisticBins`` (latents over per-dimension bins) and ``DiscretizedLogistic``
(8-bit pixels) with ``.push(message, symbols)`` / ``.pop(message)`` on both
layouts of utils/ans.py.  The matching torch log-densities the model trains
with are in utils/densities.py.

Pixels are 8-bit values scaled into [-1, 1] by (x - 127.5) / 127.5, so a pixel
bin has width 2/255; the two edge bins absorb the tails (PixelCNN++ style).

Invariant of the codecs: encoder and decoder form every integer CDF value
with the same function, the same float64 inputs and the same elementwise
numpy operations, so the integers agree bit for bit on one machine and numpy
build.  (Across machines this relies on numpy's float64 exp being the same
function on both; messages meant to travel between machines should be
decoded by the same software stack that encoded them.)

Integer CDF of K bins at precision p:  C(k) = floor(F(e_k) * (2^p - K)) + k,
C(0) = 0, C(K) = 2^p, with F the continuous CDF at the inner endpoint e_k.
F is non-decreasing in k (endpoints may repeat), so C is strictly increasing: every bin has
frequency >= 1 and the total is exactly 2^p.  C(k) is computed on its own
wherever it is needed (a push: C(s), C(s+1); a pop: a closed-form guess of
the bin through the logistic quantile, an exact integer check, and an exact
integer binary search for the lanes the guess missed).  Encoder and decoder
run the same function (_cdf) on the same float64 inputs, so their integers
are bit-identical.
"""
import numpy as np

from utils import ans


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


# Scales below this are floored to it: 1/scale must stay finite (a subnormal
# scale would make (mu - e) / scale = 0 * inf = NaN at an endpoint equal to
# mu); at 1e-300 the distribution is already a point mass at every precision.
MIN_SCALE = 1e-300


def _check_logistic_params(mu, scale):
    mu = _as_float_array("mu", mu)
    scale = _as_float_array("scale", scale)
    if (scale <= 0).any():
        raise ValueError("scale must be > 0 everywhere")
    mu, scale = np.broadcast_arrays(mu, np.maximum(scale, MIN_SCALE))
    return mu, scale


class Bins:
    """Validated inner bin endpoints, shape (rows, K-1) or (K-1,), plus what
    the codecs precompute from them once (build one per layer and reuse it):

    * ``padded``: each row as ``[-inf, e_1, ..., e_{K-1}, +inf]`` so that the
      integer CDF needs no special cases at k = 0 and k = K;
    * ``kind``, which only steers the pop's first guess (exactness comes from
      the integer check against the actual endpoints):
      ``'equal_mass'`` (every row is the logistic prior grid logit(k/K)):
      guess ``floor(K * sigmoid(t))``; ``'uniform'`` (equally spaced rows):
      guess from (first endpoint, width); ``'general'``: binary search of t
      over the row.
    """

    def __init__(self, endpoints):
        e = _as_float_array("endpoints", endpoints)
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] < 1:
            raise ValueError(f"endpoints must be shaped (rows, K-1) or (K-1,), got {e.shape}")
        if e.shape[1] > 1 and not (np.diff(e, axis=1) >= 0).all():
            raise ValueError("endpoints must be non-decreasing along each row")
        self.endpoints = np.ascontiguousarray(e)
        self.rows, self.K = e.shape[0], e.shape[1] + 1
        K = self.K
        inf = np.full((self.rows, 1), np.inf)
        self.padded = np.ascontiguousarray(np.concatenate([-inf, e, inf], axis=1)).ravel()
        grid = logistic_quantile(np.arange(1, K) / K)
        width = (e[:, -1] - e[:, 0]) / max(K - 2, 1)
        # Within a thousandth of a bin of the grid counts as the grid (the
        # authors' files hold float32 values); the guess only steers.
        grid_tol = 1e-3 * (np.diff(grid).min() if K > 2 else 1.0)
        if np.allclose(e, grid[None, :], rtol=0, atol=grid_tol):
            self.kind = "equal_mass"
        elif K > 2 and (width > 0).all() and (np.abs(
                e - (e[:, :1] + width[:, None] * np.arange(K - 1)[None, :]))
                <= 1e-3 * width[:, None]).all():
            self.kind = "uniform"
        else:
            self.kind = "general"
        # Guess for 'uniform': bin = floor((t - first) / width) + 1 = floor(t * a + b).
        inv_width = 1.0 / np.where(width > 0, width, 1.0)
        self.guess_a = inv_width
        self.guess_b = 1.0 - e[:, 0] * inv_width


PIXEL_BINS = Bins((2.0 * np.arange(1, 256) - 1.0) / 255.0 - 1.0)


class LogisticBins:
    """Logistic(mu, scale) quantized over per-dimension bins (latents).

    ``mu``, ``scale``: numpy arrays broadcast together, last axis = dimension;
    ``endpoints``: :class:`Bins` or an array (dims, K-1) (or (K-1,), shared)
    of inner endpoints; outer bins are open to -inf / +inf.  Symbols are bin
    indices 0..K-1 shaped like the broadcast parameters: (lanes, n) for a
    :class:`utils.ans.Message`, any shape (coded flat, C order) for an
    :class:`utils.ans.InterleavedMessage`.  ``precision``: None adopts the
    message's; an integer must equal it.
    """

    def __init__(self, mu, scale, endpoints, precision=None):
        self.bins = endpoints if isinstance(endpoints, Bins) else Bins(endpoints)
        self.K = self.bins.K
        self.mu, self.scale = _check_logistic_params(mu, scale)
        if self.mu.ndim == 0:
            raise ValueError("mu must have at least one axis (the dimension axis)")
        if self.bins.rows not in (1, self.mu.shape[-1]):
            raise ValueError(f"endpoints have {self.bins.rows} rows but the parameters have "
                             f"{self.mu.shape[-1]} dimensions")
        self.shape = self.mu.shape
        self.fixed_precision = None if precision is None else ans._check_precision(precision)
        self.precision = None
        self._layout = None

    # -- set-up for one message: precision constants, step-major parameters --
    def _prepare(self, message):
        if self.fixed_precision is not None and self.fixed_precision != message.precision:
            raise ValueError(f"codec precision {self.fixed_precision} != message precision {message.precision}")
        if self.precision != message.precision:
            p = message.precision
            if (1 << p) < 2 * self.K:
                raise ValueError(f"precision {p} too small for {self.K} bins")
            self.precision = p
            self._scaled = float((1 << p) - self.K)
            self._total = 1 << p
        key = (type(message), message.lanes)
        if self._layout != key:
            self._mu = message.to_steps(self.mu)[0]
            self._inv_scale = message.to_steps(1.0 / self.scale)[0]
            self._scale_s = message.to_steps(self.scale)[0]
            if self.bins.rows == 1:
                self._row = None
                self._rowoff = 0
            else:
                row = np.broadcast_to(np.arange(self.bins.rows), self.shape)
                self._row = message.to_steps(row)[0].astype(np.int64)
                self._rowoff = self._row * (self.K + 1)
            self._layout = key

    # -- the integer CDF: one code path for encoder and decoder --------------
    def _cdf(self, k, ix):
        """C(k) = floor(F(e_k) * (2^p - K)) + k (int64) for the step-major
        elements ``ix``; ``k`` shaped (m,) or (2, m) (then rows k and k+1)."""
        rowoff = self._rowoff if self._row is None else self._rowoff[ix]
        z = self.bins.padded[k + rowoff]
        np.subtract(self._mu[ix], z, out=z)
        np.multiply(z, self._inv_scale[ix], out=z)
        np.exp(z, out=z)                       # = (1 - F) / F; inf/0 at the padded ends
        np.add(z, 1.0, out=z)
        np.divide(self._scaled, z, out=z)      # F * (2^p - K), >= 0 so astype floors
        return z.astype(np.int64) + k

    def _interval(self, k, ix):
        c = self._cdf(np.stack([k, k + 1]), ix)
        return c[0], c[1]

    # -- push / pop -------------------------------------------------------------
    def push(self, message, symbols):
        """Push ``symbols`` (shaped like the parameters) onto ``message``."""
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
        with np.errstate(over="ignore"):
            lo, hi = self._interval(s, slice(None))
        message._push_steps(lo.astype(np.uint64), (hi - lo).astype(np.uint64), n)

    def pop(self, message):
        """Pop symbols shaped like the parameters from ``message``."""
        self._prepare(message)
        n = message.to_steps(np.empty(self.shape, dtype=np.int8))[1]
        with np.errstate(over="ignore", divide="ignore"):
            flat = message._pop_steps(n, self._lookup)
        return message.from_steps(flat, n, self.shape)

    def _lookup(self, sl, cf):
        """Symbols, starts and freqs for the peeked ``cf`` of step ``sl``."""
        cf = cf.astype(np.int64)
        k = self._guess(cf, sl)
        lo, hi = self._interval(k, sl)
        bad = (cf < lo) | (cf >= hi)
        if bad.any():
            idx = np.flatnonzero(bad)
            ix = idx + sl.start
            k[idx] = kk = self._search(cf[idx], k[idx], lo[idx] > cf[idx], ix)
            lo[idx], hi[idx] = self._interval(kk, ix)
        return k, lo.astype(np.uint64), (hi - lo).astype(np.uint64)

    def _guess(self, cf, ix):
        """Candidate bin from the logistic quantile of cf / 2^p (O(1))."""
        K = self.K
        u = (cf + 0.5) * (1.0 / self._total)
        t = self._mu[ix] + self._scale_s[ix] * np.log(u / (1.0 - u))
        kind = self.bins.kind
        if kind == "equal_mass":
            g = K / (1.0 + np.exp(-t))
        elif kind == "uniform":
            if self._row is None:
                g = t * self.bins.guess_a[0] + self.bins.guess_b[0]
            else:
                r = self._row[ix]
                g = t * self.bins.guess_a[r] + self.bins.guess_b[r]
        else:
            return self._float_search(t, ix)
        np.clip(g, 0, K - 1, out=g)            # clip in float: huge t must not wrap
        return g.astype(np.int64)

    def _float_search(self, t, ix):
        """Bin of t by vectorized binary search over irregular endpoints."""
        lo = np.zeros(t.shape, dtype=np.int64)            # invariant: e_lo <= t < e_hi
        hi = np.full(t.shape, self.K, dtype=np.int64)
        off = self._rowoff if self._row is None else self._rowoff[ix]
        while (hi - lo > 1).any():
            mid = (lo + hi) >> 1
            ok = self.bins.padded[off + mid] <= t
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        return lo

    def _search(self, cf, k, below, ix):
        """Exact integer search for the guesses that missed: the k with
        C(k) <= cf < C(k+1).  First the neighbour (most misses are one bin
        off), then a window of 16 bins, then bisection of the whole range."""
        K = self.K
        cand = np.minimum(np.maximum(np.where(below, k - 1, k + 1), 0), K - 1)
        c_lo, c_hi = self._interval(cand, ix)
        miss = np.flatnonzero((cf < c_lo) | (cf >= c_hi))
        if miss.size == 0:
            return cand
        cf_r, k_r, ix_r, below_r = cf[miss], k[miss], ix[miss], below[miss]
        # Invariant C(lo) <= cf < C(hi); start from a window around the guess.
        lo = np.where(below_r, np.maximum(k_r - 16, 0), k_r + 1)
        hi = np.where(below_r, k_r, np.minimum(k_r + 17, K))
        c = self._cdf(np.stack([lo, hi]), ix_r)
        lo = np.where(c[0] <= cf_r, lo, 0)
        hi = np.where(cf_r < c[1], hi, K)
        while True:
            active = hi - lo > 1
            if not active.any():
                break
            mid = (lo + hi) >> 1
            ok = self._cdf(mid, ix_r) <= cf_r
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        cand[miss] = lo
        return cand


class DiscretizedLogistic(LogisticBins):
    """Logistic(mu, scale) over the 256 pixel bins of width 2/255 in [-1, 1]
    (bin k centred at -1 + 2k/255; the edge bins absorb the tails).
    Symbols are the 8-bit pixel values 0..255; parameters of any shape."""

    def __init__(self, mu, scale, precision=None):
        mu, scale = _check_logistic_params(mu, scale)
        if mu.ndim == 0:
            mu, scale = mu[None], scale[None]
        super().__init__(mu, scale, PIXEL_BINS, precision)
