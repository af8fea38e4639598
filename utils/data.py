"""All data loading: raw arrays for the coders and torch datasets for training.

On-disk layouts under a data root (`--data-root`, default `data/`):
  MNIST         {root}/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
                (torchvision's layout; `download=True` fetches it)
  CIFAR-10      {root}/cifar-10-batches-py/{data_batch_1..5,test_batch}
                (the official pickle batches; `download=True` fetches them
                through torchvision)
  ImageNet32    {root}/imagenet/{train,test}_32x32.npy, uint8 (N, 32, 32, 3)
                or (N, 3, 32, 32), made by `create_imagenet.py`; a folder
                {root}/imagenet/{train,test}_32x32/ of 32x32 PNGs also works
  ImageNet      {root}/imagenetcrop/{train,test}/ : full-size images (any
  patches       depth of sub-folders), trained on random 32x32 patches; a
                fixed test set of patches {root}/imagenetcrop/test_32x32.npy,
                uint8 (N, 32, 32, 3) or (N, 3, 32, 32), replaces test/
                (scripts/get_demo_photos.py writes this layout for photos)

Invariants: arrays are uint8 (N, C, H, W); training samples are float32
pixel values 0..255 (the model scales them); MNIST is padded by 2 pixels to
32x32 for training (`load_images` returns it unpadded, 28x28). Missing data
raises `DataNotFoundError` (a `FileNotFoundError`) whose message names the
path and how to obtain the data.
"""
import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


class DataNotFoundError(FileNotFoundError):
    """A dataset is not where it was looked for; the message says how to get it."""


HOW_TO_GET = {
    "mnist": "pass --download (torchvision fetches it), or put the four idx files "
             "(train-images-idx3-ubyte, ...) under {path}",
    "cifar": "pass --download (torchvision fetches it), or extract cifar-10-python.tar.gz "
             "from https://www.cs.toronto.edu/~kriz/cifar.html so that {path} exists",
    "imagenet": "download 'Downsampled ImageNet 32x32' (https://image-net.org/download-images), "
                "then run `python create_imagenet.py <folder of 32x32 PNGs> {path}`",
    "imagenetcrop": "put full-size images (e.g. the ImageNet train/val folders) under {path}",
}


def _missing(dataset, path, detail=""):
    how = HOW_TO_GET[dataset].format(path=path)
    return DataNotFoundError(f"{dataset} data not found at {path}{detail}: {how}")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ---- raw arrays ---------------------------------------------------------
def _load_mnist(split, root, download):
    from torchvision.datasets import MNIST
    raw = os.path.join(root, "MNIST", "raw")
    try:
        ds = MNIST(root, train=split == "train", download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found" / failed download
        raise _missing("mnist", raw, f" ({e})") from None
    except OSError as e:       # no network during --download
        raise _missing("mnist", raw, f" (download failed: {e})") from None
    return ds.data.numpy().astype(np.uint8)[:, None]


def _load_cifar(split, root, download):
    folder = os.path.join(root, "cifar-10-batches-py")
    if download and not os.path.isdir(folder):
        from torchvision.datasets import CIFAR10
        try:
            CIFAR10(root, train=True, download=True)
        except (RuntimeError, OSError) as e:
            raise _missing("cifar", folder, f" (download failed: {e})") from None
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    arrays = []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise _missing("cifar", folder, f" (no {name})")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        if data is None:
            raise ValueError(f"{path} is not a CIFAR-10 pickle batch (no 'data' entry)")
        arrays.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
    return np.concatenate(arrays)


def to_nchw(array, path="array"):
    """uint8 (N, H, W, C) or (N, C, H, W) with C in {1, 3} -> (N, C, H, W)."""
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images (N, H, W, C) or (N, C, H, W), "
                         f"got {a.dtype} {a.shape}")
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        return a
    if a.shape[-1] in (1, 3):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    raise ValueError(f"{path}: cannot tell the channel axis of shape {a.shape}")


def _load_imagenet(split, root):
    folder = os.path.join(root, "imagenet")
    npy = os.path.join(folder, f"{split}_32x32.npy")
    if os.path.isfile(npy):
        return to_nchw(np.load(npy, mmap_mode="r"), npy)
    pngs = os.path.join(folder, f"{split}_32x32")
    if os.path.isdir(pngs):
        return np.stack(load_image_folder(pngs))
    raise _missing("imagenet", npy)


def load_images(dataset, split, root, download=False):
    """uint8 array (N, C, H, W) of a whole split: dataset in {'mnist' (28x28,
    unpadded), 'cifar', 'imagenet'}, split in {'train', 'test'}."""
    _check_split(split)
    if dataset == "mnist":
        return _load_mnist(split, root, download)
    if dataset == "cifar":
        return _load_cifar(split, root, download)
    if dataset == "imagenet":
        return _load_imagenet(split, root)
    raise ValueError(f"unknown dataset {dataset!r}; expected 'mnist', 'cifar' or 'imagenet'")


def list_image_files(path, dataset="imagenetcrop"):
    """Sorted image files under `path` (recursively); DataNotFoundError if none."""
    if not os.path.isdir(path):
        raise _missing(dataset, path)
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise _missing(dataset, path, " (the folder holds no image files)")
    return files


def read_image(path, rgb=True):
    """One image file as uint8 (C, H, W): RGB (grey and palette converted),
    or with ``rgb=False`` grey images kept as one channel."""
    from PIL import Image
    with Image.open(path) as im:
        mode = "L" if (not rgb and im.mode in ("L", "1", "I;16", "I")) else "RGB"
        a = np.asarray(im.convert(mode), dtype=np.uint8)
    return a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy()


def load_image_folder(path, rgb=True):
    """All readable images under `path` (sorted by path) as uint8 (C, H, W)
    arrays (see `read_image`). An unreadable file is skipped with a warning
    (callers count them with ``warnings.catch_warnings``); DataNotFoundError
    when the folder is missing or holds no image files."""
    import warnings
    from PIL import UnidentifiedImageError
    images = []
    for f in list_image_files(path):
        try:
            images.append(read_image(f, rgb=rgb))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            warnings.warn(f"skipping unreadable image {f}: {exc}", stacklevel=2)
    return images


# ---- torch datasets -----------------------------------------------------
class ArrayImages(Dataset):
    """Images from a uint8 (N, C, H, W) array as float32 tensors (0..255),
    zero-padded by `pad` pixels on every side; label is always 0."""

    def __init__(self, array, pad=0):
        self.array = array
        self.pad = pad

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        x = torch.from_numpy(np.array(self.array[index], dtype=np.float32))
        if self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
        return x, 0


class RandomPatches(Dataset):
    """`per_image` random `size` x `size` patches per image file and epoch.
    A patch's position is drawn from a generator seeded by (seed, epoch,
    index): random-looking and new every epoch for training (call
    `set_epoch`), fixed for evaluation (`deterministic`), and reproducible
    whatever the data-loader workers do. Images smaller than the patch are
    edge-padded. The paper's full-size ImageNet has a million files and uses
    one patch per file; a small photo collection needs many per image, and
    then the decoded images are kept in memory (`cache`) instead of being
    decoded again for every patch. `hflip` mirrors a random half of the
    training patches left-right (a photo's mirror image is as likely a photo;
    evaluation patches are never mirrored)."""

    def __init__(self, files, size=32, deterministic=False, seed=0, per_image=1, cache=None,
                 hflip=False):
        if per_image < 1:
            raise ValueError(f"patches per image must be >= 1, got {per_image}")
        self.files = files
        self.size = size
        self.deterministic = deterministic
        self.seed = seed
        self.per_image = per_image
        self.hflip = hflip and not deterministic
        self.cache = {} if (cache if cache is not None else per_image > 1) else None
        self.epoch = 0

    def preload(self):
        """Decode every file into the cache now. Data-loader workers are
        forked from this process for every epoch: filled here, the cache is
        shared with all of them, instead of each worker decoding every file
        again each epoch."""
        if self.cache is None:
            self.cache = {}
        for k in range(len(self.files)):
            self._image(k)
        return self

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.files) * self.per_image

    def _image(self, file_index):
        if self.cache is None:
            return read_image(self.files[file_index])
        if file_index not in self.cache:
            self.cache[file_index] = read_image(self.files[file_index])
        return self.cache[file_index]

    def __getitem__(self, index):
        img = self._image(index // self.per_image)
        c, h, w = img.shape
        if h < self.size or w < self.size:
            img = np.pad(img, ((0, 0), (0, max(0, self.size - h)), (0, max(0, self.size - w))),
                         mode="edge")
            c, h, w = img.shape
        epoch = 0 if self.deterministic else self.epoch + 1
        rng = np.random.default_rng((self.seed, epoch, index))
        top = int(rng.integers(0, h - self.size + 1))
        left = int(rng.integers(0, w - self.size + 1))
        patch = img[:, top:top + self.size, left:left + self.size]
        # drawn after the position: the same index gives the same patch with
        # or without the option, mirrored or not
        if self.hflip and rng.integers(2):
            patch = patch[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)), 0


def training_datasets(dataset, root, download=False, patches_per_image=1, hflip=False):
    """(train, test) torch datasets for the training loop of `dataset`
    (`patches_per_image`, `hflip`: imagenetcrop only, see RandomPatches)."""
    if dataset == "mnist":
        return tuple(ArrayImages(load_images("mnist", s, root, download), pad=2) for s in SPLITS)
    if dataset in ("cifar", "imagenet"):
        return tuple(ArrayImages(load_images(dataset, s, root, download)) for s in SPLITS)
    if dataset == "imagenetcrop":
        folder = os.path.join(root, "imagenetcrop")
        train = RandomPatches(list_image_files(os.path.join(folder, "train")),
                              per_image=patches_per_image, hflip=hflip)
        if patches_per_image > 1:
            train.preload()
        fixed = os.path.join(folder, "test_32x32.npy")
        if os.path.isfile(fixed):
            patches = to_nchw(np.load(fixed), fixed)
            if patches.shape[1:] != (3, 32, 32):
                raise ValueError(f"{fixed}: expected RGB 32x32 patches, got shape {patches.shape}")
            return train, ArrayImages(patches)
        return train, RandomPatches(list_image_files(os.path.join(folder, "test")),
                                    deterministic=True, per_image=patches_per_image)
    raise ValueError(f"unknown dataset {dataset!r}")
