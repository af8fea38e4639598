"""Predictive coding of 8-bit pixels from their decoded neighbours (numpy only).

The demo codec codes complete 32x32 blocks with Bit-Swap; this module codes
the pixels that Bit-Swap codes badly: the strips of partial edge blocks
(whose latents would describe a whole block for a few real rows) and the
complete blocks that Bit-Swap would code above their raw bytes, or for
which it would borrow initial bits (the first blocks of a message).  It is a
fixed context model in the manner of LOCO-I, with no adaptation:

* prediction: the median edge detector of the left (a), upper (b) and
  upper-left (c) neighbours in scan coordinates; channel k > 0 adds the
  error of channel k - 1's own prediction at the same pixel (colour channels move
  together), clipped to [0, 255];
* context: the activity ``|a - c| + |b - c| + |a - b|`` (plus twice the
  previous channel's absolute error) picks one of ``len(ACTIVITY_EDGES)``
  buckets, and each channel has its own thetas;
* distribution: a two-sided geometric law ``theta^|x - prediction|`` over
  0..255 with ``theta = THETA[channel][bucket] / 2^16``, as an integer table at
  the message's precision, every symbol at least ``2^(precision - 16)``
  (so a symbol never costs more than 16 bits).  The thetas were fitted on
  the demo model's training photos by ``scripts/fit_pixel_model.py``; they
  are part of the container format (version 5).

Invariants:

* Integer only: predictions, contexts and the frequency tables are formed
  with integer arithmetic (the geometric weights by an integer recursion),
  so encoder and decoder build identical tables on every machine.
* Known pixels only: a neighbour counts when it lies in the image and is
  either known to the decoder before the region is decoded (``known``) or in
  the region itself; an unavailable neighbour is never read, so what the
  decoder's canvas holds there does not matter.  Region pixels are decoded by
  anti-diagonals ``d = y + x`` (scan coordinates) in increasing order, so a
  region pixel's left, upper and upper-left neighbours are decoded before it.
* Order on the message: the decoder pops, per anti-diagonal (pixels by
  increasing y) and per channel, one flat array; the encoder pushes the same
  arrays in the reverse order.
* ``reverse=True`` scans the image rotated by 180 degrees: the context is
  then the right, lower and lower-right neighbours (a block decoded before
  the blocks above and left of it).
"""
import functools

import numpy as np

# Bucket k holds activities in [ACTIVITY_EDGES[k], ACTIVITY_EDGES[k + 1]).
ACTIVITY_EDGES = (0, 2, 4, 6, 8, 11, 15, 20, 26, 34, 45, 60, 80, 110, 150, 200, 300)
# Activity of a pixel with one known neighbour (no gradient to measure), and
# of a pixel with none (the widest bucket).
ONE_NEIGHBOUR_ACTIVITY = 34
NO_NEIGHBOUR_ACTIVITY = 300
THETA_BITS = 16
# theta * 2^16 per (channel, bucket): fitted by scripts/fit_pixel_model.py on the
# downscaled training photos (data/photos/imagenetcrop/train/max640).
THETA = (
    (14160, 23880, 30840, 37360, 43120, 47920, 51200, 53840, 56120, 57640, 59440, 60680, 61800, 62640, 63240, 63640, 64080),
    (4400, 12640, 18520, 25760, 33080, 37960, 40080, 41400, 42560, 43760, 46600, 49280, 52320, 54800, 56280, 57400, 57640),
    (5440, 14960, 20600, 27360, 34400, 39160, 41400, 43200, 45120, 46400, 49040, 51240, 53480, 55200, 56360, 57120, 58520),
)
FLOOR_BITS = 16     # every symbol has frequency >= 2^(precision - FLOOR_BITS)
_WEIGHT_ONE = 1 << 30


def _geometric_weights(theta):
    """w(r) = 2^30 * (theta / 2^16)^r for r = 0..255, by integer recursion."""
    w = [_WEIGHT_ONE]
    for _ in range(255):
        w.append((w[-1] * theta) >> THETA_BITS)
    return np.array(w, dtype=np.int64)


def frequencies(theta, precision, predictions=None):
    """int64 (predictions, 256 symbols): the integer frequencies of the
    geometric law theta / 2^16 around each prediction (default: all 256);
    each row sums to exactly 2^precision with every entry >= 2^(precision -
    FLOOR_BITS)."""
    floor = 1 << (precision - FLOOR_BITS)
    spread = (1 << precision) - 256 * floor
    pred = np.arange(256) if predictions is None else np.asarray(predictions, dtype=np.int64)
    w = _geometric_weights(theta)[np.abs(np.arange(256)[None, :] - pred[:, None])]
    # w <= 2^30 and spread < 2^precision <= 2^31: products stay below 2^61.
    freq = floor + (w * spread) // w.sum(axis=1, keepdims=True)
    freq[np.arange(pred.size), pred] += (1 << precision) - freq.sum(axis=1)  # rounding remainder to the mode
    return freq


@functools.lru_cache(maxsize=4)
def cumulative_tables(precision):
    """int64 (classes, buckets, 256 predictions, 257): the integer CDF of
    every (channel class, bucket, prediction), rising from 0 to 2^precision."""
    out = np.zeros((len(THETA), len(ACTIVITY_EDGES), 256, 257), dtype=np.int64)
    for cls, thetas in enumerate(THETA):
        for k, theta in enumerate(thetas):
            np.cumsum(frequencies(theta, precision), axis=1, out=out[cls, k, :, 1:])
    return out


def _scan(array, reverse):
    return array[::-1, ::-1] if reverse else array


def diagonals(region):
    """Decode order of a boolean (H, W) region: a list of (ys, xs) arrays,
    one per anti-diagonal y + x in increasing order, pixels by increasing y."""
    ys, xs = np.nonzero(region)
    d = ys + xs
    order = np.lexsort((ys, d))
    ys, xs, d = ys[order], xs[order], d[order]
    cuts = np.flatnonzero(np.diff(d)) + 1
    return list(zip(np.split(ys, cuts), np.split(xs, cuts)))


def predict(image, available, ys, xs, channel, previous_error):
    """Prediction (int64, in [0, 255]), activity bucket and neighbour-only
    prediction of the pixels (ys, xs) in ``channel``, from the neighbours
    marked ``available`` (boolean (H, W)).  ``previous_error``: channel - 1's
    value minus its neighbour-only prediction at the same pixels (None for
    channel 0)."""

    def neighbour(dy, dx):
        y, x = ys + dy, xs + dx
        ok = (y >= 0) & (x >= 0)
        ok[ok] = available[y[ok], x[ok]]
        value = np.zeros(ys.size, dtype=np.int64)
        value[ok] = image[y[ok], x[ok], channel]
        return value, ok

    a, has_a = neighbour(0, -1)
    b, has_b = neighbour(-1, 0)
    c, has_c = neighbour(-1, -1)
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    med = np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))
    both = has_a & has_b
    pred = np.where(both, np.where(has_c, med, (a + b) >> 1),
                    np.where(has_a, a, np.where(has_b, b, 128)))
    activity = np.where(both & has_c, np.abs(a - c) + np.abs(b - c) + np.abs(a - b),
                        np.where(both, 2 * np.abs(a - b),
                                 np.where(has_a | has_b, ONE_NEIGHBOUR_ACTIVITY, NO_NEIGHBOUR_ACTIVITY)))
    base = pred
    if previous_error is not None:
        pred = pred + previous_error
        activity = activity + 2 * np.abs(previous_error)
    bucket = np.searchsorted(np.asarray(ACTIVITY_EDGES), activity, side="right") - 1
    return np.clip(pred, 0, 255), bucket, base


def plan(image, known, region, reverse=False, precision=28):
    """Encoder side, computed once: per (diagonal, channel) in decode order,
    the (start, freq) intervals of the region's true pixels, and their exact
    information content in bits (the rANS cost differs from it by a fraction
    of a bit per lane).  ``push_plan`` codes it; the bits let a caller choose
    before pushing."""
    if (known & region).any():
        raise ValueError("the region overlaps the known pixels")
    view = _scan(image, reverse)
    available = _scan(known | region, reverse)      # region neighbours precede (invariant)
    tables = cumulative_tables(precision)
    steps, bits = [], 0.0
    for ys, xs in diagonals(_scan(region, reverse)):
        error = None
        for ch in range(image.shape[2]):
            pred, bucket, base = predict(view, available, ys, xs, ch, error)
            sym = view[ys, xs, ch].astype(np.int64)
            rows = tables[ch, bucket, pred]
            start = rows[np.arange(sym.size), sym]
            freq = rows[np.arange(sym.size), sym + 1] - start
            steps.append((start, freq))
            bits += float(np.sum(precision - np.log2(freq)))
            error = sym - base
    return steps, bits


def region_bits(image, known, region, reverse=False, precision=28):
    """Exact information content (bits) of the region's pixels under the model."""
    return plan(image, known, region, reverse, precision)[1]


def push_plan(message, encoded):
    """Push a ``plan`` (made at the message's precision) in reverse decode order."""
    for start, freq in reversed(encoded[0]):
        message.push(start, freq)


def push_region(message, image, known, region, reverse=False):
    """Encode the pixels of ``image`` (uint8 (H, W, C)) in the boolean (H, W)
    ``region``, given that the decoder will know the pixels in ``known``
    (disjoint from the region) before it decodes them.  Returns the bits."""
    encoded = plan(image, known, region, reverse, message.precision)
    push_plan(message, encoded)
    return encoded[1]


def pop_region(message, canvas, known, region, reverse=False):
    """Decode ``region`` into ``canvas`` (uint8 (H, W, C), modified in place)
    and mark it in ``known`` (modified in place).  Only ``canvas`` pixels in
    ``known`` are read."""
    if (known & region).any():
        raise ValueError("the region overlaps the known pixels")
    view, available = _scan(canvas, reverse), _scan(known, reverse)
    tables = cumulative_tables(message.precision)
    for ys, xs in diagonals(_scan(region, reverse)):
        error = None
        for ch in range(canvas.shape[2]):
            pred, bucket, base = predict(view, available, ys, xs, ch, error)
            rows = tables[ch, bucket, pred]

            def lookup(sl, cf, rows=rows):
                r = rows[sl]
                sym = np.count_nonzero(r[:, 1:] <= cf.astype(np.int64)[:, None], axis=1)
                start = r[np.arange(sym.size), sym]
                return sym, start.astype(np.uint64), (r[np.arange(sym.size), sym + 1] - start).astype(np.uint64)

            sym = message.pop(ys.size, lookup)
            view[ys, xs, ch] = sym
            error = sym.astype(np.int64) - base
        available[ys, xs] = True
