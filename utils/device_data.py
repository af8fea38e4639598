"""Training data held on the training device, and the compact copies of the
datasets that travel to a GPU machine.

Owns: `DeviceImages` (a uint8 image array on the device, drawn in a seeded
permutation per epoch), `DevicePatches` (photo tiles packed into one uint8
tensor on the device, random 32x32 patches cut there by index arithmetic),
and the compact layout written by scripts/prepare_device_carry.py::

    CARRY/mnist.npz                      train (60000, 28, 28), test (10000, 28, 28), uint8,
                                         compressed
    CARRY/photos/imagenetcrop/train/     training tiles (PNG, any depth of folders)
    CARRY/photos/imagenetcrop/test_32x32.npy   held-out 32x32 patches, uint8
    CARRY/photos/heldout_parts.json      {"native": n1, "downscaled": n2}: the test
                                         patches are n1 native-scale ones, then n2
                                         downscaled ones (optional)

Why on the device: a batch of 512 patches cut in Python by a DataLoader takes
longer than the GPU's training step; here a batch is a handful of kernels.
Samples match utils/data.py's (MNIST padded by 2 pixels of zeros to 32x32;
a patch is a uniformly placed 32x32 window of a uniformly chosen tile, tiles
smaller than a patch edge-padded), as float32 pixel values 0..255.
"""
import os

import numpy as np
import torch

from utils.data import DataNotFoundError, list_image_files, read_image, to_nchw

PATCH = 32
MNIST_FILE = "mnist.npz"
PHOTOS_DIR = "photos"


class DeviceImages:
    """A uint8 (N, C, H, W) array on `device`; `next_batch()` returns float32
    batches of a seeded permutation per epoch (the last partial batch of an
    epoch is dropped, like the training loop's sampler)."""

    def __init__(self, images, batch, device, seed=0):
        if len(images) < batch:
            raise ValueError(f"{len(images)} images, fewer than one batch of {batch}")
        self.images = torch.as_tensor(np.ascontiguousarray(images)).to(device)
        self.batch, self.device = int(batch), torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch, self._order, self._pos = 0, None, None

    def __len__(self):
        return len(self.images)

    @property
    def batches_per_epoch(self):
        return len(self.images) // self.batch

    def next_batch(self):
        if self._order is None or self._pos + self.batch > len(self._order):
            if self._order is not None:
                self.epoch += 1
            self._order = torch.randperm(len(self.images), generator=self.generator,
                                         device=self.device)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch]
        self._pos += self.batch
        return self.images[idx].float()


class DevicePatches:
    """Random PATCH x PATCH patches of a list of uint8 (C, H, W) tiles, cut
    on `device`. `next_batch()` gives float32 batches; `fixed(n, seed)` a
    reproducible uint8 numpy array of n patches (init, bins). With `hflip`
    true, next_batch() mirrors a random half of its patches left-right (as
    utils.data.RandomPatches does for the CPU loader); fixed() never does."""

    def __init__(self, tiles, batch, device, seed=0, hflip=False):
        if not tiles:
            raise ValueError("no training tiles")
        channels = {t.shape[0] for t in tiles}
        if len(channels) != 1:
            raise ValueError(f"tiles with different channel counts {sorted(channels)}")
        padded = []
        for t in tiles:
            c, h, w = t.shape
            if h < PATCH or w < PATCH:
                t = np.pad(t, ((0, 0), (0, max(0, PATCH - h)), (0, max(0, PATCH - w))), mode="edge")
            padded.append(np.ascontiguousarray(t, dtype=np.uint8))
        self.channels = channels.pop()
        self.device = torch.device(device)
        sizes = [t.size for t in padded]
        self.flat = torch.from_numpy(np.concatenate([t.reshape(-1) for t in padded])).to(self.device)
        self.starts = torch.tensor(np.cumsum([0] + sizes[:-1]), dtype=torch.int64, device=self.device)
        self.heights = torch.tensor([t.shape[1] for t in padded], device=self.device)
        self.widths = torch.tensor([t.shape[2] for t in padded], device=self.device)
        self.batch, self.hflip = int(batch), bool(hflip)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        d = torch.arange(PATCH, device=self.device)
        self._rows, self._cols = d.view(1, 1, PATCH, 1), d.view(1, 1, 1, PATCH)
        self._chan = torch.arange(self.channels, device=self.device).view(1, -1, 1, 1)

    def __len__(self):
        return len(self.starts)

    def _cut(self, n, generator, hflip=False):
        dev = self.device
        f = torch.randint(len(self.starts), (n,), generator=generator, device=dev)
        h, w = self.heights[f], self.widths[f]
        top = (torch.rand(n, generator=generator, device=dev) * (h - PATCH + 1)).long()
        left = (torch.rand(n, generator=generator, device=dev) * (w - PATCH + 1)).long()
        top, left = torch.minimum(top, h - PATCH), torch.minimum(left, w - PATCH)
        base = self.starts[f] + top * w + left
        cols = self._cols
        if hflip:   # drawn after the position: the same draws give the same windows
            flip = torch.randint(2, (n, 1, 1, 1), generator=generator, device=dev).bool()
            cols = torch.where(flip, PATCH - 1 - cols, cols)
        idx = (base.view(-1, 1, 1, 1) + self._chan * (h * w).view(-1, 1, 1, 1)
               + self._rows * w.view(-1, 1, 1, 1) + cols)
        return self.flat[idx]

    def next_batch(self):
        return self._cut(self.batch, self.generator, self.hflip).float()

    def fixed(self, n, seed=0):
        g = torch.Generator(device=self.device).manual_seed(seed)
        return np.concatenate([self._cut(min(4096, n - s), g).cpu().numpy()
                               for s in range(0, n, 4096)]) if n else \
            np.zeros((0, self.channels, PATCH, PATCH), np.uint8)


def load_carried_mnist(carry):
    """(train, test) uint8 (N, 1, 32, 32), padded like utils/data.py's MNIST."""
    path = os.path.join(carry, MNIST_FILE)
    if not os.path.isfile(path):
        raise DataNotFoundError(f"mnist data not found at {path}: run "
                                "`python scripts/prepare_device_carry.py` first")
    with np.load(path) as z:
        arrays = [to_nchw(z[k], f"{path}:{k}") for k in ("train", "test")]
    return tuple(np.pad(a, ((0, 0), (0, 0), (2, 2), (2, 2))) if a.shape[-1] == 28 else a
                 for a in arrays)


PARTS_FILE = "heldout_parts.json"


def load_carried_photos(carry):
    """(tiles, test, parts): training tiles as uint8 (3, H, W) arrays, the
    held-out patches uint8 (N, 3, 32, 32), and {part name: slice of test}
    (empty when the carry does not say)."""
    import json
    root = os.path.join(carry, PHOTOS_DIR, "imagenetcrop")
    tiles = [read_image(f) for f in list_image_files(os.path.join(root, "train"))]
    test_path = os.path.join(root, "test_32x32.npy")
    if not os.path.isfile(test_path):
        raise DataNotFoundError(f"imagenetcrop held-out patches not found at {test_path}: run "
                                "`python scripts/prepare_device_carry.py` first")
    test = to_nchw(np.load(test_path), test_path)
    if test.shape[1:] != (3, PATCH, PATCH):
        raise ValueError(f"{test_path}: expected RGB 32x32 patches, got shape {test.shape}")
    parts, parts_path = {}, os.path.join(carry, PHOTOS_DIR, PARTS_FILE)
    if os.path.isfile(parts_path):
        with open(parts_path) as f:
            counts = json.load(f)
        if sum(counts.values()) != len(test):
            raise ValueError(f"{parts_path}: parts of {sum(counts.values())} patches, but "
                             f"{test_path} holds {len(test)}")
        start = 0
        for name, n in counts.items():
            parts[name] = slice(start, start + n)
            start += n
    return tiles, test, parts
