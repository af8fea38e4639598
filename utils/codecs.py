"""Baseline lossless codecs: the paper's (gzip, bzip2, LZMA, PNG, WebP) and
modern ones (JPEG XL, JPEG 2000, JPEG-LS, AVIF), behind one interface.

This module owns every baseline codec of the project; the benchmark, the
per-dataset compress scripts and the demo all measure through it.

Images are uint8 arrays in channel-last layout, ``(H, W, C)`` with C = 1
(grayscale) or 3 (RGB); a 2-D ``(H, W)`` array is taken as C = 1. A batch is
``(N, H, W, C)`` (or ``(N, H, W)``).

Two kinds of codec, as in the paper's protocol:

* byte-stream codecs (gzip, bzip2, lzma) compress the raw bytes of the whole
  batch in one stream (channel-last byte order, as the reference benchmark);
* image codecs compress each image on its own; a batch costs the sum.

Invariants:

* A size only counts after the payload has been decoded back and compared
  bit-for-bit with the input (``measure`` raises ``CodecError`` otherwise).
* PNG is counted as its IDAT payload only (the zlib stream), as the paper's
  reference counts; ``decompress`` rebuilds the PNG file from the payload and
  the known shape, so the payload alone is a complete lossless code.
* A codec whose library is missing (or fails a tiny round-trip probe) is listed
  by ``unavailable_codecs()`` with the reason, and ``measure`` reports it as
  ``None``: never silently dropped.
* Output is deterministic (gzip header time fixed to 0, codecs single-threaded).
"""
import bz2
import functools
import gzip
import io
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "CodecError", "Codec", "CODECS", "PAPER_CODECS", "codec_names", "available_codecs",
    "unavailable_codecs", "compress", "decompress", "compress_batch", "decompress_batch",
    "measure", "measure_image", "bits_per_dim",
]


class CodecError(RuntimeError):
    """A codec failed to encode, or its output did not decode to the input."""


@dataclass(frozen=True)
class Codec:
    """One lossless codec. ``encode(image_or_bytes) -> bytes``;
    ``decode(bytes, shape) -> uint8 array of that shape``."""
    name: str
    label: str
    per_image: bool          # False: one stream over the raw bytes of the batch
    in_paper: bool
    encode: Callable
    decode: Callable
    needs: str = ""          # what provides it, for the "unavailable" message


# ----------------------------------------------------------------- shapes

def _as_image(image) -> np.ndarray:
    """Validate one image; return it as (H, W, C) uint8, C in {1, 3}."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"an image must be (H, W), (H, W, 1) or (H, W, 3); got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image {image.shape}")
    return image


def _as_batch(images) -> np.ndarray:
    """Validate a batch; return it as (N, H, W, C) uint8."""
    images = np.asarray(images)
    if images.ndim == 3 and images.dtype == np.uint8 and images.shape[-1] not in (1, 3):
        images = images[..., None]          # (N, H, W) grayscale
    if images.ndim != 4:
        raise ValueError(f"a batch must be (N, H, W) or (N, H, W, C); got {images.shape}")
    if len(images) == 0:
        raise ValueError("empty batch")
    _as_image(images[0])
    return images


def _gray_or_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W) for libraries that want 2-D grayscale."""
    return image[:, :, 0] if image.shape[2] == 1 else image


# ----------------------------------------------------- byte-stream codecs

def _stream_codec(name, label, enc, dec):
    def decode(data, shape):
        return np.frombuffer(dec(data), dtype=np.uint8).reshape(shape)
    return Codec(name, label, per_image=False, in_paper=True,
                 encode=lambda raw: enc(raw), decode=decode, needs="Python standard library")


# ------------------------------------------------------------- PNG (IDAT)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_ihdr(height, width, channels) -> bytes:
    colour_type = 0 if channels == 1 else 2          # grayscale / truecolour, 8 bit
    return struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)


def _png_chunks(data: bytes):
    """Yield (kind, body) of each chunk of a PNG file."""
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _png_encode(image):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(_gray_or_rgb(image)).save(buf, format="PNG", optimize=True)
    chunks = list(_png_chunks(buf.getvalue()))
    # The payload is only a complete code if the header is the one decode rebuilds.
    ihdr = [body for kind, body in chunks if kind == b"IHDR"]
    if ihdr != [_png_ihdr(*image.shape)]:
        raise CodecError("Pillow wrote an unexpected PNG header (not 8-bit gray/RGB)")
    return b"".join(body for kind, body in chunks if kind == b"IDAT")


def _png_decode(payload, shape):
    from PIL import Image
    data = (_PNG_SIGNATURE + _png_chunk(b"IHDR", _png_ihdr(*shape))
            + _png_chunk(b"IDAT", payload) + _png_chunk(b"IEND", b""))
    return np.asarray(Image.open(io.BytesIO(data))).reshape(shape)


# ---------------------------------------------------------- WebP (Pillow)

def _webp_encode(image):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(_gray_or_rgb(image)).save(buf, format="WEBP", lossless=True, quality=100)
    return buf.getvalue()


def _webp_decode(data, shape):
    from PIL import Image
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if shape[2] == 1:
        # WebP has no grayscale mode: Pillow stores gray as R = G = B.
        if not (np.array_equal(decoded[..., 0], decoded[..., 1])
                and np.array_equal(decoded[..., 0], decoded[..., 2])):
            raise CodecError("WebP returned colour for a grayscale image")
        decoded = decoded[..., :1]
    return decoded.reshape(shape)


# ---------------------------------------------------- imagecodecs codecs

def _imagecodecs_codec(name, label, module_attr, encode_kwargs):
    def encode(image):
        import imagecodecs
        return bytes(getattr(imagecodecs, module_attr + "_encode")(_gray_or_rgb(image),
                                                                   **encode_kwargs))

    def decode(data, shape):
        import imagecodecs
        return np.asarray(getattr(imagecodecs, module_attr + "_decode")(data)).reshape(shape)
    return Codec(name, label, per_image=True, in_paper=False, encode=encode, decode=decode,
                 needs=f"imagecodecs with {module_attr.upper()} support")


CODECS: Dict[str, Codec] = {c.name: c for c in [
    _stream_codec("gzip", "gzip", lambda raw: gzip.compress(raw, compresslevel=9, mtime=0),
                  gzip.decompress),
    _stream_codec("bzip2", "bzip2", lambda raw: bz2.compress(raw, 9), bz2.decompress),
    _stream_codec("lzma", "LZMA", lzma.compress, lzma.decompress),
    Codec("png", "PNG (IDAT)", per_image=True, in_paper=True, encode=_png_encode,
          decode=_png_decode, needs="Pillow"),
    Codec("webp", "WebP lossless", per_image=True, in_paper=True, encode=_webp_encode,
          decode=_webp_decode, needs="Pillow with WebP support"),
    _imagecodecs_codec("jpegxl", "JPEG XL lossless", "jpegxl",
                       dict(lossless=True, numthreads=1)),
    # Raw J2K codestream (no JP2 box wrapper), reversible 5/3 wavelet.
    _imagecodecs_codec("jpeg2000", "JPEG 2000 lossless", "jpeg2k",
                       dict(level=0, reversible=True, codecformat="J2K", numthreads=1)),
    _imagecodecs_codec("jpegls", "JPEG-LS", "jpegls", dict(level=0)),
    _imagecodecs_codec("avif", "AVIF lossless", "avif", dict(level=100, numthreads=1)),
]}

PAPER_CODECS = tuple(name for name, c in CODECS.items() if c.in_paper)


def codec_names() -> List[str]:
    """Every codec this module knows, in table order (available or not)."""
    return list(CODECS)


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> Optional[str]:
    """None if the codec round-trips a tiny gray and RGB image, else the reason."""
    codec = CODECS[name]
    rng = np.random.default_rng(0)
    try:
        for shape in [(8, 8, 1), (8, 8, 3)]:
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            raw = image.tobytes() if not codec.per_image else image
            if not np.array_equal(codec.decode(codec.encode(raw), shape), image):
                return f"{codec.label} is not lossless with the installed library"
    except Exception as exc:  # missing module, plugin or feature: report, don't crash
        return f"needs {codec.needs} ({type(exc).__name__}: {exc})"
    return None


def available_codecs() -> List[str]:
    """Names of the codecs usable here, in table order."""
    return [name for name in CODECS if _probe(name) is None]


def unavailable_codecs() -> Dict[str, str]:
    """name -> reason, for codecs that cannot be used here."""
    return {name: _probe(name) for name in CODECS if _probe(name) is not None}


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
    reason = _probe(name)
    if reason is not None:
        raise CodecError(f"{name} unavailable: {reason}")
    return CODECS[name]


# ------------------------------------------------------------ public API

def compress(name: str, image) -> bytes:
    """Compress one (H, W[, C]) uint8 image with codec ``name``."""
    codec = _codec(name)
    image = _as_image(image)
    try:
        return bytes(codec.encode(image if codec.per_image else image.tobytes()))
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"{name} failed to encode a {image.shape} image: {exc}") from exc


def decompress(name: str, data: bytes, shape) -> np.ndarray:
    """Inverse of ``compress``: the (H, W, C) uint8 image of the given shape."""
    codec = _codec(name)
    shape = tuple(shape) if len(shape) == 3 else tuple(shape) + (1,)
    try:
        return codec.decode(data, shape)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"{name} failed to decode: {exc}") from exc


def compress_batch(name: str, images) -> List[bytes]:
    """Compress a batch (N, H, W[, C]): one stream for a byte-stream codec,
    one payload per image for an image codec. Cost = total length."""
    codec = _codec(name)
    images = _as_batch(images)
    if not codec.per_image:
        try:
            return [bytes(codec.encode(np.ascontiguousarray(images).tobytes()))]
        except Exception as exc:
            raise CodecError(f"{name} failed to encode: {exc}") from exc
    return [compress(name, image) for image in images]


def decompress_batch(name: str, parts: Sequence[bytes], shape) -> np.ndarray:
    """Inverse of ``compress_batch``; ``shape`` is the (N, H, W, C) batch shape."""
    codec = _codec(name)
    shape = tuple(shape) if len(shape) == 4 else tuple(shape) + (1,)
    if not codec.per_image:
        if len(parts) != 1:
            raise CodecError(f"{name} is one stream per batch, got {len(parts)} parts")
        try:
            return codec.decode(parts[0], shape)
        except Exception as exc:
            raise CodecError(f"{name} failed to decode: {exc}") from exc
    if len(parts) != shape[0]:
        raise CodecError(f"{name}: {len(parts)} payloads for {shape[0]} images")
    return np.stack([decompress(name, part, shape[1:]) for part in parts])


def measure(images, codecs: Optional[Sequence[str]] = None) -> Dict[str, Optional[int]]:
    """Verified compressed size in bits of a batch ``(N, H, W[, C])`` per codec.

    ``codecs`` defaults to all known codecs. An unavailable codec maps to None
    (see ``unavailable_codecs`` for why). Raises ``CodecError`` if a codec
    fails or does not decode to exactly the input.
    """
    images = _as_batch(images)
    names = list(CODECS) if codecs is None else list(codecs)
    result: Dict[str, Optional[int]] = {}
    for name in names:
        if name in CODECS and _probe(name) is not None:
            result[name] = None
            continue
        parts = compress_batch(name, images)
        if not np.array_equal(decompress_batch(name, parts, images.shape), images):
            raise CodecError(f"{name} did not round-trip exactly; size not counted")
        result[name] = 8 * sum(len(p) for p in parts)
    return result


def measure_image(image, codecs: Optional[Sequence[str]] = None) -> Dict[str, Optional[int]]:
    """``measure`` for one (H, W[, C]) image."""
    return measure(_as_image(image)[None], codecs)


def bits_per_dim(bits: int, images) -> float:
    """Bits per stored value (pixel x channel) of an image or batch."""
    return bits / np.asarray(images).size
