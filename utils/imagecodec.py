"""The demo codec: one whole 8-bit image <-> one Bit-Swap container.

Owns what image_compress.py / image_decompress.py do (they only parse
arguments and print): loading and validating the image, the shipped-model
descriptor, padding and blocking, the chained Bit-Swap coding of the blocks
in one interleaved rANS message, verification and atomic output.

Invariants:

* Lossless on the whole image: the image is padded by edge replication to a
  multiple of the model's block size (replicated pixels are cheap to code) and
  cropped back on decode; the SHA-256 of the original pixels is stored and a
  decode that does not reproduce it is an error, never a written file.
* Grayscale is coded as three equal channels (the model is RGB) and written
  back as 8-bit grayscale.
* Encoder and decoder compute bit-identical quantized tables: every network
  call is one block at batch 1 on the same device type, with torch pinned to
  one intra-op thread (reduction order of a convolution can depend on the
  thread count; see ``_deterministic_torch``), and the float32 outputs go
  through the same float64 codecs of utils/distributions.py.
* Every user-facing failure is a ``DemoError`` (or a ``ContainerError``) with
  a one-line message; outputs are written to a temporary file in the target
  directory and moved into place with ``os.replace`` only when complete.
"""
import contextlib
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from utils import ans, container
from utils.bins import BinsError, LatentBins
from utils.bitsback import BitsBackCoder
from utils.container import ContainerError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO_ROOT, "models", "demo", "model.json")
LANES = 128                 # interleaved rANS lanes: ~64 bits of final head each
UNDERFLOW_SEED = 0          # initial bits borrowed by the first block (counted)
PRECISION = ans.DEFAULT_PRECISION
SUPPORTED_MODES = {"RGB": 3, "L": 1}


class DemoError(Exception):
    """A user-facing failure with a one-line message (CLI: exit status 1)."""


# --------------------------------------------------------------------- model

@dataclass
class DemoModel:
    """A loaded demo model: network, bins and identity."""
    name: str
    hash: str
    net: torch.nn.Module
    quantbits: int
    bins: LatentBins
    device: torch.device
    descriptor_path: str
    info: dict = field(default_factory=dict)

    @property
    def block(self):
        return self.net.xs[1]


def _file_sha256(path, h):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _resolve_descriptor(path):
    path = DEFAULT_MODEL if path is None else path
    if os.path.isdir(path):
        path = os.path.join(path, "model.json")
    if not os.path.isfile(path):
        if os.path.abspath(path) == DEFAULT_MODEL:
            raise DemoError(f"the shipped demo model is missing ({path}); see README (demo model) "
                            "or pass --model DIR")
        raise DemoError(f"model descriptor not found: {path}")
    return path


def _state_dict_from(obj):
    """A checkpoint is a state dict, or a dict holding one under a usual key."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def load_model(path=None, device="cpu"):
    """Load the model described by ``path`` (a model.json descriptor or the
    directory holding it; default: the shipped model) onto ``device``."""
    from model.hvae import HVAE       # heavy import, only when a model is needed
    path = _resolve_descriptor(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            desc = json.loads(f.read().decode("utf-8"))
        name = str(desc["name"])
        arch = dict(desc["architecture"])
        quantbits = int(desc["quantbits"])
        kinds = ("checkpoint", "bins") if "bins" in desc else ("checkpoint", "endpoints", "centres")
        files = {k: os.path.normpath(os.path.join(base, desc[k])) for k in kinds}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DemoError(f"invalid model descriptor {path}: {type(exc).__name__}: {exc}") from None
    for kind, fpath in files.items():
        if not os.path.isfile(fpath):
            raise DemoError(f"model {name}: {kind} file missing: {fpath}")

    # Identity: what determines the decoded bits (not the free-text notes).
    h = hashlib.sha256(json.dumps({"architecture": arch, "quantbits": quantbits},
                                  sort_keys=True).encode())
    for kind in kinds:
        _file_sha256(files[kind], h)

    try:
        net = HVAE(**arch)
    except (TypeError, ValueError) as exc:
        raise DemoError(f"model {name}: bad architecture in {path}: {exc}") from None
    if tuple(net.xs[1:]) != (net.xs[1], net.xs[1]) or net.xs[0] != 3:
        raise DemoError(f"model {name}: the demo needs square RGB blocks, got xs={net.xs}")
    try:
        state = _state_dict_from(torch.load(files["checkpoint"], map_location="cpu", weights_only=True))
        state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # unreadable file or keys/shapes that do not fit
        raise DemoError(f"model {name}: checkpoint {files['checkpoint']} does not fit the "
                        f"architecture: {str(exc).splitlines()[0]}") from None
    net.eval().to(device)

    zdim = int(np.prod(net.zdim))
    try:
        if "bins" in files:
            bins = LatentBins.load_ranges(files["bins"], quantbits)
        else:
            bins = LatentBins(*(torch.load(files[k], map_location="cpu", weights_only=True)
                                for k in ("endpoints", "centres")))
    except (BinsError, OSError, RuntimeError) as exc:
        raise DemoError(f"model {name}: unreadable or invalid bins: {str(exc).splitlines()[0]}") from None
    if (bins.nz, bins.zdim, bins.K) != (net.nz, zdim, 1 << quantbits):
        raise DemoError(f"model {name}: bins for nz={bins.nz}, {bins.zdim} dims, {bins.K} bins do not "
                        f"match the model (nz={net.nz}, zdim={zdim}, 2^quantbits={1 << quantbits})")
    return DemoModel(name=name, hash=h.hexdigest(), net=net, quantbits=quantbits,
                     bins=bins, device=torch.device(device),
                     descriptor_path=path, info=desc.get("info", {}))


def pick_device(requested="auto"):
    """'auto' -> cuda when available, else cpu; anything else is checked."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise DemoError(f"invalid --device {requested!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DemoError(f"--device {requested}: CUDA is not available here")
    return requested


@contextlib.contextmanager
def _deterministic_torch():
    """One intra-op thread and deterministic kernels for the codec's network
    calls: a convolution's float32 sums may be ordered differently with
    another thread count, and one ulp of difference in a mean changes a
    quantized CDF, so the decoder would read different symbols."""
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = cudnn


# --------------------------------------------------------------------- image

def load_image(path):
    """Read an 8-bit RGB or grayscale image: returns (uint8 (H, W, C), mode)."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise DemoError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DemoError(f"{path} is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise DemoError(f"{path} is an empty file (0 bytes), not an image")
    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise DemoError(f"{path}: multi-frame images are not supported")
            rawmode = img.tile[0][3] if img.tile and len(img.tile[0]) > 3 else ""
            rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") or ";16" in str(rawmode):
                raise DemoError(f"{path}: 16-bit and 32-bit images are not supported (8-bit RGB or grayscale only)")
            if img.mode not in SUPPORTED_MODES:
                what = {"P": "palette", "RGBA": "RGBA (alpha)", "LA": "grayscale+alpha",
                        "1": "1-bit", "CMYK": "CMYK"}.get(img.mode, img.mode)
                raise DemoError(f"{path}: {what} images are not supported; "
                                "convert to 8-bit RGB or grayscale first")
            img.load()
            mode = img.mode
            array = np.asarray(img, dtype=np.uint8)
    except DemoError:
        raise
    except UnidentifiedImageError:
        raise DemoError(f"{path} is not an image file this program can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DemoError(f"{path}: truncated or damaged image ({str(exc).splitlines()[0]})") from None
    if array.size == 0:
        raise DemoError(f"{path}: empty image ({array.shape[1]}x{array.shape[0]})")
    return (array[:, :, None] if array.ndim == 2 else array), mode


def pixels_sha256(image, mode):
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}x{image.shape[2]}:{mode}:".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def pad_to_blocks(image, block):
    """Edge-replicate (H, W, C) to multiples of ``block``, as 3 channels."""
    h, w, _ = image.shape
    ph, pw = -(-h // block) * block, -(-w // block) * block
    padded = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    if padded.shape[2] == 1:
        padded = np.repeat(padded, 3, axis=2)
    return padded


def block_order(ph, pw, block):
    """Raster order of the blocks' top-left corners (encode order)."""
    return [(r, c) for r in range(0, ph, block) for c in range(0, pw, block)]


def _coder(model: DemoModel):
    """The project's Bit-Swap coder (utils/bitsback.py) for this model.  The
    blocks of one image form one chain on one InterleavedMessage, coded one
    block at a time (batch 1) in raster order and decoded in reverse."""
    return BitsBackCoder(model.net, model.bins, bitswap=True, precision=PRECISION, device=model.device)


def _progress(total, quiet, desc):
    from tqdm import tqdm
    return tqdm(total=total, disable=quiet, desc=desc, unit="block", leave=False, mininterval=0.5)


@dataclass
class EncodeResult:
    data: bytes                 # the container
    message_bits: int           # ANS message size (bits)
    initial_bits: int           # bits borrowed from the seeded initial stack
    head_bits: int              # final heads of the interleaved lanes
    blocks: int


def compress(image, mode, model: DemoModel, quiet=True):
    """Code ``image`` (uint8 (H, W, C), ``mode`` RGB or L) into a container."""
    block = model.block
    padded = pad_to_blocks(image, block)
    ph, pw, _ = padded.shape
    order = block_order(ph, pw, block)
    msg = ans.InterleavedMessage.empty(LANES, PRECISION, underflow_seed=UNDERFLOW_SEED)
    coder = _coder(model)
    with _deterministic_torch(), _progress(len(order), quiet, "compress") as bar:
        for r, c in order:
            coder.encode(msg, padded[None, r:r + block, c:c + block].transpose(0, 3, 1, 2))
            bar.update()
    header = dict(model_name=model.name, model_hash=model.hash,
                  height=int(image.shape[0]), width=int(image.shape[1]),
                  channels=int(image.shape[2]), mode=mode, block=block, padding="edge",
                  padded_height=ph, padded_width=pw, precision=PRECISION, lanes=LANES,
                  underflow_seed=UNDERFLOW_SEED, quantbits=model.quantbits,
                  device=model.device.type, pixels_sha256=pixels_sha256(image, mode))
    data = container.pack(header, msg.to_bytes())
    return EncodeResult(data=data, message_bits=msg.bits(), initial_bits=32 * msg.borrowed_words,
                        head_bits=int(msg.head_bits().sum()), blocks=len(order))


def check_header(header, model: DemoModel):
    """Is the container decodable with this model?  DemoError if not."""
    if header["model_hash"] != model.hash:
        raise DemoError(f"this file was made with model {header['model_name']!r} "
                        f"(hash {header['model_hash'][:12]}), not with {model.name!r} "
                        f"(hash {model.hash[:12]}); pass the right --model")
    if header["device"] != model.device.type:
        raise DemoError(f"this file was coded on {header['device']}; decode it with --device {header['device']}")
    h, w, c = header["height"], header["width"], header["channels"]
    b = header["block"]
    if (header["mode"] not in SUPPORTED_MODES or SUPPORTED_MODES[header["mode"]] != c
            or h < 1 or w < 1 or b != model.block or header["padding"] != "edge"
            or header["padded_height"] != -(-h // b) * b or header["padded_width"] != -(-w // b) * b
            or header["quantbits"] != model.quantbits):
        raise DemoError("invalid header: inconsistent image or model parameters")


def decompress(data, model: DemoModel, quiet=True):
    """Container bytes -> (uint8 (H, W, C), mode), verified against the stored
    pixel checksum."""
    header, body = container.unpack(data)
    check_header(header, model)
    try:
        msg = ans.InterleavedMessage.from_bytes(body)
    except ValueError as exc:
        raise DemoError(f"corrupted file: bad ANS message ({exc})") from None
    if msg.precision != header["precision"] or msg.lanes != header["lanes"]:
        raise DemoError("corrupted file: message parameters differ from the header")
    b, ph, pw = header["block"], header["padded_height"], header["padded_width"]
    padded = np.empty((ph, pw, 3), dtype=np.uint8)
    coder = _coder(model)
    order = block_order(ph, pw, b)
    try:
        with _deterministic_torch(), _progress(len(order), quiet, "decompress") as bar:
            for r, c in reversed(order):
                padded[r:r + b, c:c + b] = coder.decode(msg, 1)[0].transpose(1, 2, 0)
                bar.update()
    except ValueError as exc:   # e.g. popping past the end of the message
        raise DemoError(f"decoding failed: {exc}") from None
    image = padded[:header["height"], :header["width"], :header["channels"]]
    if pixels_sha256(image, header["mode"]) != header["pixels_sha256"]:
        raise DemoError("decoded pixels do not match the stored checksum; nothing written "
                        "(was the file made on another kind of machine?)")
    return np.ascontiguousarray(image), header["mode"]


# -------------------------------------------------------------------- output

def run_cli(prog, body):
    """Exit status of a demo command: ``body()`` runs the work; a DemoError or
    ContainerError becomes one line on stderr and status 1, Ctrl-C status 130
    (outputs are only ever written atomically, so nothing is left behind)."""
    import sys
    try:
        body()
    except (DemoError, ContainerError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted, nothing written", file=sys.stderr)
        return 130
    return 0


def check_output_path(path, force=False):
    """Fail early (before any coding) if ``path`` cannot be written."""
    if os.path.isdir(path):
        raise DemoError(f"output {path} is a directory")
    if os.path.exists(path) and not force:
        raise DemoError(f"output {path} exists; pass --force to overwrite")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DemoError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DemoError(f"cannot write {path}: directory {parent} is not writable")


def write_atomic(path, data):
    """Write ``data`` to ``path`` via a temporary file + os.replace."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-", suffix=os.path.basename(path)[-20:])
    except OSError as exc:
        raise DemoError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DemoError(f"cannot write {path}: {exc.strerror or exc}") from None


def png_bytes(image, mode):
    """A PNG file of the (H, W, C) image in ``mode`` (RGB or L)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[:, :, 0] if mode == "L" else image)).save(buf, format="PNG")
    return buf.getvalue()


def read_file(path):
    if not os.path.exists(path):
        raise DemoError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DemoError(f"{path} is a directory, not a Bit-Swap file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DemoError(f"cannot read {path}: {exc.strerror or exc}") from None



def write_model_dir(directory, state_dict, architecture, bins, name, info=None, half=True):
    """Write a model directory the loader reads: ``model.json`` (descriptor),
    ``checkpoint.pt`` (the state dict, float16 when ``half``) and the bins:
    ``bins.pt`` (the compact ranges of utils/bins.py: the authors' tables of
    a 1,024-bin demo model would be 67 MB each) when ``bins`` has them, else
    the authors' ``endpoints.pt`` / ``centres.pt``.  Returns the descriptor path.
    Files are written in place; the content hash covers all of them."""
    os.makedirs(directory, exist_ok=True)
    state = {k: (v.half() if half and torch.is_floating_point(v) else v).detach().cpu().clone()
             for k, v in state_dict.items()}
    torch.save(state, os.path.join(directory, "checkpoint.pt"))
    desc = dict(name=name, architecture=dict(architecture), quantbits=int(bins.quantbits),
                checkpoint="checkpoint.pt")
    if bins.ranges is not None:
        bins.save_ranges(os.path.join(directory, "bins.pt"))
        desc["bins"] = "bins.pt"
    else:
        for key, array in (("endpoints", bins.endpoints), ("centres", bins.centres)):
            torch.save(torch.from_numpy(np.array(array, dtype=np.float64)), os.path.join(directory, f"{key}.pt"))
            desc[key] = f"{key}.pt"
    desc["info"] = info or {}
    path = os.path.join(directory, "model.json")
    with open(path, "w") as f:
        json.dump(desc, f, indent=2)
        f.write("\n")
    return path


def random_model_dir(directory, quantbits=10, seed=0, name="random", half=True, full_bins=False,
                     **architecture):
    """A random-init model with simple bins (equal-width on [-4, 4] below,
    the prior's on top): for tests and timing only, it compresses badly.
    ``full_bins`` perturbs one endpoint so the authors' format is written."""
    from model.hvae import HVAE
    torch.manual_seed(seed)
    net = HVAE(**architecture).eval()
    zdim = int(np.prod(net.zdim))
    ranges = np.broadcast_to(np.array([-4.0, 4.0]), (net.nz - 1, zdim, 2))
    bins = LatentBins.from_ranges(ranges, quantbits)
    if full_bins:
        ends = bins.endpoints.copy()
        ends[0, 0, 0] = (ends[0, 0, 0] + ends[0, 0, 1]) / 2   # no longer equal-width
        bins = LatentBins(ends, bins.centres)
    return write_model_dir(directory, net.state_dict(), net.architecture(), bins, name, half=half)
