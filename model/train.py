"""Training and evaluation loop shared by the four per-dataset scripts.

Owns: the command line (`parse_args`; --resume of a run reads its settings
and output folder from the checkpoint), checkpoints (`Trainer.save`, atomic),
the EMA of the weights, the learning-rate schedule, evaluation, logging, and
`main(dataset, argv)`.

Semantics (docs/design.md, "Training"): data-dependent init on `init_batches`
stacked batches (rank 0's, broadcast), Adam, lr = max(lr_min, lr * decay^t)
with t the number of steps since `decay_start`, gradient-norm clipping,
free bits per latent layer and channel, evaluation of the test ELBO (plain,
no free bits) with EMA weights every `interval` epochs, best kept.

EMA: shadow = 0.999 * shadow + 0.001 * param after every step, with a
warm-up over the first few thousand steps of a run from random weights (see
`EMA`; a run that starts from trained weights averages at 0.999 from its
first step). (The
reference's EMA multiplies the NEW value by 0.999 and the shadow by 0.001, so
its "EMA" weights are practically the current weights; this is the correct
average.)

Files under --out:
  checkpoint.pt   full training state (model, EMA, optimizer, step, epoch,
                  position in the epoch, RNG states as tensors): --resume
                  continues exactly, bit for bit on the same machine and world
                  size; read with torch.load(weights_only=True) (older files
                  with numpy RNG states: model/package.read_checkpoint);
  model_best.pt   EMA weights with the best test ELBO, as a plain state dict
                  in the authors' layout (`torch.save(model.state_dict())`);
  model_last.pt   EMA weights at the last checkpoint, same format.
All written to a temporary file and renamed, so a run killed at any moment
leaves the previous files intact. Only rank 0 writes or logs.
"""
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from model import distributed, package, speed
from model.config import config_for
from model.hvae import HVAE
from model.package import CHECKPOINT_FORMAT
from utils import cli
from utils.cli import BadInput, atomic_output
from utils.device import resolve_device

CURVE_SEED = 20190601  # posterior samples of the --curve-minutes evaluations


class TrainingError(cli.RunFailure):
    """A run failed while training (a NaN loss, ranks out of step): one
    line, exit status 1.  Bad flags, files or data are BadInput (status 2)."""


# ---- command line ---------------------------------------------------------
# (flag, type, TrainConfig field, help): the settings a checkpoint records.
# Unset flags take the paper's value for the dataset, or, with --resume of a
# training checkpoint, the value that run used.
SETTINGS = [
    ("--nz", int, "nz", "number of latent layers"),
    ("--width", int, "width", "channels of every convolution"),
    ("--zchannels", int, "zchannels", "channels per latent layer"),
    ("--nprocessing", int, "nprocessing", "5x5 residual layers at the pixel side"),
    ("--blocks", int, "blocks", "residual layers dealt over the latent layers (resdepth)"),
    ("--dropout", float, "dropout", "dropout probability in the residual layers"),
    ("--kernel", int, "kernel", "kernel size of the latent-side convolutions"),
    ("--batch", int, "batch", "global batch size, split over the ranks"),
    ("--lr", float, "lr", "learning rate"),
    ("--decay", float, "decay", "learning-rate decay factor per step"),
    ("--schedule", int, "schedule", "apply the learning-rate decay (1) or not (0)"),
    ("--epochs", int, "epochs", "epochs in all (the paper trains until stopped)"),
    ("--interval", int, "interval", "evaluate with EMA weights every N epochs"),
    ("--seed", int, "seed", "seed of the initial weights and the data order"),
    ("--patches-per-image", int, "patches_per_image",
     "imagenetcrop: random 32x32 patches per image file and epoch (more for a small photo "
     "collection)"),
    ("--init-batches", int, "init_batches", "batches stacked for the data-dependent init"),
    ("--ema-decay", float, "ema_decay",
     "decay per step of the weights' moving average that evaluations and exports use"),
    ("--hflip", int, "hflip",
     "imagenetcrop: mirror a random half of the training patches left-right (1) or not (0)"),
]
BOOLEAN_SETTINGS = ("schedule", "hflip")
ARCHITECTURE_FLAGS = ("--nz", "--width", "--zchannels", "--nprocessing", "--blocks", "--kernel")


def parse_args(dataset, argv=None):
    paper = config_for(dataset)
    p = cli.parser(f"{dataset}_train.py",
                   f"Train the Bit-Swap hierarchical VAE on {dataset}.\n\n"
                   "Unset settings take the paper's value for the dataset (shown as "
                   "'paper'); with --resume RUN they\ntake the value that run used, and the "
                   "output folder is RUN. A run stops at --epochs, --max-steps or\n"
                   "--max-minutes, whichever comes first, always with a checkpoint; "
                   "model_best.pt (EMA weights,\nbest test ELBO) and model_last.pt (EMA "
                   "weights at the last checkpoint) are written too.")
    a = p.add_argument
    for flag, kind, name, text in SETTINGS:
        value = getattr(paper, name)
        value = int(value) if name in BOOLEAN_SETTINGS else value
        a(flag, type=kind, dest=name, default=None,
          choices=(0, 1) if name in BOOLEAN_SETTINGS else None,
          help=f"{text} (paper: {value}" + (f" at nz={paper.nz}, other nz: their own)"
                                            if name == "width" else ")"))
    a("--dist", type=int, default=0, choices=(0, 1),
      help="1: data-parallel over the ranks of mpiexec/torchrun")
    a("--dist-engine", default="auto", choices=distributed.ENGINES, dest="dist_engine",
      help="with --dist=1: auto (Horovod under mpiexec when installed, else "
           "torch.distributed), horovod, or torch")
    cli.add_device_argument(p)
    a("--data-root", default=None,
      help="folder holding the datasets (see utils/data.py) (default: data; with --resume RUN: "
           "the one RUN used)")
    a("--download", action="store_true", help="download MNIST / CIFAR-10 through torchvision")
    a("--out", default=None,
      help="output folder (default: runs/<dataset>_nz<nz>; with --resume RUN: RUN)")
    a("--resume", default=None,
      help="a run folder or its checkpoint.pt to continue exactly (settings and output folder "
           "from it), or weights to start from: a model package, a shipped name (e.g. "
           "mnist-nz8), a state dict such as the authors' released files")
    a("--max-steps", type=int, default=None,
      help="stop when the run's step counter reaches this total (steps of earlier sessions "
           "count: resuming a run already there does nothing)")
    a("--max-minutes", type=float, default=None,
      help="stop after this many minutes of this session (wall clock); SIGTERM also stops "
           "the run after the current step, with a checkpoint")
    a("--checkpoint-minutes", type=float, default=30.0,
      help="also checkpoint every this many minutes within an epoch")
    a("--log-dir", default=None, help="TensorBoard folder (default: <out>/logs)")
    a("--log-every", type=int, default=50, help="steps between TensorBoard scalars")
    a("--workers", type=int, default=None, help="data-loader workers (default 0 on CPU, 4 on GPU)")
    a("--threads", type=int, default=None, help="torch CPU threads per process")
    a("--precision", default=None, choices=speed.PRECISIONS,
      help="arithmetic of the training steps (model/speed.py): fp32, tf32 (GPUs), or bf16 "
           "autocast of the residual stacks (GPUs, and CPUs with AVX512_BF16 or AMX); evaluations "
           "and exports stay float32 (default: fp32; --resume RUN keeps RUN's)")
    a("--channels-last", action="store_true",
      help="hidden activations in channels_last (faster on GPUs; slower on the 2-core CPU measured)")
    cli.add_progress_argument(p)
    a("--curve-minutes", type=float, default=None,
      help="every this many minutes of training (wall, evaluation excluded), evaluate the EMA "
           "weights on the first --curve-images held-out images and append a row to "
           "<out>/curve.csv (training budget so far in wall and CPU seconds, test ELBO); also "
           "once when the run stops")
    a("--curve-images", type=int, default=None,
      help="held-out images per --curve-minutes evaluation (the same ones every time) "
           "(default: 2000; --curve-minutes and --curve-images default to RUN's with --resume RUN)")
    args = p.parse_args(argv)
    given = {name: getattr(args, name) for _, _, name, _ in SETTINGS
             if getattr(args, name) is not None}
    for name in BOOLEAN_SETTINGS:
        if name in given:
            given[name] = bool(given[name])
    args.resume_checkpoint = args.resume_weights = None
    saved = resumed_settings(dataset, args)
    if saved is not None:
        for name, value in args.resume_checkpoint[1].get("run_options", {}).items():
            if name in RUN_OPTIONS and getattr(args, name) is None:
                setattr(args, name, value)
        base = {k: v for k, v in saved.items() if k != "dataset"}
        cfg = config_for(dataset, **{**base, **given})
    elif args.resume:      # weights to start from: their architecture, the paper's training
        cfg = config_for(dataset, **{**starting_architecture(dataset, args), **given})
    else:
        cfg = config_for(dataset, **given)
    for name, default in RUN_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.out is None:
        args.out = (os.path.dirname(os.path.abspath(args.resume_checkpoint[0])) if saved is not None
                    else os.path.join("runs", f"{dataset}_nz{cfg.nz}"))
    if args.log_dir is None:
        args.log_dir = os.path.join(args.out, "logs")
    return cfg, args


# Options that are not the recipe but belong to the run: --resume RUN takes
# them from RUN unless given (None: not given), else these defaults.
RUN_OPTIONS = {"data_root": "data", "curve_minutes": None, "curve_images": 2000,
               "precision": "fp32"}


def run_options(args):
    """The RUN_OPTIONS values of this run (saved in its checkpoint)."""
    return {name: getattr(args, name) for name in RUN_OPTIONS}


def resumed_settings(dataset, args):
    """The settings recorded in --resume's training checkpoint (None when
    --resume is not one); the checkpoint is kept in args.resume_checkpoint."""
    if not args.resume:
        return None
    path = args.resume
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint.pt")):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path) or path.endswith((".json", ".safetensors")):
        return None
    obj = package.read_checkpoint(path)
    if not package.is_training_checkpoint(obj):
        return None
    saved = dict(obj.get("config") or {})
    if saved.get("dataset", dataset) != dataset:
        raise BadInput(f"--resume {args.resume} is a {saved['dataset']} run, not {dataset}; use "
                       f"model/{saved['dataset']}_train.py")
    args.resume_checkpoint = (path, obj)
    return saved


def starting_architecture(dataset, args):
    """The architecture settings of --resume's weights (a package, a shipped
    name, a state dict such as the authors' files), so that starting from
    them needs no architecture flags; the weights are kept in
    args.resume_weights."""
    from model.hvae import HVAE
    got = package.read_weights(args.resume)
    if got["dataset"] not in (None, dataset):
        raise BadInput(f"--resume {args.resume} is a {got['dataset']} model, not {dataset}")
    arch = got["architecture"]
    if arch is None:
        try:
            arch = HVAE.architecture_from_state_dict(got["state"])
        except ValueError as exc:
            raise BadInput(f"--resume {args.resume}: {exc}") from None
    args.resume_weights = got
    return dict(xs=tuple(arch["xs"]), nz=arch["nz"], zchannels=arch["zchannels"],
                width=arch["width"], nprocessing=arch["nprocessing"], blocks=arch["resdepth"],
                kernel=arch["kernel"], conditional_xscale=arch["conditional_xscale"])


# ---- schedule, EMA --------------------------------------------------------
def learning_rate(cfg, step):
    """lr used for step `step` (0-based): decayed once per completed step
    after `decay_start`, never below `lr_min`."""
    if not cfg.schedule:
        return cfg.lr
    floor = min(cfg.lr_min, cfg.lr)  # an --lr below lr_min is simply not decayed
    return max(floor, cfg.lr * cfg.decay ** max(0, step - cfg.decay_start))


class EMA:
    """shadow = d * shadow + (1 - d) * param after every step, for every
    parameter, with d = min(decay, (1 + t) / (10 + t)) at update t = 0, 1, ...

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates)
    keeps the average from being dominated by the random initial weights in
    short runs: with a constant 0.999 the initial weights still carry 63% of
    the weight after 468 steps (one MNIST epoch): measured test -ELBO 2.52
    bits/dim for that average against 1.20 for the raw weights (width-32
    nz=2 model, first 2,000 test images).

    A run that starts from trained weights (a package, which holds an
    average already) passes warmup=False: its starting point is the best
    estimate there is, while the first steps of a fresh Adam state are
    noisy, and a warm-up would make the average follow them (the held-out
    -ELBO of the average rose by a few thousandths for hundreds of steps)."""

    def __init__(self, model, decay, warmup=True):
        self.decay = decay
        self.warmup = warmup
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    def decay_at(self, t):
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model, t):
        """Fold in the parameters after update number t (0-based)."""
        d = self.decay_at(t)
        pairs = list(model.named_parameters())
        shadow = [self.shadow[k] for k, _ in pairs]
        # one fused launch per operation for all tensors (same arithmetic as a loop)
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, [p.detach() for _, p in pairs], alpha=1.0 - d)

    def state_dict_of(self, model):
        """model.state_dict() with the parameters replaced by their averages."""
        sd = model.state_dict()
        return {k: self.shadow.get(k, v).detach().clone() for k, v in sd.items()}


# ---- checkpoints ----------------------------------------------------------
def atomic_save(obj, path):
    """torch.save through utils.cli.atomic_output (temporary file, rename)."""
    with atomic_output(path) as f:
        torch.save(obj, f)


def rng_state():
    """Every generator's state as tensors and plain numbers, so that a
    checkpoint loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = dict(torch=torch.get_rng_state(),
                 numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), cached_gaussian=float(gauss)),
                 python=dict(version=version, state=torch.tensor(mt, dtype=torch.int64),
                             gauss_next=gauss_next))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore rng_state(); also reads the older layout (numpy's and
    Python's own state objects, see model/package.read_checkpoint)."""
    torch.set_rng_state(state["torch"])
    npstate = state["numpy"]
    if isinstance(npstate, dict):
        npstate = (npstate["kind"], npstate["keys"].numpy().astype(np.uint32), npstate["pos"],
                   npstate["has_gauss"], npstate["cached_gaussian"])
    np.random.set_state(npstate)
    pystate = state["python"]
    if isinstance(pystate, dict):
        pystate = (pystate["version"], tuple(int(x) for x in pystate["state"].tolist()),
                   pystate["gauss_next"])
    random.setstate(pystate)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _describe(arch):
    return ", ".join(f"{k}={v}" for k, v in arch.items())


def check_architecture(saved, model, path):
    want = model.architecture()
    if saved != want:
        raise BadInput(f"{path} was trained with {_describe(saved)}; this run has "
                       f"{_describe(want)} (pass the same --nz/--width/... or another --out)")


# ---- data ---------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler):
    """This rank's shard of a seeded permutation of the dataset, one per
    epoch, starting `skip` batches in (for exact resumption)."""

    def __init__(self, n, batch, rank, world, seed):
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.epoch, self.skip = 0, 0
        self.batches_per_epoch = n // (batch * world)

    def set_epoch(self, epoch, skip_batches=0):
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        used = self.batches_per_epoch * self.batch * self.world
        mine = perm[:used][self.rank::self.world]
        return iter(mine[self.skip * self.batch:].tolist())

    def __len__(self):
        return (self.batches_per_epoch - self.skip) * self.batch


def _epoch_aware(dataset, epoch):
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


# ---- evaluation and logging -----------------------------------------------
@torch.no_grad()
def evaluate(model, dataset, batch, device, dist, workers, seed=None):
    """Test ELBO (bits/dim, no free bits) of `model`, averaged over the whole
    test set (each rank takes every world-th image, sums are all-reduced).
    With `seed`, the posterior samples come from that seed and the global
    random streams are left as they were (comparable evaluations that do not
    perturb a training run)."""
    if seed is None:
        return _evaluate(model, dataset, batch, device, dist, workers)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        return _evaluate(model, dataset, batch, device, dist, workers)


@speed.plain_fp32()   # TF32 off: the figures are float32 ones
def _evaluate(model, dataset, batch, device, dist, workers):
    model.eval()
    shard = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    totals = torch.zeros(3 + 2 * model.nz, dtype=torch.float64)
    for x, _ in loader:
        x = x.to(device)
        _, t = model(x)
        n = x.shape[0]
        totals[0] += n
        totals[1] += t["elbo"].item() * n
        totals[2] += t["recon"].item() * n
        totals[3:3 + model.nz] += t["kl"].double().cpu() * n
        totals[3 + model.nz:] += t["enc"].double().cpu() * n
    dist.all_reduce_sum(totals)
    n = max(totals[0].item(), 1.0)
    return dict(elbo=totals[1].item() / n, recon=totals[2].item() / n,
                kl=(totals[3:3 + model.nz] / n).tolist())


def _image_grid(images, nrow=8):
    """(N, C, H, W) floats 0..255 -> (C, H', W') uint8 grid for TensorBoard."""
    from torchvision.utils import make_grid
    return make_grid(images.cpu() / 255.0, nrow=nrow, padding=2).clamp(0, 1)


class Logger:
    """TensorBoard (tensorboardX) on rank 0; silent elsewhere."""

    def __init__(self, log_dir, enabled):
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(log_dir)

    def scalars(self, step, prefix, values):
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (list, tuple)):
                for i, vi in enumerate(v):
                    self.writer.add_scalar(f"{prefix}/{k}_layer{i + 1}", vi, step)
            else:
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, step, tag, images):
        if self.writer is not None:
            self.writer.add_image(tag, _image_grid(images), step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


# ---- the loop -------------------------------------------------------------
class Trainer:
    """One training run; `run()` returns the best test ELBO seen."""

    def __init__(self, cfg, args, dist, datasets=None):
        from utils.data import training_datasets
        self.cfg, self.args, self.dist = cfg, args, dist
        self.device = resolve_device(args.device, args.gpu, dist.local_rank)
        if cfg.batch % dist.world_size:
            raise BadInput(f"--batch {cfg.batch} is not divisible by the {dist.world_size} ranks")
        self.batch = cfg.batch // dist.world_size
        self.workers = args.workers if args.workers is not None else (4 if self.device.type == "cuda" else 0)
        if datasets is None:
            datasets = training_datasets(cfg.dataset, args.data_root, args.download,
                                         cfg.patches_per_image, cfg.hflip)
        self.train_set, self.test_set = datasets
        if len(self.train_set) < cfg.batch:
            raise BadInput(f"the training set has {len(self.train_set)} images, fewer than "
                                f"one batch of {cfg.batch}")
        torch.manual_seed(cfg.seed)  # same initial weights everywhere (and broadcast anyway)
        self.model = HVAE.from_config(cfg).to(self.device)
        speed.apply_training_speed(self.model, getattr(args, "precision", "fp32"),
                                   getattr(args, "channels_last", False), self.device.type)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sampler = EpochSampler(len(self.train_set), self.batch, dist.rank,
                                    dist.world_size, cfg.seed)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_elbo = math.inf
        self.ema = None
        self.out = args.out
        self.ckpt_path = os.path.join(self.out, "checkpoint.pt")
        # training budget accumulated over every resume: wall seconds spent in
        # training steps and the CPU seconds this process used for them
        self.budget = dict(wall_s=0.0, cpu_s=0.0, images=0)

    # -- start ----------------------------------------------------------
    def start(self):
        args = self.args
        resumed = False
        if args.resume:
            path, obj = args.resume_checkpoint or (args.resume, None)
            if obj is not None:
                check_architecture(obj["architecture"], self.model, path)
                self.model.load_state_dict(obj["model"])
                self.optimizer.load_state_dict(obj["optimizer"])
                # checkpoints written before runs recorded it: the warm-up
                self.ema = EMA(self.model, self.cfg.ema_decay, obj.get("ema_warmup", True))
                for k, v in obj["ema"].items():
                    self.ema.shadow[k].copy_(v)
                self.step, self.epoch = obj["step"], obj["epoch"]
                self.batch_in_epoch, self.best_elbo = obj["batch_in_epoch"], obj["best_elbo"]
                self.budget.update(obj.get("budget", {}))
                rng = obj["rng"][self.dist.rank] if self.dist.rank < len(obj["rng"]) else None
                if rng is not None and len(obj["rng"]) == self.dist.world_size:
                    set_rng_state(rng)
                else:
                    torch.manual_seed(self.cfg.seed + 7919 * self.dist.rank + self.step)
                resumed = True
                self._say(f"resumed {path} at epoch {self.epoch}, step {self.step}")
            else:   # weights to start from: a package, a state dict (the authors' files)
                got = args.resume_weights or package.read_weights(args.resume)
                package.fit_state_dict(self.model, got["state"], got["source"])
                self._say(f"starting from the weights in {got['source']}")
        else:
            self._data_dependent_init()
        if not resumed:
            self.dist.broadcast_module(self.model)
            # trained weights to start from are averaged from the first step on
            self.ema = EMA(self.model, self.cfg.ema_decay, warmup=not args.resume)
            # dropout and latent noise differ per rank, reproducibly
            torch.manual_seed(self.cfg.seed + 7919 * self.dist.rank)

    def _data_dependent_init(self):
        n = min(self.cfg.init_batches * self.batch, len(self.train_set))
        g = torch.Generator().manual_seed(self.cfg.seed)
        idx = torch.randperm(len(self.train_set), generator=g)[:n].tolist()
        x = torch.stack([self.train_set[i][0] for i in idx]).to(self.device)
        self.model.initialize(x)

    # -- checkpoints ----------------------------------------------------
    def _gather_rng(self):
        """Every rank's RNG state (rank 0 stores them all)."""
        own = rng_state()
        if not self.dist.active:
            return [own]
        return self.dist.all_gather_object(own)

    def parameter_digest(self):
        """sha256 of all parameters (model and EMA), to compare ranks."""
        h = hashlib.sha256()
        for t in list(self.model.parameters()) + list(self.ema.shadow.values()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def check_ranks_in_sync(self):
        """Compare every rank's parameters with rank 0's (bitwise)."""
        if not self.dist.active:
            return
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        root = flat.clone()
        self.dist.broadcast_(root)
        differs = torch.tensor([float(not torch.equal(flat, root))], device=flat.device)
        self.dist.all_reduce_sum(differs)
        if differs.item() > 0:
            raise TrainingError(f"parameters differ between ranks at step {self.step} "
                                f"({int(differs.item())} rank(s) diverged from rank 0)")

    def save(self):
        self.check_ranks_in_sync()
        rngs = self._gather_rng()
        if not self.dist.is_root:
            return
        obj = dict(format=CHECKPOINT_FORMAT, config=self.cfg.to_dict(),
                   architecture=self.model.architecture(), model=self.model.state_dict(),
                   ema=self.ema.shadow, ema_warmup=self.ema.warmup, optimizer=self.optimizer.state_dict(), step=self.step,
                   epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                   best_elbo=self.best_elbo, rng=rngs, world_size=self.dist.world_size,
                   budget=dict(self.budget), device=self.device.type, run_options=run_options(self.args))
        atomic_save(obj, self.ckpt_path)
        atomic_save(self.ema.state_dict_of(self.model), os.path.join(self.out, "model_last.pt"))

    def _check_out_dir(self):
        """Refuse to overwrite another run's checkpoint unless resuming it."""
        if not self.args.resume and os.path.exists(self.ckpt_path):
            raise BadInput(f"{self.ckpt_path} exists: pass --resume {self.out} to continue "
                           f"it, or choose another --out")

    # -- one step -------------------------------------------------------
    def _train_step(self, x, stop_request):
        cfg = self.cfg
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        objective, terms = self.model(x, free_bits=cfg.free_bits)
        self.optimizer.zero_grad(set_to_none=False)
        objective.backward()
        params = [p for p in self.model.parameters()]
        stats = torch.stack([objective.detach(), terms["elbo"].detach(),
                             terms["recon"].detach()]).float()
        tail = torch.cat([stats, terms["kl"].detach().float(),
                          torch.tensor([float(stop_request)], device=stats.device)])
        if self.dist.active:   # one all-reduce for the gradients and the statistics
            flat = torch.cat([p.grad.reshape(-1) for p in params] + [tail])
            self.dist.all_reduce_sum(flat)
            flat /= self.dist.world_size
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p))
                offset += n
            tail = flat[offset:]
        tail = tail.cpu()
        objective_mean = tail[0].item()
        if not math.isfinite(objective_mean):
            raise TrainingError(f"the loss became {objective_mean} at step {self.step} (epoch "
                                f"{self.epoch}); stopping. The last good checkpoint is kept at "
                                f"{self.ckpt_path}; try a lower --lr")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        self.batch_in_epoch += 1
        return dict(objective=objective_mean, elbo=tail[1].item(), recon=tail[2].item(),
                    kl=tail[3:3 + self.model.nz].tolist(), lr=lr, grad_norm=grad_norm), \
            tail[-1].item() > 0

    # -- evaluation -----------------------------------------------------
    def _ema_model(self):
        """A plain float32 network holding the EMA weights. Built afresh, not
        copied: a copy would keep the training-speed options (bf16 autocast
        hooks, channels_last), and the curve, the best-weights choice and the
        logged figures are meant to be the float32 model's."""
        with torch.random.fork_rng(devices=[]):   # its initial weights leave the training's
            eval_model = HVAE(**self.model.architecture())   # random stream untouched
        eval_model = eval_model.to(self.device)
        eval_model.load_state_dict(self.ema.state_dict_of(self.model))
        return eval_model

    def _evaluate_and_keep_best(self, logger):
        eval_model = self._ema_model()
        result = evaluate(eval_model, self.test_set, self.batch, self.device, self.dist, self.workers)
        logger.scalars(self.step, "test", result)
        if self.dist.is_root:
            x = torch.stack([self.test_set[i][0] for i in range(min(8, len(self.test_set)))])
            x = x.to(self.device)
            logger.images(self.step, "test/reconstructions",
                          torch.cat([x, eval_model.reconstruct(x)]))
            logger.images(self.step, "test/samples", eval_model.sample(
                16, generator=torch.Generator(self.device).manual_seed(0)))
        improved = result["elbo"] < self.best_elbo
        if improved:
            self.best_elbo = result["elbo"]
            if self.dist.is_root:
                atomic_save(eval_model.state_dict(), os.path.join(self.out, "model_best.pt"))
        return result, improved

    # -- main loop ------------------------------------------------------
    def run(self):
        from tqdm import tqdm
        cfg, args, dist = self.cfg, self.args, self.dist
        self._check_out_dir()
        self.start()
        if dist.is_root:  # the recipe, readable without loading the checkpoint
            cli.write_atomic(os.path.join(self.out, "config.json"), json.dumps(dict(
                cfg.to_dict(), threads=torch.get_num_threads(), world_size=dist.world_size,
                run_options=run_options(args)), indent=1))
        logger = Logger(args.log_dir, dist.is_root)
        t0 = last_ckpt = time.time()
        per_epoch = self.sampler.batches_per_epoch
        self._curve_last, self._curve_train = self.budget["wall_s"], []
        self._mark()
        self._say(f"{cfg.dataset}: nz={cfg.nz} width={cfg.width} zchannels={cfg.zchannels}, "
                  f"{sum(p.numel() for p in self.model.parameters()):,} parameters, "
                  f"{per_epoch} steps/epoch of {cfg.batch} images on {dist.world_size} rank(s), "
                  f"device {self.device}, engine {dist.engine}")
        if self.step > 0 and ((args.max_steps is not None and self.step >= args.max_steps)
                              or self.epoch >= cfg.epochs):
            limit = (f"--max-steps {args.max_steps}" if args.max_steps is not None
                     and self.step >= args.max_steps else f"--epochs {cfg.epochs}")
            self._say(f"nothing to do: {self.ckpt_path} is at step {self.step} (epoch "
                      f"{self.epoch}), already at {limit} (a total over all sessions); "
                      "raise it to train on")
            logger.close()
            return self.best_elbo
        stop = False
        # SIGTERM (a scheduler's or `kill`'s stop) ends the run like --max-minutes:
        # after the current step, with a checkpoint, on every rank at once
        self._stop_signal = False
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            while self.epoch < cfg.epochs and not stop:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                _epoch_aware(self.train_set, self.epoch)
                # an own generator: creating the loader must not draw from the
                # global RNG, or a resumed run would diverge
                loader = DataLoader(self.train_set, batch_size=self.batch, sampler=self.sampler,
                                    num_workers=self.workers, drop_last=True,
                                    generator=torch.Generator().manual_seed(cfg.seed + self.epoch),
                                    pin_memory=self.device.type == "cuda")
                bar = tqdm(loader, total=len(loader), desc=f"epoch {self.epoch + 1}",
                           disable=not dist.is_root or args.no_progress, leave=False)
                sums, count = np.zeros(2), 0
                for x, _ in bar:
                    x = x.to(self.device, non_blocking=True)
                    want_stop = (self._stop_signal or
                                 (args.max_steps is not None and self.step + 1 >= args.max_steps) or
                                 (args.max_minutes is not None and
                                  time.time() - t0 >= 60 * args.max_minutes))
                    stats, stop = self._train_step(x, want_stop)
                    self._account(cfg.batch)
                    sums += (stats["elbo"], stats["objective"])
                    count += 1
                    self._curve_train.append(stats["elbo"])
                    if (args.curve_minutes is not None and not stop and
                            self.budget["wall_s"] - self._curve_last >= 60 * args.curve_minutes):
                        self._curve_point()
                    bar.set_postfix(elbo=f"{stats['elbo']:.3f}", lr=f"{stats['lr']:.2e}")
                    if self.step % args.log_every == 0:
                        logger.scalars(self.step, "train", stats)
                    if stop:
                        break
                    if time.time() - last_ckpt >= 60 * args.checkpoint_minutes:
                        self.save()
                        last_ckpt = time.time()
                        self._mark()
                bar.close()
                if stop:
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                line = (f"epoch {self.epoch} step {self.step}: train elbo "
                        f"{sums[0] / max(count, 1):.4f} bits/dim, objective "
                        f"{sums[1] / max(count, 1):.4f}, lr {learning_rate(cfg, self.step):.2e}, "
                        f"{time.time() - t0:.0f}s")
                if self.epoch % cfg.interval == 0:
                    result, improved = self._evaluate_and_keep_best(logger)
                    line += f", test elbo (EMA) {result['elbo']:.4f}" + (" best" if improved else "")
                self._say(line)
                self.save()
                last_ckpt = time.time()
                self._mark()
            if args.curve_minutes is not None:
                self._curve_point()
            self.save()
            if self.dist.active:  # every rank reports, so launchers' logs can be compared
                print(f"rank {self.dist.rank}/{self.dist.world_size}: parameters sha256 "
                      f"{self.parameter_digest()}", flush=True)
            best = os.path.join(self.out, "model_best.pt")
            if not os.path.exists(best):
                # a bounded run that stopped before its first evaluation still
                # ends with a usable export (after the checkpoint, so resuming
                # stays exact: evaluation draws from the global RNG)
                result, _ = self._evaluate_and_keep_best(logger)
                self._say(f"test elbo (EMA) {result['elbo']:.4f} at step {self.step}")
            self._say(f"stopped at epoch {self.epoch}, step {self.step}; checkpoint {self.ckpt_path}; "
                      f"EMA weights {best}\nnext: python discretization.py {cfg.dataset} --params "
                      f"{self.out}   then   python {cfg.dataset}_compress.py --params {self.out}")
        finally:
            logger.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return self.best_elbo

    def _request_stop(self, signum, frame):
        self._stop_signal = True

    # -- training budget and the held-out curve ----------------------
    def _mark(self):
        """Start timing training from now (evaluation and saving excluded)."""
        self._wall_mark, self._cpu_mark = time.perf_counter(), time.process_time()

    def _account(self, images):
        wall, cpu = time.perf_counter(), time.process_time()
        self.budget["wall_s"] += wall - self._wall_mark
        self.budget["cpu_s"] += cpu - self._cpu_mark
        self.budget["images"] += images
        self._wall_mark, self._cpu_mark = wall, cpu

    def _curve_point(self):
        """Evaluate the EMA weights on a fixed held-out subset, with a fixed
        seed for the posterior samples and without touching the training
        RNG streams, and append one row to <out>/curve.csv."""
        subset = Subset(self.test_set, range(min(self.args.curve_images, len(self.test_set))))
        result = evaluate(self._ema_model(), subset, self.batch, self.device, self.dist,
                          self.workers, seed=CURVE_SEED)
        train = float(np.mean(self._curve_train)) if self._curve_train else float("nan")
        self._curve_train, self._curve_last = [], self.budget["wall_s"]
        if self.dist.is_root:
            path = os.path.join(self.out, "curve.csv")
            new = not os.path.exists(path)
            os.makedirs(self.out, exist_ok=True)
            with open(path, "a") as f:
                if new:
                    f.write("step,epoch,images,wall_s,cpu_s,threads,world_size,lr,"
                            "train_elbo,test_elbo,test_images\n")
                f.write(f"{self.step},{self.epoch},{self.budget['images']},"
                        f"{self.budget['wall_s']:.3f},{self.budget['cpu_s']:.3f},"
                        f"{torch.get_num_threads()},{self.dist.world_size},"
                        f"{learning_rate(self.cfg, self.step):.3e},{train:.5f},"
                        f"{result['elbo']:.5f},{len(subset)}\n")
            self._say(f"curve: step {self.step}, {self.budget['wall_s'] / 60:.1f} training min, "
                      f"{self.budget['cpu_s'] / 60:.1f} CPU min, held-out elbo (EMA) "
                      f"{result['elbo']:.4f}, train {train:.4f}")
        self._mark()

    def _say(self, message):
        if self.dist.is_root:
            print(message, flush=True)


def set_threads(args, dist):
    if args.threads:
        torch.set_num_threads(args.threads)
    elif dist.active:  # ranks on one machine share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE",
                                   os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", dist.world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


def main(dataset, argv=None):
    """Entry point of `model/<dataset>_train.py` (exit status: utils/cli.py;
    bad flags, files or data 2, a failed run 1). A rank of a multi-process
    torch.distributed job leaves the process here with that status."""
    from utils.data import DataNotFoundError
    dist = None
    finished = False

    def work():
        nonlocal dist, finished
        try:
            cfg, args = parse_args(dataset, argv)
        except ValueError as e:           # the configuration's own checks
            raise BadInput(str(e)) from None
        try:
            dist = distributed.setup(args.dist, engine=args.dist_engine,
                                     use_cuda=args.device != "cpu" and torch.cuda.is_available())
        except distributed.DistributedSetupError as e:  # no launcher, Horovod missing or broken
            raise BadInput(str(e)) from None
        set_threads(args, dist)
        try:
            Trainer(cfg, args, dist).run()
            finished = True
        except DataNotFoundError as e:
            raise BadInput(str(e)) from None
        except Exception as e:
            # an unexpected error keeps its traceback; in a multi-rank job it is
            # preceded by the failing rank (the others then fail in their next
            # collective, and mpiexec / torchrun end the job on the first
            # non-zero exit)
            if dist.active and not isinstance(e, (BadInput, cli.RunFailure)):
                print(f"error on rank {dist.rank}/{dist.world_size}: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)
            raise

    try:
        status = cli.run_main(f"{dataset}_train.py", work)
    finally:
        if dist is not None:
            dist.shutdown(finished)
    if dist is not None and dist.engine == "torch" and dist.active:
        # Everything is written and the group is gone. Interpreter
        # finalization can still abort a gloo rank now and then ("terminate
        # called without an active exception": a C++ thread object destroyed
        # at exit), turning a finished job into a failed one under mpiexec;
        # leaving at once skips that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
