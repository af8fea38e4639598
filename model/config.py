"""Per-dataset configurations: the paper's architecture and training
hyperparameters (docs/design.md, "Training"). A dataset is nothing but one of these.

`config_for(dataset, **overrides)` returns a `TrainConfig`; `width` defaults
to the paper's width for the chosen `nz` (MNIST 8/4/2/1 -> 61/62/63/64,
CIFAR-10 -> 252/254/255/256, ImageNet32 4/2/1 -> 254/255/256, patches 256).
"""
import dataclasses
from dataclasses import dataclass, field

DATASETS = ("mnist", "cifar", "imagenet", "imagenetcrop")

PAPER_WIDTHS = {
    "mnist": {8: 61, 4: 62, 2: 63, 1: 64},
    "cifar": {8: 252, 4: 254, 2: 255, 1: 256},
    "imagenet": {4: 254, 2: 255, 1: 256},
    "imagenetcrop": {4: 256},
}


@dataclass
class TrainConfig:
    dataset: str
    xs: tuple = (3, 32, 32)
    nz: int = 8
    zchannels: int = 8
    width: int = None           # None: the paper's width for nz (256 if none)
    nprocessing: int = 4        # residual layers with 5x5 kernels at the x side
    blocks: int = 8             # residual layers dealt over the latent layers
    kernel: int = 3
    dropout: float = 0.0
    conditional_xscale: bool = False  # p(x|z1) scale from a head (patches model)
    batch: int = 128            # global batch, split over the ranks
    lr: float = 2e-3
    lr_min: float = 5e-4
    decay: float = 0.999995     # lr *= decay after every step, down to lr_min
    decay_start: int = 0        # first step at which the decay applies
    schedule: bool = True       # apply the decay at all
    epochs: int = 10_000_000    # the paper trains until stopped
    interval: int = 5           # evaluate (EMA weights) every `interval` epochs
    init_batches: int = 25      # batches stacked for the data-dependent init
    free_bits: float = 1.0      # per latent layer and channel, in bits
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 100
    patches_per_image: int = 1  # imagenetcrop: random patches per image file and epoch
    hflip: bool = False         # imagenetcrop: mirror a random half of the training patches
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        if self.nz < 1:
            raise ValueError(f"--nz must be >= 1, got {self.nz}")
        if self.width is None:
            self.width = PAPER_WIDTHS[self.dataset].get(self.nz, 256)
        self.xs = tuple(self.xs)
        for name in ("width", "zchannels", "batch", "kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.nprocessing < 0 or self.blocks < 0:
            raise ValueError("--nprocessing and --blocks must be >= 0")
        if self.patches_per_image < 1:
            raise ValueError(f"--patches-per-image must be >= 1, got {self.patches_per_image}")
        if self.hflip and self.dataset != "imagenetcrop":
            # digits are not mirror-symmetric; the paper augments no dataset
            raise ValueError(f"--hflip applies to imagenetcrop patches only, not {self.dataset}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")

    def architecture(self):
        """What a checkpoint must agree with (HVAE.architecture's keys)."""
        return dict(xs=list(self.xs), nz=self.nz, zchannels=self.zchannels, width=self.width,
                    nprocessing=self.nprocessing, resdepth=self.blocks, kernel=self.kernel,
                    conditional_xscale=self.conditional_xscale)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["xs"] = list(self.xs)
        return d


PAPER_DEFAULTS = {
    "mnist": dict(xs=(1, 32, 32), nz=8, zchannels=1, dropout=0.2, decay=0.9995),
    "cifar": dict(xs=(3, 32, 32), nz=8, zchannels=8, dropout=0.3, decay=0.999995),
    "imagenet": dict(xs=(3, 32, 32), nz=4, zchannels=8, dropout=0.0, decay=0.999995,
                     decay_start=100_000),
    "imagenetcrop": dict(xs=(3, 32, 32), nz=4, zchannels=8, dropout=0.0, decay=0.999995,
                         conditional_xscale=True),
}


def config_for(dataset, **overrides):
    """The paper's configuration for `dataset`, with `overrides` applied
    (None values are ignored, so argparse defaults of None fall through)."""
    if dataset not in PAPER_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    kw = dict(PAPER_DEFAULTS[dataset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(dataset=dataset, **kw)

