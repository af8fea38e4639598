"""benchmark_compress.py and utils/protocol.py on small synthetic datasets in
the real on-disk formats (MNIST idx, CIFAR-10 pickle batches, .npy, folder)."""
import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

import benchmark_compress
from utils import protocol

RNG = np.random.default_rng(7)


def digits(n, h=28, w=28):
    """MNIST-like: black background, a bright random blob per image."""
    images = np.zeros((n, h, w), np.uint8)
    for image in images:
        y, x = RNG.integers(4, h - 10), RNG.integers(4, w - 10)
        image[y:y + 8, x:x + 6] = RNG.integers(100, 256, (8, 6))
    return images


def write_mnist(root, n_test=120, n_train=10):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    test = digits(n_test)
    for prefix, images in (("t10k", test), ("train", digits(n_train))):
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, len(images)) + bytes(len(images)))
    return test


def natural(n, h, w, c=3):
    base = np.add.outer(np.arange(h), np.arange(w))[None, :, :, None] * 4
    return ((base + RNG.integers(0, 30, (n, h, w, c))) % 256).astype(np.uint8)


def write_cifar(root, n=40):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    images = natural(n, 32, 32)                        # (N, H, W, C)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                     "labels": [0] * n}, f)
    return images


def write_folder(folder, sizes=((70, 100), (64, 33), (96, 96)), gray=(40, 40), tiny=True,
                 broken=True):
    os.makedirs(folder, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(natural(1, h, w)[0]).save(os.path.join(folder, f"img{i}.png"))
    if gray:
        Image.fromarray(natural(1, *gray, 1)[0, :, :, 0]).save(os.path.join(folder, "gray.png"))
    if tiny:
        Image.fromarray(natural(1, 20, 20)[0]).save(os.path.join(folder, "tiny.png"))
    if broken:
        with open(os.path.join(folder, "broken.jpg"), "wb") as f:
            f.write(b"this is not an image")


def run(argv, capsys):
    rc = benchmark_compress.main(argv + ["--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ protocol

def test_selection_is_the_reference_compress_scripts_draw():
    indices = protocol.select_experiments(10000)
    assert indices.shape == (100, 100)
    assert len(np.unique(indices)) == 10000                 # without replacement
    assert indices[0, :5].tolist() == [8018, 9225, 3854, 2029, 3539]   # pinned
    assert indices[99, -3:].tolist() == [8039, 6936, 5640]
    state = np.random.get_state()
    try:
        np.random.seed(100)
        reference = np.random.choice(10000, size=(100, 100), replace=False)
    finally:
        np.random.set_state(state)
    assert np.array_equal(indices, reference)


def test_selection_is_deterministic_and_prefix_stable():
    a = protocol.select_experiments(500, 10, 20, seed=3)
    assert np.array_equal(a, protocol.select_experiments(500, 10, 20, seed=3))
    assert np.array_equal(a[:4], protocol.select_experiments(500, 4, 20, seed=3))
    assert not np.array_equal(a, protocol.select_experiments(500, 10, 20, seed=4))
    with pytest.raises(ValueError, match="only 100 available"):
        protocol.select_experiments(100, 2, 60)


def test_reference_benchmark_selection_redraws_per_experiment():
    got = protocol.reference_benchmark_selection(10000, 3, 100)
    state = np.random.get_state()
    try:
        np.random.seed(100)
        want = [np.random.choice(10000, size=(100, 100), replace=False)[e] for e in range(3)]
    finally:
        np.random.set_state(state)
    assert np.array_equal(got, np.stack(want))


def test_crop_to_multiple_keeps_top_left():
    image = np.arange(3 * 70 * 100).reshape(3, 70, 100)
    cropped = protocol.crop_to_multiple(image)
    assert cropped.shape == (3, 64, 96)
    assert np.array_equal(cropped, image[:, :64, :96])
    with pytest.raises(ValueError):
        protocol.crop_to_multiple(image[:, :20])


# ------------------------------------------------------------------ datasets

def test_mnist_idx(tmp_path, capsys):
    test = write_mnist(str(tmp_path / "data"))
    out_json = tmp_path / "res" / "mnist.json"
    rc, out, err = run(["mnist", "--data-root", str(tmp_path / "data"), "--experiments", "3",
                        "--images", "20", "--codecs", "gzip,lzma,png,webp",
                        "--out", str(out_json)], capsys)
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    assert result["dims_per_image"] == 784 and result["experiments"] == 3
    indices = np.array(result["indices"])
    assert np.array_equal(indices, protocol.select_experiments(120, 3, 20))
    # gzip is one stream over the 20 images of an experiment, bits per 28x28 pixel
    for e, row in enumerate(indices):
        raw = test[row].tobytes()
        want = 8 * len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw)
        assert result["codecs"]["gzip"]["bits_per_dim"][e] == pytest.approx(want)
    gz = result["codecs"]["gzip"]
    assert gz["bits_per_dim_mean"] == pytest.approx(np.mean(gz["bits_per_dim"]))
    assert gz["bits_per_dim_std"] == pytest.approx(np.std(gz["bits_per_dim"]))
    # 3 x 20 images is not the published protocol: no reference figures beside it
    assert gz["reference_bits_per_dim"] is None and "1.65" not in out
    assert "omitted: published figures are for the full protocol" in out
    assert "bits/px = bits per pixel of the 28x28 image" in out and "WebP lossless" in out
    # the full protocol (100 x 100 test images, seed 100) shows them
    from types import SimpleNamespace
    full = SimpleNamespace(dataset="mnist", seed=100, split="test", codecs=["gzip"])
    batches = [np.zeros((100, 28, 28, 1), np.uint8)] * 100
    summary = benchmark_compress.summarize(full, batches, {"gzip": [1.6] * 100}, {}, {}, {})
    assert summary["codecs"]["gzip"]["reference_bits_per_dim"] == 1.65
    assert "1.65" in benchmark_compress.format_table(summary)
    smaller = SimpleNamespace(dataset="mnist", seed=7, split="test", codecs=["gzip"])
    summary = benchmark_compress.summarize(smaller, batches, {"gzip": [1.6] * 100}, {}, {}, {})
    assert summary["codecs"]["gzip"]["reference_bits_per_dim"] is None


def test_cifar_pickle_all_codecs(tmp_path, capsys):
    write_cifar(str(tmp_path))
    out_json = tmp_path / "cifar.json"
    rc, out, err = run(["cifar", "--data-root", str(tmp_path), "--experiments", "2",
                        "--images", "5", "--out", str(out_json)], capsys)
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    assert result["dims_per_image"] == 3072
    assert set(result["codecs"]) == set(benchmark_compress.codecs.codec_names())
    for name, entry in result["codecs"].items():
        assert entry["status"] in ("ok", "unavailable"), (name, entry)
        if entry["status"] == "ok":
            assert 0 < entry["bits_per_dim_mean"] < 12 and len(entry["bits_per_dim"]) == 2
        else:
            assert entry["reason"] and "unavailable" in out


def test_imagenet_npy(tmp_path, capsys):
    os.makedirs(tmp_path / "imagenet")
    np.save(tmp_path / "imagenet" / "test_32x32.npy", natural(30, 32, 32))
    rc, out, err = run(["imagenet", "--data-root", str(tmp_path), "--experiments", "2",
                        "--images", "10", "--codecs", "bzip2,png"], capsys)
    assert rc == 0, err
    assert "ImageNet 32x32: 2 experiments x 10 images" in out


def test_folder_crops_skips_and_counts(tmp_path, capsys):
    folder = str(tmp_path / "photos")
    write_folder(folder)
    out_json = tmp_path / "f.json"
    rc, out, err = run(["folder", folder, "--codecs", "gzip,png", "--out", str(out_json)],
                       capsys)
    assert rc == 0, err
    assert "broken.jpg" in err and "warning" in err
    result = json.loads(out_json.read_text())
    assert result["unreadable_files"] == 1
    assert result["skipped"]["smaller than 32x32"] == 1
    # three RGB images and the gray one; shapes cropped to multiples of 32
    assert sorted(map(tuple, result["shapes"])) == [(32, 32, 1), (64, 32, 3), (64, 96, 3),
                                                     (96, 96, 3)]
    assert result["experiments"] == 4
    assert "only 4 usable images" in err


def test_imagenetcrop_uses_rgb_only(tmp_path, capsys):
    folder = tmp_path / "data" / "imagenetcrop" / "test"
    write_folder(str(folder), broken=False)
    rc, out, err = run(["imagenetcrop", "--data-root", str(tmp_path / "data"),
                        "--experiments", "2", "--codecs", "gzip"], capsys)
    assert rc == 0, err
    assert "full-size ImageNet: 2 experiments x 1 images" in out
    assert "5.96" not in out and "published figures are for the full protocol (100 full-size" in out


# ----------------------------------------------------------------- bad input

def test_missing_mnist_says_where_and_how(tmp_path, capsys):
    out_json = tmp_path / "never.json"
    rc, out, err = run(["mnist", "--data-root", str(tmp_path / "nothing"),
                        "--out", str(out_json)], capsys)
    assert rc == 2
    line = err.strip()
    assert line.startswith("benchmark_compress.py: error:") and "\n" not in line
    assert os.path.join(str(tmp_path / "nothing"), "MNIST", "raw") in line
    assert "--download" in line
    assert not out_json.exists()


def test_missing_cifar_and_imagenet(tmp_path, capsys):
    for dataset in ("cifar", "imagenet"):
        rc, out, err = run([dataset, "--data-root", str(tmp_path)], capsys)
        assert rc == 2 and err.startswith("benchmark_compress.py: error:") and str(tmp_path) in err


def test_folder_without_readable_images(tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG broken")
    (folder / "notes.txt").write_text("hello")  # not an image name: ignored, not counted
    rc, out, err = run(["folder", str(folder)], capsys)
    assert rc == 2
    assert f"error: no readable images in {folder} (1 unreadable files skipped)" in err
    rc, out, err = run(["folder", str(tmp_path / "absent")], capsys)
    assert rc == 2 and "does not exist" in err


def test_too_many_images_requested(tmp_path, capsys):
    write_mnist(str(tmp_path))
    rc, out, err = run(["mnist", "--data-root", str(tmp_path), "--experiments", "7",
                        "--images", "20"], capsys)
    assert rc == 2 and "only 120 available" in err


def test_unknown_codec_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark_compress.main(["mnist", "--codecs", "gzip,zip"])
    assert exc.value.code == 2
    assert "unknown codec(s) zip" in capsys.readouterr().err


def test_reference_selection_flag(tmp_path, capsys):
    write_mnist(str(tmp_path))
    out_json = tmp_path / "ref.json"
    rc, out, err = run(["mnist", "--data-root", str(tmp_path), "--experiments", "2",
                        "--images", "1", "--selection", "reference", "--codecs", "gzip",
                        "--out", str(out_json)], capsys)
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    assert result["selection"] == "reference"
    assert result["indices"] == protocol.reference_benchmark_selection(120, 2, 1).tolist()
