"""TEMPORARY minimal data loaders (the data-loading helper owns the real
utils/data.py; this file only provides the agreed interface so that
benchmark_compress.py and its tests run on this branch).

Interface:
    load_images(dataset, split, root, download=False) -> uint8 (N, C, H, W)
        dataset in {'mnist', 'cifar', 'imagenet'}; MNIST unpadded 28x28.
    load_image_folder(path) -> list of uint8 (C, H, W), files in sorted order;
        unreadable files are skipped with a warning.
    DataNotFoundError: the data is missing; the message says where it was
        looked for and how to get it.
"""
import os
import warnings

import numpy as np


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message names the path and the remedy."""


def _mnist(split, root, download):
    from torchvision import datasets
    raw = os.path.join(root, "MNIST", "raw")
    try:
        ds = datasets.MNIST(root=root, train=(split == "train"), download=download)
    except RuntimeError as exc:
        raise DataNotFoundError(
            f"MNIST not found in {raw} (idx files); pass --download, or run "
            f"scripts/get_mnist_offline.py --root {root}") from exc
    return np.asarray(ds.data, dtype=np.uint8)[:, None]


def _cifar(split, root, download):
    # Read the pickle batches directly: torchvision's loader insists on the
    # official md5 sums, which small test datasets cannot match.
    import pickle
    folder = os.path.join(root, "cifar-10-batches-py")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    if download and not all(os.path.exists(os.path.join(folder, n)) for n in names):
        from torchvision import datasets
        datasets.CIFAR10(root=root, train=(split == "train"), download=True)
    parts = []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise DataNotFoundError(f"CIFAR-10 batch {path} not found; pass --download "
                                    f"to fetch cifar-10-python.tar.gz into {root}")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        parts.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return np.concatenate(parts)


def load_images(dataset, split, root, download=False):
    """All images of a dataset split as uint8 (N, C, H, W)."""
    if dataset == "mnist":
        return np.ascontiguousarray(_mnist(split, root, download))
    if dataset == "cifar":
        return np.ascontiguousarray(_cifar(split, root, download))
    if dataset == "imagenet":
        path = os.path.join(root, "imagenet", f"{split}.npy")
        if not os.path.exists(path):
            raise DataNotFoundError(
                f"imagenet {split} set not found at {path}; make it from a folder of "
                f"32x32 PNGs with create_imagenet.py")
        data = np.load(path)
        if data.dtype != np.uint8 or data.ndim != 4:
            raise ValueError(f"{path}: expected uint8 (N, H, W, C) or (N, C, H, W)")
        return np.ascontiguousarray(data.transpose(0, 3, 1, 2) if data.shape[-1] == 3 else data)
    raise ValueError(f"unknown dataset {dataset!r}")


def load_image_folder(path):
    """Every readable image in ``path`` (sorted by name) as uint8 (C, H, W)."""
    from PIL import Image
    if not os.path.isdir(path):
        raise DataNotFoundError(f"image folder {path} does not exist")
    images = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith(".") or not os.path.isfile(full):
            continue
        try:
            with Image.open(full) as im:
                im = im if im.mode in ("L", "RGB") else im.convert("RGB")
                array = np.asarray(im, dtype=np.uint8)
        except Exception as exc:
            warnings.warn(f"skipping unreadable file {full}: {exc}")
            continue
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return images
