"""The benchmark scripts run (tiny sizes): their decode checks hold and they
print one line per configuration."""
import pytest

from benchmarks import compress_bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compress_bench_times_fused_and_separate_heads(capsys):
    compress_bench.main(["--models", "mnist", "--chains", "2", "--steps", "1", "--repeats", "1",
                         "--heads", "fused,separate"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mnist")]
    assert [("fused heads" in ln, "separate heads" in ln) for ln in lines] == [(1, 0), (0, 1)]
    assert all("encode" in ln and "decode" in ln for ln in lines)


def test_compress_bench_rejects_unknown_heads(capsys):
    with pytest.raises(SystemExit) as exc:
        compress_bench.main(["--heads", "fused,other"])
    assert exc.value.code == 2 and "--heads" in capsys.readouterr().err


def test_patch_loader_bench_runs_on_a_photo_folder(tmp_path, capsys):
    from benchmarks import patch_loader_bench
    from tests import synthetic_data as sd
    sd.write_imagenetcrop(str(tmp_path), n_train=3, n_test=2)
    got = patch_loader_bench.main(["--data-root", str(tmp_path), "--patches-per-image", "4",
                                   "--batch", "4", "--batches", "2"])
    assert got["cached"] > 0 and got["uncached"] > 0
    assert "3 training files" in capsys.readouterr().out


def test_demo_bench_sizes_and_portability_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    """--sizes prints the fixed bytes and the size cases (each checked by a
    decode); the photo table's Bit-Swap share; --portability finds no
    changed table with the portable coder."""
    import numpy as np
    from PIL import Image
    from benchmarks import demo_bench
    from model import package
    from utils import container, imagecodec
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 240, 3), dtype=np.uint8)).save(photo)
    monkeypatch.setattr(demo_bench, "SAMPLE", str(photo))
    path = package.random_package(str(tmp_path / "m"), quantbits=8, name="tiny", xs=(3, 32, 32), nz=2,
                                  zchannels=2, width=8, nprocessing=1, resdepth=2)
    model = imagecodec.load_codec_model(path)
    demo_bench.size_cases(model)
    out = capsys.readouterr().out
    assert f"fixed bytes of a container with model 'tiny': {container.fixed_bytes('tiny')}" in out
    assert "1x1 RGB (chelsea pixel)           3      144      141" in out
    assert "raw      0/0/0     raw     8" in out          # 1x1: a strip pixel, no complete block
    assert "raw      0/0/9       -    32" in out          # 96x96 noise: 9 raw blocks, no strips
    demo_bench.photo_table(model, [str(photo)], 1)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("p.png"))
    assert row.split()[1] == "240x240" and row.split()[-3] == "0.0"   # noise: stored raw, no Bit-Swap pixel
    rest = next(line for line in lines if "final heads, container, raw files" in line)
    assert 8.0 < float(rest.split()[-1]) < 8.05                     # all of it: the raw file
    demo_bench.portability(model, [str(photo)], 3)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("batch of 3", "channels_last", "oneDNN off"))]
    assert len(rows) == 3 and all(line.split()[-1] == "0/12" for line in rows)
    assert "portable" in out and "float32, no grid" in out


def test_train_bench_prints_one_rate_per_setting(capsys):
    import torch
    from benchmarks import train_bench
    threads = torch.get_num_threads()
    try:
        train_bench.main(["--nz", "2", "--width", "8", "--batch", "4,8", "--precision", "fp32,bf16",
                          "--channels-last", "both", "--steps", "1", "--repeats", "1",
                          "--warmup", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    for batch in (4, 8):
        for precision in ("fp32", "bf16"):
            for layout in ("NCHW", "channels_last"):
                line = next(ln for ln in lines if ln.startswith(f"{layout} {precision} ")
                            and f"batch={batch} " in ln)
                assert float(line.split("median ")[1].split(" images/s")[0]) > 0


def test_heldout_gap_measures_both_sides_with_the_pixel_model_as_control(tmp_path, capsys):
    """Training patches come from the folders of their kind (native: smooth
    x1 tiles; downscaled: noisy max640 / x1_4 photos), the pixel-model and
    model figures are those of the patches themselves, and a missing corpus
    is a one-line error with exit status 2."""
    import numpy as np
    import torch
    from PIL import Image
    from benchmarks import heldout_gap
    from model import package, train
    from model.distributed import Distributed
    from utils import pixelmodel
    from utils.data import ArrayImages
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    ramp = np.broadcast_to((np.arange(64)[:, None, None] * 2 + np.arange(64)[None, :, None]), (64, 64, 3))
    for folder, make in (("x1", lambda: ramp.astype(np.uint8)),
                         ("max640", lambda: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)),
                         ("x1_4", lambda: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))):
        (photos / "imagenetcrop" / "train" / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(make()).save(photos / "imagenetcrop" / "train" / folder / f"t{i}.png")
    held = {"native": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
            "downscaled": np.repeat(np.repeat(rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), 4, 1), 4, 2)}
    for kind, arr in held.items():
        np.save(photos / f"heldout_patches_{kind}.npy", arr)
    path = package.random_package(str(tmp_path / "m"), quantbits=8, name="tiny", xs=(3, 32, 32), nz=2,
                                  zchannels=2, width=8, nprocessing=1, resdepth=2)
    net = package.load(path, dataset="imagenetcrop", need_bins=False).net.float()
    got = heldout_gap.gap_table(net, str(photos))
    region = np.ones((32, 32), bool)
    for kind, arr in held.items():
        direct = sum(pixelmodel.region_bits(p, ~region, region) for p in arr) / arr.size
        assert got[kind]["pixel_model"][0] == pytest.approx(direct, rel=1e-12)
        elbo = train.evaluate(net, ArrayImages(arr.transpose(0, 3, 1, 2).copy()), 128, torch.device("cpu"),
                              Distributed(), 0, seed=train.CURVE_SEED)["elbo"]
        assert got[kind]["model"][0] == pytest.approx(elbo, rel=1e-9)
        terms = got[kind]["terms"][0]
        assert terms["recon"] + sum(terms["kl"]) == pytest.approx(elbo, rel=1e-6)   # float32 terms
    assert got["native"]["pixel_model"][1] < 2.5          # the smooth x1 ramps
    assert got["downscaled"]["pixel_model"][1] > 7.5      # the noisy max640 / x1_4 photos
    assert got["native"]["pixel_model"][0] > 7.5 > got["downscaled"]["pixel_model"][0]
    out = capsys.readouterr().out
    assert "excess" in out and "pixels given z1" in out and "KL z2" in out
    assert heldout_gap.main(["--model", path, "--photos", str(tmp_path / "none")]) == 2
    assert "error: " in capsys.readouterr().err
    (photos / "heldout_patches_downscaled.npy").unlink()
    assert heldout_gap.main(["--model", path, "--photos", str(photos), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "heldout_patches_downscaled.npy not found" in err and len(err.strip().splitlines()) == 1
