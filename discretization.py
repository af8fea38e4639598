"""Derive the latent discretization bins of a trained model (DESIGN.md section 4).

    python discretization.py mnist --nz 8 [--quantbits 10] [--params P] [--out bins]

* top layer: 2^q bins of equal mass under the prior Logistic(0, 1);
* lower layers: 30 * 2^q samples of every z_i from the generative model
  (ancestral from the prior) pooled with 30 * 2^q from the inference model on
  training images (a seeded random subset of the whole training set), then 2^q equal-width bins between each dimension's sample
  min and max (scikit-learn KBinsDiscretizer, strategy 'uniform'); centre =
  midpoint.  Only min and max matter for 'uniform', so they are tracked
  while sampling (no need to hold the samples) and the discretizer is fitted
  on those two rows: same edges as fitting on all samples.
imagenetcrop: the training data are fixed 32x32 patches of the photos in
DATA_ROOT/imagenetcrop/train.
Writes ``{out}/{dataset}_nz{nz}_zendpoints{q}.pt`` and ``..._zcentres{q}.pt``
(the authors' format) and the compact ``..._zranges{q}.pt`` (see
utils/bins.py; ``--compact-only`` skips the large authors' files).  Exit
status 2 on bad input.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

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
    """The bins of DESIGN.md section 4 for ``model`` as a LatentBins (with
    its compact ``ranges``)."""
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


def main(argv=None):
    from model.config import DATASETS
    from utils.experiment import BadInput, load_model, pad_to_model
    from utils.data import DataNotFoundError, load_images

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--nz", type=int, required=True)
    p.add_argument("--quantbits", type=int, default=10)
    p.add_argument("--params", default=None, help="checkpoint (default params/{dataset}/nz{nz})")
    p.add_argument("--out", default="bins", help="directory for the bins files")
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--samples-per-bin", type=int, default=SAMPLES_PER_BIN)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compact-only", action="store_true",
                   help="write only the compact ranges file, not the authors' (large) files")
    args = p.parse_args(argv)
    try:
        if not 1 <= args.quantbits <= 16:
            raise BadInput(f"--quantbits must be in [1, 16], got {args.quantbits}")
        params = args.params or os.path.join("params", args.dataset, f"nz{args.nz}")
        model = load_model(args.dataset, args.nz, params, args.device)
        try:
            if args.dataset == "imagenetcrop":
                train = training_patches(args.data_root, args.samples_per_bin << args.quantbits,
                                         args.seed)
            else:
                train = pad_to_model(args.dataset, load_images(args.dataset, "train", args.data_root,
                                                               download=args.download))
        except DataNotFoundError as exc:
            raise BadInput(str(exc)) from None
        bins = derive_bins(model, train, args.quantbits, args.samples_per_bin, args.batch,
                           args.seed, progress=not args.no_progress)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    paths = [] if args.compact_only else list(bins.save(args.out, args.dataset))
    paths.append(bins.save_ranges(ranges_path(args.out, args.dataset, args.nz, args.quantbits)))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
