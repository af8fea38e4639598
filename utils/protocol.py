"""The paper's experiment protocol: which test images each experiment uses.

Owned here so that benchmark_compress.py and the Bit-Swap/BB-ANS compress
scripts code exactly the same images.

32x32 datasets (reference mnist/cifar/imagenet_compress.py): after
``np.random.seed(seed)`` one call ``np.random.choice(N, size=(E, n),
replace=False)`` -- E*n distinct test images, experiment e is row e. Legacy
``RandomState`` draws without replacement as ``permutation(N)[:E*n]``, so
for a fixed n the first rows do not depend on E (a 10-experiment run codes
the first 10 experiments of the full run). NumPy keeps legacy streams
stable across versions.

Full-size images (reference imagenetcrop_compress.py): after the same seeding,
``choice(len(files), size=1000, replace=False)`` gives the order in which
files are tried; the first 100 usable ones (3 channels) are the experiments,
one image each, cropped (top-left kept) to multiples of 32.

The reference *benchmark* script instead redrew the (E, n) matrix for every
experiment and used row e of draw e+1, so its codecs saw other images than
Bit-Swap did; ``reference_benchmark_selection`` reproduces that for
comparison with its published figures.
"""
import numpy as np

SEED = 100
EXPERIMENTS = 100
IMAGES = 100
FULL_SIZE_POOL = 1000
BLOCK = 32


def select_experiments(n_available, experiments=EXPERIMENTS, images=IMAGES, seed=SEED):
    """Indices into the test set, shape (experiments, images), all distinct."""
    if experiments < 1 or images < 1:
        raise ValueError("experiments and images must be at least 1")
    if experiments * images > n_available:
        raise ValueError(f"{experiments} experiments x {images} images drawn without "
                         f"replacement need {experiments * images} test images; "
                         f"only {n_available} available")
    rng = np.random.RandomState(seed)
    return rng.choice(n_available, size=(experiments, images), replace=False).astype(np.int64)


def reference_benchmark_selection(n_available, experiments=EXPERIMENTS, images=IMAGES,
                                  seed=SEED):
    """The reference benchmark's images: row e of the (e+1)-th fresh draw of
    a full (100, images) matrix from one seeded stream (rows may overlap)."""
    if images * max(experiments, EXPERIMENTS) > n_available:
        raise ValueError(f"the reference draw needs {images * EXPERIMENTS} test images; "
                         f"only {n_available} available")
    rng = np.random.RandomState(seed)
    rows = [rng.choice(n_available, size=(max(experiments, EXPERIMENTS), images),
                       replace=False)[e] for e in range(experiments)]
    return np.stack(rows).astype(np.int64)


def full_size_order(n_files, pool=FULL_SIZE_POOL, seed=SEED):
    """Order in which files (sorted by name) are tried for the full-size protocol."""
    if n_files < 1:
        raise ValueError("no files to draw from")
    return np.random.RandomState(seed).choice(n_files, size=min(pool, n_files),
                                              replace=False).astype(np.int64)


def crop_to_multiple(image, multiple=BLOCK):
    """Crop a (C, H, W) image to the largest multiple of ``multiple`` in H and W,
    keeping the top-left corner (as the paper). Raises if a side is shorter."""
    c, h, w = image.shape
    if h < multiple or w < multiple:
        raise ValueError(f"image {h}x{w} is smaller than one {multiple}x{multiple} block")
    return image[:, :h - h % multiple, :w - w % multiple]
