"""The paper's hierarchical VAE (one class for all four datasets).

Owns the network, its conditionals and the training objective. The module
attributes and parameter names are exactly the reference's, so the authors'
checkpoints (`torch.save(model.state_dict())`) load with `load_state_dict`
directly and a checkpoint saved here loads in the reference code:

  infer_in.1 (5x5 conv after the 2x2 squeeze), infer_res0 (processing block),
  infer_res1, infer_mu, infer_std                      -> q(z1 | x)
  deepinfer_{in,res,mu,std}[i-1]                       -> q(z_{i+1} | z_i)
  deepgen_{in,res,mu,std}[i-1]                         -> p(z_i | z_{i+1})
  gen_in, gen_res1, gen_res0 (processing), gen_mu      -> p(x | z1)
  gen_std: a free (C, 32, 32) parameter, or, with `conditional_xscale`
  (ImageNet patches model), a second conditional head like gen_mu.

Indexing used by the coders (identical to the reference's):
  infer(0, x)    -> q(z1 | x), x in pixel values 0..255 (float);
  infer(i, z_i)  -> q(z_{i+1} | z_i) for i >= 1 (z_i is latent layer i-1 of
                    a 0-based list);
  generate(0, z1)       -> p(x | z1), mu on the [-1, 1] pixel scale;
  generate(i, z_{i+1})  -> p(z_i | z_{i+1}) for i >= 1.
Each returns (mu, scale) of a logistic (discretized logistic for pixels).
The prior p(z_nz) is Logistic(0, 1).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.densities import discretized_logistic_logp, logistic_logp
from utils.modules import (INV_SOFTPLUS_ONE, Squeeze2d, UnSqueeze2d, WnConv2d,
                           data_dependent_init, deal_round_robin, residual_block,
                           twin_conv)

LOG2 = math.log(2.0)
PIXEL_BIN = 2.0 / 255.0


class HVAE(nn.Module):
    """Hierarchical VAE with `nz` logistic latent layers of shape
    (zchannels, H/2, W/2) over 8-bit images of shape `xs` = (C, H, W)."""

    def __init__(self, xs=(1, 32, 32), nz=8, zchannels=1, width=61, nprocessing=4,
                 resdepth=8, kernel=3, dropout=0.0, conditional_xscale=False):
        super().__init__()
        if nz < 1:
            raise ValueError(f"nz must be >= 1, got {nz}")
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if xs[1] % 2 or xs[2] % 2:
            raise ValueError(f"image height/width must be even, got {tuple(xs)}")
        self.xs = tuple(int(d) for d in xs)
        self.nz = int(nz)
        self.zchannels = int(zchannels)
        self.width = int(width)
        self.nprocessing = int(nprocessing)
        self.resdepth = int(resdepth)
        self.kernel = int(kernel)
        self.dropout = float(dropout)
        self.conditional_xscale = bool(conditional_xscale)
        self.zdim = (self.zchannels, self.xs[1] // 2, self.xs[2] // 2)
        self.dims = int(np.prod(self.xs))

        c, w, k = self.xs[0], self.width, self.kernel
        depth = deal_round_robin(self.resdepth, self.nz)
        head_scale = 1.0 / math.sqrt(self.nz)

        def head(out_channels, init_scale):
            return WnConv2d(w, out_channels, k, init_scale=init_scale, loggain=True)

        def block(kernel_size, n):
            return residual_block(w, kernel_size, n, self.dropout)

        # q(z1 | x)
        last = 2 ** 0.5 * head_scale
        self.infer_in = nn.Sequential(Squeeze2d(), WnConv2d(4 * c, w, 5, 1.0, True), nn.ELU())
        self.infer_res0 = block(5, self.nprocessing)
        self.infer_res1 = block(k, depth[0])
        first_scale = head_scale if self.nz > 1 else last
        self.infer_mu = head(self.zchannels, first_scale)
        self.infer_std = head(self.zchannels, first_scale)

        # q(z_{i+1} | z_i) and p(z_i | z_{i+1}) for i = 1..nz-1 (index i-1)
        def z_input():
            return nn.Sequential(WnConv2d(self.zchannels, w, k, 1.0, True), nn.ELU())

        def deep_heads(scales):
            return nn.ModuleList(nn.Sequential(head(self.zchannels, s)) for s in scales)

        infer_scales = [head_scale if i < self.nz - 2 else last for i in range(self.nz - 1)]
        self.deepinfer_in = nn.ModuleList(z_input() for _ in range(self.nz - 1))
        self.deepinfer_res = nn.ModuleList(block(k, depth[i + 1]) for i in range(self.nz - 1))
        self.deepinfer_mu = deep_heads(infer_scales)
        self.deepinfer_std = deep_heads(infer_scales)
        gen_scales = [head_scale] * (self.nz - 1)
        self.deepgen_in = nn.ModuleList(z_input() for _ in range(self.nz - 1))
        self.deepgen_res = nn.ModuleList(block(k, depth[i + 1]) for i in range(self.nz - 1))
        self.deepgen_mu = deep_heads(gen_scales)
        self.deepgen_std = deep_heads(gen_scales)

        # p(x | z1)
        self.gen_in = nn.Sequential(WnConv2d(self.zchannels, w, k, 1.0, True), nn.ELU())
        self.gen_res1 = block(k, depth[0])
        self.gen_res0 = block(5, self.nprocessing)
        self.gen_mu = nn.Sequential(head(4 * c, 0.1), UnSqueeze2d())
        if self.conditional_xscale:
            self.gen_std = nn.Sequential(head(4 * c, 0.1), UnSqueeze2d())
        else:
            self.gen_std = nn.Parameter(torch.zeros(self.xs))

    @classmethod
    def from_config(cls, cfg):
        """Build from a `model.config.TrainConfig` (or anything with its fields)."""
        return cls(xs=cfg.xs, nz=cfg.nz, zchannels=cfg.zchannels, width=cfg.width,
                   nprocessing=cfg.nprocessing, resdepth=cfg.blocks, kernel=cfg.kernel,
                   dropout=cfg.dropout, conditional_xscale=cfg.conditional_xscale)

    @staticmethod
    def architecture_from_state_dict(state):
        """The constructor arguments that fit a state dict in the reference
        layout (the authors' checkpoint files carry no configuration): widths
        and channels from the tensor shapes, nz and the residual depths from
        the key names. ValueError when it is not an HVAE state dict."""
        import re
        try:
            first = state["infer_in.1.v"]
            width, channels = int(first.shape[0]), int(first.shape[1]) // 4
            zchannels = int(state["infer_mu.v"].shape[0])
            kernel = int(state["infer_mu.v"].shape[-1])
        except (KeyError, AttributeError, IndexError) as exc:
            raise ValueError(f"not a Bit-Swap HVAE state dict (missing {exc})") from None
        nz = 1 + len({k.split(".")[1] for k in state if k.startswith("deepinfer_in.")})

        def layers(prefix):  # residual layers of one block: <prefix>.0.res<w>layer<k>.conv1.v
            pat = re.compile(re.escape(prefix) + r"\.0\.res\d+layer(\d+)\.conv1\.v$")
            return len({m.group(1) for m in map(pat.match, state) if m})

        resdepth = layers("infer_res1") + sum(layers(f"deepinfer_res.{i}") for i in range(nz - 1))
        conditional = "gen_std" not in state
        size = (32, 32) if conditional else tuple(int(d) for d in state["gen_std"].shape[1:])
        return dict(xs=[channels, *size], nz=nz, zchannels=zchannels, width=width,
                    nprocessing=layers("infer_res0"), resdepth=resdepth, kernel=kernel,
                    conditional_xscale=conditional)

    def architecture(self):
        """The constructor arguments (what a checkpoint must agree with)."""
        return dict(xs=list(self.xs), nz=self.nz, zchannels=self.zchannels, width=self.width,
                    nprocessing=self.nprocessing, resdepth=self.resdepth, kernel=self.kernel,
                    conditional_xscale=self.conditional_xscale)

    # ---- conditionals -------------------------------------------------
    # Optionally run hidden activations in channels_last (converted after
    # each input convolution). It spares oneDNN's layout reorders, but
    # channels-last kernels are not faster everywhere (benchmarks/README.md,
    # training), so it is off by default; time it on the hardware at hand
    # with benchmarks/train_bench.py --channels-last.
    channels_last = False

    def _nhwc(self, t):
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def infer(self, i, given):
        """(mu, scale) of q(z_{i+1} | given); see the module docstring."""
        if i == 0:
            h = self._nhwc(self.infer_in((given - 127.5) / 127.5))
            h = self.infer_res1(self.infer_res0(h))
            mu, s = twin_conv(self.infer_mu, self.infer_std, h)
        elif 0 < i < self.nz:
            h = self.deepinfer_res[i - 1](self._nhwc(self.deepinfer_in[i - 1](given)))
            mu, s = twin_conv(self.deepinfer_mu[i - 1][0], self.deepinfer_std[i - 1][0], h)
        else:
            raise IndexError(f"infer index {i} out of range for nz={self.nz}")
        return mu.contiguous(), (0.1 + 0.9 * torch.sigmoid(s + 2.0)).contiguous()

    def generate(self, i, given):
        """(mu, scale) of p(z_i | given = z_{i+1}), or of p(x | z1) for i = 0
        (mu on the [-1, 1] scale, scale broadcast to mu's shape)."""
        if i == 0:
            h = self.gen_res0(self.gen_res1(self._nhwc(self.gen_in(given))))
            mu = self.gen_mu(h)
            s = self.gen_std(h) if self.conditional_xscale else self.gen_std
            return mu, (PIXEL_BIN / 8.0 + F.softplus(s)).expand_as(mu)
        if 0 < i < self.nz:
            h = self.deepgen_res[i - 1](self._nhwc(self.deepgen_in[i - 1](given)))
            mu, s = twin_conv(self.deepgen_mu[i - 1][0], self.deepgen_std[i - 1][0], h)
            return mu.contiguous(), (0.1 + 0.9 * F.softplus(s + INV_SOFTPLUS_ONE)).contiguous()
        raise IndexError(f"generate index {i} out of range for nz={self.nz}")

    # ---- objective ----------------------------------------------------
    def loss(self, x):
        """Single-sample ELBO terms for a batch of images x (0..255 floats).

        Returns a dict of tensors (bits, averaged over the batch):
          recon: log p(x | z1), scalar;
          enc:   log q(z_l | .) per (layer, channel), shape (nz, zchannels);
          dec:   log p(z_l | z_{l+1}) (prior for the top) per (layer, channel);
          z:     the sampled latents (list, detached is up to the caller).
        """
        b = x.shape[0]
        logenc, logdec = [], []
        zs = []
        given = x
        recon = None
        for i in range(self.nz):
            mu, scale = self.infer(i, given)
            u = torch.rand_like(mu).clamp_(1e-7, 1.0 - 1e-7)
            z = mu + scale * (torch.log(u) - torch.log1p(-u))
            logenc.append(logistic_logp(z, mu, scale).reshape(b, self.zchannels, -1).sum(-1))
            mu_p, scale_p = self.generate(i, z)
            if i == 0:
                recon = discretized_logistic_logp(x, mu_p, scale_p).reshape(b, -1).sum(-1)
            else:
                logdec.append(logistic_logp(given, mu_p, scale_p)
                              .reshape(b, self.zchannels, -1).sum(-1))
            zs.append(z)
            given = z
        top = -given - 2.0 * F.softplus(-given)  # log Logistic(0, 1)
        logdec.append(top.reshape(b, self.zchannels, -1).sum(-1))
        return dict(recon=recon.mean() / LOG2,
                    enc=torch.stack(logenc).mean(1) / LOG2,
                    dec=torch.stack(logdec).mean(1) / LOG2,
                    z=zs)

    def forward(self, x, free_bits=1.0):
        """Bits/dim objective. Returns (objective, terms): the objective uses
        free bits (KL per layer and channel at least `free_bits` bits, the
        training loss); terms hold the plain ELBO (`elbo`, bits/dim) and the
        per-layer `kl`, `enc`, `dec` (bits/dim, shape (nz,)) and `recon`."""
        t = self.loss(x)
        kl = t["enc"] - t["dec"]                      # (nz, zchannels), bits
        per_dim = 1.0 / self.dims
        objective = (-t["recon"] + torch.clamp(kl, min=free_bits).sum()) * per_dim
        terms = dict(elbo=(-t["recon"] + kl.sum()) * per_dim,
                     recon=-t["recon"] * per_dim,
                     kl=kl.sum(1) * per_dim,
                     enc=-t["enc"].sum(1) * per_dim,
                     dec=-t["dec"].sum(1) * per_dim,
                     z=t["z"])
        return objective, terms

    @torch.no_grad()
    def initialize(self, x):
        """Data-dependent init of every convolution from the batch x (eval
        mode, as the reference: no dropout)."""
        was_training = self.training
        self.eval()
        with data_dependent_init(self):
            self.loss(x)
        self.train(was_training)

    @torch.no_grad()
    def sample(self, n, generator=None):
        """Ancestral samples: n images (uint8-valued floats 0..255), the mode
        of each pixel's discretized logistic (mean of the logistic, rounded)."""
        device = self.gen_in[0].v.device
        u = torch.rand((n,) + self.zdim, generator=generator, device=device).clamp_(1e-7, 1 - 1e-7)
        z = torch.log(u) - torch.log1p(-u)
        for i in range(self.nz - 1, 0, -1):
            mu, scale = self.generate(i, z)
            u = torch.rand(mu.shape, generator=generator, device=device).clamp_(1e-7, 1 - 1e-7)
            z = mu + scale * (torch.log(u) - torch.log1p(-u))
        mu, _ = self.generate(0, z)
        return torch.clamp(torch.round(mu * 127.5 + 127.5), 0, 255)

    @torch.no_grad()
    def reconstruct(self, x):
        """Pixel means of p(x | z1) with z1 the mean of q(z1 | x)."""
        mu, _ = self.infer(0, x)
        mu_x, _ = self.generate(0, mu)
        return torch.clamp(torch.round(mu_x * 127.5 + 127.5), 0, 255)
