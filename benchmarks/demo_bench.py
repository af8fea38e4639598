"""The demo codec on photos: bits/dim next to PNG / WebP / JPEG XL, and time.

    python benchmarks/demo_bench.py [PHOTO|FOLDER ...] [--model demo | --random] [--repeats 1]

For every photo (folders are expanded): compress with the demo codec
(utils/imagecodec.py, the library path of image_compress.py), decompress,
check the pixels, and report the container's size in bits/dim (everything
counted: header, initial bits, lane heads) beside PNG (IDAT payload), WebP
lossless and JPEG XL lossless from utils/codecs.py, plus median seconds.
--random builds a random-init model of a demo size in a temp folder: the
networks cost about the same as a trained one's, the rate is meaningless.
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from model import package  # noqa: E402
from utils import cli, codecs, imagecodec, images  # noqa: E402
from utils.data import list_image_files  # noqa: E402

DEMO_SIZE = dict(xs=(3, 32, 32), nz=2, zchannels=8, width=64, nprocessing=2, resdepth=4,
                 conditional_xscale=True)
BASELINES = ("png", "webp", "jpegxl")


def photos_from(paths):
    out = []
    for p in paths:
        out.extend(list_image_files(p) if os.path.isdir(p) else [p])
    return out


def main(argv=None):
    ap = cli.parser("demo_bench.py", __doc__.split("\n")[0])
    ap.add_argument("photos", nargs="*",
                    default=[os.path.join(package.REPO_ROOT, "samples", "chelsea.png")])
    ap.add_argument("--model", default="demo", help="model package folder or shipped name")
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = package.random_package(tmp, **DEMO_SIZE) if args.random else args.model
        model = imagecodec.load_codec_model(path, "cpu")
        print(f"model {model.name} ({model.identity[:12]}); sizes in bits/dim (bits per 8-bit "
              "sample, whole files), times in seconds")
        print(f"{'photo':28s} {'size':>9s} {'Bit-Swap':>9s} " + " ".join(f"{n:>8s}" for n in BASELINES)
              + f" {'enc s':>7s} {'dec s':>7s}")
        totals = dict(dims=0, bitswap=0, **{n: 0 for n in BASELINES})
        for photo in photos_from(args.photos):
            image, mode = images.load_image(photo)
            enc, dec = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                result = imagecodec.compress(image, mode, model)
                enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                decoded, _ = imagecodec.decompress(result.data, model)
                dec.append(time.perf_counter() - t)
                if not np.array_equal(decoded, image):
                    sys.exit(f"error: {photo} did not decode to the same pixels")
            base = codecs.measure_image(image, BASELINES)
            h, w = image.shape[:2]
            totals["dims"] += image.size
            totals["bitswap"] += 8 * len(result.data)
            for n in BASELINES:
                totals[n] += base[n] or 0
            print(f"{os.path.basename(photo)[:28]:28s} {f'{w}x{h}':>9s} {8 * len(result.data) / image.size:9.3f} "
                  + " ".join(f"{(base[n] or float('nan')) / image.size:8.3f}" for n in BASELINES)
                  + f" {statistics.median(enc):7.1f} {statistics.median(dec):7.1f}")
        d = totals["dims"]
        print(f"{'all (bits/dim over all pixels)':28s} {'':>9s} {totals['bitswap'] / d:9.3f} "
              + " ".join(f"{totals[n] / d:8.3f}" for n in BASELINES))


if __name__ == "__main__":
    main()
