"""Fit the pixel model's thetas (utils/pixelmodel.py, THETA) on training photos.

    python scripts/fit_pixel_model.py data/photos/imagenetcrop/train/max640 ...

Every pixel of every PNG under the given folders (every ``--stride``-th file)
is predicted from its full causal context; per (channel class, activity
bucket) the theta minimizing the exact code length of the integer tables is
chosen from a fine grid and printed as the THETA literal.  Fit only on
training photos: the thetas are part of the container format.
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import pixelmodel  # noqa: E402

PRECISION = 28


def counts(paths):
    """(classes, buckets, 256 predictions, 256 symbols) counts over the photos."""
    classes, buckets = len(pixelmodel.THETA), len(pixelmodel.ACTIVITY_EDGES)
    total = np.zeros(classes * buckets * 256 * 256, dtype=np.int64)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w, _ = image.shape
        ys, xs = (a.ravel() for a in np.indices((h, w)))
        available = np.ones((h, w), dtype=bool)
        error = None
        for ch in range(3):
            pred, bucket, base = pixelmodel.predict(image, available, ys, xs, ch, error)
            sym = image[ys, xs, ch].astype(np.int64)
            index = ((ch * buckets + bucket) * 256 + pred) * 256 + sym
            total += np.bincount(index, minlength=total.size)
            error = sym - base
    return total.reshape(classes, buckets, 256, 256)


def best_theta(count, grid):
    """(bits, theta) of the grid's best theta for counts [prediction, symbol]."""
    rows = np.flatnonzero(count.sum(axis=1))
    count = count[rows]
    best = (float("inf"), None)
    for theta in grid:
        freq = pixelmodel.frequencies(int(theta), PRECISION, rows)
        best = min(best, (float(np.sum(count * (PRECISION - np.log2(freq)))), int(theta)))
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--stride", type=int, default=1, help="use every n-th file of each folder")
    args = parser.parse_args(argv)
    paths = [p for f in args.folders for p in sorted(glob.glob(os.path.join(f, "*.png")))[::args.stride]]
    if not paths:
        print("error: no PNG files in the given folders", file=sys.stderr)
        return 2
    c = counts(paths)
    rows, total_bits = [], 0.0
    for cls in range(c.shape[0]):
        row = []
        for k in range(c.shape[1]):
            if c[cls, k].sum() == 0:            # empty bucket: keep a neighbour's value
                row.append(row[-1] if row else 1 << 15)
                continue
            coarse = best_theta(c[cls, k], np.linspace(600, 65000, 47))[1]
            bits, theta = best_theta(c[cls, k], np.arange(max(1, coarse - 1400), min(65535, coarse + 1400), 40))
            row.append(theta)
            total_bits += bits
        rows.append(row)
    print(f"{len(paths)} files, {c.sum():,} samples, {total_bits / c.sum():.4f} bits/dim")
    print("THETA = (\n" + "".join(f"    ({', '.join(map(str, r))}),\n" for r in rows) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
