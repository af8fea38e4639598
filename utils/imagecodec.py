"""The demo codec's coding: one whole 8-bit image <-> one Bit-Swap container.

Owns padding and blocking, the chained Bit-Swap coding of the blocks in one
interleaved rANS message, the container header and its checks against the
model.  The model comes from model/package.py (``load_codec_model``), images
from utils/images.py, the container's bytes from utils/container.py, and the
command-line plumbing from utils/cli.py.

Invariants:

* Lossless on the whole image: the image is padded by edge replication to a
  multiple of the model's block size (replicated pixels are cheap to code) and
  cropped back on decode; the SHA-256 of the original pixels is stored and a
  decode that does not reproduce it is an error (RunFailure), never a result.
* Grayscale is coded as three equal channels (the model is RGB) and written
  back as 8-bit grayscale.
* Encoder and decoder compute bit-identical quantized tables: every network
  call is one block at batch 1 on the same device type, with torch pinned to
  one intra-op thread (utils/device.deterministic_torch), and the float32
  outputs go through the same float64 codecs of utils/distributions.py.
* A file that cannot be decoded with the given model (another model, another
  device type, an inconsistent header, a damaged message) is BadInput with a
  one-line message, before anything is written.
"""
import hashlib
from dataclasses import dataclass

import numpy as np

from utils import ans, container
from utils.bitsback import BitsBackCoder
from utils.cli import BadInput, RunFailure
from utils.device import deterministic_torch
from utils.images import SUPPORTED_MODES

DEFAULT_MODEL = "demo"      # the shipped package models/demo
LANES = 128                 # interleaved rANS lanes: ~64 bits of final head each
UNDERFLOW_SEED = 0          # initial bits borrowed by the first block (counted)
PRECISION = ans.DEFAULT_PRECISION


def load_codec_model(spec=None, device="cpu"):
    """The model of ``spec`` (default: the shipped demo package) through the
    one loader, checked to code square RGB blocks."""
    from model import package
    model = package.load(DEFAULT_MODEL if spec is None else spec, device=device)
    xs = tuple(model.net.xs)
    if xs[0] != 3 or xs[1] != xs[2]:
        raise BadInput(f"model {model.name}: the demo codec needs square RGB blocks, got xs={xs}")
    return model


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


def _coder(model):
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


def compress(image, mode, model, quiet=True):
    """Code ``image`` (uint8 (H, W, C), ``mode`` RGB or L) into a container."""
    block = model.block
    padded = pad_to_blocks(image, block)
    ph, pw, _ = padded.shape
    order = block_order(ph, pw, block)
    msg = ans.InterleavedMessage.empty(LANES, PRECISION, underflow_seed=UNDERFLOW_SEED)
    coder = _coder(model)
    with deterministic_torch(), _progress(len(order), quiet, "compress") as bar:
        for r, c in order:
            coder.encode(msg, padded[None, r:r + block, c:c + block].transpose(0, 3, 1, 2))
            bar.update()
    header = dict(model_name=model.name, model_hash=model.identity,
                  height=int(image.shape[0]), width=int(image.shape[1]),
                  channels=int(image.shape[2]), mode=mode, block=block, padding="edge",
                  padded_height=ph, padded_width=pw, precision=PRECISION, lanes=LANES,
                  underflow_seed=UNDERFLOW_SEED, quantbits=model.quantbits,
                  device=model.device.type, pixels_sha256=pixels_sha256(image, mode))
    data = container.pack(header, msg.to_bytes())
    return EncodeResult(data=data, message_bits=msg.bits(), initial_bits=32 * msg.borrowed_words,
                        head_bits=int(msg.head_bits().sum()), blocks=len(order))


def check_header(header, model):
    """Is the container decodable with this model?  BadInput if not."""
    if header["model_hash"] != model.identity:
        raise BadInput(f"this file was made with model {header['model_name']!r} "
                       f"(hash {header['model_hash'][:12]}), not with {model.name!r} "
                       f"(hash {model.identity[:12]}); pass the right --model")
    if header["device"] != model.device.type:
        raise BadInput(f"this file was coded on {header['device']}; decode it with --device {header['device']}")
    h, w, c = header["height"], header["width"], header["channels"]
    b = header["block"]
    if (header["mode"] not in SUPPORTED_MODES or SUPPORTED_MODES[header["mode"]] != c
            or h < 1 or w < 1 or b != model.block or header["padding"] != "edge"
            or header["padded_height"] != -(-h // b) * b or header["padded_width"] != -(-w // b) * b
            or header["quantbits"] != model.quantbits):
        raise BadInput("invalid header: inconsistent image or model parameters")


def decompress(data, model, quiet=True):
    """Container bytes -> (uint8 (H, W, C), mode), verified against the stored
    pixel checksum."""
    header, body = container.unpack(data)
    check_header(header, model)
    try:
        msg = ans.InterleavedMessage.from_bytes(body)
    except ValueError as exc:
        raise BadInput(f"corrupted file: bad ANS message ({exc})") from None
    if msg.precision != header["precision"] or msg.lanes != header["lanes"]:
        raise BadInput("corrupted file: message parameters differ from the header")
    b, ph, pw = header["block"], header["padded_height"], header["padded_width"]
    padded = np.empty((ph, pw, 3), dtype=np.uint8)
    coder = _coder(model)
    order = block_order(ph, pw, b)
    try:
        with deterministic_torch(), _progress(len(order), quiet, "decompress") as bar:
            for r, c in reversed(order):
                padded[r:r + b, c:c + b] = coder.decode(msg, 1)[0].transpose(1, 2, 0)
                bar.update()
    except ValueError as exc:   # e.g. popping past the end of the message
        raise BadInput(f"corrupted file: decoding failed ({exc})") from None
    image = padded[:header["height"], :header["width"], :header["channels"]]
    if pixels_sha256(image, header["mode"]) != header["pixels_sha256"]:
        raise RunFailure("decoded pixels do not match the stored checksum; nothing written "
                         "(was the file made on another kind of machine?)")
    return np.ascontiguousarray(image), header["mode"]
