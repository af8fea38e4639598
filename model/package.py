"""Model packages, and the one loader every script uses to get a trained
network and its latent bins.

A *package* is a folder (the shipped ones live in ``models/<name>/``)::

    model.json           what the model is (see below)
    weights.safetensors  the network's tensors, float16 (safetensors: no pickle)
    bins.pt              the compact latent bins (utils/bins.py), recording the
                         fingerprint of the weights they were derived from

``model.json`` (``format`` = FORMAT)::

    name, dataset, architecture (HVAE's constructor arguments), quantbits,
    weights: {file, dtype, kind ("ema": the training's moving average, or
              "raw": the optimizer's current weights), sha256 (of the file),
              fingerprint (see weights_fingerprint)},
    bins:    {file, sha256},
    training: the budget (steps, epochs, images seen, wall time) and hardware,
    notes:   free text (how it was made, held-out figures)

``load(spec, ...)`` accepts, and tells apart:

* a package folder (or its model.json), or a shipped package's name
  (``mnist-nz8``, ``demo``: the folders of ``models/``);
* a training run's ``checkpoint.pt`` (its EMA weights, or ``weights="raw"``)
  or the run folder holding it;
* a plain state dict in the authors' layout (``model_best.pt``,
  ``model_last.pt``, the authors' released files), or a ``.safetensors`` file.

It checks, before any coding: recorded SHA-256s (a flipped byte is refused),
the model's dataset and image shape against the caller's, the requested nz,
and that the bins fit the network and were derived from these weights.

Bins of a package are its own; for other files they are looked up in
``bins_dir`` when given, else beside the weights file (where discretization.py
writes them), else in the top-level ``bins/`` (the authors' layout).

Training checkpoints are read with ``torch.load(weights_only=True)``.  The
ones written before RNG states were stored as tensors hold numpy arrays;
``read_checkpoint`` admits exactly the numpy array types those need (still no
arbitrary code), so older runs keep resuming.
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.bins import BinsError, LatentBins, bins_paths, ranges_path
from utils.cli import BadInput, atomic_output, one_line

FORMAT = "bitswap-model-1"
CHECKPOINT_FORMAT = "bitswap-train-1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
AUTHORS_BINS_DIR = os.path.join(REPO_ROOT, "bins")
WEIGHTS_FILE = "weights.safetensors"
BINS_FILE = "bins.pt"
DESCRIPTOR = "model.json"


class ModelError(BadInput):
    """A model or its bins cannot be used as asked (one line, exit status 2)."""


class BinsNotFound(ModelError):
    """No bins file for this model where the loader looks."""


# ------------------------------------------------------------------ identity

def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(state_dict):
    """SHA-256 of the tensors (names, shapes, values rounded to float16, the
    precision packages store), so a run's float32 weights and their float16
    export share one fingerprint: bins derived from either fit both."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu()
        t = t.half() if t.is_floating_point() else t
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bins_digest(bins):
    h = hashlib.sha256()
    for a in (bins.endpoints, bins.centres):
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A network ready to code (eval mode, on ``device``) and its bins."""
    net: torch.nn.Module
    bins: LatentBins            # None when loaded with need_bins=False
    name: str
    dataset: str                # None when the file does not say (authors' files)
    source: str                 # the file the weights came from
    kind: str                   # "package", "checkpoint" or "state_dict"
    weights_fingerprint: str
    weights_kind: str = "unknown"   # "ema", "raw" or "unknown"
    info: dict = field(default_factory=dict)   # model.json, or the checkpoint's training info
    device: torch.device = torch.device("cpu")

    @property
    def architecture(self):
        return self.net.architecture()

    @property
    def quantbits(self):
        return None if self.bins is None else self.bins.quantbits

    @property
    def block(self):
        return self.net.xs[1]

    @property
    def identity(self):
        """SHA-256 of what decides the coded bits: architecture, quantbits,
        weights (fingerprint) and bins."""
        h = hashlib.sha256(json.dumps({"architecture": self.architecture,
                                       "quantbits": self.quantbits}, sort_keys=True).encode())
        h.update(self.weights_fingerprint.encode())
        if self.bins is not None:
            h.update(bins_digest(self.bins).encode())
        return h.hexdigest()


# ------------------------------------------------------------------ reading

def shipped_names():
    """Names of the packages in models/ (``load`` accepts them as specs)."""
    if not os.path.isdir(MODELS_DIR):
        return []
    return sorted(n for n in os.listdir(MODELS_DIR)
                  if os.path.isfile(os.path.join(MODELS_DIR, n, DESCRIPTOR)))


def shipped_default(dataset, nz=None):
    """The shipped package for ``dataset`` (and ``nz``), or None: the one
    named ``{dataset}-nz{nz}``, else the only one of that dataset."""
    if nz is not None and f"{dataset}-nz{nz}" in shipped_names():
        return f"{dataset}-nz{nz}"
    matches = []
    for name in shipped_names():
        desc = _read_json(os.path.join(MODELS_DIR, name, DESCRIPTOR))
        if desc.get("dataset") == dataset and (nz is None or desc["architecture"]["nz"] == nz):
            matches.append(name)
    return matches[0] if len(matches) == 1 else None


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable model descriptor {path}: {one_line(exc)}") from None


def _legacy_numpy_globals():
    """The numpy types pickled by checkpoints whose RNG states were numpy
    objects (np.random.get_state()): arrays and their dtypes, nothing else."""
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def read_checkpoint(path):
    """torch.load(path, weights_only=True); for older training checkpoints
    (numpy RNG states) the few numpy array types are admitted too.
    ModelError with one line if the file is not a readable torch file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        if "numpy" not in str(first):
            raise ModelError(f"{path} is not a readable checkpoint: {one_line(first)}") from None
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable checkpoint: {one_line(exc)}") from None


def _state_dict_in(obj):
    """A plain state dict, or one under a usual key ('state_dict', 'model')."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    return None


def is_training_checkpoint(obj):
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def resolve(spec):
    """(kind, path) for a model spec: ('package', folder), ('checkpoint',
    file) or ('file', path).  ModelError when nothing is there."""
    spec = str(spec)
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, DESCRIPTOR)):
            return "package", spec
        if os.path.isfile(os.path.join(spec, "checkpoint.pt")):
            return "checkpoint", os.path.join(spec, "checkpoint.pt")
        raise ModelError(f"{spec} holds neither {DESCRIPTOR} (a model package) nor "
                         "checkpoint.pt (a training run)")
    if os.path.isfile(spec):
        if os.path.basename(spec) == DESCRIPTOR:
            return "package", os.path.dirname(os.path.abspath(spec))
        return "file", spec
    if os.sep not in spec and spec in shipped_names():
        return "package", os.path.join(MODELS_DIR, spec)
    known = ", ".join(shipped_names()) or "none"
    raise ModelError(f"model {spec} not found: pass a package folder, a training run's "
                     f"checkpoint.pt, a state dict file, or a shipped model ({known})")


def read_package(folder, verify=True):
    """(descriptor, state dict, bins or None) of a package; hashes checked."""
    path = os.path.join(folder, DESCRIPTOR)
    desc = _read_json(path)
    try:
        if desc.get("format") != FORMAT:
            raise KeyError(f"format (expected {FORMAT!r}, got {desc.get('format')!r})")
        name, wdesc = str(desc["name"]), dict(desc["weights"])
        dict(desc["architecture"])
        int(desc["quantbits"])
        weights_path = os.path.join(folder, wdesc["file"])
        bdesc = desc.get("bins")
        bins_path = os.path.join(folder, bdesc["file"]) if bdesc else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid model descriptor {path}: missing or bad {one_line(exc)}") from None
    for what, fpath, entry in (("weights", weights_path, wdesc), ("bins", bins_path, bdesc)):
        if fpath is None:
            continue
        if not os.path.isfile(fpath):
            raise ModelError(f"model {name}: {what} file missing: {fpath}")
        if verify and entry.get("sha256") and file_sha256(fpath) != entry["sha256"]:
            raise ModelError(f"model {name}: {fpath} does not match the SHA-256 recorded in "
                             f"{path} (damaged or replaced file); refusing to use it")
    from safetensors.torch import load_file
    try:
        state = load_file(weights_path)
    except Exception as exc:
        raise ModelError(f"model {name}: unreadable weights {weights_path}: {one_line(exc)}") from None
    bins = None
    if bins_path:
        try:
            bins = LatentBins.load_ranges(bins_path, int(desc["quantbits"]))
        except BinsError as exc:
            raise ModelError(f"model {name}: {one_line(exc)}") from None
    return desc, state, bins


def fit_state_dict(net, state, source):
    """Load ``state`` into ``net`` (float16 tensors become the net's dtype);
    ModelError with one line naming the first misfit otherwise."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} unexpected keys (e.g. {extra[0]})")
        arch = ", ".join(f"{k}={v}" for k, v in net.architecture().items())
        raise ModelError(f"{source} does not fit this model ({arch}): " + "; ".join(detail))
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def read_weights(spec, weights="ema"):
    """Everything but the bins: dict(kind, source, state, architecture,
    dataset, name, weights_kind, info, package) for any accepted spec."""
    if weights not in ("ema", "raw"):
        raise ModelError(f"weights must be 'ema' or 'raw', got {weights!r}")
    kind, path = resolve(spec)
    if kind == "package":
        desc, state, bins = read_package(path)
        return dict(kind="package", source=path, state=state, architecture=desc["architecture"],
                    dataset=desc.get("dataset"), name=desc["name"],
                    weights_kind=desc["weights"].get("kind", "unknown"), info=desc,
                    package_bins=bins, quantbits=int(desc["quantbits"]),
                    fingerprint=desc["weights"].get("fingerprint"))
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            obj = load_file(path)
        except Exception as exc:
            raise ModelError(f"{path} is not a readable safetensors file: {one_line(exc)}") from None
    else:
        obj = read_checkpoint(path)
    if is_training_checkpoint(obj):
        state = obj["ema"] if weights == "ema" else obj["model"]
        if weights == "ema":   # the EMA holds the parameters; buffers come from the model
            state = {k: state.get(k, v) for k, v in obj["model"].items()}
        cfg = obj.get("config") or {}
        info = dict(step=obj.get("step"), epoch=obj.get("epoch"), best_elbo=obj.get("best_elbo"),
                    config=cfg, world_size=obj.get("world_size"), budget=obj.get("budget"),
                    device=obj.get("device"))
        return dict(kind="checkpoint", source=path, state=state,
                    architecture=obj.get("architecture"), dataset=cfg.get("dataset"), name=name,
                    weights_kind=weights, info=info, package_bins=None, quantbits=None,
                    fingerprint=None)
    state = _state_dict_in(obj)
    if state is None:
        raise ModelError(f"{path} holds neither a training checkpoint nor an HVAE state dict")
    arch = obj.get("architecture") if isinstance(obj, dict) and isinstance(
        obj.get("architecture"), dict) else None
    guessed = {"model_raw.pt": "raw", "model_best.pt": "ema", "model_last.pt": "ema"}
    return dict(kind="state_dict", source=path, state=state, architecture=arch, dataset=None,
                name=name, weights_kind=guessed.get(os.path.basename(path), "unknown"), info={},
                package_bins=None, quantbits=None, fingerprint=None)


def expected_shape(dataset):
    from model.config import PAPER_DEFAULTS
    return tuple(PAPER_DEFAULTS[dataset]["xs"]) if dataset in PAPER_DEFAULTS else None


def build_net(arch, state, source):
    from model.hvae import HVAE
    if arch is None:
        try:
            arch = HVAE.architecture_from_state_dict(state)
        except ValueError as exc:
            raise ModelError(f"{source}: {exc}") from None
    try:
        net = HVAE(**arch)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source}: bad architecture {arch}: {one_line(exc)}") from None
    fit_state_dict(net, state, source)
    return net.eval()


def load(spec, dataset=None, nz=None, quantbits=None, bins_dir=None, device="cpu",
         need_bins=True, weights="ema"):
    """The model of ``spec`` (see the module docstring) on ``device``, with
    its bins unless ``need_bins`` is False.  ``dataset`` / ``nz`` /
    ``quantbits``: what the caller will code; a model made for something
    else is refused (ModelError, one line) before any coding."""
    got = read_weights(spec, weights)
    source = got["source"]
    if dataset is not None and got["dataset"] not in (None, dataset):
        raise ModelError(f"{source} is a {got['dataset']} model, not a {dataset} one; "
                         f"pass a {dataset} model")
    net = build_net(got["architecture"], got["state"], source)
    want = expected_shape(dataset) if dataset else None
    if want is not None and tuple(net.xs) != want:
        raise ModelError(f"{source} codes images shaped {tuple(net.xs)}, but {dataset} images "
                         f"are {want}; pass a {dataset} model")
    if nz is not None and net.nz != nz:
        raise ModelError(f"{source} has nz={net.nz}, not --nz {nz}")
    fingerprint = weights_fingerprint(got["state"])
    if got["fingerprint"] and got["fingerprint"] != fingerprint:
        raise ModelError(f"{source}: weights do not match the fingerprint recorded in its "
                         f"{DESCRIPTOR}; refusing to use them")
    bins = None
    if need_bins:
        bins = _bins_for(got, net, dataset or got["dataset"], quantbits, bins_dir)
        if bins.weights_fingerprint not in (None, fingerprint):
            raise ModelError(f"the bins ({bins.source}) were derived from other weights "
                             f"(fingerprint {bins.weights_fingerprint[:12]}) than {source} "
                             f"({fingerprint[:12]}); derive them with discretization.py "
                             f"--params {source}")
    device = torch.device(device)
    return LoadedModel(net=net.to(device), bins=bins, name=got["name"], dataset=got["dataset"],
                       source=source, kind=got["kind"], weights_fingerprint=fingerprint,
                       weights_kind=got["weights_kind"], info=got["info"], device=device)


def _bins_for(got, net, dataset, quantbits, bins_dir):
    """The bins that go with these weights (see the module docstring)."""
    if got["package_bins"] is not None and bins_dir is None:
        bins = got["package_bins"]
        if quantbits is not None and bins.quantbits != quantbits:
            raise ModelError(f"model {got['name']} comes with {bins.quantbits}-bit bins, not "
                             f"--quantbits {quantbits}")
        bins.source = os.path.join(got["source"], got["info"]["bins"]["file"])
    else:
        quantbits = quantbits or got["quantbits"] or 10
        if dataset is None:
            raise ModelError(f"{got['source']} does not say which dataset it is for; cannot "
                             "look up its bins")
        if bins_dir is not None:
            folders = [bins_dir]
        else:
            beside = os.path.dirname(os.path.abspath(got["source"]))
            folders = [beside, AUTHORS_BINS_DIR] if got["kind"] != "package" else [got["source"]]
        folder = next((d for d in folders if _has_bins(d, dataset, net.nz, quantbits)), None)
        if folder is None:
            names = (f"{os.path.basename(ranges_path('', dataset, net.nz, quantbits))} or "
                     + " + ".join(os.path.basename(p) for p in bins_paths('', dataset, net.nz, quantbits)))
            raise BinsNotFound(f"no bins for {dataset} nz={net.nz} q={quantbits} ({names}) in "
                             f"{' or '.join(folders)}; make them with `python discretization.py "
                             f"{dataset} --params {got['source']} --quantbits {quantbits}`")
        try:
            bins = LatentBins.load(folder, dataset, net.nz, quantbits)
        except BinsError as exc:
            raise ModelError(one_line(exc)) from None
    try:
        bins.check_model(net)
    except BinsError as exc:
        raise ModelError(one_line(exc)) from None
    return bins


def _has_bins(folder, dataset, nz, quantbits):
    return (os.path.exists(ranges_path(folder, dataset, nz, quantbits))
            or all(map(os.path.exists, bins_paths(folder, dataset, nz, quantbits))))


# ------------------------------------------------------------------ writing

def write_package(directory, state_dict, architecture, bins, name, dataset, weights_kind,
                  training=None, notes=None, half=True, force=False):
    """Write a package (see the module docstring) and return its folder.
    ``bins`` must have the compact ranges (utils/bins.py) and, when they
    record a weights fingerprint, it must be these weights'.  An existing
    package is replaced only with ``force``; every file is written
    atomically, model.json last (so a package is complete or absent)."""
    from safetensors.torch import save
    if weights_kind not in ("ema", "raw", "unknown"):
        raise ModelError(f"weights_kind must be 'ema', 'raw' or 'unknown', got {weights_kind!r}")
    if bins.ranges is None:
        raise ModelError("a package stores compact bins; these bins have no (min, max) ranges")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in state_dict.items()}
    fingerprint = weights_fingerprint(state)
    if bins.weights_fingerprint not in (None, fingerprint):
        raise ModelError(f"the bins were derived from other weights (fingerprint "
                         f"{bins.weights_fingerprint[:12]}, these weights {fingerprint[:12]})")
    descriptor = os.path.join(directory, DESCRIPTOR)
    if os.path.exists(descriptor) and not force:
        raise ModelError(f"{descriptor} exists; pass --force to replace that package")
    os.makedirs(directory, exist_ok=True)
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    with atomic_output(weights_path) as f:
        f.write(save(state, metadata={"format": FORMAT, "name": name}))
    bins.save_ranges(os.path.join(directory, BINS_FILE), weights_fingerprint=fingerprint)
    desc = dict(format=FORMAT, name=name, dataset=dataset, architecture=dict(architecture),
                quantbits=int(bins.quantbits),
                weights=dict(file=WEIGHTS_FILE, dtype=str(next(iter(state.values())).dtype)
                             .replace("torch.", ""), kind=weights_kind,
                             sha256=file_sha256(weights_path), fingerprint=fingerprint),
                bins=dict(file=BINS_FILE, sha256=file_sha256(os.path.join(directory, BINS_FILE))),
                training=_finite_json(training or {}), notes=_finite_json(notes or {}))
    with atomic_output(descriptor, "w") as f:
        json.dump(desc, f, indent=1, allow_nan=False)
        f.write("\n")
    return directory


def _finite_json(value):
    """``value`` with every infinite or NaN float replaced by None: model.json
    is strict JSON (``Infinity`` is Python's extension, which other readers
    refuse), and an infinite figure (a run that never evaluated) means none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def combined_training(previous, session):
    """The training record of a model trained in ``session`` after the
    sessions recorded in ``previous`` (a package's ``training``, or None):
    totals of steps, images and wall time, every hardware named, and the
    list of sessions, oldest first.  A session of the same run folder as
    ``session`` is dropped: the run was resumed since, and a run's step
    counter and budget accumulate over its resumes, so ``session`` covers it."""
    sessions = list((previous or {}).get("sessions", [])) or ([previous] if previous else [])
    run_dir = session.get("run_dir")
    sessions = [x for x in sessions if not (run_dir and x.get("run_dir") == run_dir)]
    sessions.append(session)
    wall = sum(float(x.get("wall_s") or x.get("log_wall_s") or
                     60 * float(x.get("wall_minutes_approx") or 0)) for x in sessions)
    def joined(key):
        return "; ".join(dict.fromkeys(str(x[key]) for x in sessions if x.get(key)))

    architecture = next((x["architecture"] for x in reversed(sessions) if x.get("architecture")),
                        None)
    return dict(steps=sum(int(x.get("steps") or 0) for x in sessions),
                images_seen=sum(int(x.get("images_seen") or 0) for x in sessions),
                wall_s=round(wall, 2), hardware=joined("hardware"), device=joined("device"),
                architecture=architecture, sessions=sessions)


def random_package(directory, quantbits=10, seed=0, name="random", dataset="imagenetcrop",
                   half=True, **architecture):
    """A package of a random-init HVAE with simple bins (equal-width on
    [-4, 4] below the top layer): for tests and timing only, it compresses
    badly.  Returns its folder."""
    from model.hvae import HVAE
    torch.manual_seed(seed)
    net = HVAE(**architecture).eval()
    zdim = int(np.prod(net.zdim))
    ranges = np.broadcast_to(np.array([-4.0, 4.0]), (net.nz - 1, zdim, 2))
    return write_package(directory, net.state_dict(), net.architecture(),
                         LatentBins.from_ranges(ranges, quantbits), name, dataset, "raw",
                         notes={"made_by": "model.package.random_package (untrained)"},
                         half=half, force=True)
