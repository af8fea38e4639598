"""The demo codec (image_compress.py / image_decompress.py, utils/imagecodec.py,
utils/container.py) on a tiny random-init model written to a temp directory.

Round trips on awkward sizes, grayscale, noise and flat images; the container's
strict parsing (truncation at every offset, flipped bits, another model, not a
container); bad inputs (one-line error, exit status 1, no output file); and
encode / decode in separate processes with different torch thread counts.
"""
import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import image_compress
import image_decompress
from utils import container, imagecodec
from utils.container import ContainerError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(xs=(3, 32, 32), nz=2, zchannels=2, width=8, nprocessing=1, resdepth=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return imagecodec.random_model_dir(str(tmp_path_factory.mktemp("model")), quantbits=8,
                                       seed=0, name="tiny", half=True, **TINY)


@pytest.fixture(scope="module")
def model(model_dir):
    return imagecodec.load_model(model_dir, "cpu")


@pytest.fixture(scope="module")
def small_file(model):
    """A valid container of a 3x2 RGB image (bytes)."""
    image = np.arange(18, dtype=np.uint8).reshape(3, 2, 3) * 13
    return imagecodec.compress(image, "RGB", model).data


def _files(path):
    return sorted(os.listdir(path))


def _run_cli(module, args, capsys):
    """Run a CLI's main in-process: (exit status, stdout, stderr)."""
    status = module.main(args)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_clean_failure(status, err, directory, before, *words):
    assert status == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    assert _files(directory) == before          # nothing new, no temp file left over


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("shape, mode", [((1, 1, 3), "RGB"), ((31, 33, 3), "RGB"),
                                         ((64, 17, 3), "RGB"), ((33, 31, 1), "L")])
def test_round_trip_awkward_sizes(model, shape, mode):
    rng = np.random.default_rng(shape[0])
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    result = imagecodec.compress(image, mode, model)
    header, _ = container.unpack(result.data)
    assert (header["height"], header["width"], header["channels"]) == shape
    assert header["padded_height"] % 32 == 0 and header["padded_width"] % 32 == 0
    decoded, decoded_mode = imagecodec.decompress(result.data, model)
    assert decoded_mode == mode
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)


@pytest.mark.parametrize("kind", ["flat0", "flat255", "noise"])
def test_round_trip_flat_and_noise(model, kind):
    if kind == "noise":
        image = np.random.default_rng(7).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    else:
        image = np.full((40, 70, 3), 0 if kind == "flat0" else 255, dtype=np.uint8)
    result = imagecodec.compress(image, "RGB", model)
    assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)
    # The first block borrows initial bits; the file charges them (it is the whole message).
    assert result.initial_bits > 0
    assert 8 * len(result.data) > result.message_bits


def test_padding_is_edge_replication():
    image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1)
    padded = imagecodec.pad_to_blocks(image, 4)
    assert padded.shape == (4, 4, 3)
    assert (padded[:, :, 0] == padded[:, :, 2]).all()
    assert (padded[3, :3, 0] == image[1, :, 0]).all() and (padded[:2, 3, 0] == image[:, 2, 0]).all()


def test_model_dir_with_authors_bins_format_and_float32(tmp_path):
    """Bins that are not equal-width are stored in the authors' format; a
    float32 checkpoint loads too; both code losslessly."""
    path = imagecodec.random_model_dir(str(tmp_path), quantbits=6, seed=2, name="full",
                                       half=False, full_bins=True, **TINY)
    assert sorted(os.listdir(tmp_path)) == ["centres.pt", "checkpoint.pt", "endpoints.pt", "model.json"]
    full = imagecodec.load_model(path)
    assert full.bins.endpoints.shape == (2, 2 * 16 * 16, 63)
    image = np.random.default_rng(4).integers(0, 256, (5, 40, 3), dtype=np.uint8)
    assert np.array_equal(imagecodec.decompress(imagecodec.compress(image, "RGB", full).data, full)[0], image)


def test_make_demo_model_packages_a_training_run(tmp_path):
    """The coordinator's path: training run folder + authors' bins -> model dir."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import make_demo_model
    import torch
    from model.hvae import HVAE
    from utils.bins import LatentBins, ranges_path
    net = HVAE(**TINY).eval()
    os.makedirs(tmp_path / "bins")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(net.state_dict(), run / "model_best.pt")
    zdim = 2 * 16 * 16
    ranges = np.stack([np.full((1, zdim), -2.0), np.full((1, zdim), 3.0)], axis=-1)
    expected = LatentBins.from_ranges(ranges, 6)
    expected.save_ranges(ranges_path(str(tmp_path / "bins"), "photos", 2, 6))
    out = tmp_path / "demo"
    make_demo_model.main(["--run", str(run), "--bins-dir", str(tmp_path / "bins"), "--dataset", "photos",
                          "--quantbits", "6", "--name", "packaged", "--out", str(out)])
    assert sorted(os.listdir(out)) == ["bins.pt", "checkpoint.pt", "model.json"]
    model = imagecodec.load_model(str(out))
    assert model.name == "packaged"
    assert np.array_equal(model.bins.endpoints, expected.endpoints)
    image = np.random.default_rng(9).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    assert np.array_equal(imagecodec.decompress(imagecodec.compress(image, "RGB", model).data, model)[0], image)
