"""The one model loader (model/package.py) and the shared CLI plumbing
(utils/cli.py, utils/device.py): every accepted kind of model file, the
checks that refuse a wrong model before any coding (hash, dataset, shape,
nz, bins of other weights), pickle-free training checkpoints (and the
older ones that still resume), exit statuses, output checks, atomic writes."""
import json
import os
import random
import shutil
import stat

import numpy as np
import pytest
import torch

import synthetic_data as sd
from model import package
from model import train as T
from test_bitsback import tiny_model
from utils import cli
from utils.bins import LatentBins, bins_paths, ranges_path
from utils.device import resolve_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["--nz", "2", "--width", "8", "--zchannels", "2", "--nprocessing", "1", "--blocks", "2",
         "--batch", "16", "--init-batches", "2", "--no-progress", "--threads", "1", "--interval", "100"]


def compact_bins(model, quantbits=5, fingerprint=None):
    zdim = int(np.prod(model.zdim))
    bins = LatentBins.from_ranges(np.broadcast_to([-3.0, 3.0], (model.nz - 1, zdim, 2)), quantbits)
    bins.weights_fingerprint = fingerprint
    return bins


def test_every_kind_of_model_file_loads_to_the_same_network(tmp_path):
    """Package folder, its model.json, a state dict (model_best.pt), a dict
    with 'state_dict', a .safetensors file: same tensors, same bins."""
    model = tiny_model(2)
    fp = package.weights_fingerprint(model.state_dict())
    bins = compact_bins(model, fingerprint=fp)
    pkg = package.write_package(str(tmp_path / "pkg"), model.state_dict(), model.architecture(),
                                bins, "tiny", "mnist", "ema", half=False)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model_best.pt")
    torch.save({"architecture": model.architecture(), "state_dict": model.state_dict()}, run / "wrapped.pt")
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(run / "weights.safetensors"))
    bins.save_ranges(ranges_path(str(run), "mnist", 2, 5))
    specs = [pkg, os.path.join(pkg, "model.json"), str(run / "model_best.pt"),
             str(run / "wrapped.pt"), str(run / "weights.safetensors")]
    loaded = [package.load(s, dataset="mnist", quantbits=5) for s in specs]
    assert [m.kind for m in loaded] == ["package", "package", "state_dict", "state_dict", "state_dict"]
    assert loaded[2].weights_kind == "ema"            # model_best.pt holds the EMA weights
    for m in loaded:
        assert m.weights_fingerprint == fp
        np.testing.assert_array_equal(m.bins.endpoints, bins.endpoints)
        for k, v in model.state_dict().items():
            assert torch.equal(m.net.state_dict()[k], v), k


def test_training_checkpoint_loads_with_weights_only_and_gives_ema_or_raw(tmp_path):
    sd.write_mnist(str(tmp_path / "data"))
    out = tmp_path / "run"
    assert T.main("mnist", TRAIN + ["--data-root", str(tmp_path / "data"), "--out", str(out),
                                    "--max-steps", "3"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)      # no pickled objects
    assert torch.is_tensor(ckpt["rng"][0]["numpy"]["keys"])
    for spec in (str(out), str(out / "checkpoint.pt")):
        ema = package.load(spec, dataset="mnist", need_bins=False)
        raw = package.load(spec, dataset="mnist", need_bins=False, weights="raw")
        assert ema.kind == "checkpoint" and ema.dataset == "mnist" and ema.weights_kind == "ema"
        assert torch.equal(ema.net.state_dict()["infer_mu.v"], ckpt["ema"]["infer_mu.v"])
        assert torch.equal(raw.net.state_dict()["infer_mu.v"], ckpt["model"]["infer_mu.v"])
        assert not torch.equal(ckpt["ema"]["infer_mu.v"], ckpt["model"]["infer_mu.v"])


def test_older_checkpoint_with_numpy_rng_states_still_resumes_exactly(tmp_path):
    """Checkpoints written before RNG states were tensors (np.random.get_state()
    and random.getstate() pickled as they are) load through the documented
    allow-list and continue exactly like the new format."""
    sd.write_mnist(str(tmp_path / "data"))
    base = TRAIN + ["--data-root", str(tmp_path / "data")]
    new, old = tmp_path / "new", tmp_path / "old"
    assert T.main("mnist", base + ["--out", str(new), "--max-steps", "3"]) == 0
    shutil.copytree(new, old)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    for state in ckpt["rng"]:       # rewrite the RNG states in the older layout
        n = state["numpy"]
        state["numpy"] = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                          n["has_gauss"], n["cached_gaussian"])
        p = state["python"]
        state["python"] = (p["version"], tuple(p["state"].tolist()), p["gauss_next"])
    torch.save(ckpt, old / "checkpoint.pt")
    with pytest.raises(Exception):
        torch.load(old / "checkpoint.pt", weights_only=True)     # really the older layout
    assert isinstance(package.read_checkpoint(str(old / "checkpoint.pt"))["rng"][0]["numpy"], tuple)
    for run in (new, old):
        assert T.main("mnist", base + ["--out", str(run), "--resume", str(run), "--max-steps", "6"]) == 0
    a = torch.load(new / "checkpoint.pt", weights_only=True)
    b = torch.load(old / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_rng_state_round_trips_every_generator():
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    state = T.rng_state()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    T.set_rng_state(state)
    assert torch.equal(torch.rand(3), expect[0])
    np.testing.assert_array_equal(np.random.rand(3), expect[1])
    assert random.random() == expect[2]


@pytest.mark.parametrize("case", ["dataset", "shape", "nz", "bins_of_other_weights", "not_a_model",
                                  "missing", "quantbits"])
def test_wrong_models_are_refused_in_one_line(tmp_path, case):
    model = tiny_model(2)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model_best.pt")
    compact_bins(model).save_ranges(ranges_path(str(run), "mnist", 2, 5))
    spec, kw = str(run / "model_best.pt"), dict(dataset="mnist", quantbits=5)
    if case == "dataset":
        pkg = package.write_package(str(tmp_path / "pkg"), model.state_dict(), model.architecture(),
                                    compact_bins(model), "m", "mnist", "ema")
        spec, kw, expect = pkg, dict(dataset="cifar"), "is a mnist model, not a cifar one"
    elif case == "shape":
        kw["dataset"], expect = "cifar", "codes images shaped (1, 32, 32), but cifar images are (3, 32, 32)"
    elif case == "nz":
        kw["nz"], expect = 4, "has nz=2, not --nz 4"
    elif case == "bins_of_other_weights":
        compact_bins(model, fingerprint="0" * 64).save_ranges(ranges_path(str(run), "mnist", 2, 5))
        expect = "were derived from other weights"
    elif case == "not_a_model":
        torch.save({"x": torch.zeros(2)}, run / "model_best.pt")
        expect = "not a Bit-Swap HVAE state dict"
    elif case == "missing":
        spec, expect = str(run / "nope.pt"), "nope.pt not found"
    else:
        kw["quantbits"], expect = 6, "no bins for mnist nz=2 q=6"
    with pytest.raises(package.ModelError) as info:
        package.load(spec, **kw)
    assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_authors_bins_without_fingerprint_load_beside_plain_weights(tmp_path):
    """The authors' layout: a plain state dict, and the two bins tensors in a
    bins folder (no fingerprint): accepted as before."""
    model = tiny_model(2)
    torch.save(model.state_dict(), tmp_path / "authors_nz2.pt")
    LatentBins.prior_only(2, 256, 4).save(str(tmp_path / "bins"), "mnist")
    assert all(os.path.exists(p) for p in bins_paths(str(tmp_path / "bins"), "mnist", 2, 4))
    loaded = package.load(str(tmp_path / "authors_nz2.pt"), dataset="mnist", quantbits=4,
                          bins_dir=str(tmp_path / "bins"))
    assert loaded.bins.weights_fingerprint is None and loaded.bins.K == 16


def test_package_refuses_a_replaced_file_and_overwrites_only_with_force(tmp_path):
    model = tiny_model(2)
    pkg = package.write_package(str(tmp_path / "pkg"), model.state_dict(), model.architecture(),
                                compact_bins(model), "m", "mnist", "raw")
    desc = json.loads(open(os.path.join(pkg, "model.json")).read())
    assert desc["weights"]["kind"] == "raw" and desc["bins"]["sha256"]
    with pytest.raises(package.ModelError, match="exists; pass --force"):
        package.write_package(pkg, model.state_dict(), model.architecture(), compact_bins(model),
                              "m", "mnist", "raw")
    bins_file = os.path.join(pkg, "bins.pt")
    compact_bins(model, quantbits=5).save_ranges(bins_file)          # other bytes, same shape
    with pytest.raises(package.ModelError, match="bins.pt does not match the SHA-256"):
        package.load(pkg)
    with pytest.raises(package.ModelError, match="were derived from other weights"):
        package.write_package(pkg, model.state_dict(), model.architecture(),
                              compact_bins(model, fingerprint="1" * 64), "m", "mnist", "raw", force=True)


def test_shipped_names_and_defaults():
    assert {"demo", "mnist-nz2", "mnist-nz4", "mnist-nz8"} <= set(package.shipped_names())
    assert package.shipped_default("mnist", 8) == "mnist-nz8"
    assert package.shipped_default("imagenetcrop") == "demo"
    assert package.shipped_default("cifar", 8) is None
    from utils.experiment import default_params
    assert default_params("mnist") == "mnist-nz8" and default_params("mnist", 4) == "mnist-nz4"
    assert default_params("imagenetcrop") == "demo"          # the photo model, nz=2
    with pytest.raises(cli.BadInput, match="no shipped mnist model with nz=3"):
        default_params("mnist", 3)


# ------------------------------------------------------------------ utils/cli.py, utils/device.py

def test_run_main_exit_statuses(capsys):
    def bad():
        raise cli.BadInput("no such \x1b[1mthing\x1b[0m\nsecond line")

    def failed():
        raise cli.RunFailure("it broke")

    def interrupted():
        raise KeyboardInterrupt
    assert cli.run_main("p", lambda: None) == 0
    assert cli.run_main("p", lambda: 0) == 0
    assert cli.run_main("p", bad) == 2
    assert capsys.readouterr().err == "p: error: no such thing\n"
    assert cli.run_main("p", failed) == 1
    assert capsys.readouterr().err == "p: error: it broke\n"
    assert cli.run_main("p", interrupted) == 130


def test_atomic_output_leaves_the_old_file_on_failure_and_uses_usual_permissions(tmp_path):
    path = tmp_path / "out.bin"
    cli.write_atomic(str(path), b"old")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == cli.default_file_mode() and mode & 0o044     # readable by others, like any tool's
    with pytest.raises(RuntimeError):
        with cli.atomic_output(str(path)) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    with pytest.raises(cli.BadInput, match="cannot write"):
        cli.write_atomic(str(tmp_path / "out.bin" / "x"), b"")


def test_check_output_path(tmp_path):
    (tmp_path / "in.png").write_bytes(b"x")
    (tmp_path / "old.bsw").write_bytes(b"y")
    (tmp_path / "alias.png").symlink_to(tmp_path / "in.png")
    for path, force, word in ((tmp_path, False, "is a directory"),
                              (tmp_path / "old.bsw", False, "--force"),
                              (tmp_path / "alias.png", True, "is the input file"),
                              (tmp_path / "no" / "x", False, "does not exist")):
        with pytest.raises(cli.BadInput, match=word):
            cli.check_output_path(str(path), force, inputs=[str(tmp_path / "in.png")])
    cli.check_output_path(str(tmp_path / "new.bsw"), inputs=[str(tmp_path / "in.png")])


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(cli.BadInput, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(cli.BadInput, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(cli.BadInput, match="CUDA is not available"):
            resolve_device("auto", gpu=0)        # the paper's --gpu 0
    with pytest.raises(cli.BadInput, match="disagree"):
        resolve_device("cpu", gpu=1)


def test_help_shows_defaults(capsys):
    p = cli.parser("x", "demo")
    p.add_argument("--width", type=int, default=61)
    p.add_argument("--data-root", default="data", help="where the data are")
    p.add_argument("--out", default=None, help="folder")
    p.add_argument("--flag", action="store_true", help="switch")
    text = p.format_help()
    assert "(default: 61)" not in text and "default: 61" in text
    assert "where the data are (default: data)" in text
    assert "folder\n" in text and "switch\n" in text and "None" not in text and "False" not in text
