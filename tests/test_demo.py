"""The demo codec (image_compress.py / image_decompress.py, utils/imagecodec.py,
utils/images.py, utils/container.py) on a tiny random-init model package
written to a temp directory.

Round trips on awkward sizes, grayscale, noise and flat images, with and
without the fallback to raw bytes; the size bounds (raw + fixed bytes, 1x1);
portable tables (perturbed networks decode, the fragile-output list is what
makes them); the container's strict parsing (truncation at every offset,
flipped bits, another model, not a container); safe files (input as output,
also through links; usual permissions; --verify's report; device class);
bad inputs (one-line error, exit status 2, no output file); and encode /
decode in separate processes with different torch thread counts.
"""
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import image_compress
import image_decompress
from model import package
from utils import container, imagecodec, images, pixelmodel
from utils.cli import BadInput
from utils.container import ContainerError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(xs=(3, 32, 32), nz=2, zchannels=2, width=8, nprocessing=1, resdepth=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return package.random_package(str(tmp_path_factory.mktemp("model")), quantbits=8,
                                  seed=0, name="tiny", **TINY)


@pytest.fixture(scope="module")
def model(model_dir):
    return imagecodec.load_codec_model(model_dir, "cpu")


@pytest.fixture(scope="module", params=["raw", "bitswap"])
def small_file(model, request):
    """A valid container of a 3x2 RGB image (bytes), stored raw or as a
    Bit-Swap message."""
    image = np.arange(18, dtype=np.uint8).reshape(3, 2, 3) * 13
    result = imagecodec.compress(image, "RGB", model, fallback=request.param == "raw")
    assert result.storage == request.param
    return result.data


def _files(path):
    return sorted(os.listdir(path))


def _run_cli(module, args, capsys):
    """Run a CLI's main in-process: (exit status, stdout, stderr)."""
    status = module.main(args)
    out, err = capsys.readouterr()
    return status, out, err


def _assert_clean_failure(status, err, directory, before, *words, expect=2):
    assert status == expect
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    assert _files(directory) == before          # nothing new, no temp file left over


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("shape, mode", [((1, 1, 3), "RGB"), ((31, 33, 3), "RGB"),
                                         ((64, 17, 3), "RGB"), ((33, 31, 1), "L")])
@pytest.mark.parametrize("fallback", [False, True])
def test_round_trip_awkward_sizes(model, shape, mode, fallback):
    rng = np.random.default_rng(shape[0])
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    result = imagecodec.compress(image, mode, model, fallback=fallback)
    header, _ = container.unpack(result.data)
    assert (header["height"], header["width"], header["mode"]) == (shape[0], shape[1], mode)
    assert header["storage"] == ("raw" if fallback else "bitswap")   # noise: the random model loses
    decoded, decoded_mode = imagecodec.decompress(result.data, model)
    assert decoded_mode == mode
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)


@pytest.mark.parametrize("kind", ["flat0", "flat255", "noise"])
def test_round_trip_flat_and_noise(model, kind):
    if kind == "noise":
        image = np.random.default_rng(7).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    else:
        image = np.full((40, 70, 3), 0 if kind == "flat0" else 255, dtype=np.uint8)
    result = imagecodec.compress(image, "RGB", model, fallback=False)
    assert result.raw_blocks == 0 and result.storage == "bitswap"
    assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)
    # The strips of partial blocks are pushed first and their bits are what the
    # first block's latents pop: noise strips (~8 bits/dim) leave nothing to
    # borrow, flat ones (almost free) make the first block borrow initial bits,
    # which the file charges (it is the whole message).
    assert result.strip_storage == "pixel" and result.strip_pixels == 40 * 70 - 32 * 64
    assert (result.initial_bits == 0) if kind == "noise" else (result.initial_bits > 0)
    assert 8 * len(result.data) > result.message_bits


def test_noise_costs_at_most_raw_plus_the_fixed_bytes(model):
    """The worst case: a file is at most the raw pixels + container.fixed_bytes."""
    for shape, mode in [((96, 96, 3), "RGB"), ((50, 70, 1), "L"), ((1, 1, 3), "RGB"), ((1, 1, 1), "L")]:
        image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        result = imagecodec.compress(image, mode, model)
        assert result.storage == "raw" and result.raw_blocks == result.blocks
        assert len(result.data) == image.size + container.fixed_bytes(model.name)
        assert container.fixed_bytes(model.name) <= 1024 - 3
        assert np.array_equal(imagecodec.decompress(result.data, None)[0], image)   # needs no model


def test_lanes_scale_with_the_blocks(model):
    assert [imagecodec.lanes_for(n) for n in (1, 2, 4, 5, 1000)] == [8, 16, 32, 32, 32]
    assert [imagecodec.lanes_for(n, 3) for n in (1, 2, 16, 17, 1000)] == [8, 16, 128, 128, 128]
    image = np.full((40, 40, 3), 9, np.uint8)                      # 2x2 blocks
    result = imagecodec.compress(image, "RGB", model, fallback=False)
    assert result.lanes == 32
    body = container.unpack(result.data)[1]
    assert len(body) == 24 + 8 * 32 + 4 * (len(body) // 4 - 6 - 2 * 32)   # preamble, heads, stack


def test_grayscale_codes_one_channel(model):
    """A grey block pushes one channel: cheaper than the same block as RGB,
    and it decodes to one channel."""
    grey = np.random.default_rng(2).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    as_grey = imagecodec.compress(grey, "L", model, fallback=False)
    as_rgb = imagecodec.compress(np.repeat(grey, 3, axis=2), "RGB", model, fallback=False)
    assert as_grey.message_bits < as_rgb.message_bits - 2 * 1024 * 4
    decoded, mode = imagecodec.decompress(as_grey.data, model)
    assert mode == "L" and decoded.shape == (32, 32, 1) and np.array_equal(decoded, grey)


def smooth(h, w, seed=0):
    """A smooth colour image with a little shared noise (photo-like)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 1.5, (h, w))
    return np.clip(np.stack([base, base + 10, base + 20], axis=2), 0, 255).astype(np.uint8)


def test_fragile_blocks_fall_back_to_the_pixel_model_or_raw(model, monkeypatch):
    """A block with more outputs near a grid boundary than the message can
    list is coded without the networks (here: a margin of half the grid
    makes most fragile): with the pixel model where that is cheaper than the
    raw bytes (a flat image), raw where it is not (noise)."""
    monkeypatch.setattr(imagecodec, "MARGIN_BITS", imagecodec.GRID_BITS + 1)
    flat = np.full((64, 64, 3), 100, np.uint8)
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for image, pixel in [(flat, True), (noise, False)]:
        result = imagecodec.compress(image, "RGB", model, fallback=False)
        assert result.blocks == 4 and result.storage == "bitswap" and result.strip_pixels == 0
        assert (result.pixel_blocks, result.raw_blocks) == ((4, 0) if pixel else (0, 4))
        assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)


def test_format_5_codes_strips_and_costly_blocks_with_the_pixel_model(model):
    """Format 5 against format 4 on the same smooth image: the strips of
    partial blocks (here 13 rows and 1 column) go to the pixel model instead
    of Bit-Swap latents of whole blocks, and the blocks the untrained model
    would code above raw go to the pixel model instead of raw bytes; the file
    is far smaller, and both decode."""
    image = smooth(77, 65)
    new = imagecodec.compress(image, "RGB", model)
    old = imagecodec.compress(image, "RGB", model, version=4)
    assert container.unpack(new.data)[0]["format_version"] == container.VERSION == 5
    assert (new.blocks, new.pixel_blocks, new.raw_blocks) == (4, 4, 0)
    assert new.strip_pixels == 77 * 65 - 64 * 64 and new.strip_storage == "pixel"
    assert (old.blocks, old.raw_blocks) == (9, 9)
    assert new.storage == "bitswap" and len(new.data) < 0.5 * len(old.data)
    # The bits by part add up to the message (less the empty message's heads).
    from utils import ans
    empty = ans.InterleavedMessage.empty(new.lanes, imagecodec.PRECISION).bits()
    assert sum(new.part_bits.values()) == new.message_bits - empty
    assert new.part_bits["bitswap"] == new.part_bits["raw"] == 0 < new.part_bits["strips"]
    for result in (new, old):
        assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)
    # Noise strips: the pixel model would cost more than their bytes: raw.
    noisy = image.copy()
    noisy[64:] = np.random.default_rng(6).integers(0, 256, noisy[64:].shape, dtype=np.uint8)
    noisy[:, 64:] = np.random.default_rng(7).integers(0, 256, noisy[:, 64:].shape, dtype=np.uint8)
    result = imagecodec.compress(noisy, "RGB", model)
    assert result.strip_storage == "raw" and result.pixel_blocks == 4
    assert np.array_equal(imagecodec.decompress(result.data, model)[0], noisy)


def test_bitswap_keeps_every_block_it_codes_below_raw_without_borrowing(model):
    """The pixel model replaces raw bytes and borrowed initial bits, not
    Bit-Swap.  A black image: the untrained model codes every block below its
    raw bytes, but the first ones would borrow initial bits (format 4 kept
    them, borrowing), so they go to the pixel model until the message holds
    enough bits; nothing is borrowed.  The same black blocks with noise strips
    (stored raw) to pop from: every block stays Bit-Swap, although the pixel
    model would code them for almost nothing."""
    black = np.zeros((96, 96, 3), np.uint8)
    old = imagecodec.compress(black, "RGB", model, version=4)
    assert old.raw_blocks == 0 and old.initial_bits > 0
    result = imagecodec.compress(black, "RGB", model)
    assert result.blocks == 9 and 0 < result.pixel_blocks < 9 and result.raw_blocks == 0
    assert result.initial_bits == 0 and len(result.data) < len(old.data)
    assert np.array_equal(imagecodec.decompress(result.data, model)[0], black)

    framed = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    framed[:96, :96] = 0
    result = imagecodec.compress(framed, "RGB", model)
    assert (result.blocks, result.pixel_blocks, result.raw_blocks) == (9, 0, 0)
    assert result.strip_storage == "raw" and result.initial_bits == 0
    everything = np.ones((96, 96), bool)
    bitswap_bits = result.message_bits - 8 * 3 * (100 * 100 - 96 * 96)
    assert pixelmodel.region_bits(black, ~everything, everything) < 0.2 * bitswap_bits
    assert np.array_equal(imagecodec.decompress(result.data, model)[0], framed)


def test_edge_blocks_code_only_their_real_pixels(model):
    """Format 3 codes an edge block's real pixels only (format 2 coded its
    replicated ones too): smaller on the same message, both decode."""
    image = np.random.default_rng(3).integers(100, 140, (40, 45, 3), dtype=np.uint8)   # 2x2 blocks, 3 partial
    new = imagecodec.compress(image, "RGB", model, fallback=False, version=4)
    old = imagecodec.compress(image, "RGB", model, fallback=False, version=2)
    assert container.unpack(new.data)[0]["format_version"] == 4
    assert container.unpack(old.data)[0]["format_version"] == 2
    assert new.raw_blocks == old.raw_blocks == 0
    assert new.message_bits < old.message_bits
    for result in (new, old):
        assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)


def test_format_4_caps_the_lanes_and_format_3_files_still_decode(model):
    """20 blocks: 32 lanes in format 4, 128 in format 3 (96 fewer final
    heads); both decode, each with its own lane rule, and a message with the
    other rule's lanes is refused."""
    image = np.random.default_rng(4).integers(90, 150, (128, 160, 3), dtype=np.uint8)
    new = imagecodec.compress(image, "RGB", model, fallback=False)
    old = imagecodec.compress(image, "RGB", model, fallback=False, version=3)
    assert (new.lanes, old.lanes) == (32, 128)
    assert container.unpack(old.data)[0]["format_version"] == 3
    assert new.message_bytes < old.message_bytes and new.head_bits < old.head_bits
    for result in (new, old):
        assert np.array_equal(imagecodec.decompress(result.data, model)[0], image)
    header, body = container.unpack(old.data)
    with pytest.raises(BadInput, match="message parameters"):
        imagecodec.decompress(container.pack(header, body, version=4), model)


def test_padding_is_edge_replication():
    image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1)
    padded = imagecodec.pad_to_blocks(image, 4)
    assert padded.shape == (4, 4, 1)
    assert (padded[3, :3, 0] == image[1, :, 0]).all() and (padded[:2, 3, 0] == image[:, 2, 0]).all()


def test_float32_package_codes_losslessly(tmp_path):
    """A package may keep float32 weights; 6-bit bins; still lossless."""
    path = package.random_package(str(tmp_path), quantbits=6, seed=2, name="full", half=False, **TINY)
    assert sorted(os.listdir(tmp_path)) == ["bins.pt", "model.json", "weights.safetensors"]
    full = imagecodec.load_codec_model(path)
    assert full.bins.endpoints.shape == (2, 2 * 16 * 16, 63)
    assert full.info["weights"]["dtype"] == "float32"
    image = np.random.default_rng(4).integers(0, 256, (5, 40, 3), dtype=np.uint8)
    result = imagecodec.compress(image, "RGB", full, fallback=False)
    assert np.array_equal(imagecodec.decompress(result.data, full)[0], image)


def test_codec_restores_torch_thread_count(model):
    import torch
    before = torch.get_num_threads()
    imagecodec.compress(np.zeros((2, 2, 3), np.uint8), "RGB", model)
    assert torch.get_num_threads() == before


def test_cli_separate_processes_different_thread_counts(model_dir, tmp_path):
    """Encode with 2 torch threads in one process, decode with 1 in another
    whose numpy runs without its CPU-specific SIMD kernels (another CPU
    family's float64 exp: it differs from AVX-512's in the last bit)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__
    image = np.random.default_rng(3).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    image[:, :20] = 90                                 # some structure, some noise
    src, bsw, out = tmp_path / "in.png", tmp_path / "in.bsw", tmp_path / "out.png"
    Image.fromarray(image).save(src)

    def run(code, threads, **extra):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **extra)
        code = f"import sys, torch; torch.set_num_threads({threads}); sys.path.insert(0, {REPO!r}); " + code
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    def cli(script, args, threads, **extra):
        return run(f"sys.argv = {[script] + args!r}; import runpy; "
                   f"runpy.run_path({os.path.join(REPO, script)!r}, run_name='__main__')", threads, **extra)

    enc = cli("image_compress.py", [str(src), "-o", str(bsw), "--model", model_dir, "--device", "cpu"], 2)
    assert enc.returncode == 0, enc.stderr
    assert "Bit-Swap" in enc.stdout and "PNG" in enc.stdout and "WebP" in enc.stdout
    # the random model loses to raw bytes; code the message anyway (the path under test)
    made = run("from utils import imagecodec, images; "
               f"m = imagecodec.load_codec_model({model_dir!r}); i, mode = images.load_image({str(src)!r}); "
               f"open({str(bsw)!r}, 'wb').write(imagecodec.compress(i, mode, m, fallback=False).data)", 2)
    assert made.returncode == 0, made.stderr
    assert container.unpack(bsw.read_bytes())[0]["storage"] == "bitswap"
    dec = cli("image_decompress.py", [str(bsw), "-o", str(out), "--model", model_dir], 1,
              NPY_DISABLE_CPU_FEATURES=" ".join(__cpu_dispatch__))
    assert dec.returncode == 0, dec.stderr
    restored = np.asarray(Image.open(out))
    assert restored.shape == image.shape and np.array_equal(restored, image)


def test_cli_grayscale_comes_back_grayscale(model_dir, tmp_path, capsys):
    image = np.random.default_rng(5).integers(0, 256, (20, 50), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "g.png")
    status, out, _ = _run_cli(image_compress, [str(tmp_path / "g.png"), "--model", model_dir, "--quiet"], capsys)
    assert status == 0 and out == ""
    status, _, _ = _run_cli(image_decompress, [str(tmp_path / "g.bsw"), "--model", model_dir, "--quiet"], capsys)
    assert status == 0
    with Image.open(tmp_path / "g.decoded.png") as restored:
        assert restored.mode == "L"
        assert np.array_equal(np.asarray(restored), image)


# ------------------------------------------------------------------- container

def test_container_rejects_truncation_at_every_offset(model, small_file):
    for n in range(len(small_file)):
        with pytest.raises(BadInput) as info:
            imagecodec.decompress(small_file[:n], model)
        message = str(info.value)
        assert "\n" not in message
        assert ("truncated" in message or "empty" in message), (n, message)


def test_container_rejects_trailing_data(small_file):
    with pytest.raises(ContainerError, match="trailing"):
        container.unpack(small_file + b"\0")


@pytest.mark.parametrize("where", ["header", "body", "checksum", "lengths"])
def test_cli_rejects_flipped_bits(model_dir, small_file, tmp_path, capsys, where):
    header_start = 22   # after magic, version and the two lengths
    offset = {"header": header_start + 5, "body": len(small_file) - 32 - 40,
              "checksum": len(small_file) - 1, "lengths": 14}[where]
    for bit in (0, 7):
        data = bytearray(small_file)
        data[offset] ^= 1 << bit
        (tmp_path / "bad.bsw").write_bytes(bytes(data))
        before = _files(tmp_path)
        status, _, err = _run_cli(image_decompress, [str(tmp_path / "bad.bsw"), "-o",
                                                     str(tmp_path / "out.png"), "--model", model_dir], capsys)
        _assert_clean_failure(status, err, tmp_path, before)
        assert "corrupted" in err or "truncated" in err


def test_cli_rejects_other_model(model, tmp_path, capsys):
    """A Bit-Swap message needs its model; raw storage needs none."""
    other = package.random_package(str(tmp_path / "other"), quantbits=8, seed=1, name="other", **TINY)
    image = np.zeros((3, 2, 3), np.uint8)
    (tmp_path / "raw.bsw").write_bytes(imagecodec.compress(image, "RGB", model).data)
    status, _, _ = _run_cli(image_decompress, [str(tmp_path / "raw.bsw"), "--model", other], capsys)
    assert status == 0 and (tmp_path / "raw.decoded.png").exists()
    (tmp_path / "f.bsw").write_bytes(imagecodec.compress(image, "RGB", model, fallback=False).data)
    before = _files(tmp_path)
    status, _, err = _run_cli(image_decompress, [str(tmp_path / "f.bsw"), "--model", other], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "'tiny'", "--model")


def test_cli_rejects_non_container(model_dir, tmp_path, capsys):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    for name, data in [("png.bsw", (tmp_path / "x.png").read_bytes()), ("text.bsw", b"hello world\n"),
                       ("empty.bsw", b"")]:
        (tmp_path / name).write_bytes(data)
        before = _files(tmp_path)
        status, _, err = _run_cli(image_decompress, [str(tmp_path / name), "--model", model_dir], capsys)
        _assert_clean_failure(status, err, tmp_path, before, "container")


def test_container_header_validation():
    header = dict(mode="RGB", storage="raw", device="cuda", quantbits=10, height=7, width=5, block=32,
                  model_hash="ab" * 32, pixels_sha256="cd" * 32, model_name="naïve")
    data = container.pack(header, b"abcd")
    assert container.unpack(data) == (dict(header, format_version=container.VERSION), b"abcd")
    assert len(data) == container.fixed_bytes("naïve") + 4
    assert container.unpack(container.pack(header, b"", version=2))[0]["format_version"] == 2
    for version in (1, 6):
        with pytest.raises(ContainerError, match="version"):
            container.pack(header, b"", version=version)
        forged = data[:8] + struct.pack("<H", version) + data[10:-32]
        with pytest.raises(ContainerError, match=f"unsupported container format version {version}"):
            container.unpack(forged + hashlib.sha256(forged).digest())
    for field, value in [("mode", "P"), ("storage", "zip"), ("device", "tpu"), ("height", 0),
                         ("model_hash", "xyz"), ("height", 2 ** 32)]:
        with pytest.raises(ContainerError, match="invalid header"):
            container.pack(dict(header, **{field: value}), b"")
    del header["device"]
    with pytest.raises(ContainerError, match="device"):
        container.pack(header, b"")


# ----------------------------------------------------------------- bad inputs

def _png(width, height, bitdepth, colortype, samples_per_pixel, palette=None):
    """A valid PNG built by hand (Pillow cannot write 16-bit RGB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    row = b"\0" + bytes(width * samples_per_pixel * bitdepth // 8)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bitdepth,
                                                            colortype, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "rgb16.png": (lambda: _png(4, 4, 16, 2, 3), "16-bit"),
    "gray16.png": (lambda: _png(4, 4, 16, 0, 1), "16-bit"),
    "palette.png": (lambda: _png(4, 4, 8, 3, 1, palette=bytes(range(6))), "palette"),
    "rgba.png": (lambda: _png_bytes(np.zeros((4, 4, 4), np.uint8)), "RGBA"),
    "empty.png": (lambda: _png(0, 0, 8, 2, 3), "image"),
    "trunc.png": (lambda: _png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3),
                                                                       dtype=np.uint8))[:400], "truncated"),
    "trunc.jpg": (lambda: _jpeg_bytes()[:600], "truncated"),
    "zero.png": (lambda: b"", "empty"),
    "notes.txt": (lambda: b"not an image at all\n", "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_cli_rejects_bad_images(model_dir, tmp_path, capsys, name):
    make, word = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(make())
    before = _files(tmp_path)
    status, _, err = _run_cli(image_compress, [str(tmp_path / name), "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, word)


def test_cli_rejects_missing_path_directory_and_bad_output(model_dir, tmp_path, capsys):
    before = _files(tmp_path)
    status, _, err = _run_cli(image_compress, [str(tmp_path / "nope.png"), "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "no such file")
    status, _, err = _run_cli(image_compress, [str(tmp_path), "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "directory")
    status, _, err = _run_cli(image_decompress, [str(tmp_path / "nope.bsw"), "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "no such file")

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    before = _files(tmp_path)
    status, _, err = _run_cli(image_compress, [str(tmp_path / "ok.png"), "-o", str(tmp_path / "no" / "x.bsw"),
                                               "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "cannot write")
    (tmp_path / "taken.bsw").write_bytes(b"keep")
    (tmp_path / "link.png").symlink_to(tmp_path / "ok.png")
    before = _files(tmp_path)
    status, _, err = _run_cli(image_compress, [str(tmp_path / "ok.png"), "-o", str(tmp_path / "taken.bsw"),
                                               "--model", model_dir], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "--force")
    for output in ("ok.png", "link.png"):        # the input itself, also through a link, even with --force
        status, _, err = _run_cli(image_compress, [str(tmp_path / "ok.png"), "-o", str(tmp_path / output),
                                                   "--model", model_dir, "--force"], capsys)
        _assert_clean_failure(status, err, tmp_path, before, "is the input file")
    assert (tmp_path / "taken.bsw").read_bytes() == b"keep"


def test_cli_real_exit_status_on_bad_input(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "image_compress.py"), str(tmp_path / "nope.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
    assert _files(tmp_path) == []


def test_make_package_packages_a_training_run(tmp_path, capsys):
    """A run folder's model_best.pt + the bins beside it -> a package the
    codec loads; replacing it needs --force."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import make_package
    import torch
    from model.hvae import HVAE
    from utils.bins import LatentBins, ranges_path
    net = HVAE(**TINY, conditional_xscale=True).eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(net.state_dict(), run / "model_best.pt")
    zdim = 2 * 16 * 16
    ranges = np.stack([np.full((1, zdim), -2.0), np.full((1, zdim), 3.0)], axis=-1)
    expected = LatentBins.from_ranges(ranges, 6)
    expected.save_ranges(ranges_path(str(run), "imagenetcrop", 2, 6))
    out = tmp_path / "demo"
    argv = [str(run / "model_best.pt"), "--dataset", "imagenetcrop", "--quantbits", "6",
            "--name", "packaged", "--out", str(out), "--training-hardware", "a test machine"]
    assert make_package.main(argv) == 0
    assert sorted(os.listdir(out)) == ["bins.pt", "model.json", "weights.safetensors"]
    model = imagecodec.load_codec_model(str(out))
    assert model.name == "packaged" and model.weights_kind == "ema" and model.dataset == "imagenetcrop"
    assert model.info["training"]["hardware"] == "a test machine"
    assert np.array_equal(model.bins.endpoints, expected.endpoints)
    image = np.random.default_rng(9).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    assert np.array_equal(imagecodec.decompress(imagecodec.compress(image, "RGB", model).data, model)[0], image)
    capsys.readouterr()
    assert make_package.main(argv) == 2
    assert "--force" in capsys.readouterr().err


def test_make_package_accumulates_the_training_of_a_continued_package(tmp_path):
    """--continues PACKAGE: the new model.json lists the earlier sessions and
    this run's, with totals; repackaging a package (new bins) keeps its
    record; bins of other weights are refused."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import make_package
    import torch
    from model import package
    from model.hvae import HVAE
    from utils.bins import LatentBins, ranges_path
    zdim = 2 * 16 * 16

    def fresh_bins():
        return LatentBins.from_ranges(np.stack([np.full((1, zdim), -2.0), np.full((1, zdim), 3.0)], -1), 6)

    bins = fresh_bins()
    net = HVAE(**TINY, conditional_xscale=True).eval()
    earlier = package.write_package(str(tmp_path / "earlier"), net.state_dict(), net.architecture(),
                                    bins, "earlier", "imagenetcrop", "ema",
                                    training=dict(steps=100, images_seen=6400, wall_s=60.0,
                                                  hardware="machine A"))
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(1)
    later = HVAE(**TINY, conditional_xscale=True).eval()
    state = later.state_dict()
    torch.save(dict(format=package.CHECKPOINT_FORMAT, config=dict(dataset="imagenetcrop", batch=32),
                    architecture=later.architecture(), model=state, ema=state, step=10, epoch=0,
                    best_elbo=5.0, world_size=1, budget=dict(wall_s=30.0, cpu_s=29.0, images=320)),
               run / "checkpoint.pt")
    fresh_bins().save_ranges(ranges_path(str(run), "imagenetcrop", 2, 6))
    out = tmp_path / "continued"
    argv = [str(run), "--dataset", "imagenetcrop", "--quantbits", "6", "--name", "continued",
            "--out", str(out), "--training-hardware", "machine B", "--continues", earlier]
    assert make_package.main(argv) == 0
    training = package.load(str(out)).info["training"]
    assert [s["hardware"] for s in training["sessions"]] == ["machine A", "machine B"]
    assert training["steps"] == 110 and training["images_seen"] == 6720
    assert training["wall_s"] == 90.0 and training["hardware"] == "machine A; machine B"
    # new bins for a package: same weights, same training record
    again = tmp_path / "again"
    assert make_package.main([str(out), "--dataset", "imagenetcrop", "--quantbits", "6",
                              "--name", "continued", "--out", str(again),
                              "--bins", str(run)]) == 0
    assert package.load(str(again)).info["training"] == training
    # the same run resumed and packaged again on top of that package: its
    # record (counters and budget accumulate over resumes) replaces its earlier one
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint.update(step=25, budget=dict(wall_s=80.0, cpu_s=75.0, images=800), best_elbo=float("inf"))
    torch.save(checkpoint, run / "checkpoint.pt")
    resumed = tmp_path / "resumed"
    assert make_package.main([str(run), "--dataset", "imagenetcrop", "--quantbits", "6", "--name", "continued",
                              "--out", str(resumed), "--training-hardware", "machine B",
                              "--continues", str(out)]) == 0
    training = package.load(str(resumed)).info["training"]
    assert [s["hardware"] for s in training["sessions"]] == ["machine A", "machine B"]
    assert training["steps"] == 125 and training["wall_s"] == 140.0
    # a run that never evaluated has no best -ELBO; model.json stays strict JSON
    def refuse(constant):
        raise ValueError(f"model.json holds {constant}")
    strict = json.loads((resumed / "model.json").read_text(), parse_constant=refuse)
    assert strict["training"]["sessions"][-1]["best_test_elbo"] is None
    # bins derived from the earlier weights do not fit the continued ones
    other = tmp_path / "other_bins"
    fresh_bins().save_ranges(ranges_path(str(other), "imagenetcrop", 2, 6),
                     weights_fingerprint=package.read_weights(earlier)["fingerprint"])
    assert make_package.main([str(out), "--dataset", "imagenetcrop", "--quantbits", "6",
                              "--name", "x", "--out", str(tmp_path / "x"), "--bins", str(other)]) == 2


def test_shipped_model_loads_and_round_trips_a_crop_of_the_sample():
    """models/demo (what README command 1 uses) is complete and consistent."""
    shipped = imagecodec.load_codec_model(None, "cpu")
    assert shipped.name == "photos-nz2-w64" and shipped.kind == "package"
    image, mode = images.load_image(os.path.join(REPO, "samples", "chelsea.png"))
    crop = np.ascontiguousarray(image[100:164, 200:270])        # 2x2 complete blocks and 6 columns
    result = imagecodec.compress(crop, mode, shipped)
    assert result.blocks == 4 and result.strip_pixels == 64 * 6 and result.strip_storage == "pixel"
    decoded, back_mode = imagecodec.decompress(result.data, shipped)
    assert back_mode == "RGB" and np.array_equal(decoded, crop)
    # a trained model codes a photo crop well below 8 bits/dim net of the fixed costs
    assert (result.message_bits - result.initial_bits - result.head_bits) / crop.size < 7.0


# ------------------------------------------------------------- portability

def _perturbed(net, how, rng=None, size=0.0):
    """A copy of ``net`` whose float64 outputs differ the way another machine's
    may: another memory layout, another batch layout, or added noise."""
    import copy
    import torch
    net = copy.deepcopy(net)
    if how == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
        return net
    infer, generate = net.infer, net.generate

    def wrap(fn):
        def call(i, given):
            if how == "batch":      # inside a batch of 3, with other data around it
                given = torch.cat([given, given.flip(-1), given.flip(-2)])
                return tuple(t[:1] for t in fn(i, given))
            mu, scale = fn(i, given)
            noise = lambda t: torch.as_tensor(rng.uniform(-size, size, tuple(t.shape)), dtype=t.dtype)
            return mu + noise(mu), scale + noise(scale)
        return call
    net.infer, net.generate = wrap(infer), wrap(generate)
    return net


@pytest.mark.parametrize("how", ["channels_last", "batch", "mkldnn_off", "noise"])
def test_portable_tables_decode_under_perturbed_networks(model, how):
    import contextlib
    import dataclasses
    import torch
    image = np.random.default_rng(11).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image[:20] = 50
    data = imagecodec.compress(image, "RGB", model, fallback=False).data
    net = model.net if how == "mkldnn_off" else _perturbed(
        model.net, how, np.random.default_rng(0), 2.0 ** -(imagecodec.MARGIN_BITS + 2))
    other = dataclasses.replace(model, net=net)
    flags = torch.backends.mkldnn.flags(enabled=False) if how == "mkldnn_off" else contextlib.nullcontext()
    with flags:
        assert np.array_equal(imagecodec.decompress(data, other)[0], image)


def test_listed_fragile_outputs_are_what_makes_perturbed_decodes_exact(model):
    """Coarse grid, wide margin, noise below the margin: with the fragile
    outputs listed the decode is exact; without the list it is not."""
    from utils import ans
    from utils.bitsback import BitsBackCoder

    class Unlisted(BitsBackCoder):
        def _push_fragile(self, message, fragile):
            pass

        def _pop_fragile(self, message, n):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)

    x = np.random.default_rng(3).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    noisy = _perturbed(model.net, "noise", np.random.default_rng(1), 2.0 ** -24)
    outcomes = []
    for cls in (BitsBackCoder, Unlisted):
        settings = dict(precision=28, grid_bits=12, margin_bits=22)
        encoder, decoder = cls(model.net, model.bins, **settings), cls(noisy, model.bins, **settings)
        msg = ans.InterleavedMessage.random(16, 5000, seed=0)
        start = msg.copy()
        encoder.encode(msg, x)
        assert cls is Unlisted or encoder.fragile_outputs > 0
        try:
            exact = np.array_equal(decoder.decode(msg, 1), x) and msg == start
        except ValueError:
            exact = False
        outcomes.append(exact)
    assert outcomes == [True, False]


# ------------------------------------------------------------ safe files

def test_cli_files_refuse_hard_links_use_umask_and_verify_says_what(model_dir, tmp_path, capsys):
    image = np.random.default_rng(4).integers(0, 256, (9, 10, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    os.link(tmp_path / "in.png", tmp_path / "hard.bsw")
    before = _files(tmp_path)
    status, _, err = _run_cli(image_compress, [str(tmp_path / "in.png"), "-o", str(tmp_path / "hard.bsw"),
                                               "--model", model_dir, "--force"], capsys)
    _assert_clean_failure(status, err, tmp_path, before, "is the input file")
    old = os.umask(0o022)
    try:
        status, out, _ = _run_cli(image_compress, [str(tmp_path / "in.png"), "--model", model_dir,
                                                   "--verify", "--no-table", "--no-progress"], capsys)
        assert status == 0
        assert "verified: decoded the container again with model tiny on cpu: all 270 samples" in out
        assert "complete blocks: 0: Bit-Swap 0, pixel model 0, raw 0" in out
        assert "partial edge blocks: 90 pixels (100.0% of the image), coded with" in out
        status, _, _ = _run_cli(image_decompress, [str(tmp_path / "in.bsw"), "--model", model_dir], capsys)
        assert status == 0
    finally:
        os.umask(old)
    for name in ("in.bsw", "in.decoded.png"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(0o644)


def test_cli_device_class_recorded_and_mismatch_said_in_one_line(model, model_dir, tmp_path, capsys):
    import torch
    image = np.full((5, 6, 3), 77, np.uint8)
    result = imagecodec.compress(image, "RGB", model, fallback=False)
    header, body = container.unpack(result.data)
    assert header["device"] == "cpu"
    (tmp_path / "cuda.bsw").write_bytes(container.pack(dict(header, device="cuda"), body))
    if not torch.cuda.is_available():
        before = _files(tmp_path)
        status, _, err = _run_cli(image_decompress, [str(tmp_path / "cuda.bsw"), "--model", model_dir], capsys)
        _assert_clean_failure(status, err, tmp_path, before, "coded on cuda", "--device cpu")
    status, _, err = _run_cli(image_decompress, [str(tmp_path / "cuda.bsw"), "--model", model_dir,
                                                 "--device", "cpu", "--quiet"], capsys)
    assert status == 0 and err.strip() == "image_decompress: note: this file was coded on cuda, decoding on cpu"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cuda.decoded.png")), image)
