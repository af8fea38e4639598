"""The demo codec's coding: one whole 8-bit image <-> one Bit-Swap container.

Owns blocking, the per-block choice between Bit-Swap, the pixel model
(utils/pixelmodel.py) and stored raw bytes, the chained coding of the blocks
in one interleaved rANS message, the container header and its checks
against the model.  The model comes from model/package.py
(``load_codec_model``), images from utils/images.py, the container's bytes
from utils/container.py, and the command-line plumbing from utils/cli.py.

Format 5 (current), in encode order; the decoder runs it backwards:

1. the strips of partial edge blocks (the bottom rows and right columns
   outside the complete blocks) with the pixel model, or raw if that is
   cheaper, and a flag; decoded last, so their context (upper and left
   neighbours) lies in the complete blocks already decoded.  Their bits are
   also the first initial bits the complete blocks' latents pop;
2. the complete blocks in raster order, each with Bit-Swap unless Bit-Swap
   would cost more than its raw bytes, or would borrow initial bits and cost
   more than the pixel model (the first blocks of an image without strips);
   such a block is coded with the pixel model (its lower and right
   neighbours, decoded before it, as context) or raw, whichever is cheaper;
   a flag per block.

Formats 2-4 coded every block, partial ones too, with Bit-Swap or raw bytes
(an edge block's real pixels edge-replicated to a whole block for the
networks; format 2 also coded the replicated pixels); they still decode, and
``compress(..., version=4)`` still writes them (tests).

Invariants:

* Lossless on the whole image.  The SHA-256 of the original pixels is stored
  and a decode that does not reproduce it is an error (RunFailure), never a
  result.
* Grayscale is coded as one channel (utils/bitsback.py: the posterior sees
  the grey block replicated into RGB, the likelihood is the grey channel's;
  the pixel model codes the one channel) and written back as 8-bit
  grayscale.
* Never much larger than raw: every block and the strips cost at most their
  raw bytes plus a flag (``KIND_FLAG``: a Bit-Swap block pays 0.09 bits, a
  pixel-model or raw one 5 bits).  If the whole message is still not smaller
  than the raw pixels (noise, tiny images), the file stores the raw pixels
  instead (storage "raw"), so a file is never larger than the raw pixels
  plus the container's fixed bytes.
* Bit-Swap codes every complete block it codes below its raw bytes without
  borrowing initial bits: the pixel model only replaces raw bytes, borrowed
  initial bits and the latents of partial blocks.
* Small images small: the message has ``lanes_for(blocks)`` interleaved lanes
  (8 per block, partial blocks counted, at most 32; at most 128 in formats 2
  and 3), each lane's final
  head costs 8 bytes.  Fewer lanes are smaller beyond the heads: the first
  latent popped on a lane after a block's pixels were pushed reads bits that
  still follow the last pixel's quantile, not a fresh posterior sample; every
  lane pays that once per block.  32 lanes keep most of the vector speed.
* Portable: the networks run in float64 and their outputs are rounded to a
  grid with a margin check (utils/bitsback.py, ``GRID_BITS``/``MARGIN_BITS``),
  so the quantized tables do not depend on the order of the floating-point
  sums (threads, batch layout, memory layout, convolution algorithm, CPU
  family, CPU or CUDA).  Torch still runs one thread while coding (for
  speed on shared CPUs; the tables do not need it).  A block whose outputs are too often near a grid
  boundary is coded with the pixel model or raw (integer arithmetic only).
* A file that cannot be decoded with the given model (another model, an
  inconsistent header, a damaged message) is BadInput with a one-line
  message, before anything is written.
"""
import hashlib
from dataclasses import dataclass

import numpy as np

from utils import ans, container, pixelmodel
from utils.bitsback import BitsBackCoder, FragileOutputs
from utils.cli import BadInput, RunFailure
from utils.device import deterministic_torch
from utils.distributions import FixedCategorical
from utils.images import SUPPORTED_MODES

DEFAULT_MODEL = "demo"      # the shipped package models/demo
# Interleaved rANS lanes: more lanes make the vector steps faster; each lane
# costs 8 bytes of final head and one correlated pop per block (docstring).
LANES_PER_BLOCK = 8
MAX_LANES = 32              # format 4
MAX_LANES_BEFORE_4 = 128    # formats 2 and 3
UNDERFLOW_SEED = 0          # initial bits borrowed by the first block (counted)
PRECISION = ans.DEFAULT_PRECISION
GRID_BITS = 16              # network outputs rounded to multiples of 2^-16
MARGIN_BITS = 36            # outputs within 2^-36 of a rounding boundary are listed
BLOCK_FLAG = FixedCategorical([(1 << PRECISION) - (1 << (PRECISION - 4)), 1 << (PRECISION - 4)], PRECISION)
BITSWAP_BLOCK, RAW_BLOCK = 0, 1
# Format 5: what coded a complete block, or the strips of partial blocks.
KIND_FLAG = FixedCategorical([(1 << PRECISION) - (1 << (PRECISION - 4)), 1 << (PRECISION - 5),
                              1 << (PRECISION - 5)], PRECISION)
BITSWAP, PIXEL, RAW = 0, 1, 2
RAW_BYTE = FixedCategorical.uniform(256, PRECISION)


def lanes_for(blocks, version=container.VERSION):
    """Interleaved lanes of a message of ``blocks`` blocks (format rule)."""
    return min(MAX_LANES if version >= 4 else MAX_LANES_BEFORE_4, LANES_PER_BLOCK * blocks)


def load_codec_model(spec=None, device="cpu"):
    """The model of ``spec`` (default: the shipped demo package) through the
    one loader, checked to code square RGB blocks, networks in float64."""
    from model import package
    model = package.load(DEFAULT_MODEL if spec is None else spec, device=device)
    xs = tuple(model.net.xs)
    if xs[0] != 3 or xs[1] != xs[2]:
        raise BadInput(f"model {model.name}: the demo codec needs square RGB blocks, got xs={xs}")
    model.net.double()
    return model


def pixels_sha256(image, mode):
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}x{image.shape[2]}:{mode}:".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def pad_to_blocks(image, block):
    """Edge-replicate (H, W, C) to multiples of ``block`` (C unchanged)."""
    h, w, _ = image.shape
    ph, pw = -(-h // block) * block, -(-w // block) * block
    return np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")


def block_order(h, w, block):
    """Raster order of the top-left corners of the blocks covering an h x w
    image (encode order; edge blocks may be partial)."""
    return [(r, c) for r in range(0, h, block) for c in range(0, w, block)]


def _coder(model):
    """The project's Bit-Swap coder (utils/bitsback.py) for this model.  The
    blocks of one image form one chain on one InterleavedMessage, coded one
    block at a time (batch 1) in raster order and decoded in reverse."""
    return BitsBackCoder(model.net, model.bins, bitswap=True, precision=PRECISION, device=model.device,
                         grid_bits=GRID_BITS, margin_bits=MARGIN_BITS)


def _progress(total, quiet, desc):
    from tqdm import tqdm
    return tqdm(total=total, disable=quiet, desc=desc, unit="block", leave=False, mininterval=0.5)


@dataclass
class EncodeResult:
    data: bytes                 # the container
    storage: str                # "bitswap" (ANS message) or "raw" (pixel bytes)
    message_bits: int           # ANS message size (bits), also when not stored
    message_bytes: int          # the serialized message (bytes), also when not stored
    initial_bits: int           # bits borrowed from the seeded initial stack
    head_bits: int              # final heads of the interleaved lanes
    blocks: int                 # blocks coded one by one (format 5: the complete ones)
    raw_blocks: int             # of those, stored as raw bytes inside the message
    lanes: int
    fragile_outputs: int        # network outputs listed near a grid boundary
    pixel_blocks: int = 0       # complete blocks coded by the pixel model (format 5)
    strip_pixels: int = 0       # pixels of the partial edge blocks (format 5)
    strip_storage: str = ""     # how they were coded: "pixel", "raw" or "" (none)
    part_bits: dict = None      # format 5: message bits by part ("strips", "bitswap",
                                # "pixel", "raw" blocks; flags included), summing to the
                                # message bits less the empty message's heads


def _header(image, mode, model, storage):
    return dict(model_name=model.name, model_hash=model.identity, height=int(image.shape[0]),
                width=int(image.shape[1]), mode=mode, storage=storage, device=model.device.type,
                block=model.block, quantbits=model.quantbits, pixels_sha256=pixels_sha256(image, mode))


def replicate_to_block(real, block):
    """Edge-replicate a block's real pixels (rh, rw, C) to (block, block, C)."""
    rh, rw = real.shape[:2]
    return np.pad(real, ((0, block - rh), (0, block - rw), (0, 0)), mode="edge")


def block_tile(image, r, c, block):
    """The block at (r, c): its real pixels, edge-replicated to block x block,
    and the real region's (rows, columns)."""
    real = image[r:r + block, c:c + block]
    return replicate_to_block(real, block), real.shape[:2]


def compress(image, mode, model, quiet=True, fallback=True, version=container.VERSION):
    """Code ``image`` (uint8 (H, W, C), ``mode`` RGB (C = 3) or L (C = 1))
    into a container.  ``fallback=False`` codes every complete block with
    Bit-Swap (format 5; every block in formats 2-4) and stores the message
    whatever its size (tests and measurements); ``version`` 2, 3 or 4 writes
    an older format (tests of reading old files)."""
    if SUPPORTED_MODES.get(mode) != image.shape[2]:
        raise BadInput(f"mode {mode} does not match an image of {image.shape[2]} channels")
    if version not in container.READABLE_VERSIONS:
        raise ValueError(f"cannot write container format version {version}")
    msg = ans.InterleavedMessage.empty(lanes_for(len(block_order(image.shape[0], image.shape[1], model.block)),
                                                 version), PRECISION, underflow_seed=UNDERFLOW_SEED)
    coder = _coder(model)
    encode = _encode_blocks if version >= 5 else _encode_blocks_before_5
    with deterministic_torch():
        counts = encode(msg, image, model.block, coder, quiet, fallback, version)
    body = msg.to_bytes()
    message_bytes = len(body)
    storage = "bitswap"
    if fallback and len(body) >= image.size:
        storage, body = "raw", np.ascontiguousarray(image).tobytes()
    data = container.pack(_header(image, mode, model, storage), body, version)
    return EncodeResult(data=data, storage=storage, message_bits=msg.bits(), message_bytes=message_bytes,
                        initial_bits=32 * msg.borrowed_words, head_bits=int(msg.head_bits().sum()),
                        lanes=msg.lanes, fragile_outputs=coder.fragile_outputs, **counts)


def complete_area(h, w, block):
    """Rows and columns covered by complete blocks (format 5)."""
    return h // block * block, w // block * block


def strips_mask(h, w, block):
    """The pixels of the partial edge blocks: the bottom rows and right
    columns outside the complete blocks (format 5)."""
    hc, wc = complete_area(h, w, block)
    mask = np.ones((h, w), dtype=bool)
    mask[:hc, :wc] = False
    return mask


def _block_window(r, c, block, hc, wc, h, w):
    """A complete block's pixel-model window (the block, one row below and
    one column right: the reverse scan's context), the block's mask in it,
    and the window pixels the decoder knows when it reaches the block (the
    complete blocks after it in raster order, never the strips)."""
    window = (slice(r, min(h, r + block + 1)), slice(c, min(w, c + block + 1)))
    shape = (window[0].stop - r, window[1].stop - c)
    region = np.zeros(shape, dtype=bool)
    region[:block, :block] = True
    known = np.zeros(shape, dtype=bool)
    known[:hc - r, :wc - c] = True
    known[:block, :block] = False
    return window, region, known


def _encode_blocks(msg, image, block, coder, quiet, fallback, version):
    """Format 5.  Encode order (the decoder runs it backwards): first the
    strips of partial blocks with the pixel model (decoded last, when every
    complete block is known: their upper and left neighbours are), then the
    complete blocks in raster order, each with Bit-Swap unless that costs
    more than its raw bytes, or borrows initial bits and costs more than the
    pixel model; then with the pixel model (its lower and right neighbours
    known) or raw, whichever is cheaper.  The strips'
    bits are the initial bits the first blocks' latents pop."""
    h, w = image.shape[:2]
    hc, wc = complete_area(h, w, block)
    strips = strips_mask(h, w, block)
    counts = dict(blocks=(hc // block) * (wc // block), raw_blocks=0, pixel_blocks=0,
                  strip_pixels=int(strips.sum()), strip_storage="",
                  part_bits=dict(strips=0, bitswap=0, pixel=0, raw=0))
    parts = counts["part_bits"]
    start = msg.bits()
    if counts["strip_pixels"]:
        raw_bits = 8 * counts["strip_pixels"] * image.shape[2]
        encoded = pixelmodel.plan(image, ~strips, strips, precision=PRECISION)
        if encoded[1] < raw_bits or not fallback:
            pixelmodel.push_plan(msg, encoded)
            KIND_FLAG.push(msg, np.array([PIXEL]))
            counts["strip_storage"] = "pixel"
        else:
            RAW_BYTE.push(msg, image[strips].reshape(-1))
            KIND_FLAG.push(msg, np.array([RAW]))
            counts["strip_storage"] = "raw"
        parts["strips"] = msg.bits() - start
    order = block_order(hc, wc, block)
    with _progress(len(order), quiet, "compress") as bar:
        for r, c in order:
            tile = image[r:r + block, c:c + block]
            window, region, known = _block_window(r, c, block, hc, wc, h, w)
            raw_bits = 8 * tile.size + KIND_FLAG.bits(RAW)

            encoded = None

            def pixel_bits():        # planned once, only when a fallback is considered
                nonlocal encoded
                if encoded is None:
                    encoded = pixelmodel.plan(image[window], known, region, reverse=True, precision=PRECISION)
                return encoded[1] + KIND_FLAG.bits(PIXEL)

            mark = msg.checkpoint(coder.latent_symbols)
            before, borrowed = msg.bits(), msg.borrowed_words
            try:
                coder.encode(msg, tile[None].transpose(0, 3, 1, 2), real=(block, block))
                cost = msg.bits() - before + KIND_FLAG.bits(BITSWAP)
            except FragileOutputs:
                cost = float("inf")
            kind = BITSWAP
            if cost > raw_bits and (fallback or cost == float("inf")):
                kind = PIXEL if pixel_bits() < raw_bits else RAW
            elif fallback and msg.borrowed_words > borrowed and pixel_bits() < cost:
                kind = PIXEL    # borrowed initial bits are pure overhead: nothing to get back yet
            if kind != BITSWAP:
                msg.rollback(mark)
                if kind == PIXEL:
                    pixelmodel.push_plan(msg, encoded)
                else:
                    RAW_BYTE.push(msg, tile.reshape(-1))
            KIND_FLAG.push(msg, np.array([kind]))
            parts[{BITSWAP: "bitswap", PIXEL: "pixel", RAW: "raw"}[kind]] += msg.bits() - before
            counts["pixel_blocks"] += kind == PIXEL
            counts["raw_blocks"] += kind == RAW
            bar.update()
    return counts


def _encode_blocks_before_5(msg, image, block, coder, quiet, fallback, version):
    """Formats 2-4: every block (edge blocks partial) in raster order, each
    with Bit-Swap or, when that costs more, its raw bytes."""
    order = block_order(image.shape[0], image.shape[1], block)
    raw_blocks = 0
    with _progress(len(order), quiet, "compress") as bar:
        for r, c in order:
            tile, region = block_tile(image, r, c, block)
            real = tile[:region[0], :region[1]]
            raw_bits = 8 * real.size + BLOCK_FLAG.bits(RAW_BLOCK)
            mark = msg.checkpoint(coder.latent_symbols)
            before = msg.bits()
            try:
                coder.encode(msg, tile[None].transpose(0, 3, 1, 2), real=region if version >= 3 else None)
                BLOCK_FLAG.push(msg, np.array([BITSWAP_BLOCK]))
                cost = msg.bits() - before
            except FragileOutputs:
                cost = float("inf")
            if cost > raw_bits and (fallback or cost == float("inf")):
                msg.rollback(mark)
                RAW_BYTE.push(msg, real.reshape(-1))
                BLOCK_FLAG.push(msg, np.array([RAW_BLOCK]))
                raw_blocks += 1
            bar.update()
    return dict(blocks=len(order), raw_blocks=raw_blocks)


def check_header(header, model):
    """Is the container decodable with this model?  BadInput if not."""
    if header["storage"] == "raw":
        return
    if header["model_hash"] != model.identity:
        raise BadInput(f"this file was made with model {header['model_name']!r} "
                       f"(hash {header['model_hash'][:12]}), not with {model.name!r} "
                       f"(hash {model.identity[:12]}); pass the right --model")
    if header["block"] != model.block or header["quantbits"] != model.quantbits:
        raise BadInput("invalid header: inconsistent image or model parameters")


def decompress(data, model, quiet=True):
    """Container bytes -> (uint8 (H, W, C), mode), verified against the stored
    pixel checksum.  ``model`` may be None for a file of storage "raw"."""
    header, body = container.unpack(data)
    h, w, mode = header["height"], header["width"], header["mode"]
    channels = SUPPORTED_MODES[mode]
    if header["storage"] == "raw":
        if len(body) != h * w * channels:
            raise BadInput("corrupted file: raw pixel data does not match the image size")
        image = np.frombuffer(body, dtype=np.uint8).reshape(h, w, channels)
    else:
        if model is None:
            raise BadInput("this file needs the model it was made with")
        check_header(header, model)
        image = _decode_message(body, header, model, channels, quiet, header["format_version"])
    if pixels_sha256(image, mode) != header["pixels_sha256"]:
        raise RunFailure("decoded pixels do not match the stored checksum; nothing written")
    return np.ascontiguousarray(image), mode


def _decode_message(body, header, model, channels, quiet, version):
    h, w, b = header["height"], header["width"], header["block"]
    try:
        msg = ans.InterleavedMessage.from_bytes(body)
    except ValueError as exc:
        raise BadInput(f"corrupted file: bad ANS message ({exc})") from None
    if msg.precision != PRECISION or msg.lanes != lanes_for(len(block_order(h, w, b)), version):
        raise BadInput("corrupted file: message parameters differ from the format's")
    coder = _coder(model)
    decode = _decode_blocks if version >= 5 else _decode_blocks_before_5
    try:
        with deterministic_torch():
            return decode(msg, h, w, b, channels, coder, quiet, version)
    except ValueError as exc:   # e.g. popping past the end of the message
        raise BadInput(f"corrupted file: decoding failed ({exc})") from None


def _decode_blocks(msg, h, w, b, channels, coder, quiet, version):
    """Format 5: the complete blocks in reverse raster order, then the strips."""
    hc, wc = complete_area(h, w, b)
    canvas = np.zeros((h, w, channels), dtype=np.uint8)
    known = np.zeros((h, w), dtype=bool)
    order = block_order(hc, wc, b)
    with _progress(len(order), quiet, "decompress") as bar:
        for r, c in reversed(order):
            kind = KIND_FLAG.pop(msg)[0]
            if kind == BITSWAP:
                tile = coder.decode(msg, 1, grey=channels == 1, real=(b, b))[0]
                canvas[r:r + b, c:c + b] = tile.transpose(1, 2, 0)
            elif kind == PIXEL:
                window, region, window_known = _block_window(r, c, b, hc, wc, h, w)
                pixelmodel.pop_region(msg, canvas[window], window_known, region, reverse=True)
            else:
                canvas[r:r + b, c:c + b] = RAW_BYTE.pop(msg, (b, b, channels)).astype(np.uint8)
            known[r:r + b, c:c + b] = True
            bar.update()
    strips = strips_mask(h, w, b)
    if strips.any():
        kind = KIND_FLAG.pop(msg)[0]
        if kind == PIXEL:
            pixelmodel.pop_region(msg, canvas, known, strips)
        elif kind == RAW:
            canvas[strips] = RAW_BYTE.pop(msg, (int(strips.sum()), channels)).astype(np.uint8)
        else:
            raise ValueError("the partial edge blocks carry a Bit-Swap flag")
    return canvas


def _decode_blocks_before_5(msg, h, w, b, channels, coder, quiet, version):
    """Formats 2-4: every block in reverse raster order."""
    ph, pw = -(-h // b) * b, -(-w // b) * b
    padded = np.empty((ph, pw, channels), dtype=np.uint8)
    order = block_order(h, w, b)
    with _progress(len(order), quiet, "decompress") as bar:
        for r, c in reversed(order):
            rh, rw = min(b, h - r), min(b, w - c)
            if BLOCK_FLAG.pop(msg)[0] == RAW_BLOCK:
                real = RAW_BYTE.pop(msg, (rh, rw, channels)).astype(np.uint8)
                padded[r:r + b, c:c + b] = replicate_to_block(real, b)
            else:
                tile = coder.decode(msg, 1, grey=channels == 1, real=(rh, rw) if version >= 3 else None)[0]
                padded[r:r + b, c:c + b] = tile.transpose(1, 2, 0)
            bar.update()
    return padded[:h, :w]
