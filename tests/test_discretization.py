"""discretization.py and the bins files (utils/bins.py): the paper's bins,
the authors' file names and layout, round trips and bad files."""
import os

import numpy as np
import pytest
import torch
from sklearn.preprocessing import KBinsDiscretizer

import discretization
from test_benchmark_compress import write_mnist
from test_bitsback import blobs, tiny_model
from utils.bins import BinsError, LatentBins, bins_paths, ranges_path, uniform_bins
from utils.distributions import prior_bins

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_uniform_bins_equal_kbinsdiscretizer_on_all_samples():
    samples = np.random.default_rng(0).logistic(size=(500, 6)) * np.arange(1, 7)
    endpoints, centres = uniform_bins(samples.min(0), samples.max(0), 4)
    full = KBinsDiscretizer(n_bins=16, encode="ordinal", strategy="uniform").fit(samples)
    edges = np.stack(full.bin_edges_)
    np.testing.assert_allclose(endpoints, edges[:, 1:-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(centres, 0.5 * (edges[:, 1:] + edges[:, :-1]), rtol=0, atol=1e-12)


def test_derive_bins_layers():
    model = tiny_model(3)
    bins = discretization.derive_bins(model, blobs(40), quantbits=5, samples_per_bin=2,
                                      progress=False)
    assert bins.endpoints.shape == (3, 256, 31) and bins.centres.shape == (3, 256, 32)
    e, c = prior_bins(5)
    np.testing.assert_array_equal(bins.endpoints[2], np.broadcast_to(e, (256, 31)))
    np.testing.assert_array_equal(bins.centres[2], np.broadcast_to(c, (256, 32)))
    for layer in (0, 1):
        width = np.diff(bins.endpoints[layer], axis=1)
        np.testing.assert_allclose(width, width[:, :1] * np.ones_like(width), rtol=1e-9)
        assert bins.layers[layer].kind == "uniform"
    assert bins.layers[2].kind == "equal_mass"


class FixedLatents(torch.nn.Module):
    """Every dimension of every lower layer has its own value under the
    generative model (GEN) and under the inference model (INF), with
    negligible noise; the inference model records the images it is given."""

    GEN = np.array([-3.0, 0.0, 1.0, 10.0])
    INF = np.array([-1.0, 5.0, 2.0, 11.0])
    nz, zdim = 2, (1, 2, 2)

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def _at(self, values, b):
        mu = torch.as_tensor(values, dtype=torch.float32).reshape((1,) + self.zdim)
        return mu.expand((b,) + self.zdim), torch.full((b,) + self.zdim, 1e-7)

    def generate(self, i, given):
        return self._at(self.GEN, given.shape[0])

    def infer(self, i, given):
        if i == 0:
            self.seen += given[:, 0, 0, 0].long().tolist()
        return self._at(self.INF, given.shape[0])


def test_bins_span_each_dimensions_own_sample_range():
    """Equal-width bins between each dimension's own sample min and max (not
    one range for a whole layer)."""
    images = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 4, 4), np.uint8)
    bins = discretization.derive_bins(FixedLatents(), images, quantbits=2, samples_per_bin=5,
                                      batch=7, progress=False)
    lo, hi = np.minimum(FixedLatents.GEN, FixedLatents.INF), np.maximum(FixedLatents.GEN,
                                                                         FixedLatents.INF)
    np.testing.assert_allclose(bins.ranges[0], np.stack([lo, hi], 1), atol=1e-4)
    edges = np.concatenate([lo[:, None], bins.endpoints[0], hi[:, None]], 1)
    np.testing.assert_allclose(np.diff(edges, axis=1), np.repeat((hi - lo)[:, None] / 4, 4, 1),
                               atol=1e-4)


@pytest.mark.parametrize("samples", [20, 130])
def test_inference_samples_from_a_seeded_random_subset_of_the_whole_set(samples):
    images = np.arange(50, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 4, 4), np.uint8)
    seen = {}
    for seed in (0, 0, 1):
        model = FixedLatents()
        discretization.latent_ranges(model, images, samples, batch=8, seed=seed, progress=False)
        seen.setdefault(seed, []).append(model.seen)
    first = seen[0][0]
    assert seen[0][1] == first and seen[1][0] != first           # seeded
    counts = np.bincount(first, minlength=50)
    assert len(first) == samples and counts.max() - counts.min() <= 1   # no image twice too many
    if samples < 50:
        assert max(first) >= samples          # not just the first images of the set
        assert sorted(first) != sorted(seen[1][0])


def test_bins_files_round_trip_in_the_authors_names(tmp_path):
    bins = LatentBins.prior_only(2, 10, 3)
    paths = bins.save(str(tmp_path), "cifar")
    assert [os.path.basename(p) for p in paths] == ["cifar_nz2_zendpoints3.pt",
                                                     "cifar_nz2_zcentres3.pt"]
    t = torch.load(paths[0])
    assert t.dtype == torch.float64 and t.shape == (2, 10, 7)
    back = LatentBins.load(str(tmp_path), "cifar", 2, 3)
    np.testing.assert_array_equal(back.endpoints, bins.endpoints)
    np.testing.assert_array_equal(back.centres, bins.centres)


def test_authors_files_load_as_they_are_and_code(tmp_path):
    """The authors' files: plain tensors (nz, zdim, 2^q - 1) / (nz, zdim, 2^q),
    the top layer's quantiles computed in float32, equal adjacent endpoints
    where samples were tied; loaded unchanged, fast paths kept, lossless."""
    from utils import ans
    from utils.bitsback import BitsBackCoder, restored_initial_message
    K = 16
    u = torch.arange(1, K, dtype=torch.float32) / K
    top = (torch.log(u) - torch.log1p(-u)).numpy()          # float32, as the authors' Bins
    c = prior_bins(4)[1]
    lower = np.linspace(-3, 3, K + 1)
    low_e = np.tile(lower[1:-1], (256, 1))
    low_e[7, 3:6] = low_e[7, 3]                             # two empty bins in one dimension
    endpoints = torch.tensor(np.stack([low_e, np.tile(top, (256, 1))]), dtype=torch.float32)
    centres = torch.tensor(np.stack([np.tile(0.5 * (lower[1:] + lower[:-1]), (256, 1)),
                                     np.tile(c, (256, 1))]), dtype=torch.float32)
    pe, pc = bins_paths(str(tmp_path), "mnist", 2, 4)
    torch.save(endpoints, pe)
    torch.save(centres, pc)
    bins = LatentBins.load(str(tmp_path), "mnist", 2, 4)
    model = tiny_model(2)
    bins.check_model(model)
    assert bins.K == 16 and bins.layers[1].kind == "equal_mass"
    np.testing.assert_array_equal(bins.endpoints, endpoints.double().numpy())
    np.testing.assert_allclose(bins.centre(0, np.array([[0] * 256])), centres[0, :, 0][None])
    coder = BitsBackCoder(model, bins)
    message = ans.Message.random(2, 0, seed=1, underflow_seed=2)
    initial = message.copy()
    images = blobs(4).reshape(2, 2, 1, 32, 32)
    for step in images:
        coder.encode(message, step)
    received = ans.Message.from_bytes(message.to_bytes())
    for j in (1, 0):
        np.testing.assert_array_equal(coder.decode(received, 2), images[j])
    assert received == restored_initial_message(initial, message.borrowed_words)


def test_bad_bins_files(tmp_path):
    with pytest.raises(BinsError, match=r"neither .*mnist_nz2_zranges10.pt nor .*mnist_nz2_zendpoints10.pt"
                                        r".*discretization.py"):
        LatentBins.load(str(tmp_path), "mnist", 2, 10)
    LatentBins.prior_only(2, 10, 3).save(str(tmp_path), "mnist")
    with pytest.raises(BinsError, match="model has nz=2 with 256"):
        LatentBins.load(str(tmp_path), "mnist", 2, 3).check_model(tiny_model(2))
    with pytest.raises(BinsError, match="disagree"):
        LatentBins(np.zeros((2, 10, 7)), np.zeros((2, 10, 9)))
    with pytest.raises(BinsError, match="non-decreasing"):
        LatentBins(np.array([[[0.0, 1.0, 0.5]]]), np.zeros((1, 1, 4)))


def test_cli_writes_bins_from_checkpoint_and_idx_data(tmp_path, capsys):
    root = tmp_path / "data"
    write_mnist(str(root), n_test=20, n_train=30)
    model = tiny_model(2)
    ckpt = tmp_path / "ck.pt"
    torch.save({"architecture": model.architecture(), "state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "bins"
    argv = ["mnist", "--quantbits", "4", "--params", str(ckpt), "--bins", str(out),
            "--data-root", str(root), "--samples-per-bin", "2", "--no-progress"]
    assert discretization.main(argv) == 0
    bins = LatentBins.load(str(out), "mnist", 2, 4)
    bins.check_model(model)
    # the bins record the weights they came from
    from model.package import weights_fingerprint
    assert bins.weights_fingerprint == weights_fingerprint(model.state_dict())
    # existing bins are never replaced silently
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert discretization.main(argv) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert discretization.main(argv + ["--force"]) == 0
    rc = discretization.main(["mnist", "--params", str(tmp_path / "none.pt"),
                              "--data-root", str(root), "--bins", str(out)])
    assert rc == 2 and "none.pt not found" in capsys.readouterr().err
    # --nz is checked against the model
    assert discretization.main(argv[:1] + ["--nz", "3"] + argv[1:] + ["--force"]) == 2
    assert "has nz=2, not --nz 3" in capsys.readouterr().err


def test_default_output_is_beside_the_weights_and_shipped_packages_are_safe(tmp_path, capsys):
    """No --bins: the bins go into the run folder; a package's own bins are
    never the default target."""
    root = tmp_path / "data"
    write_mnist(str(root), n_test=4, n_train=30)
    model = tiny_model(1)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model_best.pt")
    assert discretization.main(["mnist", "--params", str(run / "model_best.pt"), "--quantbits", "3",
                                "--data-root", str(root), "--compact-only", "--no-progress"]) == 0
    assert sorted(os.listdir(run)) == ["mnist_nz1_zranges3.pt", "model_best.pt"]
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "models", "mnist-nz2")
    before = sorted(os.listdir(shipped))
    assert discretization.main(["mnist", "--params", "mnist-nz2", "--data-root", str(root)]) == 2
    assert "own bins" in capsys.readouterr().err
    assert sorted(os.listdir(shipped)) == before


def test_compact_ranges_round_trip_and_fallback(tmp_path):
    ranges = np.array([[[-3.0, 2.0], [0.0, 1.5]], [[-1.0, 1.0], [-7.0, 0.25]]])
    bins = LatentBins.from_ranges(ranges, 5)
    assert bins.endpoints.shape == (3, 2, 31) and bins.centres.shape == (3, 2, 32)
    np.testing.assert_allclose(np.diff(bins.endpoints[0, 0]), 5.0 / 32, rtol=1e-12)
    np.testing.assert_array_equal(bins.endpoints[2, 0], prior_bins(5)[0])
    path = bins.save_ranges(ranges_path(str(tmp_path), "mnist", 3, 5))
    assert os.path.basename(path) == "mnist_nz3_zranges5.pt"
    back = LatentBins.load(str(tmp_path), "mnist", 3, 5)    # no authors' files: the compact one
    np.testing.assert_array_equal(back.endpoints, bins.endpoints)
    np.testing.assert_array_equal(back.centres, bins.centres)
    with pytest.raises(BinsError, match="not made from"):
        LatentBins.prior_only(2, 2, 3).save_ranges(str(tmp_path / "x.pt"))
    with pytest.raises(BinsError, match=r"\(nz-1, zdim, 2\)"):
        LatentBins.from_ranges(np.zeros((2, 3)), 4)


def test_cli_imagenetcrop_from_photo_patches_compact_only(tmp_path):
    import synthetic_data as sd
    sd.write_imagenetcrop(str(tmp_path / "data"), n_train=3, n_test=1)
    from model.hvae import HVAE
    torch.manual_seed(0)
    model = HVAE(xs=(3, 32, 32), nz=2, zchannels=2, width=8, nprocessing=1, resdepth=2,
                 conditional_xscale=True).eval()
    ckpt = tmp_path / "model_best.pt"
    torch.save(model.state_dict(), ckpt)        # plain state dict: architecture read off it
    out = tmp_path / "bins"
    rc = discretization.main(["imagenetcrop", "--nz", "2", "--quantbits", "4", "--params", str(ckpt),
                              "--bins", str(out), "--data-root", str(tmp_path / "data"),
                              "--samples-per-bin", "2", "--no-progress", "--compact-only"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["imagenetcrop_nz2_zranges4.pt"]
    bins = LatentBins.load(str(out), "imagenetcrop", 2, 4)
    bins.check_model(model)
    assert bins.ranges.shape == (1, 2 * 16 * 16, 2) and (bins.ranges[..., 1] > bins.ranges[..., 0]).all()
