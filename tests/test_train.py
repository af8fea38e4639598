"""Training loop: learns on every data format, resumes exactly, survives a
kill, refuses bad input without overwriting anything."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import synthetic_data as sd
from conftest import DATA, ROOT
from model import train as T
from model.config import config_for
from model.distributed import Distributed
from model.hvae import HVAE
from utils.cli import BadInput

TINY = ["--nz", "2", "--width", "8", "--zchannels", "2", "--nprocessing", "1", "--blocks", "2",
        "--batch", "16", "--init-batches", "2", "--no-progress", "--threads", "1",
        "--log-every", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_main(dataset, root, out, *extra):
    return T.main(dataset, TINY + ["--data-root", str(root), "--out", str(out)] + list(extra))


def checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)   # pickle-free


def elbo_of(state_dict, dataset, images):
    cfg = config_for(dataset, nz=2, width=8, zchannels=2, nprocessing=1, blocks=2)
    model = HVAE.from_config(cfg)
    model.load_state_dict(state_dict)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        return sum(model(images)[1]["elbo"].item() for _ in range(3)) / 3


@pytest.mark.parametrize("dataset", ["mnist", "cifar", "imagenet", "imagenetcrop"])
def test_a_few_steps_reduce_the_loss(tmp_path, dataset):
    from utils.data import training_datasets
    sd.WRITERS[dataset](str(tmp_path / "data"))
    out = tmp_path / "run"
    assert run_main(dataset, tmp_path / "data", out, "--max-steps", "1", "--interval", "100") == 0
    start = checkpoint(out)
    assert start["step"] == 1
    assert run_main(dataset, tmp_path / "data", out, "--resume", str(out),
                    "--max-steps", "16", "--interval", "100") == 0
    end = checkpoint(out)
    assert end["step"] == 16
    train_set, _ = training_datasets(dataset, str(tmp_path / "data"))
    images = torch.stack([train_set[i][0] for i in range(16)])
    before, after = elbo_of(start["model"], dataset, images), elbo_of(end["model"], dataset, images)
    assert after < before - 0.05, (before, after)


def assert_same_state(a, b):
    for key in ("step", "epoch", "batch_in_epoch", "best_elbo"):
        assert a[key] == b[key], key
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_stop_and_resume_equals_uninterrupted_run(tmp_path):
    sd.write_mnist(str(tmp_path / "data"))          # 64 images: 4 steps per epoch
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main("mnist", tmp_path / "data", whole, "--max-steps", "10", "--interval", "1") == 0
    assert run_main("mnist", tmp_path / "data", parts, "--max-steps", "5", "--interval", "1") == 0
    assert checkpoint(parts)["step"] == 5 and checkpoint(parts)["batch_in_epoch"] == 1
    assert run_main("mnist", tmp_path / "data", parts, "--resume", str(parts),
                    "--max-steps", "10", "--interval", "1") == 0
    a, b = checkpoint(whole), checkpoint(parts)
    assert a["step"] == 10 and a["epoch"] == 2 and a["best_elbo"] < float("inf")
    assert_same_state(a, b)
    best_a = torch.load(whole / "model_best.pt")
    best_b = torch.load(parts / "model_best.pt")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    # model_best.pt is a plain state dict in the authors' layout
    assert set(best_a) == set(HVAE.from_config(config_for(
        "mnist", nz=2, width=8, zchannels=2, nprocessing=1, blocks=2)).state_dict())
    # TensorBoard: scalars, per-layer terms and image grids were logged
    events = b"".join(p.read_bytes() for p in (whole / "logs").iterdir())
    for tag in (b"train/elbo", b"train/kl_layer2", b"train/grad_norm", b"train/lr",
                b"test/elbo", b"test/samples", b"test/reconstructions"):
        assert tag in events, tag


def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL at an arbitrary moment after the first checkpoint (maybe in
    the middle of writing one): the run resumes to exactly the state of an
    uninterrupted one.  The killed process is frozen (SIGSTOP) as soon as a
    checkpoint is seen, so it cannot run to its end first, whatever the
    machine's speed; it has no step limit of its own."""
    sd.write_mnist(str(tmp_path / "data"))
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    args = TINY + ["--data-root", str(tmp_path / "data"), "--interval", "2"]
    assert T.main("mnist", args + ["--out", str(ref), "--max-steps", "24"]) == 0
    cmd = [sys.executable, os.path.join(ROOT, "model", "mnist_train.py")] + args + [
        "--out", str(killed), "--checkpoint-minutes", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)     # frozen wherever it is, maybe mid-write
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    step = checkpoint(killed)["step"]
    assert 1 <= step < 24, step
    assert T.main("mnist", args + ["--out", str(killed), "--resume", str(killed),
                                   "--max-steps", "24"]) == 0
    assert_same_state(checkpoint(ref), checkpoint(killed))


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    """SIGTERM ends an unbounded run cleanly (status 0) with a checkpoint of
    the step it reached, from which it resumes exactly."""
    sd.write_mnist(str(tmp_path / "data"))
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    args = TINY + ["--data-root", str(tmp_path / "data"), "--interval", "100"]
    cmd = [sys.executable, os.path.join(ROOT, "model", "mnist_train.py")] + args + [
        "--out", str(stopped), "--checkpoint-minutes", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (stopped / "checkpoint.pt").exists():     # inside the training loop
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    step = checkpoint(stopped)["step"]
    assert step >= 1 and f"stopped at epoch {checkpoint(stopped)['epoch']}, step {step}" in out
    assert T.main("mnist", args + ["--out", str(ref), "--max-steps", str(step + 3)]) == 0
    assert T.main("mnist", args + ["--resume", str(stopped), "--max-steps", str(step + 3)]) == 0
    assert_same_state(checkpoint(ref), checkpoint(stopped))


def test_bad_inputs_fail_cleanly_and_overwrite_nothing(tmp_path, capsys, monkeypatch):
    sd.write_mnist(str(tmp_path / "data"))
    out = tmp_path / "run"
    assert run_main("mnist", tmp_path / "data", out, "--nz", "0") == 2          # bad input: 2
    assert "--nz must be >= 1" in capsys.readouterr().err
    assert run_main("mnist", tmp_path / "data", out, "--max-steps", "2") == 0
    saved = (out / "checkpoint.pt").read_bytes()
    # another configuration's checkpoint
    assert run_main("mnist", tmp_path / "data", out, "--width", "10", "--resume", str(out)) == 2
    assert "width=8" in capsys.readouterr().err
    # a fresh run into a folder holding a checkpoint
    assert run_main("mnist", tmp_path / "data", out) == 2
    assert "--resume" in capsys.readouterr().err
    # NaN loss: stop with a message, keep the last good checkpoint
    real_forward = HVAE.forward

    def nan_forward(self, x, free_bits=1.0):
        objective, terms = real_forward(self, x, free_bits)
        return objective * float("nan"), terms
    monkeypatch.setattr(HVAE, "forward", nan_forward)
    assert run_main("mnist", tmp_path / "data", out, "--resume", str(out), "--max-steps", "5") == 1
    assert "loss became nan" in capsys.readouterr().err       # a failure at run time: 1
    monkeypatch.undo()
    assert (out / "checkpoint.pt").read_bytes() == saved
    # missing data
    assert run_main("mnist", tmp_path / "nowhere", tmp_path / "r2") == 2
    assert "--download" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    # a global batch that does not split over the ranks
    cfg, args = T.parse_args("mnist", TINY + ["--data-root", str(tmp_path / "data"),
                                             "--out", str(tmp_path / "r3")])
    with pytest.raises(BadInput, match="not divisible by the 3 ranks"):
        T.Trainer(cfg, args, Distributed("torch", 0, 3, 0))


def test_starts_from_a_reference_layout_state_dict(tmp_path, capsys):
    """--resume with a plain state dict (how the authors' checkpoints come)."""
    sd.write_mnist(str(tmp_path / "data"))
    entry = torch.load(os.path.join(DATA, "reference_vectors.pt"))["mnist_like"]
    c = entry["config"]
    weights = tmp_path / "authors.pt"
    torch.save(entry["state_dict"], weights)
    arch = ["--nz", str(c["nz"]), "--width", str(c["reswidth"]), "--zchannels", "1",
            "--nprocessing", str(c["nprocessing"]), "--blocks", str(c["resdepth"])]
    base = TINY + ["--data-root", str(tmp_path / "data"), "--max-steps", "1", "--lr", "1e-12", "--schedule", "0",
                   "--interval", "100"]
    assert T.main("mnist", base + arch + ["--out", str(tmp_path / "ok"), "--resume", str(weights)]) == 0
    got = checkpoint(tmp_path / "ok")["model"]
    for k, v in entry["state_dict"].items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
    assert T.main("mnist", base + ["--out", str(tmp_path / "bad"), "--resume", str(weights)]) == 2
    assert "does not fit this model" in capsys.readouterr().err
    # without architecture flags: the architecture is read off the weights
    plain = ["--batch", "16", "--init-batches", "2", "--no-progress", "--threads", "1",
             "--data-root", str(tmp_path / "data"), "--max-steps", "1", "--lr", "1e-12",
             "--schedule", "0", "--interval", "100"]
    assert T.main("mnist", plain + ["--out", str(tmp_path / "auto"), "--resume", str(weights)]) == 0
    assert checkpoint(tmp_path / "auto")["config"]["width"] == c["reswidth"]
    # ... also from a shipped package, by name
    assert T.main("mnist", plain + ["--out", str(tmp_path / "pkg"), "--resume", "mnist-nz2"]) == 0
    assert checkpoint(tmp_path / "pkg")["architecture"]["width"] == 32
    assert T.main("cifar", plain + ["--out", str(tmp_path / "c"), "--resume", "mnist-nz2"]) == 2
    assert "is a mnist model, not cifar" in capsys.readouterr().err


def test_ema_and_learning_rate_schedule():
    model = torch.nn.Linear(2, 1)
    ema = T.EMA(model, 0.999)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 10 ** 6)          # past the warm-up: the plain 0.999 average
    torch.testing.assert_close(ema.shadow["weight"], 0.999 * before["weight"] + 0.001 * model.weight)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    ema.update(model, 0)                # first update: d = 1/10, mostly the new weights
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * before["weight"] + 0.9 * model.weight)
    assert ema.decay_at(90) == pytest.approx(0.91) and ema.decay_at(10 ** 5) == 0.999
    cfg = config_for("imagenet")
    assert T.learning_rate(cfg, 0) == 2e-3 and T.learning_rate(cfg, 100_000) == 2e-3
    assert T.learning_rate(cfg, 100_010) == pytest.approx(2e-3 * 0.999995 ** 10)
    assert T.learning_rate(cfg, 10 ** 9) == 5e-4
    mnist = config_for("mnist", schedule=False)
    assert T.learning_rate(mnist, 5000) == 2e-3
    assert T.learning_rate(config_for("mnist", lr=1e-4), 10 ** 6) == 1e-4


def test_a_run_from_trained_weights_averages_them_without_warm_up(tmp_path):
    """From a package's weights the average starts at 0.999 (no warm-up),
    and a resume of that run keeps doing so; a run from random weights and
    a checkpoint that does not record the kind keep the warm-up."""
    sd.write_mnist(str(tmp_path / "data"))
    first = tmp_path / "first"
    assert run_main("mnist", tmp_path / "data", first, "--max-steps", "2", "--interval", "100") == 0
    assert checkpoint(first)["ema_warmup"] is True
    start = torch.load(first / "model_best.pt", weights_only=True)
    warm = tmp_path / "from_weights"
    assert run_main("mnist", tmp_path / "data", warm, "--resume", str(first / "model_best.pt"),
                    "--max-steps", "1", "--interval", "100") == 0
    one = checkpoint(warm)
    assert one["ema_warmup"] is False and one["step"] == 1
    for k, v in one["ema"].items():   # the warm-up would give 0.1 * start + 0.9 * weights
        torch.testing.assert_close(v, 0.999 * start[k] + 0.001 * one["model"][k])
    legacy = tmp_path / "legacy"
    shutil.copytree(warm, legacy)
    old = checkpoint(legacy)
    del old["ema_warmup"]
    torch.save(old, legacy / "checkpoint.pt")
    for out, d in ((warm, 0.999), (legacy, 2 / 11)):
        assert run_main("mnist", tmp_path / "data", out, "--resume", str(out), "--max-steps", "2",
                        "--interval", "100") == 0
        two = checkpoint(out)
        assert two["step"] == 2
        for k, v in two["ema"].items():
            torch.testing.assert_close(v, d * one["ema"][k] + (1 - d) * two["model"][k])


def test_a_bf16_run_evaluates_its_weights_in_float32(tmp_path):
    """--precision bf16 speeds up the training steps only: the curve's held-out
    figure is the float32 network's (a copy of the training network would
    keep its bf16 autocast hooks)."""
    import csv
    from torch.utils.data import Subset
    from model import speed
    from utils.data import training_datasets
    sd.write_mnist(str(tmp_path / "data"))
    train_set, test_set = training_datasets("mnist", str(tmp_path / "data"))
    torch.manual_seed(0)
    net = HVAE.from_config(config_for("mnist", nz=2, width=8, zchannels=2, nprocessing=1, blocks=2))
    net.initialize(torch.stack([train_set[i][0] for i in range(16)]))
    with torch.no_grad():   # residual layers start at zero output: give the trunks some work
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.save(net.state_dict(), tmp_path / "start.pt")
    out = tmp_path / "run"
    assert run_main("mnist", tmp_path / "data", out, "--resume", str(tmp_path / "start.pt"),
                    "--max-steps", "3", "--precision", "bf16", "--curve-minutes", "100",
                    "--curve-images", "16", "--interval", "100") == 0
    with open(out / "curve.csv") as f:
        logged = float(list(csv.DictReader(f))[-1]["test_elbo"])
    # the run records its arithmetic, and --resume keeps it unless given
    assert T.parse_args("mnist", ["--resume", str(out)])[1].precision == "bf16"
    assert T.parse_args("mnist", ["--resume", str(out), "--precision", "fp32"])[1].precision == "fp32"
    subset = Subset(test_set, range(16))
    net.load_state_dict(torch.load(out / "model_last.pt", weights_only=True))  # the EMA weights

    def curve_elbo(model):
        return T.evaluate(model, subset, 16, "cpu", Distributed(), 0, seed=T.CURVE_SEED)["elbo"]
    plain = curve_elbo(net)
    bf16 = curve_elbo(speed.apply_training_speed(net, "bf16", device_type="cpu"))
    # the two evaluations differ by several units of the curve's 5 decimals
    assert abs(bf16 - plain) > 3e-5, (bf16, plain)
    assert logged == pytest.approx(plain, abs=5.1e-6), (logged, plain, bf16)


def test_curve_points_record_the_budget_and_leave_training_unchanged(tmp_path):
    import csv
    sd.write_mnist(str(tmp_path / "data"))
    plain, curved = tmp_path / "plain", tmp_path / "curved"
    assert run_main("mnist", tmp_path / "data", plain, "--max-steps", "5", "--interval", "100") == 0
    curve = ["--curve-minutes", "0", "--curve-images", "8", "--interval", "100"]
    assert run_main("mnist", tmp_path / "data", curved, "--max-steps", "3", *curve) == 0
    assert run_main("mnist", tmp_path / "data", curved, "--resume", str(curved),
                    "--max-steps", "5", *curve) == 0
    # evaluations draw from their own seeded stream: the training is untouched
    assert_same_state(checkpoint(plain), checkpoint(curved))
    with open(curved / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    # a point after every step (--curve-minutes 0), the one at a stop taken once
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["images"]) for r in rows] == [16, 32, 48, 64, 80]
    for key in ("wall_s", "cpu_s"):
        values = [float(r[key]) for r in rows]
        assert values[0] > 0 and all(b >= a for a, b in zip(values, values[1:])), (key, values)
    assert all(r["test_images"] == "8" and r["threads"] == "1" for r in rows)
    elbos = [float(r["test_elbo"]) for r in rows]
    assert all(0 < e < 20 for e in elbos)
    import json
    assert json.loads((curved / "config.json").read_text())["batch"] == 16
    budget = checkpoint(curved)["budget"]
    assert budget["images"] == 80 and budget["wall_s"] == pytest.approx(float(rows[-1]["wall_s"]), abs=0.1)


def test_resume_reads_settings_and_folder_and_says_when_there_is_nothing_to_do(tmp_path, capsys):
    """--resume RUN alone continues RUN (its architecture and output
    folder); a bounded run that never evaluated still ends with
    model_best.pt; a resume already at --max-steps says so and writes nothing."""
    from model import package
    sd.write_mnist(str(tmp_path / "data"))
    out = tmp_path / "run"
    assert run_main("mnist", tmp_path / "data", out, "--max-steps", "2", "--interval", "100",
                    "--curve-minutes", "30", "--curve-images", "7") == 0
    assert (out / "model_best.pt").exists()          # no evaluation was due: exported at the end
    # the run's data folder and curve options come back with --resume RUN, unless given
    _, resumed = T.parse_args("mnist", ["--resume", str(out)])
    assert (resumed.data_root, resumed.curve_minutes, resumed.curve_images) == (str(tmp_path / "data"), 30, 7)
    assert resumed.precision == "fp32"
    _, given = T.parse_args("mnist", ["--resume", str(out), "--data-root", "elsewhere", "--curve-images", "9"])
    assert (given.data_root, given.curve_minutes, given.curve_images) == ("elsewhere", 30, 9)
    assert T.parse_args("mnist", [])[1].data_root == "data"
    # a setting given with --resume RUN replaces the run's; the others stay
    assert T.parse_args("mnist", ["--resume", str(out)])[0].dropout == 0.2
    assert T.parse_args("mnist", ["--resume", str(out), "--dropout", "0.1"])[0].dropout == 0.1
    best = package.load(str(out / "model_best.pt"), dataset="mnist", need_bins=False)
    assert best.net.architecture()["width"] == 8 and best.weights_kind == "ema"
    tail = capsys.readouterr().out
    assert f"python discretization.py mnist --params {out}" in tail
    bare = ["--no-progress", "--threads", "1", "--resume", str(out)]
    assert T.main("mnist", bare + ["--max-steps", "4"]) == 0      # no --width, no --out
    assert checkpoint(out)["step"] == 4 and checkpoint(out)["config"]["width"] == 8
    saved = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert T.main("mnist", bare + ["--max-steps", "4"]) == 0
    said = capsys.readouterr().out
    assert "nothing to do" in said and "--max-steps 4" in said
    assert (out / "checkpoint.pt").read_bytes() == saved
    # a checkpoint of another dataset is refused in one line
    assert T.main("cifar", bare + ["--max-steps", "5"]) == 2
    assert "is a mnist run, not cifar" in capsys.readouterr().err


def test_ema_decay_given_with_resume_changes_only_the_average(tmp_path, capsys):
    """--ema-decay with --resume RUN continues RUN's raw training exactly and
    folds the weights into the average at the new rate (recorded in the
    checkpoint); a decay outside [0, 1) is refused in one line."""
    sd.write_mnist(str(tmp_path / "data"))
    out = tmp_path / "run"
    assert run_main("mnist", tmp_path / "data", out, "--max-steps", "2", "--interval", "100") == 0
    other = tmp_path / "other"
    shutil.copytree(out, other)
    before = checkpoint(other)["ema"]
    bare = ["--no-progress", "--threads", "1", "--max-steps", "3", "--resume"]
    assert T.main("mnist", bare + [str(out)]) == 0
    assert T.main("mnist", bare + [str(other), "--ema-decay", "0.1"]) == 0
    plain, fast = checkpoint(out), checkpoint(other)
    assert (plain["config"]["ema_decay"], fast["config"]["ema_decay"]) == (0.999, 0.1)
    assert all(torch.equal(plain["model"][k], fast["model"][k]) for k in plain["model"])
    # one step at the new rate (the warm-up cap (1 + t) / (10 + t) is 0.25 here)
    for k, v in fast["ema"].items():
        torch.testing.assert_close(v, 0.1 * before[k] + 0.9 * fast["model"][k])
    assert not all(torch.equal(plain["ema"][k], fast["ema"][k]) for k in plain["ema"])
    assert T.parse_args("mnist", ["--resume", str(other)])[0].ema_decay == 0.1
    capsys.readouterr()
    assert T.main("mnist", bare + [str(other), "--ema-decay", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ema-decay must be in [0, 1)" in err[0]


def test_help_states_defaults_and_step_semantics(capsys):
    with pytest.raises(SystemExit) as exit_info:
        T.parse_args("mnist", ["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(paper: 61 at nz=8" in text and "(paper: 0.2)" in text      # mnist width, dropout
    assert "steps of earlier sessions count" in text and "minutes of this session" in text
    assert "default: auto" in text and "default: data" in text


def test_hflip_is_an_imagenetcrop_setting_kept_by_resume(tmp_path, capsys):
    """--hflip 1 reaches the patch loader, is recorded in the checkpoint and
    comes back with --resume; a run recorded before the setting existed
    resumes without it; MNIST refuses it with a one-line error."""
    sd.write_imagenetcrop(str(tmp_path / "data"))
    out = tmp_path / "run"
    assert run_main("imagenetcrop", tmp_path / "data", out, "--max-steps", "1", "--interval", "100",
                    "--hflip", "1") == 0
    assert checkpoint(out)["config"]["hflip"] is True
    cfg, args = T.parse_args("imagenetcrop", ["--resume", str(out)])
    assert cfg.hflip is True
    assert T.Trainer(cfg, args, Distributed()).train_set.hflip
    assert T.parse_args("imagenetcrop", ["--resume", str(out), "--hflip", "0"])[0].hflip is False
    old = checkpoint(out)
    del old["config"]["hflip"]
    torch.save(old, out / "checkpoint.pt")
    assert T.parse_args("imagenetcrop", ["--resume", str(out)])[0].hflip is False
    sd.write_mnist(str(tmp_path / "mnist"))
    capsys.readouterr()
    assert run_main("mnist", tmp_path / "mnist", tmp_path / "m", "--max-steps", "1", "--hflip", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "--hflip applies to imagenetcrop patches only" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()
