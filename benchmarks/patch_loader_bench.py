"""How fast the imagenetcrop training loader serves random 32x32 patches of a
photo folder: decoding every file once (the cache the training script fills
when --patches-per-image > 1) against decoding the file for every patch.
Not a test: run it and quote the figures.

  python benchmarks/patch_loader_bench.py [--data-root data/photos --batches 100 --workers 0]
"""
import os
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from utils import cli  # noqa: E402
from utils.data import RandomPatches, training_datasets  # noqa: E402


def patches_per_second(dataset, batch, batches, workers):
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers,
                        sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
    start, n = time.perf_counter(), 0
    for k, (x, _) in enumerate(loader):
        n += x.shape[0]
        if k + 1 == batches:
            break
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = cli.parser("patch_loader_bench.py", __doc__.split("\n")[0])
    p.add_argument("--data-root", default="data/photos")
    p.add_argument("--patches-per-image", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=100, help="batches timed per variant")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    train, test = training_datasets("imagenetcrop", args.data_root,
                                    patches_per_image=args.patches_per_image)
    load_s = time.perf_counter() - start
    pixels = sum(img.shape[1] * img.shape[2] for img in train.cache.values())
    print(f"{len(train.files)} training files, {pixels / 1e6:.1f} Mpixels, {len(test)} test patches: "
          f"decoded and cached in {load_s:.1f} s")
    cached = patches_per_second(train, args.batch, args.batches, args.workers)
    uncached = patches_per_second(RandomPatches(train.files, per_image=args.patches_per_image,
                                                cache=False),
                                  args.batch, max(1, args.batches // 10), args.workers)
    epoch = len(train)
    print(f"random patches/s, {args.workers} workers: cached {cached:,.0f}, decoding the file for "
          f"every patch {uncached:,.0f}")
    print(f"an epoch of {epoch:,} patches ({args.patches_per_image} per file): "
          f"{epoch / cached:.0f} s of loading cached (plus {load_s:.0f} s once), "
          f"{epoch / uncached:.0f} s decoding per patch")
    return dict(load_s=load_s, cached=cached, uncached=uncached)


if __name__ == "__main__":
    main()
