"""The shipped MNIST checkpoints (models/mnist/) and their bins (bins/):
intact (SHA-256 recorded beside each), loadable unchanged by HVAE, described
by their JSON, matched by the bins, and coding losslessly with Bit-Swap and
BB-ANS."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from model.hvae import HVAE
from utils import ans
from utils.bins import LatentBins
from utils.bitsback import BitsBackCoder, restored_initial_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shipped(nz):
    path = os.path.join(ROOT, "models", "mnist", f"mnist_nz{nz}.pt")
    with open(os.path.splitext(path)[0] + ".json") as f:
        meta = json.load(f)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, meta, digest


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
def test_shipped_checkpoint_is_intact_and_fits_its_bins(nz):
    state, meta, digest = shipped(nz)
    assert digest == meta["sha256"] and meta["dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in state.values())
    arch = HVAE.architecture_from_state_dict(state)
    assert arch == meta["training"]["architecture"] and arch["nz"] == nz
    assert meta["training"]["steps"] > 0 and meta["training"]["images_seen"] > 0
    model = HVAE(**arch)
    model.load_state_dict(state)             # the authors' layout, no converter
    bins = LatentBins.load(os.path.join(ROOT, "bins"), "mnist", nz, 10)
    BitsBackCoder(model.eval(), bins)        # refuses bins of another shape


@pytest.mark.parametrize("bitswap", [True, False])
def test_shipped_nz8_codes_losslessly(bitswap):
    state, _, _ = shipped(8)
    model = HVAE(**HVAE.architecture_from_state_dict(state))
    model.load_state_dict(state)
    coder = BitsBackCoder(model.eval(), LatentBins.load(os.path.join(ROOT, "bins"), "mnist", 8, 10),
                          bitswap=bitswap)
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
