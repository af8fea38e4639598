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
from utils.experiment import MESSAGE_SEED, DecodeMismatch, code_chains

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


@pytest.mark.parametrize("bitswap", [True, False])
def test_partial_images_code_only_their_real_region(bitswap):
    """real=(rh, rw): the region is coded, its edge replication rebuilt on
    decode; cheaper than coding the replicated pixels; a batch that is not
    the replication of its region is refused."""
    model = tiny_model(2, xs=(3, 32, 32), zchannels=2)
    coder = BitsBackCoder(model, tiny_bins(model), bitswap=bitswap)
    rh, rw = 20, 7
    x = np.pad(blobs(2, 3)[:, :, :rh, :rw], ((0, 0), (0, 0), (0, 32 - rh), (0, 32 - rw)), mode="edge")
    costs = []
    for real in ((rh, rw), None):
        message = ans.Message.random(2, 2000, seed=5)
        initial = message.copy()
        coder.encode(message, x, real=real)
        costs.append(message.bits() - initial.bits())
        np.testing.assert_array_equal(coder.decode(message, 2, real=real), x)
        assert message == initial
    assert 0 < costs[0] < costs[1]
    broken = x.copy()
    broken[:, :, -1, -1] ^= 1
    with pytest.raises(ValueError, match="edge replication"):
        coder.encode(ans.Message.random(2, 2000, seed=5), broken, real=(rh, rw))
    with pytest.raises(ValueError, match="within"):
        coder.encode(ans.Message.random(2, 2000, seed=5), x, real=(33, 1))


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


def test_accounting_is_exact_under_both_initial_bit_definitions():
    model = tiny_model(4)
    bins = tiny_bins(model)
    images = blobs(2 * 3).reshape(2, 3, 1, 32, 32)
    dims = 1024
    for bitswap in (True, False):
        r = code_chains(BitsBackCoder(model, bins, bitswap=bitswap), images)
        for suffix in ("", "_strict"):
            # total = initial bits + sum of nets; CMA = total / (dims * images so far)
            np.testing.assert_allclose(r["total" + suffix],
                                       r["initial" + suffix] + np.cumsum(r["nets"], 1) * dims)
            np.testing.assert_allclose(r["cmas" + suffix],
                                       r["total" + suffix] / (dims * np.arange(1, 4)))
        np.testing.assert_allclose(r["elbos"], r["terms"].sum(2))
        np.testing.assert_allclose(r["elbos_coded"], r["terms_coded"].sum(2))
        # the paper's figure is fixed by the first image; the strict one is the
        # message's final size minus what the nets added
        assert (r["initial"] == r["initial"][:, :1]).all()
        assert (r["initial"][:, 0] <= r["initial_strict"][:, -1] + 32).all()


class FlatModel(torch.nn.Module):
    """A stand-in model whose every latent conditional is Logistic(0, 1):
    over the prior's equal-mass bins every latent pop takes exactly q bits
    per dimension and every latent push gives exactly q back, and p(x | z1)
    puts pixel 128 at a cost of about 2.5 bits (about 1.25 layers' worth
    over 1,024 pixels).  The message's depth then depends only on the order
    of pops and pushes, which is what Bit-Swap is about."""

    xs, zdim = (1, 32, 32), (1, 16, 16)

    def __init__(self, nz):
        super().__init__()
        self.nz = nz
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def infer(self, i, given):
        shape = (given.shape[0],) + self.zdim
        return torch.zeros(shape), torch.ones(shape)

    def generate(self, i, given):
        if i == 0:
            shape = (given.shape[0],) + self.xs
            return torch.zeros(shape), torch.full(shape, 0.0106)
        return torch.zeros(given.shape), torch.ones(given.shape)


def strict_initial_bits(nz, bitswap, quantbits=8):
    coder = BitsBackCoder(FlatModel(nz), LatentBins.prior_only(nz, 256, quantbits),
                          bitswap=bitswap, device="cpu")
    images = np.full((2, 2, 1, 32, 32), 128, np.uint8)
    return code_chains(coder, images, decode=False)["initial_strict"][:, -1].mean()


def test_bitswap_initial_bits_do_not_grow_with_depth():
    """The paper's claim (section 3): Bit-Swap pushes z_{i-1} back before it
    pops z_{i+1}, so the deepest point of the message, the strict initial
    bits, stays put as nz grows, while BB-ANS pops every layer first.  (The
    paper's definition sees only the first pop, so it could not tell.)"""
    layer = 256 * 8                                     # bits of one latent pop
    bitswap = {nz: strict_initial_bits(nz, True) for nz in (2, 4, 8)}
    bbans = strict_initial_bits(2, False)
    assert bitswap[8] < 1.1 * bitswap[2] and bitswap[4] < 1.1 * bitswap[2], bitswap
    assert bitswap[2] < 0.6 * bbans, (bitswap, bbans)
    assert abs(bitswap[2] - layer) < 100 and abs(bbans - 2 * layer) < 100, (bitswap, bbans)


def test_paper_initial_bits_are_the_first_pop_plus_one_word():
    """Bit-Swap: the information of the first image's z1 pop, plus 32 bits.
    BB-ANS: all pops come first, so both definitions agree within a word."""
    from utils.distributions import logistic_cdf
    model = tiny_model(2)
    bins = tiny_bins(model)
    images = blobs(3 * 2).reshape(3, 2, 1, 32, 32)
    coder = BitsBackCoder(model, bins)
    r = code_chains(coder, images, experiments=[4, 9, 11], decode=False)
    # the z1 symbols the coder popped: the same pop on the same initial message
    message = ans.Message.random(3, 0, seed=MESSAGE_SEED, precision=coder.precision,
                                 underflow_seed=MESSAGE_SEED, lane_ids=[4, 9, 11])
    q, (mu, scale), _ = coder._q(0, coder._x_tensor(images[:, 0]))
    k = q.pop(message)
    mu, scale = mu.reshape(3, -1).double().numpy(), scale.reshape(3, -1).double().numpy()
    edges = np.concatenate([np.full((256, 1), -np.inf), bins.endpoints[0],
                            np.full((256, 1), np.inf)], axis=1)
    d = np.arange(256)[None, :]
    mass = logistic_cdf(edges[d, k + 1], mu, scale) - logistic_cdf(edges[d, k], mu, scale)
    information = -np.log2(mass).sum(1)
    np.testing.assert_allclose(r["initial"][:, 0] - 32, information, atol=2)
    bb = code_chains(BitsBackCoder(model, bins, bitswap=False), images, decode=False)
    assert (np.abs(bb["initial"][:, -1] - bb["initial_strict"][:, -1]) <= 64).all()


def test_decode_mismatch_names_experiment_and_image_and_keeps_bitstream(tmp_path):
    model = tiny_model(1)

    class Broken(BitsBackCoder):
        def decode(self, message, batch):
            x = super().decode(message, batch)
            x[1, 0, 0, 0] ^= 1
            return x

    images = blobs(4).reshape(2, 2, 1, 32, 32)
    with pytest.raises(DecodeMismatch, match=r"experiment 17, image 1 .*kept in"):
        code_chains(Broken(model, tiny_bins(model)), images, experiments=[3, 17],
                    bitstream_dir=str(tmp_path))
    kept = list(tmp_path.iterdir())
    assert [p.name for p in kept] == ["mismatch_experiments3_17.ans"]
    assert ans.Message.from_bytes(kept[0].read_bytes()).lanes == 2


def test_decoder_that_leaves_the_message_altered_is_caught(tmp_path):
    """Right images, but the message is not restored: still a mismatch."""
    model = tiny_model(1)

    class Leaky(BitsBackCoder):
        calls = 0

        def decode(self, message, batch):
            x = super().decode(message, batch)
            self.calls += 1
            if self.calls == 2:                   # after the last image: one symbol too many
                message.push(np.zeros(batch, np.int64), np.ones(batch, np.int64))
            return x

    images = blobs(4).reshape(2, 2, 1, 32, 32)
    with pytest.raises(DecodeMismatch, match=r"experiment\(s\) 5-6 did not restore the initial "
                                             r"message \(bitstream kept in"):
        code_chains(Leaky(model, tiny_bins(model)), images, experiments=[5, 6],
                    bitstream_dir=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["mismatch_experiments5-6.ans"]


def test_chains_do_not_depend_on_their_neighbours():
    """A chain seeded by its experiment id, in network blocks of fixed
    experiments, gives the same arrays whichever other chains share its run
    (as when experiments are split over processes)."""
    model = tiny_model(2)
    coder = BitsBackCoder(model, tiny_bins(model))
    images = blobs(6 * 2).reshape(6, 2, 1, 32, 32)
    together = code_chains(coder, images, experiments=range(6), net_batch=2)
    first = code_chains(coder, images[[0, 1, 4, 5]], experiments=[0, 1, 4, 5], net_batch=2)
    second = code_chains(coder, images[[2, 3]], experiments=[2, 3], net_batch=2)
    for k in ("nets", "elbos", "elbos_coded", "initial", "cmas", "initial_strict", "cmas_strict"):
        np.testing.assert_array_equal(together[k][[0, 1, 4, 5]], first[k], err_msg=k)
        np.testing.assert_array_equal(together[k][[2, 3]], second[k], err_msg=k)
    # another id is another initial message, so other posterior samples and code
    # lengths (not the borrowed-bit counts alone: the strict ones are whole
    # 32-bit words and often coincide)
    other = code_chains(coder, images[[2, 3]], experiments=[12, 13], net_batch=2)
    for k in ("elbos", "initial", "cmas"):
        assert (other[k] != second[k]).any(), k


def test_sampled_elbo_is_the_models_own_single_sample_elbo():
    """The paper's -ELBO: the model's loss at one fresh posterior sample
    (same noise as the model's sampler seeded alike)."""
    model = tiny_model(2)
    coder = BitsBackCoder(model, tiny_bins(model))
    x = blobs(2)
    terms = coder.sampled_elbo_terms(x, [123, 456])
    for b, seed in enumerate((123, 456)):
        torch.manual_seed(seed)
        with torch.no_grad():
            _, expect = model(torch.as_tensor(x[b:b + 1], dtype=torch.float32))
        assert terms[b].sum() / 1024 == pytest.approx(float(expect["elbo"]), rel=1e-5)
        np.testing.assert_allclose(terms[b, 1:] / 1024, expect["kl"].numpy(), rtol=1e-4, atol=1e-6)
    again = coder.sampled_elbo_terms(x[::-1].copy(), [456, 123])
    np.testing.assert_allclose(again[::-1], terms, rtol=1e-6)


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
    # 32 single-sample codings: the coded latents' -ELBO scatters ~1% around the mean
    assert abs(net - elbo) / elbo < 0.02, (net, elbo)
    # the coder adds (almost) nothing to the -ELBO at the latents it coded
    assert abs(r["nets"].mean() - r["elbos_coded"].mean()) < 1e-3 * elbo
    # the one-off cost: the strict figure covers at least the paper's
    assert (r["initial_strict"][:, -1] >= r["initial"][:, -1] - 32).all()
