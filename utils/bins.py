"""Latent discretization bins: the authors' file format and the per-layer
bin tables the bits-back coders use (docs/design.md, "Latent bins").

Files (the authors' names and layout, ``torch.save`` of one tensor each):
  ``{dataset}_nz{nz}_zendpoints{q}.pt``  float64 ``(nz, zdim, 2^q - 1)``: inner endpoints
  ``{dataset}_nz{nz}_zcentres{q}.pt``    float64 ``(nz, zdim, 2^q)``: bin centres
Layer 0 is z1 (next to the data), layer nz-1 the top layer (equal-mass bins
under the prior Logistic(0, 1)).  Outer bins are open to -inf / +inf.
A latent symbol k of layer i stands for ``centres[i, d, k]``.

Compact form: below the top layer the bins are equal-width between each
dimension's sample min and max, so ``{dataset}_nz{nz}_zranges{q}.pt`` (float64
``(nz - 1, zdim, 2)``: min, max) determines every table; the authors' files
of a 1,024-bin model are tens of MB, this one a few hundred KB.  The compact
file is a dict ``{"ranges": tensor, "quantbits": int, "weights_fingerprint":
str}`` (read with ``weights_only=True``); the fingerprint names the weights
the bins were derived from (model/package.py), so bins made for another model
are refused.  A plain tensor (older compact files) and the authors' two files
carry no fingerprint and load beside any weights, as before.
:meth:`LatentBins.from_ranges` rebuilds the tables with the same
:func:`uniform_bins` that discretization.py uses, so both are identical.

Invariants of :class:`LatentBins`: endpoints non-decreasing along the bin
axis (the authors' files are accepted as they are: float32 values, and equal
adjacent endpoints, i.e. empty bins, which still get frequency 1 when coding),
``centres`` one more bin than endpoints, both float64.
"""
import os

import numpy as np
import torch

from utils.cli import atomic_output, one_line
from utils.distributions import Bins, prior_bins


class BinsError(ValueError):
    """Bins missing, malformed, or not matching the model (one-line message)."""


def bins_paths(directory, dataset, nz, quantbits):
    """(endpoints path, centres path) in the authors' naming."""
    stem = os.path.join(directory, f"{dataset}_nz{nz}_z")
    return f"{stem}endpoints{quantbits}.pt", f"{stem}centres{quantbits}.pt"


def ranges_path(directory, dataset, nz, quantbits):
    """The compact file (see the module docstring), named like the authors' files."""
    return os.path.join(directory, f"{dataset}_nz{nz}_zranges{quantbits}.pt")


def uniform_bins(lo, hi, quantbits):
    """2^q equal-width bins between lo and hi per dimension (scikit-learn's
    KBinsDiscretizer, strategy 'uniform'): (inner endpoints (zdim, K-1),
    centres (zdim, K)). Fitting on just the two rows (lo, hi) gives the same
    edges as fitting on all the samples they are the min and max of."""
    import warnings
    from sklearn.preprocessing import KBinsDiscretizer
    K = 1 << quantbits
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), lo + 1e-6)  # a constant dimension still needs K bins
    kbd = KBinsDiscretizer(n_bins=K, encode="ordinal", strategy="uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kbd.fit(np.stack([lo, hi]))
    edges = np.stack(kbd.bin_edges_).astype(np.float64)         # (zdim, K + 1)
    return edges[:, 1:-1], 0.5 * (edges[:, :-1] + edges[:, 1:])


class LatentBins:
    """Per-layer bins of every latent dimension, ready for coding."""

    def __init__(self, endpoints, centres):
        endpoints = _as_array(endpoints)
        centres = _as_array(centres)
        if endpoints.ndim != 3 or centres.ndim != 3:
            raise BinsError(f"bins must be shaped (nz, zdim, K-1) and (nz, zdim, K); got "
                            f"{endpoints.shape} and {centres.shape}")
        if centres.shape[:2] != endpoints.shape[:2] or centres.shape[2] != endpoints.shape[2] + 1:
            raise BinsError(f"endpoints {endpoints.shape} and centres {centres.shape} disagree")
        if not np.isfinite(endpoints).all() or not np.isfinite(centres).all():
            raise BinsError("bins contain NaN or inf")
        if endpoints.shape[2] > 1 and not (np.diff(endpoints, axis=2) >= 0).all():
            raise BinsError("bin endpoints must be non-decreasing (increasing or repeated)")
        self.endpoints = np.ascontiguousarray(endpoints)
        self.centres = np.ascontiguousarray(centres)
        self.nz, self.zdim, self.K = centres.shape
        self.ranges = None      # set by from_ranges: the compact form, when known
        self.weights_fingerprint = None   # the weights these bins were derived from, if known
        self.source = None      # the file they were read from, for messages
        self.quantbits = int(round(np.log2(self.K)))
        self.layers = [Bins(endpoints[i]) for i in range(self.nz)]
        self._dim_index = np.arange(self.zdim)[None, :]

    @classmethod
    def prior_only(cls, nz, zdim, quantbits):
        """Equal-mass Logistic(0, 1) bins for every layer (random-init models,
        tests, benchmarks: no trained model to derive bins from)."""
        e, c = prior_bins(quantbits)
        return cls(np.broadcast_to(e, (nz, zdim, e.size)), np.broadcast_to(c, (nz, zdim, c.size)))

    @classmethod
    def from_ranges(cls, ranges, quantbits):
        """Equal-width bins between the (min, max) of ``ranges`` (nz-1, zdim, 2)
        below, the prior's equal-mass bins on top."""
        ranges = _as_array(ranges)
        if ranges.ndim != 3 or ranges.shape[2] != 2:
            raise BinsError(f"bin ranges must be shaped (nz-1, zdim, 2), got {ranges.shape}")
        if not np.isfinite(ranges).all():
            raise BinsError("bin ranges contain NaN or inf")
        zdim = ranges.shape[1]
        e, c = prior_bins(quantbits)
        layers = [uniform_bins(r[:, 0], r[:, 1], quantbits) for r in ranges]
        endpoints = np.stack([l[0] for l in layers] + [np.broadcast_to(e, (zdim, e.size))])
        centres = np.stack([l[1] for l in layers] + [np.broadcast_to(c, (zdim, c.size))])
        bins = cls(endpoints, centres)
        bins.ranges = ranges
        return bins

    def save_ranges(self, path, weights_fingerprint=None):
        """Write the compact form atomically (BinsError if these bins have
        none), recording ``weights_fingerprint`` (default: the one they carry)."""
        if self.ranges is None:
            raise BinsError("these bins were not made from (min, max) ranges; save the full files")
        fingerprint = weights_fingerprint or self.weights_fingerprint
        obj = {"ranges": torch.from_numpy(np.array(self.ranges, dtype=np.float64)),
               "quantbits": int(self.quantbits)}
        if fingerprint:
            obj["weights_fingerprint"] = str(fingerprint)
        with atomic_output(path) as f:
            torch.save(obj, f)
        self.weights_fingerprint = fingerprint
        return path

    @classmethod
    def load_ranges(cls, path, quantbits):
        """Bins from a compact ranges file (see ``save_ranges``)."""
        obj = _load_file(path)
        fingerprint = None
        if isinstance(obj, dict):
            if not torch.is_tensor(obj.get("ranges")):
                raise BinsError(f"bins file {path} holds no 'ranges' tensor")
            if int(obj.get("quantbits", quantbits)) != quantbits:
                raise BinsError(f"bins file {path} has {obj['quantbits']}-bit bins, not {quantbits}")
            fingerprint = obj.get("weights_fingerprint")
            obj = obj["ranges"]
        elif not torch.is_tensor(obj):
            raise BinsError(f"bins file {path} does not hold a tensor")
        bins = cls.from_ranges(obj, quantbits)
        bins.weights_fingerprint, bins.source = fingerprint, path
        return bins

    def centre(self, layer, symbols):
        """Bin centres (float64, same shape as ``symbols`` (B, zdim))."""
        return self.centres[layer][self._dim_index, symbols]

    def check_model(self, model):
        """BinsError unless these bins fit ``model`` (nz layers of prod(zdim) dims)."""
        zdim = int(np.prod(model.zdim))
        if (self.nz, self.zdim) != (model.nz, zdim):
            raise BinsError(f"bins are for nz={self.nz} with {self.zdim} dims per layer; the model "
                            f"has nz={model.nz} with {zdim} dims per layer")

    def save(self, directory, dataset):
        """Write the authors' two files atomically; returns their paths."""
        paths = bins_paths(directory, dataset, self.nz, self.quantbits)
        for path, array in zip(paths, (self.endpoints, self.centres)):
            with atomic_output(path) as f:
                torch.save(torch.from_numpy(np.array(array, dtype=np.float64)), f)
        return paths

    @classmethod
    def load(cls, directory, dataset, nz, quantbits):
        """Load the compact ranges file (it records the weights' fingerprint),
        or else the authors' two files (either dtype, any device); BinsError
        naming both if neither is there."""
        compact = ranges_path(directory, dataset, nz, quantbits)
        if os.path.exists(compact):
            return cls.load_ranges(compact, quantbits)
        paths = bins_paths(directory, dataset, nz, quantbits)
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise BinsError(f"bins for {dataset} nz={nz} not found: neither {compact} nor "
                            f"{missing[0]}; make them with `python discretization.py {dataset} "
                            f"--params CHECKPOINT --quantbits {quantbits}`")
        bins = cls(*(_load_tensor(path) for path in paths))
        if bins.K != 1 << quantbits:
            raise BinsError(f"bins in {directory} have {bins.K} bins per dimension, "
                            f"expected 2^{quantbits}")
        bins.source = paths[0]
        return bins


def _load_file(path):
    """What ``path`` holds (read with weights_only=True), or BinsError."""
    if not os.path.exists(path):
        raise BinsError(f"bins file {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BinsError(f"bins file {path} is unreadable: {one_line(exc)}") from None


def _load_tensor(path):
    """The tensor saved in ``path`` (any dtype, any device), or BinsError."""
    t = _load_file(path)
    if not torch.is_tensor(t):
        raise BinsError(f"bins file {path} does not hold a tensor")
    return t


def _as_array(a):
    if torch.is_tensor(a):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)
