"""The four *_compress.py scripts on small data in the real on-disk formats,
with tiny checkpoints: outputs, metrics, protocol, bad inputs, process split."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from test_benchmark_compress import write_cifar, write_folder, write_mnist
from test_bitsback import tiny_model
from utils import protocol
from utils.bins import LatentBins, ranges_path
from utils.experiment import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_checkpoint(tmp_path, dataset, nz, xs=(1, 32, 32), zchannels=1, **kw):
    model = tiny_model(nz, xs=xs, zchannels=zchannels, **kw)
    path = tmp_path / f"{dataset}_nz{nz}.pt"
    torch.save({"architecture": model.architecture(), "state_dict": model.state_dict()}, path)
    LatentBins.prior_only(nz, int(np.prod(model.zdim)), 6).save(str(tmp_path / "bins"), dataset)
    return model, path


def args(tmp_path, params, nz, *extra):
    return ["--nz", str(nz), "--quantbits", "6", "--params", str(params), "--bins",
            str(tmp_path / "bins"), "--data-root", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--no-progress", *extra]


def test_mnist_outputs_metrics_and_protocol(tmp_path, capsys):
    test = write_mnist(str(tmp_path / "data"), n_test=30, n_train=2)
    _, params = make_checkpoint(tmp_path, "mnist", 2)
    rc = main("mnist", args(tmp_path, params, 2, "--experiments", "3", "--images", "3",
                            "--bitswap", "0"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "decoded and verified" in out and "cma@1" in out and "gap" in out
    assert "bits/dim = bits per dim of the 32x32-padded image" in out     # the unit, stated
    prefix = tmp_path / "out" / "bbans_6bits"
    nets, elbos, cmas, total = (np.load(f"{prefix}_{k}.npy") for k in ("nets", "elbos", "cmas", "total"))
    assert nets.shape == elbos.shape == cmas.shape == total.shape == (3, 3)
    np.testing.assert_allclose(cmas, total / (1024 * np.arange(1, 4)))
    summary = json.loads((tmp_path / "out" / "bbans_6bits_summary.json").read_text())
    assert summary["decoded"] and summary["scheme"] == "bbans"
    assert summary["summary"]["net"]["mean"] == pytest.approx(nets.mean())
    # the paper's selection: images are test images indices[e, j], padded to 32x32
    idx = np.array(summary["selection"])
    np.testing.assert_array_equal(idx, protocol.select_experiments(30, 3, 3, 100))
    assert len(np.unique(idx)) == 9 and test.shape == (30, 28, 28)


def test_cifar_no_decode(tmp_path, capsys):
    write_cifar(str(tmp_path / "data"), n=12)
    _, params = make_checkpoint(tmp_path, "cifar", 1, xs=(3, 32, 32), zchannels=2)
    rc = main("cifar", args(tmp_path, params, 1, "--experiments", "2", "--images", "3",
                            "--no-decode"))
    out = capsys.readouterr().out
    assert rc == 0 and "NOT decoded" in out
    summary = json.loads((tmp_path / "out" / "bitswap_6bits_summary.json").read_text())
    assert summary["decoded"] is False and summary["decode_ms_per_image"] is None


def test_imagenetcrop_codes_blocks_of_cropped_photos(tmp_path, capsys):
    """The test photos are found where training and discretization look too:
    DATA_ROOT/imagenetcrop/test (one data-path convention)."""
    folder = tmp_path / "data" / "imagenetcrop" / "test"
    write_folder(str(folder), sizes=((40, 70), (64, 33), (33, 40)), gray=(40, 40), tiny=True,
                 broken=False)
    _, params = make_checkpoint(tmp_path, "imagenetcrop", 1, xs=(3, 32, 32), zchannels=2,
                                conditional_xscale=True)
    rc = main("imagenetcrop", args(tmp_path, params, 1, "--experiments", "3"))
    assert rc == 0, capsys.readouterr()
    cmas = np.load(tmp_path / "out" / "bitswap_6bits_cmas.npy")
    # 40x70 -> 32x64: 2 blocks; 64x33 -> 64x32: 2 blocks; 33x40 -> 32x32: 1 block
    assert sorted((~np.isnan(cmas)).sum(1).tolist()) == [1, 2, 2]


@pytest.mark.parametrize("case", ["checkpoint", "bins", "shape", "images", "dataset", "nz",
                                  "other_weights"])
def test_bad_inputs_one_line_errors(tmp_path, capsys, case):
    write_mnist(str(tmp_path / "data"), n_test=10, n_train=2)
    _, params = make_checkpoint(tmp_path, "mnist", 2)
    extra = ["--experiments", "1", "--images", "2"]
    nz = 2
    if case == "checkpoint":
        params, expect = tmp_path / "missing.pt", "missing.pt not found: pass a package folder"
    elif case == "bins":
        extra += ["--quantbits", "7"]
        expect = "no bins for mnist nz=2 q=7 (mnist_nz2_zranges7.pt or mnist_nz2_zendpoints7.pt"
    elif case == "shape":
        LatentBins.prior_only(2, 64, 6).save(str(tmp_path / "bins"), "mnist")
        expect = "bins are for nz=2 with 64 dims per layer"
    elif case == "dataset":     # a CIFAR-10 model never reaches the coder
        _, params = make_checkpoint(tmp_path, "cifar", 2, xs=(3, 32, 32), zchannels=1)
        expect = "codes images shaped (3, 32, 32), but mnist images are (1, 32, 32)"
    elif case == "nz":
        nz, expect = 4, "has nz=2, not --nz 4"
    elif case == "other_weights":   # bins recording another model's fingerprint
        bins = LatentBins.from_ranges(np.zeros((1, 256, 2)) + [-1.0, 1.0], 6)
        bins.save_ranges(ranges_path(str(tmp_path / "bins"), "mnist", 2, 6), weights_fingerprint="ab" * 32)
        expect = "the bins (" + str(tmp_path / "bins")
    else:
        extra = ["--experiments", "1", "--images", "11"]
        expect = "--images 11 is larger than the test set (10 images)"
    rc = main("mnist", args(tmp_path, params, nz, *extra))
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    assert not (tmp_path / "out").exists()


def test_training_checkpoint_and_the_bins_beside_it(tmp_path, capsys):
    """A run's checkpoint.pt (EMA weights) codes, with the bins
    discretization.py wrote into the run folder, found without --bins."""
    from model import train as T
    import discretization
    write_mnist(str(tmp_path / "data"), n_test=10, n_train=40)
    run = tmp_path / "run"
    tiny = ["--nz", "2", "--width", "8", "--zchannels", "1", "--nprocessing", "1", "--blocks", "2",
            "--batch", "8", "--init-batches", "1", "--no-progress", "--threads", "1", "--max-steps", "2"]
    assert T.main("mnist", tiny + ["--data-root", str(tmp_path / "data"), "--out", str(run)]) == 0
    assert discretization.main(["mnist", "--params", str(run / "checkpoint.pt"), "--quantbits", "6",
                                "--samples-per-bin", "1", "--data-root", str(tmp_path / "data"),
                                "--compact-only", "--no-progress"]) == 0
    assert os.listdir(run).count("mnist_nz2_zranges6.pt") == 1
    rc = main("mnist", ["--params", str(run / "checkpoint.pt"), "--quantbits", "6", "--experiments", "1",
                        "--images", "2", "--data-root", str(tmp_path / "data"), "--out",
                        str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "bitswap_6bits_summary.json").read_text())
    assert summary["nz"] == 2 and summary["bins"] == str(run / "mnist_nz2_zranges6.pt")


def test_default_model_is_the_shipped_one(tmp_path, capsys):
    """mnist_compress.py --nz 8 without --params codes with models/mnist-nz8."""
    write_mnist(str(tmp_path / "data"), n_test=4, n_train=2)
    rc = main("mnist", ["--nz", "8", "--experiments", "1", "--images", "1", "--data-root",
                        str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "bitswap_10bits_summary.json").read_text())
    assert summary["params"] == "mnist-nz8" and summary["decoded"]
    # the default output folder (plots/mnist8) is ignored by git
    ignored = subprocess.run(["git", "check-ignore", "-q", "plots/mnist8/bitswap_10bits_nets.npy"],
                             cwd=ROOT)
    assert ignored.returncode == 0
    rc = main("cifar", ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no shipped cifar model" in capsys.readouterr().err


def test_split_across_processes_like_torchrun(tmp_path):
    write_mnist(str(tmp_path / "data"), n_test=20, n_train=2)
    _, params = make_checkpoint(tmp_path, "mnist", 1)
    cmd = [sys.executable, os.path.join(ROOT, "mnist_compress.py"),
           *args(tmp_path, params, 1, "--experiments", "3", "--images", "2")]
    env = dict(os.environ, WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "3 experiments x 2 images" in outs[1][0]
    nets = np.load(tmp_path / "out" / "bitswap_6bits_nets.npy")
    assert nets.shape == (3, 2) and np.isfinite(nets).all()
    assert not list((tmp_path / "out").glob("*part*"))


def test_plot_script_writes_pngs(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_results
    rng = np.random.default_rng(0)
    for nz in (2, 4):
        folder = tmp_path / f"mnist{nz}"
        folder.mkdir()
        for scheme, extra in (("bitswap", 1.0), ("bbans", 3.0 * nz)):
            cmas = 1.0 + extra / np.arange(1, 11)[None] + 0.01 * rng.random((3, 10))
            np.save(folder / f"{scheme}_10bits_cmas.npy", cmas)
            np.save(folder / f"{scheme}_10bits_elbos.npy", np.full((3, 10), 1.0))
            np.save(folder / f"{scheme}_10bits_terms.npy", np.full((3, 10, 1 + nz), 1.0 / (1 + nz)))
    assert plot_results.main(["mnist", "--results", str(tmp_path), "--nz", "2,4"]) == 0
    for name in ("mnist_cma.png", "mnist_layers.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_results.main(["mnist", "--results", str(tmp_path / "none"), "--nz", "2"]) == 2
    assert "run mnist_compress.py first" in capsys.readouterr().err
