"""The demo codec's file format: a versioned container.

This module owns the bytes of a ``.bsw`` file and nothing else (no model, no
image handling).  Layout, all integers little-endian:

    offset  size  field
    0       8     magic  b"\\x89BSW\\r\\n\\x1a\\n"  (PNG-style: catches text-mode
                  mangling and tells a container from anything else)
    8       2     format version (uint16), currently 5 (versions 2-4 are read
                  too; the versions differ only in the body, utils/imagecodec.py)
    10      4     header length H (uint32)
    14      8     body length B (uint64)
    22      H     header: binary fields (``HEADER``), then the model name
    22+H    B     body: the ANS message (utils/ans serialization), or the raw
                  pixel bytes for storage "raw"
    22+H+B  32    SHA-256 of every byte before it (magic .. body)

Header (H = 83 + n bytes, n = length of the model name in UTF-8, at most 255):

    size  field
    1     mode: 1 = "L" (grayscale), 3 = "RGB" (also the channel count)
    1     storage: 0 = "bitswap" (ANS message), 1 = "raw" (pixel bytes)
    1     device: 0 = "cpu", 1 = "cuda" (the class the networks ran on)
    1     quantbits: latent bins per dimension = 2^quantbits
    4     height, 4 width (pixels of the image as given)
    2     block: block size the image was padded to (edge replication) and split by
    32    model_hash: model identity (SHA-256 of architecture, weights, bins)
    32    pixels_sha256: SHA-256 of the original pixels (see utils/imagecodec.py)
    4     reserved (zero)
    1+n   model_name (length byte, then UTF-8)

The fixed cost of a file is therefore 22 + 83 + n + 32 = 137 + n bytes (151
for the demo model's 14-character name) plus, for storage "bitswap", the
ANS message's own 24-byte preamble and 8 bytes per interleaved lane.

Invariants:

* ``unpack`` accepts exactly the bytes ``pack`` wrote: it checks the magic,
  the version, the declared lengths against the file size (a short file is
  "truncated", a long one has "trailing data"), then the SHA-256 over header
  and body (any flipped bit is "corrupted"), then every header field's range.
  Every failure is a ``ContainerError`` with a one-line message; nothing is
  half-parsed.
* The checksum is verified before the header is interpreted, so a flipped bit
  never reaches the header parser or the decoder.
"""
import hashlib
import struct

from utils.cli import BadInput

MAGIC = b"\x89BSW\r\n\x1a\n"
VERSION = 5
# 3: edge blocks code only their real pixels; 4: at most 32 lanes; 5: partial
# edge blocks and blocks Bit-Swap would code above raw use the pixel model.
READABLE_VERSIONS = (2, 3, 4, 5)
_FIXED = struct.Struct("<8sHIQ")           # magic, version, header length, body length
_HEADER = struct.Struct("<BBBBIIH32s32s4s")
_DIGEST = 32
MODES = {"L": 1, "RGB": 3}
STORAGES = ("bitswap", "raw")
DEVICES = ("cpu", "cuda")

# name -> Python type of the header's fields as pack / unpack see them.
HEADER_FIELDS = {
    "mode": str, "storage": str, "device": str, "quantbits": int,
    "height": int, "width": int, "block": int,
    "model_hash": str,          # 64 hex digits
    "pixels_sha256": str,       # 64 hex digits
    "model_name": str,
}


class ContainerError(BadInput, ValueError):
    """The bytes are not a valid container of this format (one-line message;
    bad input, exit status 2)."""


def fixed_bytes(model_name):
    """Bytes of a container that are not body: preamble, header, checksum."""
    return _FIXED.size + _HEADER.size + 1 + len(model_name.encode("utf-8")) + _DIGEST


def pack(header: dict, body: bytes, version=VERSION) -> bytes:
    """Serialize ``header`` (every field of HEADER_FIELDS) and ``body`` as a
    container of format ``version`` (one of READABLE_VERSIONS)."""
    if version not in READABLE_VERSIONS:
        raise ContainerError(f"cannot write container format version {version}")
    _check_header(header)
    try:
        name = header["model_name"].encode("utf-8")
        head = _HEADER.pack(MODES[header["mode"]], STORAGES.index(header["storage"]),
                            DEVICES.index(header["device"]), header["quantbits"],
                            header["height"], header["width"], header["block"],
                            bytes.fromhex(header["model_hash"]), bytes.fromhex(header["pixels_sha256"]),
                            b"\0" * 4)
    except (KeyError, ValueError, struct.error) as exc:
        raise ContainerError(f"invalid header: {exc}") from None
    if len(name) > 255:
        raise ContainerError("invalid header: model name longer than 255 bytes")
    head += bytes([len(name)]) + name
    data = _FIXED.pack(MAGIC, version, len(head), len(body)) + head + bytes(body)
    return data + hashlib.sha256(data).digest()


def unpack(data: bytes):
    """Inverse of ``pack``: returns (header dict, body bytes) or raises
    ContainerError; the header dict also carries ``format_version``."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise ContainerError("empty file, not a Bit-Swap container")
    if data[:min(n, len(MAGIC))] != MAGIC[:min(n, len(MAGIC))]:
        raise ContainerError("not a Bit-Swap container (bad magic bytes)")
    if n < _FIXED.size:
        raise ContainerError(f"truncated file: {n} bytes, shorter than the {_FIXED.size}-byte preamble")
    _, version, hlen, blen = _FIXED.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise ContainerError(f"unsupported container format version {version} "
                             f"(this program reads {', '.join(map(str, READABLE_VERSIONS))})")
    if hlen > _HEADER.size + 256:
        raise ContainerError(f"corrupted file: header length {hlen} is implausible")
    expected = _FIXED.size + hlen + blen + _DIGEST
    if n < expected:
        raise ContainerError(f"truncated file: {n} bytes, the header says {expected}")
    if n > expected:
        raise ContainerError(f"corrupted file: {n - expected} bytes of trailing data after the checksum")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ContainerError("corrupted file: checksum mismatch (the file was altered or damaged)")
    head = data[_FIXED.size:_FIXED.size + hlen]
    if hlen < _HEADER.size + 1 or hlen != _HEADER.size + 1 + head[_HEADER.size]:
        raise ContainerError("invalid header: wrong length")
    mode, storage, device, quantbits, height, width, block, model_hash, pixels, _ = _HEADER.unpack_from(head)
    modes = {v: k for k, v in MODES.items()}
    if mode not in modes or storage >= len(STORAGES) or device >= len(DEVICES):
        raise ContainerError("invalid header: unknown mode, storage or device code")
    try:
        name = head[_HEADER.size + 1:].decode("utf-8")
    except UnicodeDecodeError:
        raise ContainerError("invalid header: model name is not UTF-8") from None
    header = dict(mode=modes[mode], storage=STORAGES[storage], device=DEVICES[device],
                  quantbits=quantbits, height=height, width=width, block=block,
                  model_hash=model_hash.hex(), pixels_sha256=pixels.hex(), model_name=name)
    _check_header(header)
    header["format_version"] = version
    return header, data[_FIXED.size + hlen:-_DIGEST]


def _check_header(header):
    if not isinstance(header, dict):
        raise ContainerError("invalid header: not a dictionary")
    for name, kind in HEADER_FIELDS.items():
        if name not in header:
            raise ContainerError(f"invalid header: field {name!r} is missing")
        value = header[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ContainerError(f"invalid header: field {name!r} has the wrong type")
    if header["height"] < 1 or header["width"] < 1 or header["block"] < 1:
        raise ContainerError("invalid header: empty image or block")
