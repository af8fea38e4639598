"""Writes the stored-file fixture: a tiny random-init package (float16, 8-bit
bins) and a container of a crop of samples/chelsea.png that it codes with
Bit-Swap (every complete block, partial strips with the pixel model).

The files are committed and never rewritten by the tests: they were coded on
one machine (see host.json) and tests/test_stored_file.py decodes them on
whatever machine runs the suite, with whatever version of the code is
current.  Rerun this only when the container format changes on purpose.

    .venv/bin/python tests/data/stored_file/make.py
"""
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, REPO)

import numpy as np                                       # noqa: E402
import torch                                             # noqa: E402

from model import package                                # noqa: E402
from utils import imagecodec, images                     # noqa: E402

TINY = dict(xs=(3, 32, 32), nz=2, zchannels=2, width=8, nprocessing=1, resdepth=2)
CROP = (slice(100, 170), slice(200, 298))                # 2x3 complete blocks, 6 rows and 2 columns of strips


def main():
    model_dir = package.random_package(os.path.join(HERE, "model"), quantbits=8, seed=7,
                                       name="stored-file-fixture", **TINY)
    model = imagecodec.load_codec_model(model_dir, "cpu")
    image, mode = images.load_image(os.path.join(REPO, "samples", "chelsea.png"))
    crop = np.ascontiguousarray(image[CROP])
    result = imagecodec.compress(crop, mode, model, fallback=False)
    assert result.storage == "bitswap"
    with open(os.path.join(HERE, "crop.bsw"), "wb") as f:
        f.write(result.data)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    host = dict(machine=platform.machine(), processor=platform.processor(),
                torch=torch.__version__, numpy=np.__version__,
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                avx512f="avx512f" in flags, avx2=" avx2" in flags,
                crop_rows=[CROP[0].start, CROP[0].stop], crop_cols=[CROP[1].start, CROP[1].stop],
                message_bits=int(result.message_bits), file_bytes=len(result.data))
    with open(os.path.join(HERE, "host.json"), "w") as f:
        json.dump(host, f, indent=1)
    print(json.dumps(host))


if __name__ == "__main__":
    main()
