"""scripts/train_shipped.py (the one-command GPU run) on the CPU with tiny
models and seconds of training; its data on the device (utils/device_data.py),
the speed options (model/speed.py) and the carry preparation."""
import copy
import json
import os
import sys
import tarfile

import numpy as np
import pytest
import torch

import synthetic_data as sd
from conftest import ROOT
from model import package, speed
from model.hvae import HVAE
from utils import device_data as dd

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import prepare_device_carry  # noqa: E402
import train_shipped  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--device", "cpu", "--photo-width", "8", "--photo-zchannels", "2", "--photo-blocks", "1",
        "--photo-nprocessing", "1", "--mnist-nz", "3", "--mnist-width", "8", "--photo-batch", "8",
        "--mnist-batch", "8", "--init-images", "16", "--quantbits", "6", "--samples-per-bin", "2",
        "--select-images", "12", "--curve-images", "8", "--curve-minutes", "0.02",
        "--checkpoint-minutes", "0.02", "--roundtrip-images", "1", "--minutes", "0.05"]


def write_carry(folder):
    """A carry folder in prepare_device_carry.py's layout, synthetic images."""
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "mnist.npz"), train=sd.blobs(48, 1, 28, 28, 1)[:, 0],
                        test=sd.blobs(16, 1, 28, 28, 2)[:, 0])
    photos = os.path.join(folder, "photos", "imagenetcrop")
    sd.write_png_folder(os.path.join(photos, "train", "x1"), 4, 48, 40, seed=3)
    sd.write_png_folder(os.path.join(photos, "train", "x1_4"), 2, 20, 36, seed=4)  # < one patch
    np.save(os.path.join(photos, "test_32x32.npy"),
            sd.blobs(16, 3, 32, 32, 6).transpose(0, 2, 3, 1))
    with open(os.path.join(folder, "photos", "heldout_parts.json"), "w") as f:
        json.dump({"native": 10, "downscaled": 6}, f)
    return folder


@pytest.fixture(scope="module")
def carry(tmp_path_factory):
    return write_carry(str(tmp_path_factory.mktemp("carry")))


def run(carry, out, *extra):
    return train_shipped.main(TINY + ["--carry", carry, "--out", str(out)] + list(extra))


def unpack(archive, into):
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.fixture(scope="module")
def finished(carry, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # (function-scoped fixtures come after this one)
    try:
        status = run(carry, out)
    finally:
        torch.set_num_threads(threads)
    return status, out


def test_whole_command_trains_packs_and_its_archives_load(finished, carry, tmp_path):
    status, out = finished
    assert status == 0
    names = {"photos-nz2-w8", "mnist-nz3"}
    assert sorted(os.listdir(out)) == sorted(["run.log", "summary.json"] +
                                             [f"{n}.tar.gz" for n in names])
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["status"] == "ok" and set(summary["models"]) == names
    mnist_test = dd.load_carried_mnist(carry)[1]
    _, photo_test, parts = dd.load_carried_photos(carry)
    assert parts == {"native": slice(0, 10), "downscaled": slice(10, 16)}
    for name in names:
        folder = unpack(os.path.join(out, f"{name}.tar.gz"), tmp_path / name)
        assert {"result.json", "train.log", "curve.csv", "checkpoint.pt", name} <= set(os.listdir(folder))
        dataset = "mnist" if name.startswith("mnist") else "imagenetcrop"
        loaded = package.load(str(folder / name), dataset=dataset)      # hashes, bins fit
        desc = json.load(open(folder / name / "model.json"))
        assert desc["weights"]["dtype"] == "float16"
        training = desc["training"]
        assert training["images_seen"] > 0 and training["wall_s"] > 0
        assert "CPU" in training["hardware"] and len(training["sessions"]) == 1
        result = json.load(open(folder / "result.json"))
        assert result["status"] == "done" and "train" in result["stages_s"]
        figures = result["figures"]
        assert figures["steps"] > 2   # more than the fail-fast pass
        # the recorded held-out figure is the package's own, recomputed here
        test = mnist_test if dataset == "mnist" else photo_test
        from model.distributed import Distributed
        from model.train import evaluate
        from utils.data import ArrayImages
        torch.manual_seed(0)
        elbo = evaluate(loaded.net, ArrayImages(test), 8, torch.device("cpu"), Distributed(), 0)["elbo"]
        assert elbo == pytest.approx(figures["heldout_elbo_float16"], abs=1e-4)
        if dataset == "imagenetcrop":   # and apart: native-scale and downscaled patches
            for part, where in parts.items():
                torch.manual_seed(0)
                elbo = evaluate(loaded.net, ArrayImages(test[where]), 8, torch.device("cpu"),
                                Distributed(), 0)["elbo"]
                assert elbo == pytest.approx(figures[f"heldout_elbo_float16_{part}"], abs=1e-4)
        # a fresh Bit-Swap round trip with the unpacked package codes exactly
        from utils.bitsback import BitsBackCoder
        from utils.device import deterministic_torch
        from utils.experiment import code_chains
        with deterministic_torch():
            res = code_chains(BitsBackCoder(loaded.net, loaded.bins), test[-4:].reshape(2, 2, *test.shape[1:]))
        assert np.isfinite(res["nets"]).all() and "decode_s" in res   # decoded, checked per image
        curve = open(folder / "curve.csv").read().splitlines()
        assert curve[0].startswith("step,") and len(curve) >= 2
        ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert ckpt["step"] == figures["steps"]
    log = open(os.path.join(out, "run.log")).read()
    assert "smoke: load and round trip done" in log and "all stages done" in log


def test_a_failing_smoke_stage_stops_before_training_and_leaves_log_and_archives(
        carry, tmp_path, monkeypatch):

    def broken(self, samples_per_bin):
        raise RuntimeError("planted failure in the bins")
    monkeypatch.setattr(train_shipped.ModelRun, "derive_bins", broken)
    out = tmp_path / "out"
    assert run(carry, out) == 1
    assert sorted(os.listdir(out)) == ["mnist-nz3.tar.gz", "photos-nz2-w8.tar.gz", "run.log",
                                       "summary.json"]
    log = open(out / "run.log").read()
    assert "smoke: bins FAILED" in log and "planted failure in the bins" in log
    assert "Traceback" in log and "FAILED in" in log
    summary = json.load(open(out / "summary.json"))
    assert summary["status"] == "failed"
    photos = summary["models"]["photos-nz2-w8"]
    assert photos["status"] == "failed" and "planted failure" in photos["failed"]
    assert "smoke: train steps" in photos["stages_s"] and "train" not in photos["stages_s"]
    assert summary["models"]["mnist-nz3"]["status"] == "incomplete"   # never started
    folder = unpack(out / "photos-nz2-w8.tar.gz", tmp_path / "x")
    assert "planted failure" in open(folder / "train.log").read()
    assert json.load(open(folder / "result.json"))["status"] == "failed"


def test_a_late_failure_keeps_the_finished_model(carry, tmp_path, monkeypatch):
    real = train_shipped.ModelRun.check_package

    def mnist_breaks(self, heldout=True):
        if heldout and self.key == "mnist":
            raise RuntimeError("planted late failure")
        return real(self, heldout)
    monkeypatch.setattr(train_shipped.ModelRun, "check_package", mnist_breaks)
    out = tmp_path / "out"
    assert run(carry, out, "--minutes", "0.02", "--archive-mib", "0.01") == 1
    summary = json.load(open(out / "summary.json"))
    assert summary["models"]["photos-nz2-w8"]["status"] == "done"
    assert summary["models"]["mnist-nz3"]["status"] == "failed"
    folder = unpack(out / "mnist-nz3.tar.gz", tmp_path / "m")
    package.load(str(folder / "mnist-nz3"), dataset="mnist")   # packed before the failure
    # over --archive-mib: the checkpoint stays out, the package stays in, and the log says so
    assert "checkpoint.pt" not in os.listdir(folder)
    assert "checkpoint.pt left out" in open(out / "run.log").read()


def test_missing_data_or_an_earlier_run_in_out_is_bad_input(finished, carry, tmp_path, capsys):
    assert run(str(tmp_path / "nothing"), tmp_path / "out") == 2
    assert "prepare_device_carry.py" in capsys.readouterr().err
    _, out = finished
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    assert run(carry, out) == 2
    assert "--force" in capsys.readouterr().err
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out)} == before   # untouched


# ---------------------------------------------------------------- device data

def test_device_patches_are_windows_of_the_tiles():
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in ((40, 50), (33, 32), (20, 36))]
    data = dd.DevicePatches(tiles, batch=64, device="cpu", seed=1)
    padded = [np.pad(t, ((0, 0), (0, max(0, 32 - t.shape[1])), (0, max(0, 32 - t.shape[2]))),
                     mode="edge") for t in tiles]
    windows = {padded[k][:, i:i + 32, j:j + 32].tobytes(): k for k in range(3)
               for i in range(padded[k].shape[1] - 31) for j in range(padded[k].shape[2] - 31)}
    batch = data.next_batch()
    assert batch.dtype == torch.float32 and batch.shape == (64, 3, 32, 32)
    hits = [windows.get(p.numpy().astype(np.uint8).tobytes()) for p in batch]
    assert None not in hits and set(hits) == {0, 1, 2}
    assert np.array_equal(data.fixed(10, 5), data.fixed(10, 5))
    assert not np.array_equal(data.fixed(10, 5), data.fixed(10, 6))


def test_device_patches_mirror_about_half_of_the_training_patches_with_hflip():
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in ((40, 50), (36, 60))]
    plain = dd.DevicePatches(tiles, batch=256, device="cpu", seed=3).next_batch()
    flipping = dd.DevicePatches(tiles, batch=256, device="cpu", seed=3, hflip=True)
    mirrored = flipping.next_batch()
    # the flip bit is drawn after the position: the same windows, some of them mirrored
    same = (mirrored == plain).flatten(1).all(1)
    flipped = (mirrored == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and not bool((same & flipped).any())
    assert 90 < int(flipped.sum()) < 166
    plain_fixed = dd.DevicePatches(tiles, batch=8, device="cpu", seed=3).fixed(20, 4)
    assert np.array_equal(flipping.fixed(20, 4), plain_fixed)   # init/bins patches never mirrored


def test_a_photo_run_continued_from_an_hflip_checkpoint_mirrors_its_patches(finished, carry,
                                                                            tmp_path, monkeypatch):
    _, first = finished
    folder = unpack(first / "photos-nz2-w8.tar.gz", tmp_path / "p")
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["hflip"] is False
    ckpt["config"]["hflip"] = True
    torch.save(ckpt, tmp_path / "hflip.pt")
    seen, real = [], dd.DevicePatches.next_batch

    def recording(self):
        seen.append(self.hflip)
        return real(self)
    monkeypatch.setattr(dd.DevicePatches, "next_batch", recording)
    assert run(carry, tmp_path / "out", "--models", "photos", "--minutes", "0.01",
               "--photo-from", str(tmp_path / "hflip.pt")) == 0
    assert seen and all(seen)


def test_device_images_cover_every_image_once_per_epoch():
    images = np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1)
    data = dd.DeviceImages(images, batch=8, device="cpu", seed=0)
    seen = torch.cat([data.next_batch().flatten() for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(24)) and data.epoch == 0
    data.next_batch()
    assert data.epoch == 1


# ---------------------------------------------------------------- speed options

def test_bf16_trunks_stay_close_to_float32_and_survive_deepcopy():
    torch.manual_seed(0)
    net = HVAE(xs=(3, 32, 32), nz=2, zchannels=2, width=16, nprocessing=1, resdepth=2)
    x = torch.from_numpy(sd.blobs(8, 3, 32, 32, 1).astype(np.float32))
    net.initialize(x)
    with torch.no_grad():   # conv2 of a residual layer starts at zero output: move off it
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    ref = copy.deepcopy(net)
    speed.apply_training_speed(net, "bf16", device_type="cpu")
    torch.manual_seed(1)
    want = ref(x)[1]["elbo"].item()
    for model in (net, copy.deepcopy(net)):
        torch.manual_seed(1)
        h = model.infer_res0(model.infer_in((x - 127.5) / 127.5))
        assert h.dtype == torch.float32
        got = model(x)[1]["elbo"].item()
        assert got != want and got == pytest.approx(want, rel=2e-2)
    with pytest.raises(ValueError):
        speed.apply_training_speed(net, "fp8")


def test_train_py_precision_flags(tmp_path):
    from model import train as T
    sd.write_mnist(str(tmp_path / "data"))
    argv = ["--nz", "2", "--width", "8", "--zchannels", "2", "--nprocessing", "1", "--blocks", "2",
            "--batch", "16", "--init-batches", "1", "--no-progress", "--max-steps", "2",
            "--interval", "100", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--precision", "bf16", "--channels-last"]
    assert T.main("mnist", argv) == 0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2


# ---------------------------------------------------------------- the carry folder

def test_prepare_device_carry_writes_compact_data(tmp_path):
    P = prepare_device_carry
    root = tmp_path / "data"
    sd.write_mnist(str(root))
    photos = root / "photos"
    sd.write_png_folder(str(photos / "imagenetcrop" / "train" / "x1"), 3, 64, 64, seed=2)
    patches = sd.blobs(4, 3, 32, 32, 3).transpose(0, 2, 3, 1)
    np.save(photos / "imagenetcrop" / "test_32x32.npy", patches)
    np.save(photos / "heldout_patches_native.npy", patches[:3])
    np.save(photos / "heldout_patches_downscaled.npy", patches[3:])
    (photos / "summary.json").write_text("{}")
    carry = tmp_path / "carry"
    assert P.main(["--data-root", str(root), "--carry", str(carry), "--no-wheels",
                   "--photos-mib", "1", "--limit-mib", "1000"]) == 0
    train, test = dd.load_carried_mnist(str(carry))
    from utils.data import load_images
    assert np.array_equal(train[:, :, 2:30, 2:30], load_images("mnist", "train", str(root)))
    assert train.shape[-1] == 32 and len(test) == len(load_images("mnist", "test", str(root)))
    tiles, held, parts = dd.load_carried_photos(str(carry))
    assert len(tiles) == 3 and held.shape == (4, 3, 32, 32)
    assert parts == {"native": slice(0, 3), "downscaled": slice(3, 4)}
    np.save(photos / "heldout_patches_downscaled.npy", patches[2:])   # not the halves any more
    assert P.main(["--data-root", str(root), "--carry", str(carry), "--no-wheels",
                   "--photos-mib", "1", "--limit-mib", "1000"]) == 1
    assert P.main(["--data-root", str(root), "--carry", str(carry), "--no-wheels",
                   "--photos-mib", "1", "--limit-mib", "0.01"]) == 1


def test_readme_device_command_fits_the_device_tool():
    """The README's GPU call: one command line of at most 2,000 characters
    whose benchmark and --deadline-minutes end inside the stated timeout_s,
    carrying the two folders prepare_device_carry.py writes."""
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = [ln for ln in text.splitlines() if "scripts/train_shipped.py --device cuda" in ln
             and ln.startswith("python3 -m pip install")]
    assert len(lines) == 1
    command = lines[0]
    assert len(command) <= 2000 and "--out $OUT" in command and ".whl/*.whl" in command
    assert f"({len(command)} characters" in text.replace("one line, ", "")
    assert '`carry` `[".carry", ".whl"]`' in text
    timeout_s = int(re.search(r"`timeout_s` (\d+)", text).group(1))
    bench_s = int(re.search(r"timeout (\d+) python3 benchmarks/train_bench.py", command).group(1))
    deadline = float(re.search(r"--deadline-minutes ([\d.]+)", command).group(1))
    assert bench_s + 60 * deadline + 30 <= timeout_s <= 600
    args = train_shipped.parse_args(command.split("train_shipped.py", 1)[1].split())
    assert args.minutes < deadline and args.models == ["photos", "mnist"]
    assert os.path.basename(args.carry) == ".carry"
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/.carry/" in ignored and "/.whl/" in ignored


def test_sigterm_during_training_still_archives(carry, tmp_path, monkeypatch):
    import signal
    real = train_shipped.ModelRun.train

    def killed(self, seconds=None, steps=None):
        if seconds is not None:      # the long run, not the fail-fast pass
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, seconds, steps)
    monkeypatch.setattr(train_shipped.ModelRun, "train", killed)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert run(carry, out) == 1
    assert signal.getsignal(signal.SIGTERM) is before
    assert sorted(os.listdir(out)) == ["mnist-nz3.tar.gz", "photos-nz2-w8.tar.gz", "run.log",
                                       "summary.json"]
    assert "terminated by signal" in open(out / "run.log").read()
    summary = json.load(open(out / "summary.json"))
    assert summary["models"]["photos-nz2-w8"]["status"] == "incomplete"
    folder = unpack(out / "photos-nz2-w8.tar.gz", tmp_path / "p")
    assert {"checkpoint.pt", "smoke-package"} <= set(os.listdir(folder))   # not named as final
    assert "photos-nz2-w8" not in os.listdir(folder)


def test_continuing_from_a_package_or_a_checkpoint_accumulates_the_budget(finished, carry, tmp_path):
    _, first = finished
    unpack(first / "photos-nz2-w8.tar.gz", tmp_path / "p")
    unpack(first / "mnist-nz3.tar.gz", tmp_path / "m")
    before_photos = json.load(open(tmp_path / "p" / "photos-nz2-w8" / "model.json"))["training"]
    before_mnist = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    out = tmp_path / "out"
    assert run(carry, out, "--minutes", "0.02", "--photo-from", str(tmp_path / "p" / "photos-nz2-w8"),
               "--mnist-from", str(tmp_path / "m" / "checkpoint.pt")) == 0
    unpack(out / "photos-nz2-w8.tar.gz", tmp_path / "p2")
    unpack(out / "mnist-nz3.tar.gz", tmp_path / "m2")
    photos = json.load(open(tmp_path / "p2" / "photos-nz2-w8" / "model.json"))["training"]
    assert len(photos["sessions"]) == 2 and photos["sessions"][0] == before_photos["sessions"][0]
    assert photos["images_seen"] == before_photos["images_seen"] + photos["sessions"][1]["images_seen"]
    mnist = json.load(open(tmp_path / "m2" / "mnist-nz3" / "model.json"))["training"]
    assert mnist["steps"] > before_mnist["step"]            # the checkpoint's steps go on
    assert mnist["images_seen"] > before_mnist["budget"]["images"]
