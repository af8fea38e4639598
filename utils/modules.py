"""Network building blocks of the hierarchical VAE.

Owns: the weight-normalised convolution with data-dependent initialisation
(`WnConv2d`), a fused pair of heads on one input (`twin_conv`; the
`separate_heads()` context turns the fusion off for comparisons), the
residual layer and the stack of residual layers, the 2x2 squeeze/unsqueeze
(space <-> channels) and the identity used where a block has no layers.

Invariants (they keep the authors' checkpoints loadable unchanged):
* parameter names are the reference's: a convolution holds `v` (direction),
  `gain` and `b`; residual layers are children named `res{width}layer{k}`
  (k from 1) with children `conv1` / `conv2`;
* the effective weight is `v * g / ||v||` (norm per output channel) with
  `g = softplus(gain)` when `loggain` is set, `g = gain` otherwise;
* data-dependent init (see `data_dependent_init`) stores, like the reference,
  `gain = log(s)` (loggain) or `gain = s`, and `b = -mean * s`, where
  `s = init_scale / std` of the un-normalised output on the init batch. With
  `softplus`, the effective initial gain is therefore `log(1 + s)`; the
  released checkpoints were trained from that init, so it is kept.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class WnConv2d(nn.Module):
    """Weight-normalised 2-D convolution, stride 1, 'same' padding."""

    def __init__(self, in_channels, out_channels, kernel_size, init_scale=1.0,
                 loggain=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.init_scale = init_scale
        self.loggain = loggain
        self.v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.gain = nn.Parameter(torch.zeros(out_channels))
        self.b = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.v, 0.0, 0.05)
        self.init_pending = False  # set by `data_dependent_init`

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"init_scale={self.init_scale:.4g}, loggain={self.loggain}")

    def effective_gain(self):
        return F.softplus(self.gain) if self.loggain else self.gain

    def weight(self):
        """The convolution weight `v * g / ||v||` (one norm per output channel)."""
        v = self.v
        norm = v.pow(2).sum(dim=(1, 2, 3)).sqrt()
        return v * (self.effective_gain() / norm).view(-1, 1, 1, 1)

    @torch.no_grad()
    def _initialise_from(self, x):
        v = self.v
        direction = v / v.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
        out = F.conv2d(x, direction, None, 1, self.padding)
        mean = out.mean(dim=(0, 2, 3))
        var = out.var(dim=(0, 2, 3))
        s = self.init_scale / torch.sqrt(var + 1e-10)
        self.gain.copy_(torch.log(s) if self.loggain else s)
        self.b.copy_(-mean * s)
        self.init_pending = False

    def forward(self, x):
        if self.init_pending:
            self._initialise_from(x)
        return F.conv2d(x, self.weight(), self.b, 1, self.padding)


_fuse_heads = True


@contextlib.contextmanager
def separate_heads():
    """Within this context `twin_conv` runs its two heads as two plain
    convolutions, as the reference does (for benchmarks that compare both)."""
    global _fuse_heads
    saved, _fuse_heads = _fuse_heads, False
    try:
        yield
    finally:
        _fuse_heads = saved


def twin_conv(first, second, h):
    """`(first(h), second(h))` for two `WnConv2d` heads reading the same
    input (a latent's mu and scale), computed as one convolution.

    Why: heads with a handful of output channels cost about one pass over
    `h` each, so one pass for both halves that; feeding oneDNN a
    channels_last input is faster again for so few outputs (timings in
    benchmarks/README.md). The result equals the two separate convolutions
    up to float rounding."""
    if first.init_pending or second.init_pending or not _fuse_heads:
        return first(h), second(h)   # data-dependent init needs each conv's own pass
    weight = torch.cat([first.weight(), second.weight()])
    bias = torch.cat([first.b, second.b])
    out = F.conv2d(h.contiguous(memory_format=torch.channels_last), weight, bias, 1, first.padding)
    return out[:, :first.out_channels], out[:, first.out_channels:]


@contextlib.contextmanager
def data_dependent_init(module):
    """Within this context, the next forward pass of every `WnConv2d` inside
    `module` first sets its gain and bias from the batch it sees."""
    convs = [m for m in module.modules() if isinstance(m, WnConv2d)]
    for conv in convs:
        conv.init_pending = True
    try:
        yield
    finally:
        for conv in convs:
            conv.init_pending = False


class Dropout(nn.Module):
    """Inverted dropout: keep an activation with probability 1 - p and scale
    it by 1 / (1 - p), like nn.Dropout, but several times faster on CPU
    (timings in benchmarks/README.md).

    Why: nn.Dropout's bernoulli_ and torch.rand_like draw one 32-bit number
    per element, which dominates its cost on CPU. Here one 64-bit draw gives
    four 16-bit uniforms, so the drop probability is p rounded to a multiple
    of 2^-16 (`p_eff`, within 8e-6 of p) and the scale is 1 / (1 - p_eff),
    keeping the expectation exact."""

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.threshold = round(self.p * 65536)          # drop when u16 < threshold
        self.p_eff = self.threshold / 65536.0

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, h):
        if not self.training or self.threshold == 0:
            return h
        n = h.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=h.device)
        words.random_(-2 ** 63, 2 ** 63 - 1)             # all 64 bits random
        u16 = words.view(torch.int16)[:n].view(h.shape)  # signed: -32768..32767
        drop = u16 < (self.threshold - 32768)
        return (h * (1.0 / (1.0 - self.p_eff))).masked_fill(drop, 0.0)


class ResidualLayer(nn.Module):
    """`h + conv2(dropout(elu(conv1(elu(h)))))`; conv2 starts at zero output."""

    def __init__(self, width, kernel_size, dropout):
        super().__init__()
        self.conv1 = WnConv2d(width, width, kernel_size, init_scale=1.0, loggain=True)
        self.conv2 = WnConv2d(width, width, kernel_size, init_scale=0.0, loggain=False)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h):
        return h + self.conv2(self.dropout(F.elu(self.conv1(F.elu(h)))))


class ResidualStack(nn.Sequential):
    """`depth` residual layers, children named `res{width}layer{k}`, k = 1.."""

    def __init__(self, width, kernel_size, depth, dropout):
        super().__init__()
        for k in range(1, depth + 1):
            self.add_module(f"res{width}layer{k}", ResidualLayer(width, kernel_size, dropout))


def residual_block(width, kernel_size, depth, dropout):
    """A residual stack followed by ELU, or the identity when `depth` is 0
    (the reference's `Pass`: no ELU either). Index 0 of the returned
    Sequential is the stack, as in the reference's state-dict keys."""
    if depth <= 0:
        return nn.Identity()
    return nn.Sequential(ResidualStack(width, kernel_size, depth, dropout), nn.ELU())


class Squeeze2d(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2); channel index = c*4 + dy*2 + dx."""

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


class UnSqueeze2d(nn.Module):
    """Inverse of `Squeeze2d`: (B, 4C, H, W) -> (B, C, 2H, 2W)."""

    def forward(self, x):
        b, c4, h, w = x.shape
        c = c4 // 4
        x = x.reshape(b, c, 2, 2, h, w)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * 2, w * 2)


def deal_round_robin(total, bins):
    """How many of `total` residual layers each of `bins` latent layers gets
    when they are dealt like cards (layer 0 gets the 1st, (1+bins)-th, ...)."""
    counts = [0] * bins
    for k in range(total):
        counts[k % bins] += 1
    return counts


INV_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(x + this) == 1 at x = 0
