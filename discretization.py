"""Derive the latent discretization bins of a trained model.

    python discretization.py mnist --params runs/mnist_nz8 [--quantbits 10] [--bins DIR]

* top layer: 2^q bins of equal mass under the prior Logistic(0, 1);
* lower layers: 30 * 2^q samples of every z_i from the generative model
  (ancestral from the prior) pooled with 30 * 2^q from the inference model on
  training images (a seeded random subset of the whole training set), then
  2^q equal-width bins between each dimension's sample min and max
  (scikit-learn KBinsDiscretizer, strategy 'uniform'); centre = midpoint.
  Only min and max matter for 'uniform', so they are tracked
  while sampling (no need to hold the samples) and the discretizer is fitted
  on those two rows: same edges as fitting on all samples.
imagenetcrop: the training data are fixed 32x32 patches of the photos in
DATA_ROOT/imagenetcrop/train.

--params is anything model/package.py loads (a training run folder or its
checkpoint.pt: the EMA weights, or --weights raw; model_best.pt; the authors'
files).  Writes, in --bins (default: beside the weights, i.e. the run
folder, where the compress scripts look first), the compact
``{dataset}_nz{nz}_zranges{q}.pt`` recording the weights' fingerprint (see
utils/bins.py) and, unless --compact-only, the authors' two large files
``..._zendpoints{q}.pt`` / ``..._zcentres{q}.pt``.  Existing bins files are
never replaced without --force.  Exit status: utils/cli.py.
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils import cli  # noqa: E402
from utils.bins import LatentBins, ranges_path  # noqa: E402

SAMPLES_PER_BIN = 30


def _logistic(shape, generator, device):
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-7, 1 - 1e-7)
    return torch.log(u) - torch.log1p(-u)


@torch.no_grad()
def latent_ranges(model, train_images, samples, batch=256, seed=0, progress=True):
    """Per layer and dimension (min, max) over ``samples`` generative and
    ``samples`` inference draws; float64 arrays (nz, zdim) each."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    nz, zdim = model.nz, int(np.prod(model.zdim))
    lo = np.full((nz, zdim), np.inf)
    hi = np.full((nz, zdim), -np.inf)

    def update(i, z):
        z = z.reshape(z.shape[0], -1).double().cpu().numpy()
        np.minimum(lo[i], z.min(0), out=lo[i])
        np.maximum(hi[i], z.max(0), out=hi[i])

    model.eval()
    steps = [(s, min(batch, samples - s)) for s in range(0, samples, batch)]
    for _, b in tqdm(steps, desc="generative samples", disable=not progress):
        z = _logistic((b,) + tuple(model.zdim), gen, device)
        update(nz - 1, z)
        for i in range(nz - 1, 0, -1):
            mu, scale = model.generate(i, z)
            z = mu + scale * _logistic(mu.shape, gen, device)
            update(i - 1, z)
    order = inference_images(len(train_images), samples, rng)
    for start, b in tqdm(steps, desc="inference samples", disable=not progress):
        x = torch.as_tensor(train_images[order[start:start + b]], dtype=torch.float32, device=device)
        given = x
        for i in range(nz):
            mu, scale = model.infer(i, given)
            given = mu + scale * _logistic(mu.shape, gen, device)
            update(i, given)
    return lo, hi


def inference_images(available, samples, rng):
    """Indices of the training images the inference samples start from: a
    seeded random subset of the whole set (as the authors' shuffled loader),
    the whole set in random orders, repeated, when more samples are needed."""
    rounds = -(-samples // available)
    return np.concatenate([rng.permutation(available) for _ in range(rounds)])[:samples]


def derive_bins(model, train_images, quantbits=10, samples_per_bin=SAMPLES_PER_BIN,
                batch=256, seed=0, progress=True):
    """The bins described above for ``model`` as a LatentBins (with its
    compact ``ranges``)."""
    nz, zdim = model.nz, int(np.prod(model.zdim))
    ranges = np.empty((nz - 1, zdim, 2))
    if nz > 1:
        lo, hi = latent_ranges(model, train_images, samples_per_bin * (1 << quantbits), batch,
                               seed, progress)
        ranges[..., 0], ranges[..., 1] = lo[:-1], hi[:-1]
    return LatentBins.from_ranges(ranges, quantbits)


def training_patches(root, count, seed=0):
    """``count`` fixed 32x32 patches (uint8 N, 3, 32, 32) of the imagenetcrop
    training photos (ROOT/imagenetcrop/train), spread evenly over the files."""
    from utils.data import RandomPatches, list_image_files
    files = list_image_files(os.path.join(root, "imagenetcrop", "train"))
    patches = RandomPatches(files, deterministic=True, seed=seed,
                            per_image=-(-count // len(files)))
    pick = np.random.default_rng(seed).permutation(len(patches))[:count]
    return np.stack([patches[int(i)][0].numpy().astype(np.uint8) for i in pick])


def parse_args(argv):
    from model.config import DATASETS
    p = cli.parser("discretization.py", __doc__.split("\n")[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--params", required=True,
                   help="the trained model (run folder, checkpoint.pt, model_best.pt, a "
                        "state-dict file)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="for a training checkpoint: its EMA weights or the raw ones")
    p.add_argument("--nz", type=int, default=None, help="checked against the model when given")
    p.add_argument("--quantbits", type=int, default=10)
    p.add_argument("--bins", default=None,
                   help="folder for the bins files (default: the folder of the weights)")
    p.add_argument("--force", action="store_true", help="replace existing bins files")
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--samples-per-bin", type=int, default=SAMPLES_PER_BIN)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    cli.add_device_argument(p)
    cli.add_progress_argument(p)
    p.add_argument("--compact-only", action="store_true",
                   help="write only the compact ranges file, not the authors' (large) files")
    return p.parse_args(argv)


def run(args):
    from model import package
    from utils.bins import bins_paths
    from utils.data import DataNotFoundError, load_images
    from utils.device import device_from_args
    from utils.experiment import pad_to_model
    if not 1 <= args.quantbits <= 16:
        raise cli.BadInput(f"--quantbits must be in [1, 16], got {args.quantbits}")
    device = device_from_args(args)
    kind, _ = package.resolve(args.params)
    if kind == "package" and args.bins is None:
        raise cli.BadInput(f"{args.params} is a model package with its own bins; pass --bins DIR "
                           "to derive bins elsewhere")
    model = package.load(args.params, dataset=args.dataset, nz=args.nz, device=device,
                         need_bins=False, weights=args.weights)
    out = args.bins or os.path.dirname(os.path.abspath(model.source))
    nz = model.net.nz
    targets = [ranges_path(out, args.dataset, nz, args.quantbits)]
    if not args.compact_only:
        targets += list(bins_paths(out, args.dataset, nz, args.quantbits))
    existing = [p for p in targets if os.path.exists(p)]
    if existing and not args.force:
        raise cli.BadInput(f"{existing[0]} exists (bins of some model); pass --force to replace "
                           "it, or --bins DIR to write elsewhere")
    try:
        if args.dataset == "imagenetcrop":
            train = training_patches(args.data_root, args.samples_per_bin << args.quantbits,
                                     args.seed)
        else:
            train = pad_to_model(args.dataset, load_images(args.dataset, "train", args.data_root,
                                                           download=args.download))
    except DataNotFoundError as exc:
        raise cli.BadInput(str(exc)) from None
    bins = derive_bins(model.net, train, args.quantbits, args.samples_per_bin, args.batch,
                       args.seed, progress=not args.no_progress)
    bins.weights_fingerprint = model.weights_fingerprint
    paths = [] if args.compact_only else list(bins.save(out, args.dataset))
    paths.append(bins.save_ranges(targets[0]))
    print(f"wrote {', '.join(paths)} (bins of {model.source}, weights fingerprint "
          f"{model.weights_fingerprint[:12]})")


def main(argv=None):
    args = parse_args(argv)
    return cli.run_main("discretization.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
