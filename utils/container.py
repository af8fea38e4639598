"""The demo codec's file format: a versioned container.

This module owns the bytes of a ``.bsw`` file and nothing else (no model, no
image handling).  Layout, all integers little-endian:

    offset  size  field
    0       8     magic  b"\\x89BSW\\r\\n\\x1a\\n"  (PNG-style: catches text-mode
                  mangling and tells a container from anything else)
    8       2     format version (uint16), currently 1
    10      4     header length H (uint32)
    14      8     body length B (uint64)
    22      H     header: UTF-8 JSON object (see ``HEADER_FIELDS``)
    22+H    B     body: the ANS message (utils/ans serialization)
    22+H+B  32    SHA-256 of every byte before it (magic .. body)

Invariants:

* ``unpack`` accepts exactly the bytes ``pack`` wrote: it checks the magic,
  the version, the declared lengths against the file size (a short file is
  "truncated", a long one has "trailing data"), then the SHA-256 over header
  and body (any flipped bit is "corrupted"), then that the header holds every
  required field with the right type.  Every failure is a ``ContainerError``
  with a one-line message; nothing is half-parsed.
* The checksum is verified before the header is interpreted, so a flipped bit
  never reaches the JSON parser or the decoder.
"""
import hashlib
import json
import struct

from utils.cli import BadInput

MAGIC = b"\x89BSW\r\n\x1a\n"
VERSION = 1
_FIXED = struct.Struct("<8sHIQ")           # magic, version, header length, body length
_DIGEST = 32
MAX_HEADER = 1 << 20                      # a header is a few hundred bytes; refuse nonsense

# name -> required Python type(s) of the header's JSON fields.
HEADER_FIELDS = {
    "model_name": str,          # descriptor name of the model that wrote the file
    "model_hash": str,          # model identity: SHA-256 of architecture, weights, bins
    "height": int, "width": int, "channels": int,
    "mode": str,                # "RGB" or "L" (what the decoder writes back)
    "block": int,               # block size the image was padded to and split by
    "padding": str,             # how the padded border was filled ("edge")
    "padded_height": int, "padded_width": int,
    "precision": int,           # ANS precision in bits
    "lanes": int,               # interleaved rANS lanes
    "underflow_seed": int,      # seed of the initial bits the first block borrowed
    "quantbits": int,           # latent bins per dimension = 2^quantbits
    "device": str,              # device type the network ran on ("cpu", "cuda")
    "pixels_sha256": str,       # SHA-256 hex of the original pixels (see utils/imagecodec.py)
}


class ContainerError(BadInput, ValueError):
    """The bytes are not a valid container of this format (one-line message;
    bad input, exit status 2)."""


def pack(header: dict, body: bytes) -> bytes:
    """Serialize ``header`` (must hold every field of HEADER_FIELDS) and ``body``."""
    _check_header(header)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(head) > MAX_HEADER:
        raise ContainerError("header too large")
    data = _FIXED.pack(MAGIC, VERSION, len(head), len(body)) + head + bytes(body)
    return data + hashlib.sha256(data).digest()


def unpack(data: bytes):
    """Inverse of ``pack``: returns (header dict, body bytes) or raises ContainerError."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise ContainerError("empty file, not a Bit-Swap container")
    if data[:min(n, len(MAGIC))] != MAGIC[:min(n, len(MAGIC))]:
        raise ContainerError("not a Bit-Swap container (bad magic bytes)")
    if n < _FIXED.size:
        raise ContainerError(f"truncated file: {n} bytes, shorter than the {_FIXED.size}-byte preamble")
    _, version, hlen, blen = _FIXED.unpack_from(data)
    if version != VERSION:
        raise ContainerError(f"unsupported container format version {version} (this program reads {VERSION})")
    if hlen > MAX_HEADER:
        raise ContainerError(f"corrupted file: header length {hlen} is implausible")
    expected = _FIXED.size + hlen + blen + _DIGEST
    if n < expected:
        raise ContainerError(f"truncated file: {n} bytes, the header says {expected}")
    if n > expected:
        raise ContainerError(f"corrupted file: {n - expected} bytes of trailing data after the checksum")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ContainerError("corrupted file: checksum mismatch (the file was altered or damaged)")
    try:
        header = json.loads(data[_FIXED.size:_FIXED.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContainerError(f"corrupted file: unreadable header ({exc})") from None
    _check_header(header)
    return header, data[_FIXED.size + hlen:-_DIGEST]


def _check_header(header):
    if not isinstance(header, dict):
        raise ContainerError("invalid header: not a JSON object")
    for name, kind in HEADER_FIELDS.items():
        if name not in header:
            raise ContainerError(f"invalid header: field {name!r} is missing")
        value = header[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ContainerError(f"invalid header: field {name!r} has the wrong type")
