"""The demo codec: sizes, fallback share, speed and portability, with the
shipped model (or any package).  Regenerates the README's demo figures.

    python benchmarks/demo_bench.py [PHOTO|FOLDER ...] [--model demo | --random] [--repeats 1]
    python benchmarks/demo_bench.py --sizes          # 1x1, 7x5, noise, grey photo: file vs raw
    python benchmarks/demo_bench.py --portability [--blocks 24] [PHOTO|FOLDER ...]

Photos (default: samples/chelsea.png; folders are expanded): compress with
the demo codec (utils/imagecodec.py, the library path of image_compress.py),
decompress, check the pixels, and report the container's size in bits/dim
(everything counted: header, initial bits, lane heads), the share of the
pixels coded with Bit-Swap (the rest: partial edge blocks and blocks Bit-Swap
would code above raw, with the pixel model or raw) and, for the set, the coded
bits split by part (partial edge blocks, complete blocks by kind, heads and
container), beside PNG (IDAT payload), WebP lossless and JPEG XL lossless
from utils/codecs.py, plus median seconds.

--sizes: the small and worst cases of the size bounds (bytes).

--portability: for 32x32 blocks of the photos, the networks' outputs under
perturbations a decoder on another machine may meet (another batch layout,
channels_last, oneDNN off, 2 threads, float64 instead of float32) against
the coder's own setting; how many tables change (a table = one network
call's quantized probabilities; changed = any output rounds differently)
for the float32 coder without a grid and for the portable coder (float64
networks, outputs on the grid of utils/imagecodec.py, listed fragile
outputs applied); and the cost of the portable coder in bits/dim and time.

--random builds a random-init model of a demo size in a temp folder: the
networks cost about the same as a trained one's, the rate is meaningless.
"""
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from model import package  # noqa: E402
from utils import ans, cli, codecs, container, imagecodec, images  # noqa: E402
from utils.bitsback import BitsBackCoder  # noqa: E402
from utils.data import list_image_files  # noqa: E402
from utils.device import deterministic_torch  # noqa: E402

DEMO_SIZE = dict(xs=(3, 32, 32), nz=2, zchannels=8, width=64, nprocessing=2, resdepth=4,
                 conditional_xscale=True)
BASELINES = ("png", "webp", "jpegxl")
SAMPLE = os.path.join(package.REPO_ROOT, "samples", "chelsea.png")


def photos_from(paths):
    out = []
    for p in paths:
        out.extend(list_image_files(p) if os.path.isdir(p) else [p])
    return out


def photo_table(model, photos, repeats):
    print(f"{'photo':28s} {'size':>9s} {'Bit-Swap':>9s} " + " ".join(f"{n:>8s}" for n in BASELINES)
          + f" {'BS px%':>7s} {'enc s':>7s} {'dec s':>7s}")
    totals = dict(dims=0, bitswap=0, pixels=0, bitswap_pixels=0, **{n: 0 for n in BASELINES})
    parts = {name: [0, 0] for name in PARTS}      # coded bits, samples
    for photo in photos:
        image, mode = images.load_image(photo)
        enc, dec = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            result = imagecodec.compress(image, mode, model)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            decoded, _ = imagecodec.decompress(result.data, model)
            dec.append(time.perf_counter() - t)
            if not np.array_equal(decoded, image):
                sys.exit(f"error: {photo} did not decode to the same pixels")
        base = codecs.measure_image(image, BASELINES)
        h, w = image.shape[:2]
        totals["dims"] += image.size
        totals["bitswap"] += 8 * len(result.data)
        share = bitswap_pixels(result, model.block)
        totals["pixels"] += h * w
        totals["bitswap_pixels"] += share
        for n in BASELINES:
            totals[n] += base[n] or 0
        for name, (bits, samples) in part_split(result, model.block, image.shape[2]).items():
            parts[name][0] += bits
            parts[name][1] += samples
        print(f"{os.path.basename(photo)[:28]:28s} {f'{w}x{h}':>9s} {8 * len(result.data) / image.size:9.3f} "
              + " ".join(f"{(base[n] or float('nan')) / image.size:8.3f}" for n in BASELINES)
              + f" {100.0 * share / (h * w):7.1f}"
              + f" {statistics.median(enc):7.1f} {statistics.median(dec):7.1f}")
    d = totals["dims"]
    print(f"{'all (bits/dim over all pixels)':28s} {'':>9s} {totals['bitswap'] / d:9.3f} "
          + " ".join(f"{totals[n] / d:8.3f}" for n in BASELINES)
          + f" {100.0 * totals['bitswap_pixels'] / totals['pixels']:7.1f}")
    rest = totals["bitswap"] - sum(bits for bits, _ in parts.values())
    print("coded bits by part, all files (bits/dim of the part's samples; its share of the set's bits/dim):")
    for name, (bits, samples) in parts.items():
        print(f"  {PARTS[name]:<34s} {100.0 * samples / d:5.1f}% of the samples at "
              f"{bits / max(samples, 1):6.3f} bits/dim: {bits / d:.4f}")
    print(f"  {'final heads, container, raw files':<34s} {rest / d:.4f}")


PARTS = {"strips": "partial edge blocks (pixel model)", "bitswap": "complete blocks, Bit-Swap",
         "pixel": "complete blocks, pixel model", "raw": "complete blocks, raw"}


def part_split(result, block, channels):
    """{part: (message bits, samples)} of a format-5 result; a file stored
    raw counts nothing here (its bits fall to the rest)."""
    if result.storage == "raw" or result.part_bits is None:
        return {}
    samples = dict(strips=result.strip_pixels * channels,
                   bitswap=(result.blocks - result.pixel_blocks - result.raw_blocks) * block * block * channels,
                   pixel=result.pixel_blocks * block * block * channels,
                   raw=result.raw_blocks * block * block * channels)
    return {name: (result.part_bits[name], samples[name]) for name in PARTS}


def bitswap_pixels(result, block):
    """Pixels of the image that Bit-Swap coded (0 for a file stored raw)."""
    if result.storage == "raw":
        return 0
    return (result.blocks - result.pixel_blocks - result.raw_blocks) * block * block


def size_cases(model):
    from PIL import Image
    image, _ = images.load_image(SAMPLE)
    grey = np.asarray(Image.fromarray(image).convert("L"))[:, :, None]
    noise = np.random.default_rng(0)
    cases = [("1x1 RGB (chelsea pixel)", image[:1, :1], "RGB"),
             ("7x5 RGB (chelsea crop)", image[100:105, 200:207], "RGB"),
             ("96x96 RGB noise", noise.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB"),
             ("300x200 grey noise", noise.integers(0, 256, (200, 300, 1), dtype=np.uint8), "L"),
             ("chelsea grey 451x300", grey, "L"),
             ("chelsea RGB 451x300", image, "RGB")]
    print(f"fixed bytes of a container with model {model.name!r}: {container.fixed_bytes(model.name)} "
          f"(+ 24 + 8 x lanes for a Bit-Swap message, lanes = min(32, 8 x blocks))")
    print(f"{'image':26s} {'raw B':>8s} {'file B':>8s} {'file-raw':>8s} {'bits/dim':>8s} {'storage':>8s} "
          f"{'BS/pm/raw':>10s} {'strips':>7s} {'lanes':>5s}")
    for label, im, mode in cases:
        result = imagecodec.compress(im, mode, model)
        if not np.array_equal(imagecodec.decompress(result.data, model)[0], im):
            sys.exit(f"error: {label} did not decode to the same pixels")
        n = len(result.data)
        print(f"{label:26s} {im.size:8d} {n:8d} {n - im.size:8d} {8 * n / im.size:8.3f} {result.storage:>8s} "
              f"{f'{result.blocks - result.pixel_blocks - result.raw_blocks}/{result.pixel_blocks}/{result.raw_blocks}':>10s}"
              f" {result.strip_storage or '-':>7s} {result.lanes:5d}")


# ------------------------------------------------------------ portability

def _calls(net, x, dtype):
    """The four kinds of network call of the first block of ``x``, as the
    coder makes them: q(z1|x), q(z2|z1), p(x|z1), p(z1|z2), at posterior
    means; each call's outputs (mu, then scale) as one float64 array."""
    import torch
    x = torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)
    mu1, s1 = net.infer(0, x)
    mu2, s2 = net.infer(1, mu1)
    g0, gs0 = net.generate(0, mu1)
    g1, gs1 = net.generate(1, mu2)
    return [torch.cat([a[0].reshape(-1), b[0].reshape(-1)]).double().numpy()
            for a, b in [(mu1, s1), (mu2, s2), (g0, gs0), (g1, gs1)]]


def _perturbations(net32, net64):
    import torch
    cl32 = copy.deepcopy(net32).to(memory_format=torch.channels_last)
    cl32.channels_last = True
    cl64 = copy.deepcopy(net64).to(memory_format=torch.channels_last)
    cl64.channels_last = True

    def in_batch(net, dtype):
        def run(x):
            return _calls(net, np.concatenate([x, x[:, :, ::-1], x[:, :, :, ::-1]]), dtype)
        return run

    @contextlib.contextmanager
    def threads(n):
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)
    none = contextlib.nullcontext
    # name -> (float32 run, float64 run, context)
    return {
        "batch of 3": (in_batch(net32, torch.float32), in_batch(net64, torch.float64), none),
        "channels_last": (lambda x: _calls(cl32, x, torch.float32), lambda x: _calls(cl64, x, torch.float64), none),
        "oneDNN off": (lambda x: _calls(net32, x, torch.float32), lambda x: _calls(net64, x, torch.float64),
                       lambda: torch.backends.mkldnn.flags(enabled=False)),
        "2 threads, batch of 3": (in_batch(net32, torch.float32), in_batch(net64, torch.float64),
                                  lambda: threads(2)),
        "float64 for float32": (lambda x: _calls(net64, x, torch.float64), None, none),
    }


def _int_tables(model, call, out):
    """The integer CDF rows C(k) = floor(F(e_k)(2^p - K)) + k (utils/distributions.py)
    of one call's outputs: one row per coded dimension."""
    from utils.distributions import PIXEL_BINS
    mu, scale = out[:out.size // 2], out[out.size // 2:]
    bins = PIXEL_BINS if call == 2 else model.bins.layers[{0: 0, 1: 1, 3: 0}[call]]
    e = bins.endpoints if bins.rows > 1 else np.broadcast_to(bins.endpoints, (mu.size, bins.K - 1))
    with np.errstate(over="ignore"):
        f = 1.0 / (1.0 + np.exp((mu[:, None] - e) / scale[:, None]))
    return (f * float((1 << imagecodec.PRECISION) - bins.K)).astype(np.int64)


def _rows_changed(model, call, a, b):
    """Coded dimensions whose quantized table differs between outputs a and b."""
    if not (a != b).any():
        return 0
    return int((_int_tables(model, call, a) != _int_tables(model, call, b)).any(axis=1).sum())


def portability(model, photos, nblocks):
    import torch
    net64 = model.net
    net32 = copy.deepcopy(net64).float()
    coder = imagecodec._coder(model)
    grid = float(2 ** imagecodec.GRID_BITS)
    margin = 2.0 ** (imagecodec.GRID_BITS - imagecodec.MARGIN_BITS)
    blocks = []
    for photo in photos:
        image, mode = images.load_image(photo)
        image = image if mode == "RGB" else np.repeat(image, 3, axis=2)
        for r in range(0, image.shape[0] - 31, 96):
            for c in range(0, image.shape[1] - 31, 96):
                blocks.append(image[r:r + 32, c:c + 32].transpose(2, 0, 1)[None].copy())
    rng = np.random.default_rng(0)
    blocks = [blocks[i] for i in sorted(rng.choice(len(blocks), min(nblocks, len(blocks)), replace=False))]
    print(f"{len(blocks)} blocks of 32x32 from {len(photos)} photo(s); 4 network calls per block "
          f"(q(z1|x), q(z2|z1), p(x|z1), p(z1|z2)); grid 2^-{imagecodec.GRID_BITS}, "
          f"margin 2^-{imagecodec.MARGIN_BITS}")
    print("tables: one network call's quantized CDFs (changed: any integer differs); rows: one coded "
          "dimension's CDF")
    print(f"{'perturbation':24s} {'max |diff| f32':>14s} {'f32 tables changed':>19s} {'f32 rows changed':>17s} "
          f"{'max |diff| f64':>14s} {'f64 beyond margin':>17s} {'grid tables changed':>19s}")
    fragile = total = 0
    with deterministic_torch():
        base32 = [_calls(net32, b, torch.float32) for b in blocks]
        base64 = [_calls(net64, b, torch.float64) for b in blocks]
        for out in base64:
            for v in out:
                frac = v * grid - np.floor(v * grid)
                fragile += int((np.abs(frac - 0.5) < margin).sum())
                total += v.size
        for name, (run32, run64, ctx) in _perturbations(net32, net64).items():
            d32 = d64 = 0.0
            changed32 = changed_grid = beyond = rows32 = rows = 0
            with ctx():
                for b, o32, o64 in zip(blocks, base32, base64):
                    p32 = run32(b)
                    for call, (a, p) in enumerate(zip(o32, p32)):
                        d32 = max(d32, float(np.abs(a - p).max()))
                        changed = _rows_changed(model, call, a, p)
                        changed32 += changed > 0
                        rows32 += changed
                        rows += a.size // 2
                    if run64 is None:
                        continue
                    for a, p in zip(o64, run64(b)):
                        d64 = max(d64, float(np.abs(a - p).max()))
                        beyond += int((np.abs(a - p) >= 2.0 ** -imagecodec.MARGIN_BITS).sum())
                        ta, _ = coder._to_grid(a, None)
                        # the decoder rounds its own outputs, the listed fragile ones as the encoder did
                        _, (idx, sides, _) = coder._to_grid(a, None)
                        tp, _ = coder._to_grid(p, (idx, sides))
                        changed_grid += bool((ta != tp).any())
            n = 4 * len(blocks)
            f64 = "-" if run64 is None else f"{d64:14.1e}"
            g = "-" if run64 is None else f"{changed_grid}/{n}"
            b_ = "-" if run64 is None else str(beyond)
            print(f"{name:24s} {d32:14.1e} {f'{changed32}/{n}':>19s} {rows32 / rows:17.2e} "
                  f"{f64:>14s} {b_:>17s} {g:>19s}")
        grid_bits = rounding_cost(model, coder, blocks, base64)
    numpy_simd(model, coder, base64)
    print(f"cost of the grid: {grid_bits:.2e} bits/dim (code length of x under p(x|z1) and of z1 under "
          "p(z1|z2) at the posterior means, rounded against unrounded outputs, same symbols)")
    print(f"fragile outputs (listed in the message): {fragile} of {total} "
          f"({fragile / total:.2e}; expected 2^-{imagecodec.MARGIN_BITS - imagecodec.GRID_BITS - 1} "
          f"= {2.0 ** -(imagecodec.MARGIN_BITS - imagecodec.GRID_BITS - 1):.2e})")
    cost(model, photos[:1])


def numpy_simd(model, coder, outputs):
    """The tables are built in numpy float64; its exp has SIMD kernels per
    CPU family (AVX-512, AVX2, baseline).  Build the portable coder's tables
    in a process with numpy's dispatched kernels disabled and compare."""
    import subprocess
    from numpy._core._multiarray_umath import __cpu_dispatch__
    rounded = [[coder._to_grid(o, None)[0] for o in out] for out in outputs]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "out.npy"), np.array(rounded, dtype=object), allow_pickle=True)
        code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); from benchmarks import demo_bench; "
                "from utils import imagecodec; m = imagecodec.load_codec_model(sys.argv[3], 'cpu'); "
                "out = np.load(sys.argv[2] + '/out.npy', allow_pickle=True); "
                "np.save(sys.argv[2] + '/tables.npy', np.array([[demo_bench._int_tables(m, c, o) "
                "for c, o in enumerate(b)] for b in out], dtype=object), allow_pickle=True)")
        env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(__cpu_dispatch__))
        done = subprocess.run([sys.executable, "-c", code, package.REPO_ROOT, tmp, model.source],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"numpy without SIMD kernels: could not run ({done.stderr.strip().splitlines()[-1]})")
            return
        theirs = np.load(os.path.join(tmp, "tables.npy"), allow_pickle=True)
    entries = changed_entries = changed_tables = 0
    for out, their in zip(rounded, theirs):
        for call, (o, t) in enumerate(zip(out, their)):
            mine = _int_tables(model, call, o)
            diff = int((mine != t).sum())
            entries += mine.size
            changed_entries += diff
            changed_tables += diff > 0
    print(f"numpy float64 tables without its dispatched SIMD kernels ({' '.join(__cpu_dispatch__) or 'none'}): "
          f"{changed_tables} of {4 * len(rounded)} tables, {changed_entries} of {entries} integer CDF values changed")


def _code_bits(model, call, out, symbols):
    c = _int_tables(model, call, out)
    c = np.concatenate([np.zeros((c.shape[0], 1), np.int64), c + np.arange(1, c.shape[1] + 1),
                        np.full((c.shape[0], 1), 1 << imagecodec.PRECISION)], axis=1)
    rows = np.arange(c.shape[0])
    return float(-np.log2((c[rows, symbols + 1] - c[rows, symbols]) / 2.0 ** imagecodec.PRECISION).sum())


def rounding_cost(model, coder, blocks, outputs):
    """Extra bits/dim of coding the same symbols with grid-rounded tables."""
    extra = 0.0
    for b, out in zip(blocks, outputs):
        mu1 = out[0][:out[0].size // 2]
        z1 = np.array([np.searchsorted(model.bins.layers[0].endpoints[d], m) for d, m in enumerate(mu1)])
        for call, symbols in [(2, b.reshape(-1).astype(np.int64)), (3, z1)]:
            rounded, _ = coder._to_grid(out[call], None)
            extra += _code_bits(model, call, rounded, symbols) - _code_bits(model, call, out[call], symbols)
    return extra / (len(blocks) * blocks[0].size)


def cost(model, photos):
    """bits/dim and seconds of the portable coder against the float32 coder
    without a grid (every block Bit-Swap, one chain, warm random message)."""
    net64 = model.net
    net32 = copy.deepcopy(net64).float()
    for photo in photos:
        image, mode = images.load_image(photo)
        padded = imagecodec.pad_to_blocks(image, 32)
        order = imagecodec.block_order(padded.shape[0], padded.shape[1], 32)
        for label, coder in [("float32, no grid", BitsBackCoder(net32, model.bins, precision=imagecodec.PRECISION)),
                             ("portable", imagecodec._coder(model))]:
            msg = ans.InterleavedMessage.random(128, 100000, seed=0)
            start = msg.bits()
            t = time.perf_counter()
            with deterministic_torch():
                for r, c in order:
                    coder.encode(msg, padded[None, r:r + 32, c:c + 32].transpose(0, 3, 1, 2))
            enc = time.perf_counter() - t
            bpd = (msg.bits() - start) / (len(order) * padded.shape[2] * 1024)
            print(f"{os.path.basename(photo)} {label:18s} {bpd:.5f} bits/dim (padded blocks), "
                  f"encode {enc:.1f} s, networks {coder.net_seconds:.1f} s")


def main(argv=None):
    ap = cli.parser("demo_bench.py", __doc__.split("\n")[0])
    ap.add_argument("photos", nargs="*", default=[SAMPLE])
    ap.add_argument("--model", default="demo", help="model package folder or shipped name")
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sizes", action="store_true", help="the size cases instead of the photo table")
    ap.add_argument("--portability", action="store_true", help="the portability measurement")
    ap.add_argument("--blocks", type=int, default=24, help="blocks for --portability")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = package.random_package(tmp, **DEMO_SIZE) if args.random else args.model
        model = imagecodec.load_codec_model(path, "cpu")
        print(f"model {model.name} ({model.identity[:12]}); sizes in bits/dim (bits per 8-bit "
              "sample, whole files), times in seconds")
        if args.sizes:
            size_cases(model)
        elif args.portability:
            portability(model, photos_from(args.photos), args.blocks)
        else:
            photo_table(model, photos_from(args.photos), args.repeats)


if __name__ == "__main__":
    main()
