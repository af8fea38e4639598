"""Train the shipped models on a GPU within a wall budget; pack each into one archive.

    python scripts/train_shipped.py --device cuda --minutes 5 --out DIR [--carry .carry]

Trains, one after the other, (a) the photo model of image_compress.py
(imagenetcrop; --photo-preset, default the demo's architecture nz=2, width
64, zchannels 8, blocks 4, nprocessing 2) on the photo corpus and (b) MNIST
nz=8 at the paper's width 61, for --minutes of training in all (split by
--photo-share), with the data held on the device (utils/device_data.py) and
the speed options of model/speed.py (on CUDA by default TF32 and
channels_last). Then, per model: the held-out -ELBO of the EMA and the raw
weights (the better is exported), the latent bins (discretization.py's
method), a float16 package (model/package.py), the package's held-out -ELBO
in plain float32 and a Bit-Swap encode/decode round trip of a few held-out
images on the CPU, checked bit for bit.

Fail fast: before the long run, every stage (data, init, training steps,
evaluation, bins, packaging, round trip) runs once on the device for every
model at the real sizes and a tiny count; the first error stops the command.

DIR receives at most four files, whatever happens (a stage that fails
or SIGTERM included): run.log (everything printed), summary.json (per model: status,
figures, timings), and per model NAME.tar.gz holding NAME/ (the package:
model.json, weights.safetensors, bins.pt; smoke-package/ when only the
fail-fast pass made one), train.log, curve.csv (held-out
-ELBO of the EMA weights during training), result.json and, when the
archive stays under --archive-mib (small models only: with Adam's state the
paper-size MNIST model's is about 42 MB, the demo's 24 MB), the float32
training checkpoint.pt (to continue exactly). Archives are written atomically;
one of a model that failed holds what its stages had made.

Data: --carry as written by scripts/prepare_device_carry.py (mnist.npz,
photos/). Exit status: 0 all stages done, 1 a stage failed, 2 bad input.
"""
import io
import json
import os
import platform
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils import cli  # noqa: E402

PHOTO_PRESETS = {
    # the demo's architecture (the CPU recipe's)
    "demo": dict(nz=2, width=64, zchannels=8, blocks=4, nprocessing=2),
    # twice the width and depth: about 8x the arithmetic per image, for a GPU
    "wide": dict(nz=2, width=128, zchannels=8, blocks=8, nprocessing=2),
}
ARCH_FLAGS = ("nz", "width", "zchannels", "blocks", "nprocessing")
MODEL_KEYS = ("photos", "mnist")


class StageFailed(cli.RunFailure):
    """A stage raised; its traceback is in run.log."""


class Terminated(BaseException):
    """SIGTERM (a time limit's `timeout`): stop, but archive what exists first."""


def _terminate(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


def parse_args(argv):
    p = cli.parser("train_shipped.py", __doc__.split("\n")[0] + "\n\n" +
                   __doc__.split("\n\n", 2)[2].split("\n\nData:")[0])
    a = p.add_argument
    a("--out", required=True, help="folder for run.log, summary.json and one archive per model")
    a("--minutes", type=float, default=5.0, help="training wall minutes, all models together")
    a("--deadline-minutes", type=float, default=None,
      help="the whole command's wall budget: training shrinks so that it ends by then "
           "(--reserve-minutes kept per model for bins, packaging and checks)")
    a("--reserve-minutes", type=float, default=0.75,
      help="minutes kept per model for its final stages under --deadline-minutes")
    a("--models", default=",".join(MODEL_KEYS), help=f"which to train, of {', '.join(MODEL_KEYS)}")
    a("--photo-share", type=float, default=0.5, help="share of --minutes for the photo model")
    a("--carry", default=os.path.join(ROOT, ".carry"),
      help="compact data folder (scripts/prepare_device_carry.py)")
    a("--work", default=None, help="scratch folder (default: a new temporary one)")
    cli.add_device_argument(p)
    a("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"),
      help="training arithmetic (model/speed.py); auto: tf32 on CUDA, fp32 on CPU")
    a("--channels-last", default="auto", choices=("auto", "on", "off"),
      help="channels_last activations; auto: on for CUDA")
    a("--photo-preset", default="demo", choices=sorted(PHOTO_PRESETS),
      help="photo architecture: " + "; ".join(
          f"{k}: " + ", ".join(f"{n}={v}" for n, v in d.items()) for k, d in PHOTO_PRESETS.items()))
    for name in ARCH_FLAGS:
        a(f"--photo-{name}", type=int, default=None, help=f"photo model {name} (overrides the preset)")
    a("--photo-from", default=None,
      help="continue the photo model from a package (e.g. models/demo: its weights, and its "
           "recorded budget and hardware carried into the new model.json) or from a training "
           "checkpoint.pt (e.g. one from an earlier archive: optimizer, step and budget too); "
           "same architecture")
    a("--mnist-from", default=None, help="the same for the MNIST model")
    a("--photo-name", default=None,
      help="package name of the photo model (default photos-nz<nz>-w<width>, the demo's naming)")
    a("--mnist-name", default=None, help="package name of the MNIST model (default mnist-nz<nz>)")
    a("--photo-batch", type=int, default=None, help="photo batch (default 512 on CUDA, 64 on CPU)")
    a("--photo-lr", type=float, default=2e-3)
    a("--photo-dropout", type=float, default=0.0)
    a("--mnist-nz", type=int, default=8)
    a("--mnist-width", type=int, default=None, help="default: the paper's width for --mnist-nz")
    a("--mnist-batch", type=int, default=None, help="MNIST batch (default 512 on CUDA, 64 on CPU)")
    a("--mnist-lr", type=float, default=2e-3)
    a("--mnist-dropout", type=float, default=None, help="default: the paper's (0.2)")
    a("--init-images", type=int, default=3200, help="images of the data-dependent init")
    a("--smoke-steps", type=int, default=2, help="training steps of the fail-fast pass")
    a("--quantbits", type=int, default=10)
    a("--samples-per-bin", type=int, default=30, help="bins: samples per bin (discretization.py)")
    a("--select-images", type=int, default=2000,
      help="held-out images on which the EMA and the raw weights are compared")
    a("--heldout-images", type=int, default=None,
      help="held-out images for the package's final -ELBO (default: all; MNIST: the 10,000)")
    a("--curve-minutes", type=float, default=1.0,
      help="held-out -ELBO of the EMA weights every this many training minutes (curve.csv)")
    a("--curve-images", type=int, default=1000)
    a("--checkpoint-minutes", type=float, default=1.0, help="checkpoint this often while training")
    a("--roundtrip-images", type=int, default=2,
      help="held-out images per chain (2 chains) in the final Bit-Swap round trip")
    a("--archive-mib", type=float, default=15.0,
      help="archives above this leave the training checkpoint out")
    a("--seed", type=int, default=100)
    a("--force", action="store_true", help="replace the files of an earlier run in --out")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODEL_KEYS]
    if bad or not args.models:
        p.error(f"--models: unknown {bad or 'empty'}; choose from {', '.join(MODEL_KEYS)}")
    if args.minutes < 0 or not 0.0 <= args.photo_share <= 1.0:
        p.error("--minutes must be >= 0 and --photo-share in [0, 1]")
    return args


# ------------------------------------------------------------------ logging

class RunLog:
    """Prints, and appends every line to OUT/run.log at once (flushed), so the
    log is there whatever stops the command."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "a", buffering=1)
        self.t0 = time.time()
        self.model_lines = {}
        self.current = None

    def __call__(self, message):
        line = f"[{time.time() - self.t0:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        if self.current is not None:
            self.model_lines.setdefault(self.current, []).append(line)

    def close(self):
        self.file.close()


# ------------------------------------------------------------------ one model

class ModelRun:
    """One model's trainer, data and outputs (work folder, package, archive)."""

    def __init__(self, key, args, device, log):
        self.key, self.args, self.device, self.log = key, args, device, log
        self.stages = {}          # stage -> seconds (done) ; failures recorded in `failed`
        self.failed = None
        self.figures = {}
        self.parts = {}           # held-out subsets reported apart (photos: native, downscaled)
        self.trainer = self.data = self.test = None
        self.previous_training = None
        if key == "photos":
            arch = dict(PHOTO_PRESETS[args.photo_preset])
            arch.update({k: getattr(args, f"photo_{k}") for k in ARCH_FLAGS
                         if getattr(args, f"photo_{k}") is not None})
            self.dataset = "imagenetcrop"
            self.settings = dict(arch, batch=args.photo_batch or default_batch(device),
                                 lr=args.photo_lr, dropout=args.photo_dropout)
        else:
            self.dataset = "mnist"
            from model.config import PAPER_WIDTHS
            width = args.mnist_width or PAPER_WIDTHS["mnist"].get(args.mnist_nz, 64)
            self.settings = dict(nz=args.mnist_nz, width=width,
                                 batch=args.mnist_batch or default_batch(device), lr=args.mnist_lr)
            if args.mnist_dropout is not None:
                self.settings["dropout"] = args.mnist_dropout
        # the shipped packages' names (models/demo is photos-nz2-w64, models/mnist-nz8 mnist-nz8)
        default = (f"photos-nz{self.settings['nz']}-w{self.settings['width']}" if key == "photos"
                   else f"mnist-nz{self.settings['nz']}")
        self.name = (args.photo_name if key == "photos" else args.mnist_name) or default
        self.work = os.path.join(args.work, self.name)
        os.makedirs(self.work, exist_ok=True)

    # -- stages -------------------------------------------------------
    def stage(self, name, fn, *a, **kw):
        self.log.current = self.key
        self.log(f"{self.name}: {name} ...")
        t = time.time()
        try:
            result = fn(*a, **kw)
        except Exception as exc:
            self.failed = f"{name}: {cli.one_line(exc)}"
            self.log(f"{self.name}: {name} FAILED: {type(exc).__name__}: {cli.one_line(exc)}\n"
                     + traceback.format_exc())
            raise StageFailed(f"{self.name}: stage {name} failed: {cli.one_line(exc)} "
                              f"(traceback in run.log)") from exc
        self.stages[name] = self.stages.get(name, 0.0) + time.time() - t
        self.log(f"{self.name}: {name} done in {time.time() - t:.1f}s")
        return result

    def load_data(self):
        import numpy as np
        from utils import device_data as dd
        b, seed = self.settings["batch"], self.args.seed
        if self.dataset == "mnist":
            train, test = dd.load_carried_mnist(self.args.carry)
            self.data = dd.DeviceImages(train, b, self.device, seed)
            self.train_images = train
        else:
            tiles, test, self.parts = dd.load_carried_photos(self.args.carry)
            self.data = dd.DevicePatches(tiles, b, self.device, seed)
            self.train_images = None   # drawn by self.data.fixed() when needed
        self.test = test
        n_init = max(b, min(self.args.init_images, 64 * b))
        if self.dataset == "mnist":
            pick = np.random.default_rng(seed).permutation(len(train))[:n_init]
            self.init_images = train[pick]
        else:
            self.init_images = self.data.fixed(n_init, seed)
        self.log(f"{self.name}: {len(self.data)} training {'images' if self.dataset == 'mnist' else 'tiles'} "
                 f"and {len(test)} held-out images on {self.device}")

    def build_trainer(self):
        from model import train as T
        from model.distributed import Distributed
        from utils.data import ArrayImages
        s = self.settings
        argv = [f"--{k}={v}" for k, v in s.items()] + [
            "--out", os.path.join(self.work, "run"), "--device", str(self.device),
            "--init-batches", str(max(1, len(self.init_images) // s["batch"])),
            "--workers", "0", "--seed", str(self.args.seed), "--no-progress",
            "--precision", self.args.precision, "--curve-images", str(self.args.curve_images)]
        if self.args.channels_last == "on":
            argv.append("--channels-last")
        start_from = self.args.photo_from if self.key == "photos" else self.args.mnist_from
        if start_from:
            argv += ["--resume", start_from]
            self.previous_training = previous_training(start_from)
        cfg, targs = T.parse_args(self.dataset, argv)
        self.cfg = cfg
        if cfg.hflip:   # kept from a --photo-from training run that used it
            self.data.hflip = True
        self.trainer = T.Trainer(cfg, targs, Distributed(),
                                 datasets=(ArrayImages(self.init_images), ArrayImages(self.test)))
        self.trainer._say = lambda message: self.log(f"{self.name}: {message}")   # into run.log
        self.trainer.start()
        # a continued run draws other batches than its first session did
        self.data.generator.manual_seed(self.args.seed * 1_000_003 + self.trainer.step)
        self.trainer._curve_train = []
        self.trainer._curve_last = self.trainer.budget["wall_s"]
        n = sum(p.numel() for p in self.trainer.model.parameters())
        self.log(f"{self.name}: {n:,} parameters; "
                 + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()
                             if k in ("nz", "width", "zchannels", "blocks", "nprocessing",
                                      "dropout", "batch", "lr", "decay")))

    def train(self, seconds=None, steps=None):
        """Train until `seconds` of training wall time or `steps` steps."""
        import torch
        tr, cl = self.trainer, self.args.channels_last == "on"
        start, t0 = tr.step, time.time()
        last_ckpt = last_say = t0
        tr._mark()
        while True:
            x = self.data.next_batch()
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            stats, _ = tr._train_step(x, False)
            tr._account(self.settings["batch"])
            tr._curve_train.append(stats["elbo"])
            now = time.time()
            done = (steps is not None and tr.step - start >= steps) or \
                   (seconds is not None and now - t0 >= seconds)
            if steps is None and (now - last_say >= 20 or done):
                self.log(f"{self.name}: step {tr.step}, train elbo {stats['elbo']:.4f}, lr "
                         f"{stats['lr']:.2e}, {tr.budget['images'] / max(tr.budget['wall_s'], 1e-9):.4g} "
                         f"images/s")
                last_say = now
            if done:
                break
            if steps is None and tr.budget["wall_s"] - tr._curve_last >= 60 * self.args.curve_minutes:
                tr._curve_point()
            if steps is None and now - last_ckpt >= 60 * self.args.checkpoint_minutes:
                tr.save()
                tr._mark()
                last_ckpt = time.time()
        if steps is None:
            tr._curve_point()
        tr.save()
        self.figures.update(steps=tr.step, images_seen=int(tr.budget["images"]),
                            train_wall_s=round(tr.budget["wall_s"], 2),
                            images_per_s=round(tr.budget["images"] / max(tr.budget["wall_s"], 1e-9), 1),
                            last_train_elbo=stats["elbo"])

    def heldout_elbo(self, state, images, seed=0):
        """-ELBO (bits/dim) of `state` on held-out `images`, plain float32
        (evaluate turns TF32 off)."""
        from model.distributed import Distributed
        from model.hvae import HVAE
        from model.train import evaluate
        from utils.data import ArrayImages
        net = HVAE(**self.trainer.model.architecture()).to(self.device)
        net.load_state_dict(state)
        return evaluate(net, ArrayImages(images), self.settings["batch"], self.device,
                        Distributed(), 0, seed=seed)["elbo"]

    def choose_weights(self, compare=True):
        tr = self.trainer
        ema = tr.ema.state_dict_of(tr.model)
        if not compare:
            self.weights_kind, self.state = "ema", ema
            return
        subset = self.test[:self.args.select_images]
        raw = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        e_ema, e_raw = self.heldout_elbo(ema, subset), self.heldout_elbo(raw, subset)
        self.weights_kind, self.state = ("ema", ema) if e_ema <= e_raw else ("raw", raw)
        self.figures.update(select_elbo_ema=round(e_ema, 5), select_elbo_raw=round(e_raw, 5),
                            select_images=len(subset), weights=self.weights_kind)
        self.log(f"{self.name}: held-out elbo on {len(subset)} images: EMA {e_ema:.4f}, raw "
                 f"{e_raw:.4f}; exporting the {self.weights_kind} weights")

    def derive_bins(self, samples_per_bin):
        from discretization import derive_bins
        from model import package, speed
        from model.hvae import HVAE
        n = samples_per_bin << self.args.quantbits
        images = self.train_images if self.train_images is not None else self.data.fixed(n, 1)
        net = HVAE(**self.trainer.model.architecture()).to(self.device)
        net.load_state_dict(self.state)
        with speed.plain_fp32():
            self.bins = derive_bins(net.eval(), images, self.args.quantbits, samples_per_bin,
                                    batch=1024, seed=0, progress=False)
        self.bins.weights_fingerprint = package.weights_fingerprint(self.state)

    def write_package(self, folder):
        from model import package
        training = self.training_record()
        notes = dict(made_by="scripts/train_shipped.py", command=" ".join(sys.argv),
                     **{k: v for k, v in self.figures.items() if k.startswith("select_")})
        package.write_package(folder, self.state, self.trainer.model.architecture(), self.bins,
                              self.name, self.dataset, self.weights_kind, training=training,
                              notes=notes, half=True, force=True)
        self.package_dir = folder

    def training_record(self):
        tr, s = self.trainer, self.settings
        session = dict(steps=tr.step, images_seen=int(tr.budget["images"]),
                       wall_s=round(tr.budget["wall_s"], 2), batch=s["batch"],
                       continued_from=(self.args.photo_from if self.key == "photos"
                                       else self.args.mnist_from),
                       lr=s["lr"], hardware=hardware(self.device),
                       precision=self.args.precision, channels_last=self.args.channels_last == "on",
                       data=("photo corpus training tiles (scripts/get_demo_photos.py compact copy)"
                             if self.dataset == "imagenetcrop" else "MNIST train (60,000)"))
        from model import package
        return package.combined_training(self.previous_training, session)

    def check_package(self, heldout=True):
        """Load the package as users do; held-out -ELBO of its float16
        weights (plain float32 arithmetic); Bit-Swap round trip on the CPU."""
        import numpy as np
        from model import package
        from utils.bitsback import BitsBackCoder
        from utils.device import deterministic_torch
        from utils.experiment import code_chains
        loaded = package.load(self.package_dir, dataset=self.dataset)
        if heldout:
            state = {k: v.to(self.device) for k, v in loaded.net.state_dict().items()}
            images = self.test[:self.args.heldout_images]
            e = self.heldout_elbo(state, images)
            self.figures.update(heldout_elbo_float16=round(e, 5), heldout_images=len(images))
            self.log(f"{self.name}: package's held-out -ELBO {e:.4f} bits/dim on {len(images)} "
                     "images (float16 weights, float32 arithmetic)")
            for part, where in self.parts.items():
                e = self.heldout_elbo(state, self.test[where])
                self.figures[f"heldout_elbo_float16_{part}"] = round(e, 5)
                self.log(f"{self.name}: ... {e:.4f} bits/dim on the {len(self.test[where])} {part} "
                         "patches")
        n = max(1, self.args.roundtrip_images)
        chains = self.test[np.arange(2 * n) * max(1, len(self.test) // (2 * n))].reshape(
            2, n, *self.test.shape[1:])
        coder = BitsBackCoder(loaded.net, loaded.bins, bitswap=True)
        with deterministic_torch():
            res = code_chains(coder, chains, decode=True)   # DecodeMismatch if not exact
        bpd = float(res["total"][:, -1].sum() / (chains[0].size * 2))
        self.figures.update(roundtrip_images=int(chains.shape[0] * chains.shape[1]),
                            roundtrip_bits_per_dim=round(bpd, 4),
                            roundtrip_net_bits_per_dim=round(float(res["nets"].mean()), 4))
        self.log(f"{self.name}: Bit-Swap round trip of {chains.shape[0] * chains.shape[1]} held-out "
                 f"images on the CPU exact; {bpd:.3f} bits/dim with the paper's initial bits, net "
                 f"{res['nets'].mean():.3f}")

    # -- the archive ----------------------------------------------------
    def archive(self, out, status):
        """OUT/NAME.tar.gz of what this model's stages made (atomic)."""
        result = dict(name=self.name, dataset=self.dataset, status=status, failed=self.failed,
                      settings=self.settings, stages_s={k: round(v, 2) for k, v in self.stages.items()},
                      figures=self.figures, hardware=hardware(self.device))
        with open(os.path.join(self.work, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(self.work, "train.log"), "w") as f:
            f.write("\n".join(self.log.model_lines.get(self.key, [])) + "\n")
        members = [("result.json", "result.json"), ("train.log", "train.log")]
        curve = os.path.join(self.work, "run", "curve.csv")
        if os.path.isfile(curve):
            members.append((curve, "curve.csv"))
        pkg = getattr(self, "package_dir", None)
        if pkg and os.path.isfile(os.path.join(pkg, "model.json")):
            # the final package as NAME/, or the fail-fast pass's as smoke-package/
            members += [(os.path.join(pkg, f), f"{os.path.basename(pkg)}/{f}")
                        for f in sorted(os.listdir(pkg))]
        ckpt = os.path.join(self.work, "run", "checkpoint.pt")
        path = os.path.join(out, f"{self.name}.tar.gz")
        for with_ckpt in ((True, False) if os.path.isfile(ckpt) else (False,)):
            extra = [(ckpt, "checkpoint.pt")] if with_ckpt else []
            data = tar_bytes(self.work, members + extra)
            if len(data) <= self.args.archive_mib * 2 ** 20 or not with_ckpt:
                break
        cli.write_atomic(path, data)
        left_out = (f"; checkpoint.pt left out ({os.path.getsize(ckpt) / 2 ** 20:.0f} MiB with "
                    f"the optimizer's state, over --archive-mib {self.args.archive_mib:g})"
                    if os.path.isfile(ckpt) and not extra else "")
        self.log(f"{self.name}: wrote {path} ({len(data) / 2 ** 20:.2f} MiB: "
                 + ", ".join(n for _, n in members + extra) + ")" + left_out)
        return path, result


def tar_bytes(base, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for src, name in members:
            tar.add(src if os.path.isabs(src) else os.path.join(base, src), arcname=name)
    return buf.getvalue()


def default_batch(device):
    return 512 if device.type == "cuda" else 64


def previous_training(spec):
    from model import package
    got = package.read_weights(spec)
    return dict(got["info"].get("training") or {}) if got["kind"] == "package" else None


def hardware(device):
    import torch
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} (1 GPU), torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads), torch {torch.__version__}")


# ------------------------------------------------------------------ the command

def run(args):
    import torch
    from utils.device import resolve_device
    device = resolve_device(args.device, args.gpu)
    needs = {"mnist": "mnist.npz", "photos": os.path.join("photos", "imagenetcrop")}
    for key in args.models:
        if not os.path.exists(os.path.join(args.carry, needs[key])):
            raise cli.BadInput(f"{os.path.join(args.carry, needs[key])} not found: run "
                               "`python scripts/prepare_device_carry.py` (or pass --carry)")
    if args.precision == "auto":
        args.precision = "tf32" if device.type == "cuda" else "fp32"
    if args.channels_last == "auto":
        args.channels_last = "on" if device.type == "cuda" else "off"
    if os.path.isdir(args.out) and not args.force:
        ours = [f for f in os.listdir(args.out)
                if f in ("run.log", "summary.json") or f.endswith(".tar.gz")]
        if ours:
            raise cli.BadInput(f"{args.out} already holds {sorted(ours)[0]} of an earlier run; "
                               "pass --force to replace, or another --out")
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(os.path.join(args.out, "run.log")):
        os.remove(os.path.join(args.out, "run.log"))
    own_work = args.work is None
    if own_work:
        args.work = tempfile.mkdtemp(prefix="train_shipped_")
    log = RunLog(os.path.join(args.out, "run.log"))
    runs, summary, status = [], dict(command=" ".join(sys.argv), models={}), 0
    started = time.time()
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        log(f"train_shipped: {hardware(device)}, python {platform.python_version()}, precision "
            f"{args.precision}, channels_last {args.channels_last}, models {','.join(args.models)}, "
            f"{args.minutes} training minutes")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        runs = [ModelRun(k, args, device, log) for k in args.models]
        failed = False
        # 1. every stage once, at the real sizes, before any long run
        for r in runs:
            try:
                r.stage("data", r.load_data)
                r.stage("init", r.build_trainer)
                r.stage("smoke: train steps", r.train, steps=args.smoke_steps)
                r.stage("smoke: evaluate and choose weights", r.choose_weights)
                r.stage("smoke: bins", r.derive_bins, 1)
                r.stage("smoke: package", r.write_package, os.path.join(r.work, "smoke-package"))
                r.stage("smoke: load and round trip", r.check_package, heldout=False)
            except StageFailed as exc:
                log(f"fail fast: {exc}")
                failed = True
                break
        if failed:
            status = 1
        else:
            # 2. the long runs
            train_s = 60 * args.minutes
            if args.deadline_minutes is not None:
                left = 60 * (args.deadline_minutes - len(runs) * args.reserve_minutes) \
                    - (time.time() - started)
                if left < train_s:
                    log(f"--deadline-minutes {args.deadline_minutes}: training cut to "
                        f"{max(0.0, left) / 60:.2f} minutes")
                    train_s = max(0.0, left)
            shares = {"photos": args.photo_share, "mnist": 1.0 - args.photo_share}
            total_share = sum(shares[r.key] for r in runs) or 1.0
            for r in runs:
                seconds = train_s * shares[r.key] / total_share
                try:
                    r.stage("train", r.train, seconds=seconds)
                    r.stage("evaluate and choose weights", r.choose_weights)
                    r.stage("bins", r.derive_bins, args.samples_per_bin)
                    r.stage("package", r.write_package, os.path.join(r.work, r.name))
                    r.stage("check package", r.check_package)
                except StageFailed as exc:
                    log(str(exc))
                    status = 1
                else:
                    r.done = True
    except Terminated as exc:
        log(f"train_shipped: {exc}; archiving what exists")
        status = 1
    except Exception as exc:   # outside the stages (set-up): still leave the log
        log(f"train_shipped failed: {type(exc).__name__}: {cli.one_line(exc)}\n"
            + traceback.format_exc())
        status = status or (exc.status if isinstance(exc, (cli.BadInput, cli.RunFailure)) else 1)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        for r in runs:
            state = "done" if getattr(r, "done", False) else ("failed" if r.failed else "incomplete")
            try:
                path, result = r.archive(args.out, state)
                summary["models"][r.name] = dict(result, archive=os.path.basename(path))
            except Exception as exc:
                log(f"{r.name}: archive failed: {cli.one_line(exc)}\n" + traceback.format_exc())
                status = status or 1
        summary.update(status="ok" if status == 0 else "failed", wall_s=round(time.time() - started, 1))
        cli.write_atomic(os.path.join(args.out, "summary.json"),
                         (json.dumps(summary, indent=1) + "\n").encode())
        log(f"train_shipped: {'all stages done' if status == 0 else 'FAILED'} in "
            f"{time.time() - started:.0f}s; outputs in {args.out}")
        log.close()
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    return status


def main(argv=None):
    args = parse_args(argv)
    return cli.run_main("train_shipped.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
