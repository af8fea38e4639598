"""Folder of 32x32 images (Downsampled ImageNet PNGs) -> one .npy dataset.

Usage:
  python create_imagenet.py train_32x32/ data/imagenet/train_32x32.npy
  python create_imagenet.py valid_32x32/ data/imagenet/test_32x32.npy

The output is uint8 (N, 32, 32, 3), images in sorted file-name order, the
layout `utils/data.py` reads (`--data-root data` then finds it). Every image
is checked: it must decode and be exactly --size x --size (grey and palette
images are converted to RGB). The .npy is written to a temporary file and
renamed, so an interrupted run leaves no partial dataset.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from utils import cli  # noqa: E402


def convert(src, dst, size=32, progress=True):
    """Read every image under `src` and write them to `dst` (.npy); returns N."""
    from tqdm import tqdm

    from utils.data import list_image_files, read_image
    files = list_image_files(src, dataset="imagenet")
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc="images", disable=not progress, unit="img")):
        try:
            img = read_image(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot decode image ({e})") from None
        if img.shape[1:] != (size, size):
            raise ValueError(f"{path}: image is {img.shape[2]}x{img.shape[1]}, expected "
                             f"{size}x{size} (use --size, or resize the dataset first)")
        out[i] = img.transpose(1, 2, 0)
    with cli.atomic_output(dst) as f:
        np.save(f, out)
    return len(files)


def main(argv=None):
    p = cli.parser("create_imagenet.py", __doc__.split("\n\n")[0])
    p.add_argument("src", help="folder of square images (searched recursively)")
    p.add_argument("dst", help="output .npy file")
    p.add_argument("--size", type=int, default=32, help="image side every file must have")
    cli.add_progress_argument(p)
    args = p.parse_args(argv)

    def work():
        from utils.data import DataNotFoundError
        if not args.dst.endswith(".npy"):
            raise cli.BadInput("the output file must end in .npy")
        try:
            n = convert(args.src, args.dst, args.size, progress=not args.no_progress)
        except (DataNotFoundError, ValueError, OSError) as e:
            raise cli.BadInput(str(e)) from None
        print(f"wrote {n} images of {args.size}x{args.size} to {args.dst}")

    return cli.run_main("create_imagenet.py", work)


if __name__ == "__main__":
    sys.exit(main())
