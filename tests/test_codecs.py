"""utils/codecs.py: every codec is lossless, sizes are verified, and the
baseline properties the benchmark relies on hold."""
import dataclasses
import gzip
import io

import numpy as np
import pytest
from PIL import Image

from utils import codecs

RNG = np.random.default_rng(1234)


def textured(shape):
    """Smooth gradient plus noise: compressible but not trivial."""
    h, w = shape[:2]
    base = (np.add.outer(np.arange(h), np.arange(w)) * 3) % 256
    image = base[:, :, None] + RNG.integers(0, 20, (h, w, shape[2] if len(shape) > 2 else 1))
    return np.clip(image, 0, 255).astype(np.uint8).reshape(shape)


SHAPES = [(28, 28), (28, 28, 1), (32, 32, 3), (17, 45, 3), (1, 1, 3)]


def test_every_known_codec_is_available_or_has_a_reason():
    names = codecs.codec_names()
    assert set(codecs.available_codecs()) | set(codecs.unavailable_codecs()) == set(names)
    assert not set(codecs.available_codecs()) & set(codecs.unavailable_codecs())
    assert all(codecs.unavailable_codecs().values())
    # The paper's five ship with Python and Pillow: they must work here.
    assert set(codecs.PAPER_CODECS) == {"gzip", "bzip2", "lzma", "png", "webp"}
    assert set(codecs.PAPER_CODECS) <= set(codecs.available_codecs())


@pytest.mark.parametrize("name", codecs.codec_names())
@pytest.mark.parametrize("shape", SHAPES)
def test_single_image_round_trip(name, shape):
    if name not in codecs.available_codecs():
        pytest.fail(f"{name} unavailable here: {codecs.unavailable_codecs()[name]}")
    image = textured(shape)
    data = codecs.compress(name, image)
    decoded = codecs.decompress(name, data, image.shape)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded.reshape(image.shape), image)


@pytest.mark.parametrize("name", codecs.codec_names())
def test_batch_round_trip(name):
    batch = np.stack([textured((20, 24, 3)) for _ in range(5)])
    parts = codecs.compress_batch(name, batch)
    assert len(parts) == (5 if codecs.CODECS[name].per_image else 1)
    assert np.array_equal(codecs.decompress_batch(name, parts, batch.shape), batch)


def test_gzip_constant_image_is_near_zero_and_noise_near_eight():
    constant = np.full((128, 128, 3), 77, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    bpd_constant = codecs.bits_per_dim(codecs.measure_image(constant, ["gzip"])["gzip"], constant)
    bpd_noise = codecs.bits_per_dim(codecs.measure_image(noise, ["gzip"])["gzip"], noise)
    assert bpd_constant < 0.02
    assert 7.99 < bpd_noise < 8.05


def test_stream_codecs_code_the_batch_jointly_image_codecs_sum():
    image = textured((28, 28, 1))
    batch = np.stack([image] * 50)
    one, many = codecs.measure_image(image), codecs.measure(batch)
    # Fifty copies in one stream cost far less than fifty separate streams.
    for name in ("gzip", "bzip2", "lzma"):
        assert many[name] < 10 * one[name]
    for name in codecs.available_codecs():
        if codecs.CODECS[name].per_image:
            assert many[name] == 50 * one[name]


def test_gzip_size_is_the_plain_stream_of_the_raw_bytes():
    batch = np.stack([textured((32, 32, 3)) for _ in range(4)])
    expected = len(gzip.compress(batch.tobytes(), compresslevel=9, mtime=0))
    assert codecs.measure(batch, ["gzip"])["gzip"] == 8 * expected


def test_png_counts_only_the_idat_payload():
    image = textured((32, 32, 3))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    payload = codecs.compress("png", image)
    # signature 8 + IHDR 25 + IDAT chunk framing 12 + IEND 12 bytes
    assert len(buf.getvalue()) - len(payload) == 57
    assert payload[:1] == b"\x78"   # a bare zlib stream


def test_output_is_deterministic():
    image = textured((32, 32, 3))
    for name in codecs.available_codecs():
        assert codecs.compress(name, image) == codecs.compress(name, image), name


def test_a_codec_that_does_not_round_trip_is_refused(monkeypatch):
    lying = dataclasses.replace(codecs.CODECS["gzip"],
                                decode=lambda data, shape: np.zeros(shape, np.uint8))
    codecs._probe.cache_clear()
    monkeypatch.setitem(codecs.CODECS, "gzip", lying)
    # The probe already sees it is not lossless ...
    assert "gzip" in codecs.unavailable_codecs()
    assert codecs.measure_image(textured((8, 8, 3)), ["gzip"])["gzip"] is None
    codecs._probe.cache_clear()


def test_measure_raises_when_a_verified_codec_breaks_on_real_data(monkeypatch):
    good = codecs.CODECS["bzip2"]

    def decode(data, shape):   # correct on the probe's 8x8 images only
        out = good.decode(data, shape)
        return out if out.size <= 8 * 8 * 3 else out * 0
    codecs._probe.cache_clear()
    monkeypatch.setitem(codecs.CODECS, "bzip2", dataclasses.replace(good, decode=decode))
    with pytest.raises(codecs.CodecError, match="round-trip"):
        codecs.measure(np.stack([textured((16, 16, 3))] * 2), ["bzip2"])
    codecs._probe.cache_clear()


def test_missing_library_is_reported_unavailable_not_dropped(monkeypatch):
    def encode(image):
        raise ImportError("No module named 'imagecodecs'")
    codecs._probe.cache_clear()
    monkeypatch.setitem(codecs.CODECS, "jpegxl",
                        dataclasses.replace(codecs.CODECS["jpegxl"], encode=encode))
    assert "imagecodecs" in codecs.unavailable_codecs()["jpegxl"]
    result = codecs.measure_image(textured((8, 8, 3)))
    assert result["jpegxl"] is None and result["gzip"] > 0
    with pytest.raises(codecs.CodecError, match="unavailable"):
        codecs.compress("jpegxl", textured((8, 8, 3)))
    codecs._probe.cache_clear()


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((0, 8, 3), np.uint8), np.zeros(8, np.uint8)])
def test_bad_images_are_rejected(bad):
    with pytest.raises(ValueError):
        codecs.compress("png", bad)


def test_unknown_codec_is_rejected():
    with pytest.raises(ValueError, match="unknown codec"):
        codecs.compress("zip", textured((8, 8, 3)))
