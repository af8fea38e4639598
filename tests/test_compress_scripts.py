"""The four *_compress.py scripts on small data in the real on-disk formats,
with tiny checkpoints: outputs, metrics, protocol, bad inputs, process split."""
import json
import os
import shutil
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
    assert "decoded and verified" in out
    assert "bits/dim = bits per dim of the 32x32-padded image" in out     # the unit, stated
    for text in ("initial bits, paper's definition", "initial bits, strict: deepest point",
                 "CMA@1, paper's initial bits", "CMA@1, strict initial bits",
                 "-ELBO, fresh posterior sample as the paper", "coder overhead"):
        assert text in out, text
    prefix = tmp_path / "out" / "bbans_6bits"
    arrays = {k: np.load(f"{prefix}_{k}.npy") for k in (
        "nets", "elbos", "elbos_coded", "cmas", "total", "initial", "cmas_strict",
        "total_strict", "initial_strict")}
    assert all(a.shape == (3, 3) for a in arrays.values())
    for suffix in ("", "_strict"):
        np.testing.assert_allclose(arrays["cmas" + suffix],
                                   arrays["total" + suffix] / (1024 * np.arange(1, 4)))
    summary = json.loads((tmp_path / "out" / "bbans_6bits_summary.json").read_text())
    assert summary["decoded"] and summary["scheme"] == "bbans"
    assert summary["results_format"] == 2
    s = summary["summary"]
    assert s["net"]["mean"] == pytest.approx(arrays["nets"].mean())
    assert s["net_minus_elbo"]["mean"] == pytest.approx((arrays["nets"] - arrays["elbos"]).mean())
    assert s["coder_overhead"]["mean"] == pytest.approx(
        (arrays["nets"] - arrays["elbos_coded"]).mean())
    assert s["initial_bits"]["mean"] == pytest.approx(arrays["initial"][:, 0].mean())
    assert s["initial_bits_strict"]["mean"] == pytest.approx(arrays["initial_strict"][:, -1].mean())
    assert s["cma_strict@3"]["mean"] == pytest.approx(arrays["cmas_strict"][:, 2].mean())
    # the paper's selection: images are test images indices[e, j], padded to 32x32
    idx = np.array(summary["selection"])
    np.testing.assert_array_equal(idx, protocol.select_experiments(30, 3, 3, 100))
    assert len(np.unique(idx)) == 9 and test.shape == (30, 28, 28)


def test_mnist_is_padded_by_two_on_every_side():
    from utils.experiment import pad_to_model
    images = np.random.default_rng(0).integers(1, 256, (3, 1, 28, 28), dtype=np.uint8)
    padded = pad_to_model("mnist", images)
    assert padded.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(padded[:, :, 2:30, 2:30], images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (padded[:, :, border] == 0).all()
    cifar = images.repeat(3, 1)[:, :, :, :28]
    assert pad_to_model("cifar", cifar) is cifar


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


ARRAY_NAMES = ("nets", "elbos", "elbos_coded", "initial", "total", "cmas", "initial_strict",
               "total_strict", "cmas_strict", "terms", "terms_coded")


def two_process_command(launcher, cmd):
    if launcher == "torchrun":
        from test_distributed import free_port
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}"] + cmd[1:], {}
    assert shutil.which("mpiexec"), "mpiexec missing: scripts/setup.sh installs openmpi-bin"
    return (["mpiexec", "--oversubscribe", "-np", "2"] + cmd,
            {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
             "OMPI_MCA_rmaps_base_oversubscribe": "1"})


@pytest.mark.parametrize("launcher", ["torchrun", "mpiexec"])
def test_two_processes_give_the_arrays_of_one(tmp_path, launcher):
    """Experiments split over 2 processes give exactly the arrays of one
    process (chains seeded by experiment id, fixed network blocks); part
    files left by an aborted run are removed, not merged."""
    write_mnist(str(tmp_path / "data"), n_test=20, n_train=2)
    _, params = make_checkpoint(tmp_path, "mnist", 2)
    base = args(tmp_path, params, 2, "--experiments", "5", "--images", "2", "--net-batch", "2")
    assert main("mnist", base) == 0
    one = {k: np.load(tmp_path / "out" / f"bitswap_6bits_{k}.npy") for k in ARRAY_NAMES}
    out2 = tmp_path / "out2"
    out2.mkdir()
    stale = {k: np.zeros((2, 2)) for k in ARRAY_NAMES}
    np.savez(out2 / "bitswap_6bits_part1of2.npz", experiments=np.array([0, 1]), **stale)
    np.savez(out2 / "bitswap_6bits_part0of3.npz", experiments=np.array([0, 1]), **stale)
    argv = [a if a != str(tmp_path / "out") else str(out2) for a in base]
    cmd, env_extra = two_process_command(
        launcher, [sys.executable, os.path.join(ROOT, "mnist_compress.py"), *argv])
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "5 experiments x 2 images" in r.stdout
    for k in ARRAY_NAMES:
        np.testing.assert_array_equal(np.load(out2 / f"bitswap_6bits_{k}.npy"), one[k], err_msg=k)
    summary = json.loads((out2 / "bitswap_6bits_summary.json").read_text())
    assert summary["processes"] == 2
    assert not list(out2.glob("*part*"))


def test_precision_31_the_authors_coder(tmp_path, capsys):
    """--precision 31 codes and decodes; the net rate moves only slightly."""
    write_mnist(str(tmp_path / "data"), n_test=12, n_train=2)
    _, params = make_checkpoint(tmp_path, "mnist", 2)
    nets = {}
    for p in (28, 31):
        out = tmp_path / f"p{p}"
        argv = args(tmp_path, params, 2, "--experiments", "2", "--images", "3",
                    "--precision", str(p))
        argv[argv.index("--out") + 1] = str(out)
        assert main("mnist", argv) == 0
        assert "decoded and verified" in capsys.readouterr().out
        summary = json.loads((out / "bitswap_6bits_summary.json").read_text())
        assert summary["precision"] == p
        nets[p] = np.load(out / "bitswap_6bits_nets.npy")
    assert not np.array_equal(nets[28], nets[31])
    assert abs(nets[31].mean() - nets[28].mean()) < 0.01 * nets[28].mean()
    assert main("mnist", args(tmp_path, params, 2, "--precision", "32")) == 2
    assert "--precision must be in [16, 31]" in capsys.readouterr().err


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
