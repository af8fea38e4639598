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

Invariant: the networks only ever see bin centres of latent symbols
(float32) and pixel values 0..255 (float32); a latent symbol k of layer i
stands for ``bins.centres[i, d, k]``.

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
from utils.distributions import DiscretizedLogistic, LogisticBins

LOG2 = float(np.log(2.0))


class BitsBackCoder:
    """Bits-back coder of one model with one set of latent bins."""

    def __init__(self, model, bins, bitswap=True, precision=ans.DEFAULT_PRECISION, device=None):
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

    def _net(self, fn, i, given):
        """(mu, scale) float64 numpy (B, dims) and the torch pair (float32)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            mu, scale = self._call(fn, i, given)
        b = given.shape[0]
        out = (mu.reshape(b, -1).double().cpu().numpy(),
               scale.reshape(b, -1).double().cpu().numpy(), mu, scale)
        self.net_seconds += time.perf_counter() - t0
        return out

    def _x_tensor(self, x):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)

    def _z_tensor(self, layer, symbols):
        z = self.bins.centre(layer, symbols).reshape((-1,) + self.zshape)
        return torch.as_tensor(z, dtype=torch.float32, device=self.device)

    def _q(self, i, given):
        mu, scale, tmu, tscale = self._net(self.model.infer, i, given)
        return LogisticBins(mu, scale, self.bins.layers[i], self.precision), (tmu, tscale)

    def _p(self, i, given):
        """Codec of the layer below z_{i+1} (i >= 1) or of x (i = 0)."""
        mu, scale, tmu, tscale = self._net(self.model.generate, i, given)
        if i == 0:
            return DiscretizedLogistic(mu, scale, self.precision), (tmu, tscale)
        return LogisticBins(mu, scale, self.bins.layers[i - 1], self.precision), (tmu, tscale)

    def _prior(self, b):
        shape = (b, self.zdim)
        return LogisticBins(np.zeros(shape), np.ones(shape), self.bins.layers[-1], self.precision)

    # ---- encode -----------------------------------------------------------------
    def encode(self, message, x, terms=False, before_first_push=None):
        """Code images ``x`` (uint8-valued, (B, C, H, W)) onto ``message``.

        With ``terms=True`` returns the single-sample -ELBO terms at the coded
        latents, bits per image, shape (B, 1 + nz): [-log p(x|z1), KL_1..KL_L]
        with KL_i = log q(z_i|.) - log p(z_i|.) (continuous densities at the
        bin centres, which are samples of the discretized posterior).
        ``before_first_push(message)`` is called after the pops that precede
        the first push (Bit-Swap: the pop of z1; BB-ANS: all nz pops): the
        paper counts as initial bits what the first image takes until then."""
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.xs:
            raise ValueError(f"images must be shaped (B, {', '.join(map(str, self.xs))}), got {x.shape}")
        b = x.shape[0]
        symbols_x = x.reshape(b, -1).astype(np.int64)
        given = self._x_tensor(x)
        zs, q_params = [], []
        pending = []                            # BB-ANS: pushes deferred until all pops
        for i in range(self.nz):
            q, qp = self._q(i, given)
            k = q.pop(message)
            z = self._z_tensor(i, k)
            zs.append((k, z))
            q_params.append(qp)
            if self.bitswap:
                if i == 0 and before_first_push is not None:
                    before_first_push(message)
                p, pp = self._p(i, z)
                p.push(message, symbols_x if i == 0 else zs[i - 1][0])
                pending.append(pp)
            given = z
        if not self.bitswap:
            if before_first_push is not None:
                before_first_push(message)
            for i in range(self.nz):
                p, pp = self._p(i, zs[i][1])
                p.push(message, symbols_x if i == 0 else zs[i - 1][0])
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
    def decode(self, message, batch):
        """Mirror of :meth:`encode`: pops ``batch`` images (uint8 (B, C, H, W))
        and returns the message to its state before they were encoded."""
        k_top = self._prior(batch).pop(message)
        if self.bitswap:
            k = k_top
            for i in reversed(range(self.nz)):
                z = self._z_tensor(i, k)
                p, _ = self._p(i, z)
                below = p.pop(message)
                given = (self._x_tensor(below.reshape((batch,) + self.xs)) if i == 0
                         else self._z_tensor(i - 1, below))
                q, _ = self._q(i, given)
                q.push(message, k)
                k = below
            return k.reshape((batch,) + self.xs).astype(np.uint8)
        ks = [None] * self.nz
        ks[-1] = k_top
        zs = [None] * self.nz
        for i in reversed(range(self.nz)):
            zs[i] = self._z_tensor(i, ks[i])
            p, _ = self._p(i, zs[i])
            below = p.pop(message)
            if i > 0:
                ks[i - 1] = below
            else:
                x = below.reshape((batch,) + self.xs)
        givens = [self._x_tensor(x)] + zs[:-1]
        for i in reversed(range(self.nz)):
            q, _ = self._q(i, givens[i])
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
