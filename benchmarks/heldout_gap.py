"""Held-out photos against training photos: how much of the -ELBO gap is content.

    python benchmarks/heldout_gap.py [--model demo] [--photos data/photos] [--threads 2]

For each held-out set written by scripts/get_demo_photos.py (the
native-resolution patches and the downscaled ones) and as many training
patches of the same kind (native: the train/x1 tiles; downscaled: the
train/max640 and train/x1_4 photos; fixed positions, a fixed subset), this
prints the model's test -ELBO (bits/dim, fixed posterior seed) and the bits
per dim of the fixed pixel model of utils/pixelmodel.py on the same patches,
each patch coded alone (no context across its edges, alike on both sides),
and how the model's -ELBO splits into its pixel term and the latent layers'
KL (held-out / training).

The pixel model has 51 parameters (its thetas), so it cannot learn the
training photos: its held-out minus training figure measures how much harder
to code the held-out photos are.  The model's gap beyond it ("excess") is
what the model learned about its training photos that does not carry over.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import package, train  # noqa: E402
from model.distributed import Distributed  # noqa: E402
from utils import cli, pixelmodel  # noqa: E402
from utils.data import (ArrayImages, DataNotFoundError, RandomPatches, list_image_files,  # noqa: E402
                        to_nchw)

# held-out set -> the training folders of the same kind of pixels
KINDS = {"native": ("x1",), "downscaled": ("max640", "x1_4")}
SUBSET_SEED, PATCH_SEED = 0, 12345


def training_patches(photos, folders, count):
    """`count` fixed training patches (a Dataset) from the given folders."""
    files = sorted(sum((list_image_files(os.path.join(photos, "imagenetcrop", "train", f))
                        for f in folders), []))
    per_image = -(-count // len(files))
    patches = RandomPatches(files, deterministic=True, per_image=per_image, seed=PATCH_SEED)
    pick = np.random.default_rng(SUBSET_SEED).choice(len(patches), count, replace=False)
    return torch.utils.data.Subset(patches, sorted(pick.tolist()))


def pixel_model_bits_per_dim(dataset):
    """Bits/dim of the fixed pixel model, every patch coded alone."""
    bits, dims = 0.0, 0
    for i in range(len(dataset)):
        x = np.asarray(dataset[i][0]).transpose(1, 2, 0).astype(np.uint8)
        region = np.ones(x.shape[:2], bool)
        bits += pixelmodel.region_bits(np.ascontiguousarray(x), ~region, region)
        dims += x.size
    return bits / dims


def measure(net, photos, kind):
    """{side: (model terms, pixel model bits/dim)} for the held-out and
    training patches; the terms (bits/dim) are the -ELBO ("elbo"), its pixel
    term ("recon": -log p(x|z1)) and the KL of each latent layer ("kl")."""
    path = os.path.join(photos, f"heldout_patches_{kind}.npy")
    if not os.path.isfile(path):
        raise cli.BadInput(f"{path} not found: write the photo corpus with scripts/get_demo_photos.py")
    heldout = ArrayImages(to_nchw(np.load(path), path))
    sides = {"held-out": heldout, "training": training_patches(photos, KINDS[kind], len(heldout))}
    out = {}
    for side, data in sides.items():
        terms = train.evaluate(net, data, 128, torch.device("cpu"), Distributed(), 0,
                               seed=train.CURVE_SEED)
        out[side] = (terms, pixel_model_bits_per_dim(data))
    return out, len(heldout)


def gap_table(net, photos):
    """Print the table; returns {kind: {"model": (held-out, training),
    "pixel_model": (held-out, training)}}."""
    print(f"{'patches':12s} {'n':>5s} | {'model -ELBO':^23s} | {'pixel model':^23s} | excess")
    results = {}
    for kind in KINDS:
        try:
            got, n = measure(net, photos, kind)
        except DataNotFoundError as exc:
            raise cli.BadInput(cli.one_line(exc)) from None
        (th, ph), (tt, pt) = got["held-out"], got["training"]
        mh, mt = th["elbo"], tt["elbo"]
        results[kind] = dict(model=(mh, mt), pixel_model=(ph, pt), terms=(th, tt))
        print(f"{kind:12s} {n:5d} | {mh:6.3f} {mt:6.3f} {mh - mt:6.3f}    | "
              f"{ph:6.3f} {pt:6.3f} {ph - pt:6.3f}    | {(mh - mt) - (ph - pt):6.3f}", flush=True)
        kls = ", ".join(f"KL z{i + 1} {a:.3f} / {b:.3f}" for i, (a, b) in enumerate(zip(th["kl"], tt["kl"])))
        print(f"{'':12s}   model -ELBO = pixels given z1 {th['recon']:.3f} / {tt['recon']:.3f}, {kls}")
    return results


def main(argv=None):
    ap = cli.parser("heldout_gap.py", __doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", help="model package folder or shipped name")
    ap.add_argument("--photos", default="data/photos", help="root written by scripts/get_demo_photos.py")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    def body():
        torch.set_num_threads(args.threads)
        if not os.path.isdir(args.photos):
            raise cli.BadInput(f"{args.photos} not found: write the photo corpus with "
                               "scripts/get_demo_photos.py")
        net = package.load(args.model, dataset="imagenetcrop", need_bins=False).net.float()
        print(f"model {args.model}; bits/dim of the same patches: held-out, training, gap")
        gap_table(net, args.photos)
    return cli.run_main("heldout_gap.py", body)


if __name__ == "__main__":
    sys.exit(main())
