"""Bit-Swap and BB-ANS: encode and decode images on an rANS message
(docs/design.md, "Coding").  One implementation for both schemes and every model
that exposes ``infer(i, given)`` / ``generate(i, given)`` -> (mu, scale),
``nz``, ``xs``, ``zdim`` (see model/hvae.py for the indexing).

Batching: :meth:`BitsBackCoder.encode` codes a batch of B images at once.
On an independent-lanes ``ans.Message`` with B lanes, image b goes to lane
b (B independent chains, each with single-chain accounting).  On an
``ans.InterleavedMessage`` the batch's symbols are simply flattened (B = 1:
one chain whose images, e.g. the 32x32 blocks of a photo, are coded one
after another on one message).

Order of operations for one image x with latents z1..zL (0-based layers):
  BB-ANS encode:  pop z1 ~ q(.|x), ..., pop zL ~ q(.|z_{L-1});
                  push x ~ p(.|z1), push z1 ~ p(.|z2), ..., push zL ~ prior.
  Bit-Swap:       for i: pop z_i ~ q(.|z_{i-1}); push z_{i-1} ~ p(.|z_i);
                  push zL ~ prior.
Decoding is the exact mirror image (same network calls on the same inputs
in the same batch layout), so the quantized tables are bit-identical and the
message returns to its previous state exactly.

Invariant: the networks only ever see bin centres of latent symbols and
pixel values 0..255 (in the networks' dtype); a latent symbol k of layer i
stands for ``bins.centres[i, d, k]``.

Grayscale with an RGB model (``encode``/``decode`` of (B, 1, H, W) images
when the model's xs has 3 channels): the posterior sees the grey image
replicated into three channels; the one channel is pushed / popped with the
discretized logistic whose (mu, scale) are the ``grey_weights`` mix of the
three channels' (decode pops the grey channel, rebuilds the replicated
input and recomputes the posterior from it).

Partial images (``real=(rh, rw)``, e.g. the edge blocks of a photo): only
the top-left rh x rw pixels are real, the rest of the image is their edge
replication.  The posterior sees the whole replicated image; only the real
pixels are pushed / popped (the pixel likelihood factorizes over pixels
given z1), and the decoder rebuilds the replication from the popped pixels
before it recomputes the posterior.  The latents still describe the whole
image, so a thin strip may cost more than its raw bytes (the caller decides).

Portable tables (``grid_bits``): the networks run in float64 and every
output (mu, scale) is rounded to the grid ``2^-grid_bits``.  Another
machine's float64 outputs differ from these by ~1e-13 at most, far less
than the margin ``2^-margin_bits``, so they round to the same grid point,
except for outputs that lie within the margin of a rounding boundary: the
encoder lists those (rare: about 2^(grid_bits - margin_bits + 1) of all
outputs) in the message with the side it rounded them to, and the decoder
applies that side instead of its own rounding.  Layout per network call,
pushed after the call's symbols: the fragile outputs' indices (uniform over
the call's outputs), their sides (1 bit each), then their count
(``FRAGILE_COUNT``: a count of 0 costs ~6e-6 bits).  More than
``MAX_FRAGILE`` in one call raises FragileOutputs (the caller falls back).

Network batches: float32 networks may round differently at other batch
sizes, which can move a latent to the neighbouring bin.  ``net_batches``
fixes the sub-batches the networks see (consecutive lanes), so a chain's
bits do not depend on which other chains share the message.

Two -ELBO figures per image: :meth:`BitsBackCoder.encode` returns the terms
at the coded latents (the bin centres: what the coder must match, net minus
it is the coder's overhead); :meth:`BitsBackCoder.sampled_elbo_terms` gives
the paper's figure, at one fresh continuous posterior sample per image.
"""
import contextlib
import time

import numpy as np
import torch

from utils import ans
from utils.densities import discretized_logistic_logp, logistic_logp
from utils.distributions import DiscretizedLogistic, FixedCategorical, LogisticBins

LOG2 = float(np.log(2.0))
MAX_FRAGILE = 64                 # fragile outputs one network call may list
GREY_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)   # measured: the mean beats luma, G alone or R alone


class FragileOutputs(ValueError):
    """More outputs of one network call lie near a grid boundary than the
    message can list (MAX_FRAGILE); the caller codes the data another way."""


def _fragile_count_codec(precision):
    """Counts 0..MAX_FRAGILE: a nonzero count costs ~24 bits, zero ~6e-6."""
    rare = max(1, 1 << max(precision - 24, 0))
    return FixedCategorical([(1 << precision) - MAX_FRAGILE * rare] + [rare] * MAX_FRAGILE, precision)


class BitsBackCoder:
    """Bits-back coder of one model with one set of latent bins."""

    def __init__(self, model, bins, bitswap=True, precision=ans.DEFAULT_PRECISION, device=None,
                 grid_bits=None, margin_bits=None, grey_weights=GREY_WEIGHTS):
        """``grid_bits``/``margin_bits``: portable tables (module docstring;
        the networks must then be float64); ``grey_weights``: how the three
        channels' (mu, scale) mix into the grey channel's."""
        bins.check_model(model)
        self.model = model.eval()
        self.bins = bins
        self.bitswap = bool(bitswap)
        self.precision = precision
        self.device = device if device is not None else next(model.parameters()).device
        self.nz = model.nz
        self.xs = tuple(model.xs)
        self.zshape = tuple(model.zdim)
        self.zdim = int(np.prod(self.zshape))
        self.dims = int(np.prod(self.xs))
        self.net_seconds = 0.0          # time spent in the networks (benchmarks)
        self.dtype = next(model.parameters()).dtype
        self.grid_bits = grid_bits
        if grid_bits is not None:
            if self.dtype != torch.float64:
                raise ValueError("portable tables (grid_bits) need float64 networks")
            if margin_bits is None or not grid_bits < margin_bits < 52:
                raise ValueError("margin_bits must lie between grid_bits and 52")
            self._grid = float(2.0 ** grid_bits)
            self._margin = float(2.0 ** (grid_bits - margin_bits))   # in grid units
            self._count = _fragile_count_codec(precision)
            self._side = FixedCategorical.uniform(2, precision)
        self.grey_weights = np.asarray(grey_weights, dtype=np.float64)
        self.fragile_outputs = 0        # listed fragile outputs so far (benchmarks)
        self.latent_symbols = self.nz * self.zdim    # symbols one image's encode pops
        self._net_batches = None        # sizes of the sub-batches the networks see

    @contextlib.contextmanager
    def net_batches(self, sizes):
        """Within the block, every network call splits its batch into
        consecutive sub-batches of these sizes (summing to the batch)."""
        previous, self._net_batches = self._net_batches, [int(n) for n in sizes]
        try:
            yield self
        finally:
            self._net_batches = previous

    # ---- network calls (the only place torch is touched) ----------------------
    def _call(self, fn, i, given):
        """fn(i, given) evaluated on the sub-batches of ``net_batches``."""
        sizes = self._net_batches
        if sizes is None or len(sizes) == 1:
            return fn(i, given)
        if sum(sizes) != given.shape[0]:
            raise ValueError(f"net_batches {sizes} do not add up to the batch {given.shape[0]}")
        parts = [fn(i, g) for g in torch.split(given, sizes)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _net(self, fn, i, given, message=None):
        """(mu, scale) float64 numpy (B, dims), the torch pair, and the
        fragile outputs (indices, sides) for the encoder to push; with
        ``message`` (decoding), the fragile list is popped from it and applied."""
        t0 = time.perf_counter()
        with torch.no_grad():
            mu, scale = self._call(fn, i, given)
        b = given.shape[0]
        nmu = mu.reshape(b, -1).double().cpu().numpy()
        nscale = scale.reshape(b, -1).double().cpu().numpy()
        self.net_seconds += time.perf_counter() - t0
        fragile = None
        if self.grid_bits is not None:
            values = np.concatenate([nmu.ravel(), nscale.ravel()])
            forced = None if message is None else self._pop_fragile(message, values.size)
            values, fragile = self._to_grid(values, forced)
            nmu = values[:nmu.size].reshape(nmu.shape)
            nscale = np.maximum(values[nmu.size:], 1.0 / self._grid).reshape(nscale.shape)
        return nmu, nscale, mu, scale, fragile

    def _to_grid(self, values, forced):
        """Round to the grid; the encoder's fragile outputs (within the
        margin of a rounding boundary) and the sides it took, or the
        decoder's ``forced`` sides applied."""
        t = values * self._grid                  # exact: a power of two
        k = np.floor(t)
        frac = t - k
        up = frac >= 0.5
        if forced is None:
            idx = np.flatnonzero(np.abs(frac - 0.5) < self._margin)
            fragile = (idx, up[idx].astype(np.int64), values.size)
        else:
            idx, sides = forced
            up[idx] = sides.astype(bool)
            fragile = None
        return (k + up) / self._grid, fragile

    def _push_fragile(self, message, fragile):
        if fragile is None:
            return
        idx, sides, n_values = fragile
        if idx.size > MAX_FRAGILE:
            raise FragileOutputs(f"{idx.size} network outputs within the margin of a grid boundary")
        if idx.size:
            FixedCategorical.uniform(n_values, self.precision).push(message, idx)
            self._side.push(message, sides)
            self.fragile_outputs += idx.size
        self._count.push(message, np.array([idx.size]))

    def _pop_fragile(self, message, n_values):
        count = int(self._count.pop(message, (1,))[0])
        if count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sides = self._side.pop(message, (count,))
        idx = FixedCategorical.uniform(n_values, self.precision).pop(message, (count,))
        if idx.max() >= n_values:
            raise ValueError("damaged message: fragile output index out of range")
        return idx, sides

    def _grey_input(self, x):
        return np.asarray(x).shape[1] == 1 and self.xs[0] == 3

    def _x_tensor(self, x):
        t = torch.as_tensor(np.array(x, dtype=np.float64), dtype=self.dtype, device=self.device)
        return t.expand(-1, self.xs[0], -1, -1) if t.shape[1] == 1 and self.xs[0] != 1 else t

    def _z_tensor(self, layer, symbols):
        z = self.bins.centre(layer, symbols).reshape((-1,) + self.zshape)
        return torch.as_tensor(z, dtype=self.dtype, device=self.device)

    def _q(self, i, given, message=None):
        mu, scale, tmu, tscale, fragile = self._net(self.model.infer, i, given, message)
        return LogisticBins(mu, scale, self.bins.layers[i], self.precision), (tmu, tscale), fragile

    def _p(self, i, given, message=None, grey=False, pixels=None):
        """Codec of the layer below z_{i+1} (i >= 1) or of x (i = 0; only the
        flat pixel indices ``pixels`` when given; ignored for i >= 1)."""
        mu, scale, tmu, tscale, fragile = self._net(self.model.generate, i, given, message)
        if i == 0:
            if grey:        # the grey channel's logistic: a fixed mix of the three channels'
                b = mu.shape[0]
                mu = np.einsum("c,bcd->bd", self.grey_weights, mu.reshape(b, 3, -1))
                scale = np.einsum("c,bcd->bd", self.grey_weights, scale.reshape(b, 3, -1))
            if pixels is not None:
                mu, scale = mu[:, pixels], scale[:, pixels]
            return DiscretizedLogistic(mu, scale, self.precision), (tmu, tscale), fragile
        return LogisticBins(mu, scale, self.bins.layers[i - 1], self.precision), (tmu, tscale), fragile

    def _real_pixels(self, real, channels):
        """Flat indices of the real pixels of a (channels, H, W) image whose
        top-left ``real`` = (rh, rw) pixels are real; None when all are."""
        if real is None:
            return None
        h, w = self.xs[1:]
        rh, rw = (int(v) for v in real)
        if not (1 <= rh <= h and 1 <= rw <= w):
            raise ValueError(f"real region {real} must lie within the image's {h}x{w} pixels")
        if (rh, rw) == (h, w):
            return None
        return np.arange(channels * h * w).reshape(channels, h, w)[:, :rh, :rw].ravel()

    @staticmethod
    def _rebuild(popped, batch, xs, real, pixels):
        """Images from popped pixels (``pixels`` of ``_real_pixels``): the
        real region, edge-replicated to xs."""
        if pixels is None:
            return popped.reshape((batch,) + xs)
        rh, rw = (int(v) for v in real)
        region = popped.reshape((batch, xs[0], rh, rw))
        return np.pad(region, ((0, 0), (0, 0), (0, xs[1] - rh), (0, xs[2] - rw)), mode="edge")

    def _prior(self, b):
        shape = (b, self.zdim)
        return LogisticBins(np.zeros(shape), np.ones(shape), self.bins.layers[-1], self.precision)

    # ---- encode -----------------------------------------------------------------
    def encode(self, message, x, terms=False, before_first_push=None, real=None):
        """Code images ``x`` (uint8-valued, (B, C, H, W); C = 1 codes grey
        images with an RGB model, see the module docstring) onto ``message``.

        With ``terms=True`` returns the single-sample -ELBO terms at the coded
        latents, bits per image, shape (B, 1 + nz): [-log p(x|z1), KL_1..KL_L]
        with KL_i = log q(z_i|.) - log p(z_i|.) (continuous densities at the
        bin centres, which are samples of the discretized posterior).
        ``before_first_push(message)`` is called after the pops that precede
        the first push (Bit-Swap: the pop of z1; BB-ANS: all nz pops): the
        paper counts as initial bits what the first image takes until then.
        ``real=(rh, rw)``: only that top-left region of each image is real
        and coded, the rest must be its edge replication (module docstring)."""
        x = np.asarray(x)
        grey = x.ndim == 4 and self._grey_input(x)
        if x.ndim != 4 or (tuple(x.shape[1:]) != self.xs and not grey) or x.shape[2:] != self.xs[1:]:
            raise ValueError(f"images must be shaped (B, {', '.join(map(str, self.xs))}), got {x.shape}")
        if (grey or real is not None) and terms:
            raise ValueError("terms are only defined for whole images of the model's shape")
        b = x.shape[0]
        pixels = self._real_pixels(real, x.shape[1])
        if pixels is not None and not np.array_equal(
                self._rebuild(x.reshape(b, -1)[:, pixels], b, tuple(x.shape[1:]), real, pixels), x):
            raise ValueError(f"images are not the edge replication of their real region {real}")
        symbols_x = x.reshape(b, -1).astype(np.int64)
        if pixels is not None:
            symbols_x = symbols_x[:, pixels]
        given = self._x_tensor(x)
        zs, q_params = [], []
        pending = []                            # BB-ANS: pushes deferred until all pops
        for i in range(self.nz):
            q, qp, qf = self._q(i, given)
            k = q.pop(message)
            if i == 0 and self.bitswap and before_first_push is not None:
                before_first_push(message)
            self._push_fragile(message, qf)     # the decoder needs them before its push of k
            z = self._z_tensor(i, k)
            zs.append((k, z))
            q_params.append(qp)
            if self.bitswap:
                p, pp, pf = self._p(i, z, grey=grey, pixels=pixels)
                p.push(message, symbols_x if i == 0 else zs[i - 1][0])
                self._push_fragile(message, pf)
                pending.append(pp)
            given = z
        if not self.bitswap:
            if before_first_push is not None:
                before_first_push(message)
            for i in range(self.nz):
                p, pp, pf = self._p(i, zs[i][1], grey=grey, pixels=pixels)
                p.push(message, symbols_x if i == 0 else zs[i - 1][0])
                self._push_fragile(message, pf)
                pending.append(pp)
        self._prior(b).push(message, zs[-1][0])
        if terms:
            return self._terms(given=self._x_tensor(x), zs=[z for _, z in zs],
                               q_params=q_params, p_params=pending)
        return None

    def _in_net_batches(self, fn, b, *arrays):
        """fn(*chunk) over the ``net_batches`` chunks of every array (each
        elementwise op then sees the same shapes whatever the whole batch)."""
        sizes = self._net_batches or [b]
        out, start = [], 0
        for n in sizes:
            out.append(fn(*(_slice(a, start, start + n) for a in arrays)))
            start += n
        return np.concatenate(out)

    def _terms(self, given, zs, q_params, p_params):
        return self._in_net_batches(self._terms_chunk, given.shape[0], given, zs, q_params, p_params)

    def _terms_chunk(self, given, zs, q_params, p_params):
        b = given.shape[0]
        with torch.no_grad():
            out = torch.empty((b, 1 + self.nz), dtype=torch.float64)
            mu, scale = p_params[0]
            out[:, 0] = -discretized_logistic_logp(given, mu, scale).reshape(b, -1).sum(1).double()
            for i in range(self.nz):
                mu, scale = q_params[i]
                logq = logistic_logp(zs[i], mu, scale).reshape(b, -1).sum(1)
                if i + 1 < self.nz:
                    mu, scale = p_params[i + 1]
                    logp = logistic_logp(zs[i], mu, scale)
                else:
                    logp = -zs[i] - 2.0 * torch.nn.functional.softplus(-zs[i])
                out[:, 1 + i] = (logq - logp.reshape(b, -1).sum(1)).double()
        return out.cpu().numpy() / LOG2

    def sampled_elbo_terms(self, x, seeds):
        """The paper's -ELBO terms (the reference evaluates its model's loss
        on the image, outside the coder): one continuous posterior sample
        z_i ~ q(z_i | z_{i-1}) per layer, no bins, drawn with a torch
        generator seeded by ``seeds[b]`` for image b (so an image's figure
        does not depend on its batch).  Bits per image, (B, 1 + nz), laid
        out as :meth:`encode`'s terms."""
        x = np.asarray(x)
        seeds = np.asarray(seeds).reshape(-1)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {x.shape[0]} images")
        return self._in_net_batches(self._sampled_chunk, x.shape[0], x, seeds)

    def _sampled_chunk(self, x, seeds):
        b = x.shape[0]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        given = self._x_tensor(x)
        out = torch.empty((b, 1 + self.nz), dtype=torch.float64)
        with torch.no_grad():
            logq = None
            for i in range(self.nz):
                mu, scale = self.model.infer(i, given)
                u = torch.stack([torch.rand(mu.shape[1:], generator=g) for g in gens])
                u = u.to(mu.device).clamp_(1e-7, 1.0 - 1e-7)
                z = mu + scale * (torch.log(u) - torch.log1p(-u))
                mu_p, scale_p = self.model.generate(i, z)
                if i == 0:
                    out[:, 0] = -discretized_logistic_logp(given, mu_p, scale_p).reshape(b, -1).sum(1).double().cpu()
                else:
                    logp = logistic_logp(given, mu_p, scale_p).reshape(b, -1).sum(1)
                    out[:, i] = (logq - logp).double().cpu()
                logq = logistic_logp(z, mu, scale).reshape(b, -1).sum(1)
                given = z
            top = (-given - 2.0 * torch.nn.functional.softplus(-given)).reshape(b, -1).sum(1)
            out[:, self.nz] = (logq - top).double().cpu()
        return out.numpy() / LOG2

    # ---- decode -----------------------------------------------------------------
    def decode(self, message, batch, grey=False, real=None):
        """Mirror of :meth:`encode`: pops ``batch`` images (uint8 (B, C, H, W);
        C = 1 with ``grey``; with ``real``, the region popped and its edge
        replication) and returns the message to its state before they were
        encoded."""
        xs = (1,) + self.xs[1:] if grey else self.xs
        pixels = self._real_pixels(real, xs[0])
        k_top = self._prior(batch).pop(message)
        if self.bitswap:
            k = k_top
            for i in reversed(range(self.nz)):
                z = self._z_tensor(i, k)
                p, _, _ = self._p(i, z, message, grey=grey, pixels=pixels)
                below = p.pop(message)
                if i == 0:
                    below = self._rebuild(below, batch, xs, real, pixels)
                given = self._x_tensor(below) if i == 0 else self._z_tensor(i - 1, below)
                q, _, _ = self._q(i, given, message)
                q.push(message, k)
                k = below
            return k.reshape((batch,) + xs).astype(np.uint8)
        ks = [None] * self.nz
        ks[-1] = k_top
        zs = [None] * self.nz
        for i in reversed(range(self.nz)):
            zs[i] = self._z_tensor(i, ks[i])
            p, _, _ = self._p(i, zs[i], message, grey=grey, pixels=pixels)
            below = p.pop(message)
            if i > 0:
                ks[i - 1] = below
            else:
                x = self._rebuild(below, batch, xs, real, pixels)
        givens = [self._x_tensor(x)] + zs[:-1]
        for i in reversed(range(self.nz)):
            q, _, _ = self._q(i, givens[i], message)
            q.push(message, ks[i])
        return x.astype(np.uint8)


def _slice(a, start, stop):
    """Rows start:stop of an array, or of every array in a (nested) list/tuple."""
    if isinstance(a, (list, tuple)):
        return type(a)(_slice(x, start, stop) for x in a)
    return a[start:stop]


def restored_initial_message(initial, borrowed_words):
    """What decoding everything must give back for a message that started as
    ``initial`` (an independent-lanes ``ans.Message`` with ``underflow_seed``)
    after the encoder borrowed ``borrowed_words`` words per lane: the borrowed
    words end up below the initial stack, the first borrowed on top of them."""
    stacks = []
    for lane, n in enumerate(np.asarray(borrowed_words).tolist()):
        borrowed = initial.underflow_words(lane, n)[::-1]
        stacks.append(np.concatenate([borrowed, initial.stack(lane)]))
    return ans.Message(initial.head.copy(), stacks, initial.precision)
