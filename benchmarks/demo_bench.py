"""Time image_compress / image_decompress's library path on one photo.

    python benchmarks/demo_bench.py [PHOTO] [--model DIR | --random] [--repeats 3]

--random builds a random-init model of the demo's size (xs (3,32,32), nz 4,
zchannels 8, width 64, nprocessing 4, resdepth 8) in a temp folder: the
networks cost the same as a trained one's, the rate is meaningless.
Prints median seconds for compress and decompress and the bits/dim.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils import imagecodec  # noqa: E402

DEMO_SIZE = dict(xs=(3, 32, 32), nz=4, zchannels=8, width=64, nprocessing=4, resdepth=8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photo", nargs="?", default=os.path.join(imagecodec.REPO_ROOT, "samples", "chelsea.png"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    image, mode = imagecodec.load_image(args.photo)
    with tempfile.TemporaryDirectory() as tmp:
        path = imagecodec.random_model_dir(tmp, **DEMO_SIZE) if args.random else args.model
        model = imagecodec.load_model(path, "cpu")
        enc, dec = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = imagecodec.compress(image, mode, model)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            decoded, _ = imagecodec.decompress(result.data, model)
            dec.append(time.perf_counter() - t)
            assert np.array_equal(decoded, image)
    h, w, _ = image.shape
    print(f"{os.path.basename(args.photo)} {w}x{h} {mode}, model {model.name}, {result.blocks} blocks")
    print(f"compress   median {statistics.median(enc):.2f} s  ({args.repeats} runs)")
    print(f"decompress median {statistics.median(dec):.2f} s")
    print(f"bits/dim {8 * len(result.data) / image.size:.3f} (file), initial bits {result.initial_bits}, "
          f"lane heads {result.head_bits} bits")


if __name__ == "__main__":
    main()
