"""Small datasets written in the real on-disk formats (tests only): MNIST idx
files, CIFAR-10 pickle batches, ImageNet32 .npy, a folder of full-size PNGs.
Images are smooth random blobs, so a model can learn something in a few steps."""
import os
import pickle
import struct

import numpy as np


def blobs(n, channels, height, width, seed=0):
    """uint8 (n, channels, height, width): a few Gaussian blobs per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((n, channels, height, width), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(2, max(3, height / 4))
            amp = rng.uniform(80, 255, size=(channels, 1, 1))
            out[i] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(out, 0, 255).astype(np.uint8)


def write_mnist(root, n_train=64, n_test=16):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images = blobs(n, 1, 28, 28, seed)[:, 0]
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28))
            f.write(images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, n))
            f.write(np.zeros(n, np.uint8).tobytes())
    return raw


def write_cifar(root, per_batch=16, n_test=16):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [(f"data_batch_{k}", per_batch, 10 + k) for k in range(1, 6)]
    names.append(("test_batch", n_test, 99))
    for name, n, seed in names:
        data = blobs(n, 3, 32, 32, seed).reshape(n, 3072)
        batch = {b"batch_label": name.encode(), b"labels": [0] * n, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"blob"] * 10, b"num_vis": 3072}, f)
    return folder


def write_imagenet_npy(root, n_train=64, n_test=16):
    folder = os.path.join(root, "imagenet")
    os.makedirs(folder, exist_ok=True)
    for split, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
        hwc = blobs(n, 3, 32, 32, seed).transpose(0, 2, 3, 1)
        np.save(os.path.join(folder, f"{split}_32x32.npy"), hwc)
    return folder


def write_png_folder(folder, n, height, width, seed=5):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    images = blobs(n, 3, height, width, seed)
    for i, img in enumerate(images):
        Image.fromarray(img.transpose(1, 2, 0)).save(os.path.join(folder, f"img{i:03d}.png"))
    return images


def write_imagenetcrop(root, n_train=16, n_test=4):
    base = os.path.join(root, "imagenetcrop")
    write_png_folder(os.path.join(base, "train", "class_a"), n_train, 40, 48, seed=6)
    write_png_folder(os.path.join(base, "test"), n_test, 36, 33, seed=7)
    return base


WRITERS = {"mnist": write_mnist, "cifar": write_cifar, "imagenet": write_imagenet_npy,
           "imagenetcrop": write_imagenetcrop}
