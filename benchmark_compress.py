"""Classical and modern lossless codecs on exactly the paper's test images.

    python benchmark_compress.py mnist   [--data-root data] [--download]
    python benchmark_compress.py cifar   [--data-root data] [--download]
    python benchmark_compress.py imagenet [--data-root data]          # .npy 32x32
    python benchmark_compress.py imagenetcrop [--folder DIR]          # full-size
    python benchmark_compress.py folder DIR                           # any images
    common: --experiments N --images N --seed S --codecs gzip,webp,... --out F.json

Protocol (utils/protocol.py, shared with the Bit-Swap compress scripts):
32x32 datasets: E experiments of n test images drawn without replacement with
seed 100; byte-stream codecs (gzip, bzip2, LZMA) compress the n images of an
experiment as one stream, image codecs compress each image and the sizes are
summed. Full-size folders: each experiment is one image (the first usable ones
in a seeded draw), cropped to multiples of 32. Reported: bits/dim (bits per
pixel per channel of the coded images; MNIST is 28x28 = 784 dims) mean and
std over experiments, per codec, every size verified by decoding.
Exit status: 0 ok, 1 a codec failed on the data, 2 bad input (one-line error).
"""
import argparse
import json
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from utils import cli, codecs, protocol  # noqa: E402
from utils.cli import BadInput  # noqa: E402
from utils.data import DataNotFoundError, load_image_folder, load_images  # noqa: E402

# Published figures with this protocol: the reference code on the MNIST test
# set (28x28), and the paper's full-size ImageNet table (docs/design.md).
REFERENCE_BITS_PER_DIM = {
    "mnist": {"gzip": 1.65, "bzip2": 1.59, "lzma": 1.49, "webp": 2.10},
    "imagenetcrop": {"gzip": 5.96, "bzip2": 5.07, "lzma": 5.09, "png": 4.71, "webp": 3.66},
}
DATASET_LABELS = {"mnist": "MNIST", "cifar": "CIFAR-10", "imagenet": "ImageNet 32x32",
                  "imagenetcrop": "full-size ImageNet", "folder": "image folder"}


# ------------------------------------------------------------ experiments

def experiments_32x32(args):
    """List of (N, H, W, C) batches, one per experiment, plus selection info."""
    try:
        data = load_images(args.dataset, args.split, args.data_root, download=args.download)
    except DataNotFoundError as exc:
        raise BadInput(str(exc)) from exc
    select = (protocol.reference_benchmark_selection if args.selection == "reference"
              else protocol.select_experiments)
    try:
        indices = select(len(data), args.experiments, args.images, args.seed)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    batches = [np.ascontiguousarray(data[row].transpose(0, 2, 3, 1)) for row in indices]
    return batches, {"selection": args.selection, "indices": indices.tolist()}


def _load_folder_counting_skips(folder):
    """load_image_folder, with its per-file warnings echoed and counted."""
    if not os.path.isdir(folder):
        raise BadInput(f"image folder {folder} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            images = load_image_folder(folder, rgb=False)
        except DataNotFoundError as exc:
            raise BadInput(str(exc)) from exc
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return images, len(caught)


def experiments_full_size(args):
    """One experiment per image: the first ``--experiments`` usable images in
    the seeded draw order, cropped to multiples of 32, as (1, H, W, C)."""
    folder = args.folder
    images, unreadable = _load_folder_counting_skips(folder)
    if not images:
        raise BadInput(f"no readable images in {folder}"
                       + (f" ({unreadable} unreadable files skipped)" if unreadable else ""))
    want_rgb = args.dataset == "imagenetcrop"   # the paper used 3-channel images only
    chosen, names, skipped = [], [], {"not RGB": 0, "smaller than 32x32": 0}
    for i in protocol.full_size_order(len(images), seed=args.seed):
        image = images[i]
        if want_rgb and image.shape[0] != 3:
            skipped["not RGB"] += 1
            continue
        try:
            cropped = protocol.crop_to_multiple(image)
        except ValueError:
            skipped["smaller than 32x32"] += 1
            continue
        chosen.append(np.ascontiguousarray(cropped.transpose(1, 2, 0))[None])
        names.append(int(i))
        if len(chosen) == args.experiments:
            break
    if not chosen:
        raise BadInput(f"no usable images in {folder} (skipped: {skipped})")
    if len(chosen) < args.experiments:
        print(f"warning: only {len(chosen)} usable images in {folder} "
              f"(asked for {args.experiments})", file=sys.stderr)
    info = {"selection": "full-size", "image_indices": names, "unreadable_files": unreadable,
            "skipped": skipped, "shapes": [list(b.shape[1:]) for b in chosen]}
    return chosen, info


# -------------------------------------------------------------- measuring

def run_codecs(batches, names, progress=True):
    """bits/dim per experiment for each codec; failures recorded, not hidden."""
    from tqdm import tqdm
    per_exp = {name: [] for name in names}
    failed = {}
    for batch in tqdm(batches, desc="experiments", disable=not progress, file=sys.stderr):
        live = [n for n in names if n not in failed]
        for name in live:
            try:
                bits = codecs.measure(batch, [name])[name]
            except codecs.CodecError as exc:
                failed[name] = str(exc)
                continue
            per_exp[name].append(codecs.bits_per_dim(bits, batch))
    return per_exp, failed


FULL_PROTOCOL = {"mnist": "100 experiments x 100 test images, seed 100",
                 "imagenetcrop": "100 full-size images"}


def full_protocol(args, result):
    """Did this run measure what the published figures measured?"""
    if args.dataset == "mnist":
        return (result["experiments"] == protocol.EXPERIMENTS and result["split"] == "test"
                and result["images_per_experiment"] == protocol.IMAGES and args.seed == protocol.SEED)
    if args.dataset == "imagenetcrop":
        return result["experiments"] == 100
    return False


def summarize(args, batches, per_exp, failed, unavailable, info):
    dims = [int(b[0].size) for b in batches]
    result = {
        "dataset": args.dataset, "split": getattr(args, "split", None),
        "experiments": len(batches), "images_per_experiment": int(len(batches[0])),
        "seed": args.seed, "dims_per_image": dims[0] if len(set(dims)) == 1 else dims,
        "codecs": {}, **info,
    }
    # published figures belong to the full protocol only: beside a smaller
    # run they would compare different things
    full = full_protocol(args, result)
    reference = REFERENCE_BITS_PER_DIM.get(args.dataset, {}) if full else {}
    result["reference"] = ("published figures of the same protocol" if full and
                           args.dataset in REFERENCE_BITS_PER_DIM else
                           "none for this dataset" if args.dataset not in REFERENCE_BITS_PER_DIM
                           else "omitted: published figures are for the full protocol "
                                f"({FULL_PROTOCOL[args.dataset]})")
    for name in args.codecs:
        codec = codecs.CODECS[name]
        entry = {"label": codec.label, "in_paper": codec.in_paper,
                 "kind": "per image" if codec.per_image else "one stream per experiment",
                 "reference_bits_per_dim": reference.get(name)}
        if name in unavailable:
            entry.update(status="unavailable", reason=unavailable[name])
        elif name in failed:
            entry.update(status="failed", reason=failed[name])
        else:
            values = np.asarray(per_exp[name])
            entry.update(status="ok", bits_per_dim_mean=float(values.mean()),
                         bits_per_dim_std=float(values.std()),
                         compression_ratio=float(8.0 / values.mean()),
                         bits_per_dim=values.tolist())
        result["codecs"][name] = entry
    return result


def format_table(result):
    label = DATASET_LABELS[result["dataset"]]
    head = (f"{label}: {result['experiments']} experiments x "
            f"{result['images_per_experiment']} images, seed {result['seed']}")
    if isinstance(result["dims_per_image"], int):
        head += f", {result['dims_per_image']} dims/image"
    unit = ("bits/px", "bits per pixel of the 28x28 image") if result["dataset"] == "mnist" else \
        ("bits/dim", "bits per 8-bit sample (pixel x channel)")
    lines = [head + f"; {unit[0]} = {unit[1]}; reference: {result['reference']}",
             f"{'codec':<20}{unit[0]:>9}{'std':>8}{'ratio':>8}{'reference':>11}"]
    for entry in result["codecs"].values():
        ref = entry["reference_bits_per_dim"]
        ref = f"{ref:>11.2f}" if ref is not None else f"{'':>11}"
        if entry["status"] == "ok":
            lines.append(f"{entry['label']:<20}{entry['bits_per_dim_mean']:>9.3f}"
                         f"{entry['bits_per_dim_std']:>8.3f}"
                         f"{entry['compression_ratio']:>7.2f}x{ref}")
        else:
            lines.append(f"{entry['label']:<20}  {entry['status']}: {entry['reason']}")
    if result["dataset"] == "mnist":
        lines.append("(Bit-Swap codes MNIST padded to 32x32: multiply its bits/dim by 1024/784 "
                     "to compare)")
    return "\n".join(lines)


# -------------------------------------------------------------------- CLI

def parse_args(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--experiments", type=int, default=protocol.EXPERIMENTS,
                        help="number of experiments (full-size: number of images)")
    common.add_argument("--seed", type=int, default=protocol.SEED)
    common.add_argument("--codecs", default=",".join(codecs.codec_names()),
                        help="comma-separated subset of: " + ", ".join(codecs.codec_names()))
    common.add_argument("--out", help="write the results as JSON here")
    common.add_argument("--no-progress", action="store_true")
    small = argparse.ArgumentParser(add_help=False)
    small.add_argument("--images", type=int, default=protocol.IMAGES,
                       help="test images per experiment")
    small.add_argument("--data-root", default="data")
    small.add_argument("--split", default="test", choices=["test", "train"])
    small.add_argument("--download", action="store_true",
                       help="download MNIST/CIFAR-10 through torchvision if missing")
    small.add_argument("--selection", default="compress", choices=["compress", "reference"],
                       help="compress: the images the Bit-Swap compress scripts code "
                            "(default); reference: the reference benchmark's redraws")

    parser = cli.parser("benchmark_compress.py", __doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    for name in ("mnist", "cifar", "imagenet"):
        sub.add_parser(name, parents=[common, small], formatter_class=cli.HelpFormatter, help=f"{DATASET_LABELS[name]} test set")
    crop = sub.add_parser("imagenetcrop", parents=[common], formatter_class=cli.HelpFormatter,
                          help="full-size ImageNet images from a folder, cropped to x32")
    crop.add_argument("--data-root", default="data")
    crop.add_argument("--folder", help="default: DATA_ROOT/imagenetcrop/test")
    folder = sub.add_parser("folder", parents=[common], formatter_class=cli.HelpFormatter,
                            help="any folder of images, cropped to x32")
    folder.add_argument("folder")
    args = parser.parse_args(argv)
    if args.dataset == "imagenetcrop" and not args.folder:
        args.folder = os.path.join(args.data_root, "imagenetcrop", "test")
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in args.codecs if c not in codecs.CODECS]
    if unknown:
        parser.error(f"unknown codec(s) {', '.join(unknown)}; "
                     f"known: {', '.join(codecs.codec_names())}")
    if args.experiments < 1 or getattr(args, "images", 1) < 1:
        parser.error("--experiments and --images must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    return cli.run_main("benchmark_compress.py", lambda: run(args))


def run(args):
    if args.dataset in ("imagenetcrop", "folder"):
        batches, info = experiments_full_size(args)
    else:
        batches, info = experiments_32x32(args)
    unavailable = {n: r for n, r in codecs.unavailable_codecs().items() if n in args.codecs}
    usable = [n for n in args.codecs if n not in unavailable]
    per_exp, failed = run_codecs(batches, usable, progress=not args.no_progress)
    result = summarize(args, batches, per_exp, failed, unavailable, info)
    print(format_table(result))
    if args.out:
        cli.write_atomic(args.out, json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
