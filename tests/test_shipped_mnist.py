"""The shipped MNIST packages (models/mnist-nz{2,4,8}/, model/package.py):
intact (SHA-256 and weights fingerprint recorded in model.json and checked
on load: one flipped byte is refused), described (dataset, architecture,
weights kind, training budget and hardware), float16, carrying bins derived
from these weights, and coding losslessly with Bit-Swap and BB-ANS."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import package
from model.hvae import HVAE
from utils import ans
from utils.bitsback import BitsBackCoder, restored_initial_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digit_like(n, seed=0):
    """Thin bright strokes on black, padded like MNIST (uint8, n x 1 x 32 x 32)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 32, 32), np.uint8)
    for image in images:
        y, x = rng.integers(6, 18, 2)
        image[0, y:y + 10, x:x + 3] = 255
        image[0, y, x:x + 8] = rng.integers(128, 256, 8)
    return images


@pytest.mark.parametrize("nz", [2, 4, 8])
def test_shipped_package_is_intact_described_and_fits_its_bins(nz):
    folder = os.path.join(ROOT, "models", f"mnist-nz{nz}")
    desc = json.load(open(os.path.join(folder, "model.json")))
    assert desc["format"] == package.FORMAT and desc["dataset"] == "mnist"
    assert desc["weights"]["dtype"] == "float16" and desc["weights"]["kind"] in ("ema", "raw")
    assert package.file_sha256(os.path.join(folder, desc["weights"]["file"])) == desc["weights"]["sha256"]
    assert package.file_sha256(os.path.join(folder, desc["bins"]["file"])) == desc["bins"]["sha256"]
    state = load_file(os.path.join(folder, desc["weights"]["file"]))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert package.weights_fingerprint(state) == desc["weights"]["fingerprint"]
    arch = HVAE.architecture_from_state_dict(state)
    assert arch == desc["architecture"] == desc["training"]["architecture"] and arch["nz"] == nz
    t = desc["training"]
    assert t["steps"] > 0 and t["images_seen"] > 0 and t["hardware"] and t["device"] == "cpu"
    model = package.load(f"mnist-nz{nz}", dataset="mnist", nz=nz, quantbits=10)
    # the float16 tensors load unchanged (exactly representable in float32)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, state[k].float()), k
    assert model.bins.weights_fingerprint == model.weights_fingerprint
    BitsBackCoder(model.net, model.bins)        # refuses bins of another shape


def test_a_flipped_byte_in_a_shipped_package_is_refused(tmp_path):
    copy = tmp_path / "mnist-nz2"
    shutil.copytree(os.path.join(ROOT, "models", "mnist-nz2"), copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(package.ModelError, match="does not match the SHA-256") as info:
        package.load(str(copy))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bitswap", [True, False])
def test_shipped_nz8_codes_losslessly(bitswap):
    model = package.load("mnist-nz8", dataset="mnist")
    coder = BitsBackCoder(model.net, model.bins, bitswap=bitswap)
    images = digit_like(4).reshape(2, 2, 1, 32, 32)     # 2 steps x 2 chains
    message = ans.Message.random(2, 0, seed=1, underflow_seed=2)
    initial = message.copy()
    for step in images:
        coder.encode(message, step)
    encoded = message.copy()
    received = ans.Message.from_bytes(message.to_bytes())
    for j in reversed(range(2)):
        np.testing.assert_array_equal(coder.decode(received, 2), images[j])
    assert received == restored_initial_message(initial, encoded.borrowed_words)
