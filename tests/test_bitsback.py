"""Bit-Swap and BB-ANS (utils/bitsback.py) on tiny models: lossless round
trips, exact restoration of the initial message, accounting, and the net
rate of a briefly trained model against its -ELBO."""
import numpy as np
import pytest
import torch

from discretization import derive_bins
from model.hvae import HVAE
from utils import ans
from utils.bins import LatentBins
from utils.bitsback import BitsBackCoder, restored_initial_message
from utils.experiment import DecodeMismatch, code_chains

RNG = np.random.default_rng(3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n, c=1, size=32):
    """Synthetic images with structure (a bright blob on black), uint8 (n, c, 32, 32)."""
    images = np.zeros((n, c, size, size), np.uint8)
    for image in images:
        y, x = RNG.integers(4, size - 12, 2)
        image[:, y:y + 10, x:x + 8] = RNG.integers(120, 256, (c, 10, 8))
    return images


def tiny_model(nz, xs=(1, 32, 32), zchannels=1, seed=0, **kw):
    torch.manual_seed(seed)
    model = HVAE(xs=xs, nz=nz, zchannels=zchannels, width=8, nprocessing=1, resdepth=2, **kw)
    model.initialize(torch.as_tensor(blobs(16, xs[0]), dtype=torch.float32))
    return model.eval()


def tiny_bins(model, quantbits=8):
    """Bins the real way (prior top layer, equal-width below from samples)."""
    return derive_bins(model, blobs(64, model.xs[0]), quantbits, samples_per_bin=1, progress=False)


def round_trip(coder, images, message):
    """Encode images (steps, B, ...) then decode; returns (encoded message, decoded message)."""
    for step in images:
        coder.encode(message, step)
    encoded = message.copy()
    received = type(message).from_bytes(message.to_bytes())
    for j in reversed(range(len(images))):
        np.testing.assert_array_equal(coder.decode(received, images.shape[1]), images[j])
    return encoded, received


@pytest.mark.parametrize("nz", [1, 2, 4])
@pytest.mark.parametrize("bitswap", [True, False])
def test_lossless_round_trip_restores_initial_message(nz, bitswap):
    model = tiny_model(nz)
    coder = BitsBackCoder(model, tiny_bins(model), bitswap=bitswap)
    images = blobs(3 * 4).reshape(3, 4, 1, 32, 32)
    message = ans.Message.random(4, 0, seed=5, underflow_seed=11)
    initial = message.copy()
    encoded, decoded = round_trip(coder, images, message)
    assert (encoded.borrowed_words > 0).all()
    assert decoded == restored_initial_message(initial, encoded.borrowed_words)


def test_interleaved_single_chain_images_one_after_another():
    """One chain (B = 1) on one interleaved message, as the demo codec chains blocks."""
    model = tiny_model(2, xs=(3, 32, 32), zchannels=2)
    bins = tiny_bins(model)
    for bitswap in (True, False):
        coder = BitsBackCoder(model, bins, bitswap=bitswap)
        message = ans.InterleavedMessage.random(32, 2000, seed=1)
        initial = message.copy()
        _, decoded = round_trip(coder, blobs(3, 3).reshape(3, 1, 3, 32, 32), message)
        assert decoded == initial


def test_lanes_are_independent_chains():
    """A chain's message does not depend on what the other lanes code."""
    model = tiny_model(2)
    coder = BitsBackCoder(model, tiny_bins(model))
    a, b = blobs(2), blobs(2)
    both = ans.Message.random(2, 0, seed=3, underflow_seed=4)
    coder.encode(both, np.stack([a[0], b[0]]))
    single = ans.Message.random(2, 0, seed=3, underflow_seed=4)
    coder.encode(single, np.stack([a[0], b[1]]))
    np.testing.assert_array_equal(both.stack(0), single.stack(0))
    assert both.head[0] == single.head[0]


def test_accounting_is_exact_and_bbans_needs_more_initial_bits():
    model = tiny_model(4)
    bins = tiny_bins(model)
    images = blobs(2 * 3).reshape(2, 3, 1, 32, 32)
    res = {}
    for bitswap in (True, False):
        r = code_chains(BitsBackCoder(model, bins, bitswap=bitswap), images)
        dims = 1024
        # total = initial bits + sum of nets; CMA = total / (dims * images so far)
        np.testing.assert_allclose(r["total"], r["initial"] + np.cumsum(r["nets"], 1) * dims)
        np.testing.assert_allclose(r["cmas"], r["total"] / (dims * np.arange(1, 4)))
        np.testing.assert_allclose(r["elbos"], r["terms"].sum(2))
        res[bitswap] = r
    assert (res[False]["initial"][:, 0] > 2 * res[True]["initial"][:, 0]).all()
    assert (res[False]["cmas"][:, 0] > res[True]["cmas"][:, 0]).all()


def test_decode_mismatch_names_experiment_and_image_and_keeps_bitstream(tmp_path):
    model = tiny_model(1)

    class Broken(BitsBackCoder):
        def decode(self, message, batch):
            x = super().decode(message, batch)
            x[1, 0, 0, 0] ^= 1
            return x

    images = blobs(4).reshape(2, 2, 1, 32, 32)
    with pytest.raises(DecodeMismatch, match=r"experiment 8, image 1 .*kept in"):
        code_chains(Broken(model, tiny_bins(model)), images, first_experiment=7,
                    bitstream_dir=str(tmp_path))
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and ans.Message.from_bytes(kept[0].read_bytes()).lanes == 2


def test_bins_must_match_model():
    model = tiny_model(2)
    with pytest.raises(ValueError, match="nz=3"):
        BitsBackCoder(model, LatentBins.prior_only(3, 256, 4))


def test_trained_model_codes_at_its_elbo():
    """Net rate within 1% of -ELBO for a briefly trained model."""
    torch.manual_seed(1)
    model = tiny_model(2, seed=1)
    train = torch.as_tensor(blobs(256), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for step in range(100):
        batch = train[torch.randint(0, len(train), (32,))]
        loss, terms = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(terms["elbo"].detach())
    model.eval()
    bins = derive_bins(model, train.numpy().astype(np.uint8), 10, samples_per_bin=1, progress=False)
    r = code_chains(BitsBackCoder(model, bins), blobs(8 * 4).reshape(8, 4, 1, 32, 32))
    net, elbo = r["nets"].mean(), r["elbos"].mean()
    assert elbo < 0.8 * first                       # it did learn something
    assert abs(net - elbo) / elbo < 0.01, (net, elbo)
    assert (np.diff(r["initial"], axis=1) >= 0).all()
