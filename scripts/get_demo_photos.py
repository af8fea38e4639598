"""Collect the natural photos that exist offline here into a train / held-out split.

The shipped demo model (image_compress.py) is trained on random 32x32 patches
of these photos. Sources: Debian's ``mate-backgrounds`` nature photos
(/usr/share/backgrounds/mate/nature/*.jpg, install with
``apt-get install mate-backgrounds``) and the colour photos bundled with
scikit-image (``pip install scikit-image``). The large wallpapers are
downscaled (Lanczos) so the longer side is at most ``--max-side`` pixels,
which brings their statistics nearer to ordinary photos; everything is
written as lossless PNG:

    ROOT/train/*.png      training photos
    ROOT/heldout/*.png    photos never seen in training (bits/dim is reported on these)

    python scripts/get_demo_photos.py --root data/photos
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image

MATE_DIR = "/usr/share/backgrounds/mate/nature"
HELDOUT_MATE = {"Dune", "LadyBird"}
TRAIN_SKIMAGE = ("rocket", "coffee")
HELDOUT_SKIMAGE = ("astronaut", "chelsea")


def save_png(array, path):
    tmp = path + ".part"
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/photos")
    ap.add_argument("--max-side", type=int, default=640)
    args = ap.parse_args(argv)
    for split in ("train", "heldout"):
        os.makedirs(os.path.join(args.root, split), exist_ok=True)

    mate = sorted(glob.glob(os.path.join(MATE_DIR, "*.jpg")))
    if not mate:
        sys.exit(f"error: no photos in {MATE_DIR}; run: apt-get install mate-backgrounds")
    for path in mate:
        name = os.path.splitext(os.path.basename(path))[0]
        img = Image.open(path).convert("RGB")
        img.thumbnail((args.max_side, args.max_side), Image.LANCZOS)
        split = "heldout" if name in HELDOUT_MATE else "train"
        save_png(np.asarray(img), os.path.join(args.root, split, f"mate_{name}.png"))
    try:
        import skimage.data
    except ImportError:
        sys.exit("error: scikit-image is needed for its bundled photos: pip install scikit-image")
    for split, names in (("train", TRAIN_SKIMAGE), ("heldout", HELDOUT_SKIMAGE)):
        for name in names:
            save_png(getattr(skimage.data, name)(), os.path.join(args.root, split, f"skimage_{name}.png"))
    for split in ("train", "heldout"):
        files = sorted(os.listdir(os.path.join(args.root, split)))
        print(f"{split}: {len(files)} photos in {os.path.join(args.root, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
