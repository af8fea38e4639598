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


def _torchvision(dataset, split, root, download):
    from torchvision import datasets
    cls, folder = {"mnist": (datasets.MNIST, os.path.join(root, "MNIST", "raw")),
                   "cifar": (datasets.CIFAR10, os.path.join(root, "cifar-10-batches-py"))}[dataset]
    try:
        ds = cls(root=root, train=(split == "train"), download=download)
    except RuntimeError as exc:
        raise DataNotFoundError(
            f"{dataset} not found in {folder} ({exc}); pass --download to fetch it"
            + (" or run scripts/get_mnist_offline.py --root " + root if dataset == "mnist" else "")
        ) from exc
    data = np.asarray(ds.data, dtype=np.uint8)
    return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)


def load_images(dataset, split, root, download=False):
    """All images of a dataset split as uint8 (N, C, H, W)."""
    if dataset in ("mnist", "cifar"):
        return np.ascontiguousarray(_torchvision(dataset, split, root, download))
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
