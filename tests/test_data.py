"""Data loading from the real on-disk formats, and create_imagenet.py."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import synthetic_data as sd
from conftest import ROOT
from utils.data import (DataNotFoundError, RandomPatches, list_image_files, load_image_folder,
                        load_images, training_datasets)


def test_mnist_idx_files(tmp_path):
    sd.write_mnist(str(tmp_path), n_train=10, n_test=4)
    train = load_images("mnist", "train", str(tmp_path))
    assert train.shape == (10, 1, 28, 28) and train.dtype == np.uint8
    assert np.array_equal(train, sd.blobs(10, 1, 28, 28, 1))
    tr, te = training_datasets("mnist", str(tmp_path))
    x, _ = tr[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[:, :2] == 0) and torch.all(x[:, :, -2:] == 0)   # padded by 2
    assert torch.equal(x[0, 2:30, 2:30], torch.from_numpy(train[3, 0]).float())
    assert len(te) == 4


def test_cifar_pickle_batches(tmp_path):
    sd.write_cifar(str(tmp_path), per_batch=3, n_test=2)
    train = load_images("cifar", "train", str(tmp_path))
    test = load_images("cifar", "test", str(tmp_path))
    assert train.shape == (15, 3, 32, 32) and test.shape == (2, 3, 32, 32)
    assert np.array_equal(train[:3], sd.blobs(3, 3, 32, 32, 11))
    assert np.array_equal(test, sd.blobs(2, 3, 32, 32, 99))


def test_imagenet_npy_both_layouts_and_png_folder(tmp_path):
    sd.write_imagenet_npy(str(tmp_path), n_train=5, n_test=3)
    train = load_images("imagenet", "train", str(tmp_path))
    assert train.shape == (5, 3, 32, 32)
    assert np.array_equal(train, sd.blobs(5, 3, 32, 32, 3))
    np.save(tmp_path / "imagenet" / "test_32x32.npy", sd.blobs(3, 3, 32, 32, 4))  # NCHW
    assert np.array_equal(load_images("imagenet", "test", str(tmp_path)), sd.blobs(3, 3, 32, 32, 4))
    # a folder of PNGs instead of the .npy
    os.remove(tmp_path / "imagenet" / "test_32x32.npy")
    imgs = sd.write_png_folder(str(tmp_path / "imagenet" / "test_32x32"), 2, 32, 32, seed=8)
    assert np.array_equal(load_images("imagenet", "test", str(tmp_path)), imgs)


def test_unknown_layout_is_a_clear_error(tmp_path):
    os.makedirs(tmp_path / "imagenet")
    np.save(tmp_path / "imagenet" / "train_32x32.npy", np.zeros((4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_images("imagenet", "train", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_images("svhn", "train", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        load_images("mnist", "valid", str(tmp_path))


@pytest.mark.parametrize("dataset,where", [("mnist", "MNIST"), ("cifar", "cifar-10-batches-py"),
                                           ("imagenet", "train_32x32.npy")])
def test_missing_data_names_path_and_remedy(tmp_path, dataset, where):
    with pytest.raises(DataNotFoundError) as info:
        load_images(dataset, "train", str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and where in message
    assert "--download" in message or "create_imagenet.py" in message


def test_image_folder_sorted_rgb_and_missing(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    sub = folder / "b"
    os.makedirs(sub)
    Image.fromarray(np.full((5, 7), 200, np.uint8), mode="L").save(folder / "a.png")
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(sub / "c.png")
    (folder / "notes.txt").write_text("not an image")
    images = load_image_folder(str(folder))
    assert [im.shape for im in images] == [(3, 5, 7), (3, 3, 4)]
    assert images[0].dtype == np.uint8 and np.all(images[0] == 200)
    with pytest.raises(DataNotFoundError, match="not found at"):
        load_image_folder(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="no image files"):
        load_image_folder(str(tmp_path / "empty"))


def test_random_patches_reproducible_and_new_each_epoch(tmp_path):
    sd.write_imagenetcrop(str(tmp_path), n_train=3, n_test=2)
    train, test = training_datasets("imagenetcrop", str(tmp_path))
    x0, _ = train[1]
    assert x0.shape == (3, 32, 32)
    assert torch.equal(x0, train[1][0])          # same epoch, same patch
    train.set_epoch(1)
    moved = [not torch.equal(RandomPatches(train.files)[i][0], train[i][0]) for i in range(3)]
    assert any(moved)
    assert torch.equal(test[0][0], test[0][0])
    full = load_image_folder(os.path.join(tmp_path, "imagenetcrop", "train"))[1]
    # the patch is a crop of the image
    found = any(np.array_equal(full[:, t:t + 32, l:l + 32], x0.numpy().astype(np.uint8))
                for t in range(full.shape[1] - 31) for l in range(full.shape[2] - 31))
    assert found


def test_create_imagenet_round_trip_and_validation(tmp_path, capsys):
    import create_imagenet
    imgs = sd.write_png_folder(str(tmp_path / "train_32x32"), 4, 32, 32, seed=9)
    dst = tmp_path / "data" / "imagenet" / "train_32x32.npy"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "create_imagenet.py"),
                        str(tmp_path / "train_32x32"), str(dst), "--no-progress"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    arr = np.load(dst)
    assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8
    assert np.array_equal(load_images("imagenet", "train", str(tmp_path / "data")), imgs)
    # a wrong-size image: clear error, previous output untouched
    sd.write_png_folder(str(tmp_path / "train_32x32" / "odd"), 1, 30, 32, seed=10)
    before = dst.read_bytes()
    assert create_imagenet.main([str(tmp_path / "train_32x32"), str(dst), "--no-progress"]) == 2
    assert "expected 32x32" in capsys.readouterr().err
    assert dst.read_bytes() == before
    assert sorted(os.listdir(dst.parent)) == ["train_32x32.npy"]


def test_list_image_files_recursive_sorted(tmp_path):
    sd.write_png_folder(str(tmp_path / "z"), 2, 8, 8)
    sd.write_png_folder(str(tmp_path / "a"), 1, 8, 8)
    files = list_image_files(str(tmp_path))
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/img000.png", "z/img000.png",
                                                             "z/img001.png"]


def test_random_patches_many_per_image(tmp_path):
    sd.write_imagenetcrop(str(tmp_path), n_train=3, n_test=2)
    train, test = training_datasets("imagenetcrop", str(tmp_path), patches_per_image=5)
    assert len(train) == 15 and len(test) == 10
    full = load_image_folder(os.path.join(tmp_path, "imagenetcrop", "train"))
    # patches 5..9 all come from file 1, at (mostly) different places
    patches = [train[i][0].numpy().astype(np.uint8) for i in range(5, 10)]
    for p in patches:
        img = full[1]
        assert any(np.array_equal(img[:, t:t + 32, l:l + 32], p)
                   for t in range(img.shape[1] - 31) for l in range(img.shape[2] - 31))
    assert len({p.tobytes() for p in patches}) > 1
    # many patches per file: every file decoded once, up front (data-loader
    # workers forked later share the cache), and kept
    assert set(train.cache) == {0, 1, 2}
    assert train._image(1) is train.cache[1]
    assert set(RandomPatches(train.files, per_image=5).cache) == set()   # lazy by default
    with pytest.raises(ValueError, match="patches per image"):
        RandomPatches(train.files, per_image=0)


def test_fixed_imagenetcrop_test_patches_replace_the_test_folder(tmp_path):
    sd.write_imagenetcrop(str(tmp_path), n_train=2, n_test=2)
    fixed = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    path = os.path.join(tmp_path, "imagenetcrop", "test_32x32.npy")
    np.save(path, fixed)
    _, test = training_datasets("imagenetcrop", str(tmp_path), patches_per_image=4)
    assert len(test) == 5           # one item per stored patch, not per_image of each
    assert np.array_equal(test[3][0].numpy().astype(np.uint8), fixed[3].transpose(2, 0, 1))
    np.save(path, fixed[:, :16, :16])
    with pytest.raises(ValueError, match="32x32 patches"):
        training_datasets("imagenetcrop", str(tmp_path))


def test_hflip_mirrors_about_half_of_the_training_patches_and_no_evaluation_patch(tmp_path):
    """--hflip: the same index gives the same crop, mirrored left-right for
    about half of the indices; a deterministic (evaluation) set never mirrors."""
    sd.write_imagenetcrop(str(tmp_path), n_train=3, n_test=2)
    files = list_image_files(os.path.join(tmp_path, "imagenetcrop", "train"))
    plain, mirrored = RandomPatches(files, per_image=20), RandomPatches(files, per_image=20, hflip=True)
    flipped = 0
    for i in range(len(plain)):
        a, b = plain[i][0], mirrored[i][0]
        assert not torch.equal(a, torch.flip(a, [2]))    # the synthetic crops are not symmetric
        if torch.equal(b, torch.flip(a, [2])):
            flipped += 1
        else:
            assert torch.equal(b, a)
        assert b.is_contiguous() and b.dtype == torch.float32
    assert 15 <= flipped <= 45, flipped
    test = RandomPatches(files, deterministic=True, per_image=20, hflip=True)
    reference = RandomPatches(files, deterministic=True, per_image=20)
    assert all(torch.equal(test[i][0], reference[i][0]) for i in range(len(test)))
    train, _ = training_datasets("imagenetcrop", str(tmp_path), patches_per_image=20, hflip=True)
    assert train.hflip and sum(not torch.equal(train[i][0], plain[i][0]) for i in range(60)) == flipped
