"""A container written once, on one machine, by an earlier version of the
code (tests/data/stored_file: a tiny random-init package and a Bit-Swap
coded crop of samples/chelsea.png; host.json says where it was made).

Decoding it on whatever machine runs the suite checks what the round-trip
tests cannot: that the probability tables do not depend on the CPU (SIMD
level, core type) and that the stored format still reads.  Re-encoding the
crop here must give the same bytes: same tables, same fragile-output list.
"""
import json
import os

import numpy as np

from utils import container, imagecodec, images

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stored_file")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _crop():
    with open(os.path.join(HERE, "host.json")) as f:
        host = json.load(f)
    image, mode = images.load_image(os.path.join(REPO, "samples", "chelsea.png"))
    (r0, r1), (c0, c1) = host["crop_rows"], host["crop_cols"]
    return np.ascontiguousarray(image[r0:r1, c0:c1]), mode, host


def _stored():
    with open(os.path.join(HERE, "crop.bsw"), "rb") as f:
        return f.read()


def test_the_stored_file_decodes_here_to_the_crop():
    crop, mode, host = _crop()
    data = _stored()
    assert len(data) == host["file_bytes"]
    header, _ = container.unpack(data)
    assert header["storage"] == "bitswap" and (header["height"], header["width"]) == crop.shape[:2]
    model = imagecodec.load_codec_model(os.path.join(HERE, "model"), "cpu")   # hashes checked
    assert model.name == "stored-file-fixture"
    decoded, back_mode = imagecodec.decompress(data, model)
    assert back_mode == mode and np.array_equal(decoded, crop)


def test_encoding_the_crop_here_gives_the_stored_bytes():
    crop, mode, host = _crop()
    model = imagecodec.load_codec_model(os.path.join(HERE, "model"), "cpu")
    result = imagecodec.compress(crop, mode, model, fallback=False)
    assert result.message_bits == host["message_bits"]
    assert result.data == _stored()

