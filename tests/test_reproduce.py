"""scripts/reproduce_mnist.py end to end on a tiny synthetic MNIST (idx files)
with tiny checkpoints trained for two steps by the project's own trainer:
bins derived, both schemes coded and decoded, codecs, figures, and a report
whose numbers are the ones in the result files."""
import json
import os
import re

import numpy as np
import pytest
import torch

from model import train as T
from synthetic_data import write_mnist
from scripts import reproduce_mnist as R

TINY = ["--width", "8", "--zchannels", "1", "--nprocessing", "1", "--blocks", "2",
        "--batch", "16", "--init-batches", "1", "--epochs", "1", "--interval", "1",
        "--no-progress", "--threads", "1", "--log-every", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_tiny(root, runs, nz, capsys):
    out = runs / f"mnist_nz{nz}"
    assert T.main("mnist", TINY + ["--nz", str(nz), "--data-root", str(root),
                                   "--out", str(out)]) == 0
    (runs / f"mnist_nz{nz}.log").write_text(capsys.readouterr().out)   # the stdout log
    return out


def row(text, label):
    """Cells of the first table row starting with ``| label |``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_reproduce_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    write_mnist(str(data), n_train=32, n_test=12)
    runs = tmp_path / "runs"
    for nz in (1, 2):
        train_tiny(data, runs, nz, capsys)
    out, bins = tmp_path / "repro", tmp_path / "bins"
    argv = ["--nz", "1,2", "--params-dir", str(runs), "--bins", str(bins), "--quantbits", "6",
            "--samples-per-bin", "2", "--experiments", "2", "--images", "3",
            "--data-root", str(data), "--out", str(out), "--threads", "1"]
    assert R.main(argv) == 0, capsys.readouterr().err
    report_path = out / "REPRODUCTION.md"
    text = report_path.read_text()
    report = json.loads((out / "reproduction.json").read_text())

    # the command is stated, bins were derived (compact only), figures exist
    assert "python scripts/reproduce_mnist.py " + " ".join(argv) in text
    assert sorted(os.listdir(bins)) == ["mnist_nz1_zranges6.pt", "mnist_nz2_zranges6.pt"]
    for fig in ("mnist_cma.png", "mnist_layers.png"):
        assert (out / fig).stat().st_size > 1000 and f"]({fig})" in text

    for nz in (1, 2):
        section = text.split(f"### nz = {nz}")[1].split("###")[0]
        for col, scheme in ((0, "bitswap"), (1, "bbans")):
            prefix = out / "results" / f"mnist{nz}" / f"{scheme}_6bits"
            summary = json.loads(open(f"{prefix}_summary.json").read())
            assert summary["decoded"] and summary["experiments"] == 2 and summary["images"] == 3
            # numbers recomputed from the raw arrays, independently of the summary
            a = {k: np.load(f"{prefix}_{k}.npy") for k in (
                "nets", "elbos", "elbos_coded", "cmas", "cmas_strict", "initial",
                "initial_strict")}
            expect = {"-ELBO (fresh posterior sample, as the paper)": a["elbos"].mean(),
                      "-ELBO at the coded latents": a["elbos_coded"].mean(),
                      "net": a["nets"].mean(),
                      "net - ELBO": (a["nets"] - a["elbos"]).mean(),
                      "coder overhead (net - coded -ELBO)": (a["nets"] - a["elbos_coded"]).mean(),
                      "CMA@1, paper's initial bits": a["cmas"][:, 0].mean(),
                      "CMA@3, paper's initial bits": a["cmas"][:, 2].mean(),
                      "CMA@1, strict initial bits": a["cmas_strict"][:, 0].mean()}
            for label, value in expect.items():
                cells = row(section, label)
                assert cells[col] == f"{value:.4f}", (nz, scheme, label, cells)
                assert cells[col + 4] == f"{value * 1024 / 784:.4f}"
            assert report["runs"][nz - 1][scheme]["summary"] == summary["summary"]
            assert summary["results_format"] == 2
            for label, key in (("initial bits, paper's definition (bits)", "initial"),
                               ("initial bits, strict (bits)", "initial_strict")):
                assert row(section, label)[col] == f"{a[key].max(1).mean():.1f}"
        # BB-ANS's first image pays for the initial bits: its CMA@1 is above its net
        assert float(row(section, "CMA@1, paper's initial bits")[1]) > float(row(section, "net")[1])

    # paper's numbers beside ours for nz=2 (CMA@100 not compared at 3 images)
    summary_32 = text.split("bits/dim, 32x32:")[1].split("bits per pixel")[0]
    assert "(0.980)" in row(summary_32, "2")[0] and "(2.640)" in row(summary_32, "2")[4]
    assert "(" not in row(summary_32, "2")[6]                 # strict: no paper figure
    assert "(" not in row(summary_32, "2")[2] and "(" not in row(summary_32, "1")[0]

    # classical codecs: the benchmark JSON, same images as the compressors
    bench = json.loads((out / "results" / "benchmark_mnist.json").read_text())
    assert bench["indices"] == report["runs"][0]["bitswap"]["selection"]
    lzma = bench["codecs"]["lzma"]
    assert row(text, "LZMA")[0] == f"{lzma['bits_per_dim_mean']:.4f}"

    # training budget from checkpoint.pt, TensorBoard and the stdout log
    for nz in (1, 2):
        ckpt = torch.load(runs / f"mnist_nz{nz}" / "checkpoint.pt", weights_only=True)
        cells = row(text.split("## Training budget")[1], str(nz))
        assert cells[1:5] == [str(ckpt["epoch"]), str(ckpt["step"]), "16", str(16 * ckpt["step"])]
        assert cells[5] == f"{ckpt['best_elbo']:.4f}"
        assert re.fullmatch(r"\d+ s", cells[6]) and re.fullmatch(r"\d+ s", cells[7])
        assert cells[8] == "cpu"

    # a hand-written discussion survives regeneration (results reused)
    edited = text.replace("*(No discussion written yet: replace this text; it is kept when the report is\n"
                          "regenerated.)*", "OUR WORDS")
    report_path.write_text(edited)
    assert R.main(argv + ["--reuse-results"]) == 0
    again = report_path.read_text()
    assert "OUR WORDS" in again and "No discussion written yet" not in again
    assert "reusing" in capsys.readouterr().out

    # results of an older format are computed again, never reused
    summary_2 = out / "results" / "mnist2" / "bbans_6bits_summary.json"
    old = json.loads(summary_2.read_text())
    summary_2.write_text(json.dumps(dict(old, results_format=1)))
    assert R.main(argv + ["--reuse-results"]) == 0
    log = capsys.readouterr().out
    assert "reusing " + str(summary_2) not in log and "reusing " in log
    assert json.loads(summary_2.read_text())["results_format"] == 2

    # a new checkpoint at the same path: the old bins (derived from the old
    # weights) are refused; with fresh bins its results are recomputed, not
    # reused (the summaries record a fingerprint of the weights and bins)
    best = runs / "mnist_nz1" / "model_best.pt"
    state = torch.load(best, weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, best)
    capsys.readouterr()
    assert R.main(argv + ["--reuse-results"]) == 2
    err = capsys.readouterr().err
    assert "were derived from other weights" in err and err.count("\n") == 1
    os.remove(bins / "mnist_nz1_zranges6.pt")
    summary_1 = out / "results" / "mnist1" / "bitswap_6bits_summary.json"
    before = json.loads(summary_1.read_text())["fingerprint"]
    assert R.main(argv + ["--reuse-results"]) == 0
    log = capsys.readouterr().out
    assert json.loads(summary_1.read_text())["fingerprint"] != before
    assert "reusing " + str(out / "results" / "mnist2") in log
    assert "reusing " + str(out / "results" / "mnist1") not in log
    text = report_path.read_text()

    # --export: packages (float16 weights, their bins, the run's budget in
    # model.json); a report made from the exported packages states the same budget
    from model import package
    shipped = tmp_path / "shipped"
    assert R.main(argv + ["--export", str(shipped)]) == 0
    capsys.readouterr()
    assert R.main(argv + ["--export", str(shipped)]) == 2            # never replaced silently
    assert "exists; pass --force" in capsys.readouterr().err
    assert R.main(argv + ["--export", str(shipped), "--force"]) == 0
    for nz in (1, 2):
        model = package.load(str(shipped / f"mnist-nz{nz}"), dataset="mnist", nz=nz)
        full = torch.load(runs / f"mnist_nz{nz}" / "model_best.pt", weights_only=True)
        half = model.net.state_dict()
        assert half.keys() == full.keys()
        for k, v in half.items():
            assert torch.equal(v, full[k].half().float()), k
        meta = model.info
        ckpt = torch.load(runs / f"mnist_nz{nz}" / "checkpoint.pt", weights_only=True)
        assert meta["training"]["steps"] == ckpt["step"] and meta["weights"]["dtype"] == "float16"
        assert meta["weights"]["kind"] == "ema" and meta["training"]["hardware"]
        assert model.bins.weights_fingerprint == model.weights_fingerprint
    argv2 = [a for a in argv if a not in ("--bins", str(bins))]
    argv2[argv2.index("--out") + 1] = str(tmp_path / "repro2")
    argv2 += ["--params-template", str(shipped) + "/mnist-nz{nz}", "--experiments", "1",
              "--training-hardware", "a test machine"]
    assert R.main(argv2) == 0, capsys.readouterr().err
    text2 = (tmp_path / "repro2" / "REPRODUCTION.md").read_text()
    assert "Checkpoints trained on: a test machine." in text2
    assert "Checkpoints trained on: the machine above." in text
    for nz in (1, 2):
        ckpt = torch.load(runs / f"mnist_nz{nz}" / "checkpoint.pt", weights_only=True)
        cells = row(text2.split("## Training budget")[1], str(nz))
        assert cells[1:3] == [str(ckpt["epoch"]), str(ckpt["step"])]


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert R.main(["--nz", "2", "--params-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reproduce_mnist.py: error: checkpoint(s) not found") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_report_names_paths_inside_the_working_directory_relatively(tmp_path, monkeypatch):
    # the report is committed: a path under the repository must not name this machine's folders
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "models" / "mnist-nz8" / "bins.pt"
    assert R._display_path(str(inside)) == os.path.join("models", "mnist-nz8", "bins.pt")
    outside = os.path.join(os.path.dirname(str(tmp_path)), "elsewhere", "bins.pt")
    assert R._display_path(outside) == outside
