"""Speed of Bit-Swap / BB-ANS encode and decode (not a timed test).

    python benchmarks/compress_bench.py [--models mnist,cifar] [--chains 1,100] [--repeats 3]

Random-init weights (data-dependent init on random pixels) of the paper's
MNIST nz=8 width-61 and CIFAR-10 nz=8 width-252 models; latent bins: the
prior's equal-mass bins on top, equal-width bins below (the shapes the
trained bins have, so the coder takes its real code paths).  Reports median
ms/image of encode and decode and the share spent in the networks vs the
rest (the coder: quantized CDFs + rANS).  ``--interleaved`` adds a
single-chain run on an ans.InterleavedMessage (one long message).
``--heads fused,separate`` times the fused mu/scale heads (`twin_conv`, the
default) against two plain convolutions per latent in the same run, the
repeats of the two alternating so that the host's drift hits both alike.
"""
import contextlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.config import config_for  # noqa: E402
from model.hvae import HVAE  # noqa: E402
from utils import ans, cli  # noqa: E402
from utils.bins import LatentBins  # noqa: E402
from utils.bitsback import BitsBackCoder  # noqa: E402
from utils.modules import separate_heads  # noqa: E402


def benchmark_bins(nz, zdim, quantbits=10, seed=0):
    """Equal-width bins on about [-5, 5] below, the prior's on top."""
    rng = np.random.default_rng(seed)
    ranges = np.stack([-5.0 - rng.random((nz - 1, zdim)), 5.0 + rng.random((nz - 1, zdim))], axis=-1)
    return LatentBins.from_ranges(ranges, quantbits)


def make_model(dataset, nz):
    torch.manual_seed(0)
    cfg = config_for(dataset, nz=nz)
    model = HVAE.from_config(cfg)
    model.initialize(torch.randint(0, 256, (32,) + tuple(cfg.xs)).float())
    return model.eval()


def run_once(coder, images, layout):
    """images (steps, B, C, H, W); returns (enc s, dec s, enc net s, dec net s)."""
    steps, b = images.shape[:2]
    if layout == "interleaved":
        msg = ans.InterleavedMessage.random(1024, 4096, seed=1)
    else:
        msg = ans.Message.random(b, 0, seed=1, underflow_seed=1)
    coder.net_seconds = 0.0
    t0 = time.perf_counter()
    for j in range(steps):
        coder.encode(msg, images[j])
    enc = time.perf_counter() - t0
    enc_net = coder.net_seconds
    coder.net_seconds = 0.0
    t0 = time.perf_counter()
    for j in reversed(range(steps)):
        x = coder.decode(msg, b)
        assert (x == images[j]).all(), "decode mismatch"
    dec = time.perf_counter() - t0
    return enc, dec, enc_net, coder.net_seconds


def main(argv=None):
    p = cli.parser("compress_bench.py", __doc__.splitlines()[0])
    p.add_argument("--models", default="mnist,cifar", help="comma list of mnist, cifar")
    p.add_argument("--chains", default="1,100", help="comma list of chain counts")
    p.add_argument("--steps", type=int, default=2, help="images per chain per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bitswap", type=int, default=1)
    p.add_argument("--interleaved", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--heads", default="fused",
                   help="comma list of fused (twin_conv) / separate: time each, alternating")
    args = p.parse_args(argv)
    heads = args.heads.split(",")
    if not heads or set(heads) - {"fused", "separate"}:
        p.error(f"--heads: expected fused and/or separate, got {args.heads!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    for dataset in args.models.split(","):
        model = make_model(dataset, 8)
        bins = benchmark_bins(model.nz, int(np.prod(model.zdim)))
        coder = BitsBackCoder(model, bins, bitswap=bool(args.bitswap))
        layouts = [(int(c), "lanes") for c in args.chains.split(",")]
        if args.interleaved:
            layouts.append((1, "interleaved"))
        for chains, layout in layouts:
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (args.steps, chains) + model.xs).astype(np.uint8)
            runs = {h: [] for h in heads}
            for _ in range(args.repeats):
                for h in heads:
                    with separate_heads() if h == "separate" else contextlib.nullcontext():
                        runs[h].append(run_once(coder, images, layout))
            n = args.steps * chains
            for h in heads:
                enc, dec, enc_net, dec_net = (1e3 * np.median([r[k] for r in runs[h]]) / n
                                              for k in range(4))
                print(f"{dataset} nz=8 width={model.width} {'Bit-Swap' if args.bitswap else 'BB-ANS'} "
                      f"{chains} chain(s) [{layout}, {h} heads]: encode {enc:.1f} ms/image "
                      f"(networks {enc_net:.1f}, coder {enc - enc_net:.1f}), decode {dec:.1f} "
                      f"ms/image (networks {dec_net:.1f}, coder {dec - dec_net:.1f})", flush=True)


if __name__ == "__main__":
    main()
