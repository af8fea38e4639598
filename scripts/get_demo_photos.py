"""Gather the offline natural photographs into a fixed train / held-out split, at several scales.

The demo model (image_compress.py) is trained on random 32x32 patches of
these photos. The sources are Debian's wallpaper packages ``mate-backgrounds``,
``lomiri-wallpapers-16.04``, ``lomiri-wallpapers-20.04``, ``ukui-wallpapers``
and ``gnome-backgrounds`` (installed with apt-get when missing and run as
root) and the sample images bundled with scikit-image and matplotlib (pinned
in requirements.txt). Every candidate image of them was looked at and is
listed in ``scripts/photo_manifest.json``: the photographs kept, each with its
fixed split (train or heldout), and everything excluded (drawings, renders,
gradients, logos, greyscale and scientific images, near-duplicates) with the
reason. The split is by photo, so no photo gives patches to both sides.

Users' photos are mostly full-resolution camera images, far smoother per
pixel than downscaled ones, so training uses each photo at native
resolution and downscaled (Lanczos) by 2 and 4 and to a longest side of at
most 640 px. Everything is lossless PNG (or uint8 .npy) under ROOT, laid out
so that ``--data-root ROOT`` works for model/imagenetcrop_train.py and
discretization.py:

    imagenetcrop/train/x1/NAME-RR-CC.png   training photos at native resolution, cut into
                                           tiles of at most --tile px, so that one random
                                           patch per file samples all pixels about equally
    imagenetcrop/train/x1_2/, x1_4/        the same, downscaled 2x and 4x
    imagenetcrop/train/max640/             whole photos with longest side <= 640 px
                                           (not written where that is the native size)
    imagenetcrop/test_32x32.npy            held-out 32x32 patches, uint8 (N, 32, 32, 3): the
                                           native-scale ones, then the downscaled ones
    heldout_patches_native.npy             its two halves, to evaluate each scale alone
    heldout_patches_downscaled.npy
    heldout_native/NAME.png                held-out centre crops at native pixel scale (at
                                           most 768x512, or 512x768 for portrait photos)
    heldout_downscaled/NAME.png            whole held-out photos, longest side <= 640 px
    summary.json                           counts, pixels per scale, PNG bits/dim

``--compact DIR`` also writes a small copy to carry to another machine
(at most --compact-mib MiB): one crop of every training tile, as PNG, under
DIR/imagenetcrop/train/, and the same test_32x32.npy.

    python scripts/get_demo_photos.py --root data/photos [--compact data/photos_compact]

Exit status: 0 done, 1 a source could not be obtained or read, 2 bad
arguments or an inconsistent manifest. ROOT is replaced whole, and only if
it is empty or was written by this script.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils import cli  # noqa: E402

MANIFEST = os.path.join(REPO, "scripts", "photo_manifest.json")
DEBIAN_SOURCES = ("mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                  "ukui-wallpapers", "gnome-backgrounds")
PIP_SOURCES = {"scikit-image": "skimage", "matplotlib": "matplotlib"}  # source -> import name
SPLITS = ("train", "heldout")
README_SAMPLE = ("scikit-image", "skimage/data/chelsea.png")  # samples/chelsea.png
MIN_HELDOUT = 8
PATCH = 32
SUMMARY = "summary.json"


class ManifestError(ValueError):
    """The manifest is inconsistent (bad entry, photo on both sides, too few held out)."""


class SourceError(RuntimeError):
    """A source package or a photo in it could not be obtained or read."""


# ---- the manifest ------------------------------------------------------------
def load_manifest(path=MANIFEST):
    """The manifest's entries, checked by `check_manifest`."""
    try:
        with open(path) as f:
            entries = json.load(f)["photos"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"cannot read the manifest {path}: {e}") from None
    check_manifest(entries)
    return entries


def check_manifest(entries, min_heldout=MIN_HELDOUT):
    """Raise ManifestError unless every entry is well formed, each photo is
    listed once and kept on exactly one side, at least `min_heldout` photos
    are held out, and the README's sample photo is one of them."""
    seen, names = set(), {}
    for e in entries:
        where = f"{e.get('source')}:{e.get('path')}"
        if not isinstance(e.get("source"), str) or not isinstance(e.get("path"), str):
            raise ManifestError(f"entry without source/path: {e}")
        if e["source"] not in DEBIAN_SOURCES and e["source"] not in PIP_SOURCES:
            raise ManifestError(f"{where}: unknown source {e['source']!r}")
        if (e["source"], e["path"]) in seen:
            raise ManifestError(f"{where} is listed twice")
        seen.add((e["source"], e["path"]))
        if not e.get("reason"):
            raise ManifestError(f"{where}: no reason given")
        if e.get("keep") is True:
            if e.get("split") not in SPLITS:
                raise ManifestError(f"{where}: a kept photo needs split in {SPLITS}, "
                                    f"got {e.get('split')!r}")
            name = e.get("name")
            if not name or not all(c.isalnum() or c in "_-." for c in name):
                raise ManifestError(f"{where}: bad output name {name!r}")
            if name in names:
                raise ManifestError(f"{where}: name {name!r} also used by {names[name]}")
            names[name] = where
        elif e.get("keep") is False:
            if e.get("split") is not None:
                raise ManifestError(f"{where}: excluded but given split {e['split']!r}")
        else:
            raise ManifestError(f"{where}: keep must be true or false")
    heldout = [e for e in entries if e.get("keep") and e["split"] == "heldout"]
    if len(heldout) < min_heldout:
        raise ManifestError(f"only {len(heldout)} held-out photos; at least {min_heldout} needed")
    if not any((e["source"], e["path"]) == README_SAMPLE for e in heldout):
        raise ManifestError(f"the README's sample {README_SAMPLE[1]} must be held out")


def kept(entries, split=None):
    return [e for e in entries if e["keep"] and (split is None or e["split"] == split)]


# ---- sources -----------------------------------------------------------------
def _pip_base(source):
    """site-packages folder holding the package of a pip source (None if absent)."""
    spec = importlib.util.find_spec(PIP_SOURCES[source])
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def resolve(entry, sources_root=None):
    """Where the entry's file is: under `sources_root`/SOURCE/ when given
    (tests, or a copy of the sources), else where the package installs it."""
    if sources_root is not None:
        return os.path.join(sources_root, entry["source"], entry["path"].lstrip("/"))
    if entry["source"] in PIP_SOURCES:
        base = _pip_base(entry["source"])
        return os.path.join(base, entry["path"]) if base else None
    return entry["path"]


def ensure_sources(entries, sources_root=None, install=True, say=print):
    """Make sure every kept photo's file exists: apt-get the missing Debian
    packages (as root), else raise SourceError saying what to install."""
    missing = sorted({e["source"] for e in kept(entries)
                      if not (resolve(e, sources_root) and os.path.isfile(resolve(e, sources_root)))})
    debs = [s for s in missing if s in DEBIAN_SOURCES]
    pips = [s for s in missing if s in PIP_SOURCES]
    if pips:
        raise SourceError(f"missing photos of {', '.join(pips)}: pip install -r requirements.txt")
    if not debs:
        return
    if sources_root is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {' '.join(debs)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *debs]):
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode:
                raise SourceError(f"{' '.join(cmd[:2])} failed: {run.stderr.strip()[-400:]}")
        ensure_sources(entries, sources_root, install=False, say=say)
        return
    raise SourceError(f"missing photos of {', '.join(debs)}: run as root, or "
                      f"apt-get install {' '.join(debs)}")


CANDIDATE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".svg", ".gif", ".tif", ".tiff")
PIP_DATA = {"scikit-image": "skimage/data", "matplotlib": "matplotlib/mpl-data/sample_data"}


def installed_candidates():
    """{source: [path]} of the image files the installed sources hold now
    (in the manifest's path convention)."""
    found = {}
    for source in DEBIAN_SOURCES:
        run = subprocess.run(["dpkg-query", "-L", source], capture_output=True, text=True) \
            if shutil.which("dpkg-query") else None
        if run is not None and run.returncode == 0:
            found[source] = [p for p in run.stdout.split("\n") if os.path.isfile(p)]
    for source, sub in PIP_DATA.items():
        base = _pip_base(source)
        if base and os.path.isdir(os.path.join(base, sub)):
            found[source] = [f"{sub}/{f}" for f in sorted(os.listdir(os.path.join(base, sub)))]
    return found


def unlisted(entries, candidates):
    """Image files of the sources that the manifest does not list (a newer
    package version): they need looking at before they can be used."""
    known = {(e["source"], e["path"]) for e in entries}
    return sorted((source, path) for source, paths in candidates.items() for path in paths
                  if path.lower().endswith(CANDIDATE_EXTENSIONS) and (source, path) not in known)


def read_photo(entry, sources_root=None, say=print):
    """The photo as uint8 (H, W, 3); a warning when it differs from the
    manifest's record (another package version)."""
    path = resolve(entry, sources_root)
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        say(f"warning: {path} differs from the file the manifest was made from")
    if entry.get("size") and list(entry["size"]) != [rgb.shape[1], rgb.shape[0]]:
        say(f"warning: {path} is {rgb.shape[1]}x{rgb.shape[0]}, the manifest says "
            f"{entry['size'][0]}x{entry['size'][1]}")
    return rgb


def _fingerprint(rgb):
    """Zero-mean, unit-norm 16x16 grey thumbnail: near-duplicates (another
    view, size or edit of one photo) have a correlation close to 1."""
    grey = Image.fromarray(rgb).convert("L").resize((16, 16), Image.BILINEAR)
    v = np.asarray(grey, dtype=np.float64).ravel()
    v -= v.mean()
    return v / max(np.linalg.norm(v), 1e-9)


def check_no_shared_photo(fingerprints, threshold=0.95):
    """Raise ManifestError when a training photo and a held-out photo are
    near-duplicates. `fingerprints`: {(split, name): _fingerprint}."""
    train = [(n, f) for (s, n), f in fingerprints.items() if s == "train"]
    for (s, name), f in fingerprints.items():
        if s != "heldout":
            continue
        for other, g in train:
            if float(f @ g) > threshold:
                raise ManifestError(f"held-out {name} and training {other} look like the same "
                                    f"photo (correlation {float(f @ g):.3f})")


# ---- scales, tiles, crops, patches ---------------------------------------------
def scale_name(factor):
    return "x1" if factor == 1 else f"x1_{factor}"


def downscale(rgb, size):
    """Lanczos resize of uint8 (H, W, 3) to size (width, height)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))


def fit_side(rgb, max_side):
    """Size (w, h) with the longest side at most max_side, aspect kept."""
    h, w = rgb.shape[:2]
    k = min(1.0, max_side / max(h, w))
    return max(1, round(w * k)), max(1, round(h * k))


def training_scales(rgb, factors, max_side):
    """[(folder name, image)] of one photo: each factor, then the max_side
    version unless it has the size of one already made (small photos)."""
    h, w = rgb.shape[:2]
    out, sizes = [], set()
    for f in factors:
        size = (max(1, round(w / f)), max(1, round(h / f)))
        if min(size) < PATCH or size in sizes:
            continue
        sizes.add(size)
        out.append((scale_name(f), downscale(rgb, size)))
    if max_side:
        size = fit_side(rgb, max_side)
        if size not in sizes and min(size) >= PATCH:
            out.append((f"max{max_side}", downscale(rgb, size)))
    return out


def tiles(rgb, tile):
    """[(row, col, tile)] covering the image with near-equal tiles of at
    most `tile` px a side."""
    h, w = rgb.shape[:2]
    ys = np.linspace(0, h, -(-h // tile) + 1).round().astype(int)
    xs = np.linspace(0, w, -(-w // tile) + 1).round().astype(int)
    return [(r, c, rgb[ys[r]:ys[r + 1], xs[c]:xs[c + 1]])
            for r in range(len(ys) - 1) for c in range(len(xs) - 1)]


def centre_crop(rgb, long_side=768, short_side=512):
    """Centre crop at native pixel scale of at most long_side x short_side,
    oriented like the photo."""
    h, w = rgb.shape[:2]
    cw, ch = (long_side, short_side) if w >= h else (short_side, long_side)
    cw, ch = min(cw, w), min(ch, h)
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[top:top + ch, left:left + cw]


def random_patches(rgb, count, key, seed=0):
    """`count` fixed 32x32 patches (uint8 (count, 32, 32, 3)) at positions
    drawn from a generator seeded by (seed, key): the same on every run."""
    h, w = rgb.shape[:2]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    ys = rng.integers(0, h - PATCH + 1, size=count)
    xs = rng.integers(0, w - PATCH + 1, size=count)
    return np.stack([rgb[y:y + PATCH, x:x + PATCH] for y, x in zip(ys, xs)])


# ---- writing ------------------------------------------------------------------
def save_png(rgb, path, level=6):
    Image.fromarray(rgb).save(path, format="PNG", compress_level=level)


def png_bits_per_dim(images):
    """PNG (IDAT payload, verified round trip) bits/dim of each image and of
    all their pixels together, with the project's codec helpers."""
    from utils import codecs
    bits = [codecs.measure_image(im, ["png"])["png"] for im in images]
    per = [codecs.bits_per_dim(b, im) for b, im in zip(bits, images)]
    return per, sum(bits) / sum(im.size for im in images)


def _prepare_out(root):
    """A fresh ROOT.part to write into; refuse to replace a ROOT that this
    script did not write."""
    if os.path.exists(root) and (not os.path.isdir(root) or
                                 (os.listdir(root) and
                                  not os.path.isfile(os.path.join(root, SUMMARY)))):
        raise ManifestError(f"{root} exists and was not written by this script; "
                            f"choose another --root or remove it")
    part = root.rstrip("/") + ".part"
    shutil.rmtree(part, ignore_errors=True)
    os.makedirs(part)
    return part


def _commit_out(part, root):
    if os.path.isdir(root):
        old = root.rstrip("/") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(root, old)
        os.replace(part, root)
        shutil.rmtree(old)
    else:
        os.replace(part, root)


def build(entries, root, sources_root=None, factors=(1, 2, 4), max_side=640, tile=512,
          test_patches=128, crop=(768, 512), seed=0, say=print):
    """Write ROOT's layout (see the module docstring); return the summary."""
    part = _prepare_out(root)
    try:
        return _build(entries, root, part, sources_root, factors, max_side, tile, test_patches,
                      crop, seed, say)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise


def _build(entries, root, part, sources_root, factors, max_side, tile, test_patches, crop, seed,
           say):
    train_dir = os.path.join(part, "imagenetcrop", "train")
    summary = dict(manifest_sha256=_manifest_hash(entries), scales={}, sources={},
                   train=[], heldout=[], excluded=[], tile=tile,
                   test_patches_per_photo_and_scale=test_patches)
    fingerprints, native_patches, down_patches = {}, [], []
    native_crops, down_photos, resolutions = [], [], []
    for e in entries:
        if not e["keep"]:
            summary["excluded"].append(dict(source=e["source"], path=e["path"], reason=e["reason"]))
            continue
        rgb = read_photo(e, sources_root, say)
        name, split = e["name"], e["split"]
        fingerprints[(split, name)] = _fingerprint(rgb)
        resolutions.append([rgb.shape[1], rgb.shape[0]])
        src = summary["sources"].setdefault(e["source"], dict(train=0, heldout=0))
        src[split] += 1
        summary[split].append(dict(name=name, source=e["source"], path=e["path"],
                                   size=[rgb.shape[1], rgb.shape[0]]))
        if split == "train":
            for folder, img in training_scales(rgb, factors, max_side):
                os.makedirs(os.path.join(train_dir, folder), exist_ok=True)
                stats = summary["scales"].setdefault(folder, dict(photos=0, files=0, pixels=0))
                stats["photos"] += 1
                stats["pixels"] += img.shape[0] * img.shape[1]
                for r, c, t in tiles(img, tile):
                    # level 1: these are large and only read back here
                    save_png(t, os.path.join(train_dir, folder, f"{name}-{r:02d}-{c:02d}.png"),
                             level=1)
                    stats["files"] += 1
        else:
            small = downscale(rgb, fit_side(rgb, max_side))
            native_crops.append((name, centre_crop(rgb, *crop)))
            down_photos.append((name, small))
            native_patches.append(random_patches(rgb, test_patches, f"native/{name}", seed))
            down_patches.append(random_patches(small, test_patches, f"downscaled/{name}", seed))
        say(f"{split:7s} {name} {rgb.shape[1]}x{rgb.shape[0]}")
    check_no_shared_photo(fingerprints)
    for folder, items in (("heldout_native", native_crops), ("heldout_downscaled", down_photos)):
        os.makedirs(os.path.join(part, folder))
        for name, img in items:
            save_png(img, os.path.join(part, folder, f"{name}.png"), level=9)
        per, pooled = png_bits_per_dim([img for _, img in items])
        summary[folder] = dict(
            photos={n: dict(size=[im.shape[1], im.shape[0]], png_bits_per_dim=round(b, 4))
                    for (n, im), b in zip(items, per)},
            png_bits_per_dim=round(pooled, 4))
    native, down = np.concatenate(native_patches), np.concatenate(down_patches)
    np.save(os.path.join(part, "heldout_patches_native.npy"), native)
    np.save(os.path.join(part, "heldout_patches_downscaled.npy"), down)
    np.save(os.path.join(part, "imagenetcrop", "test_32x32.npy"), np.concatenate([native, down]))
    summary["resolution_range"] = dict(
        min_pixels=min(resolutions, key=lambda s: s[0] * s[1]),
        max_pixels=max(resolutions, key=lambda s: s[0] * s[1]))
    summary["test_patches"] = dict(native=len(native), downscaled=len(down))
    with open(os.path.join(part, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    _commit_out(part, root)
    return summary


def _manifest_hash(entries):
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def build_compact(root, out, budget_mib=40.0, seed=0, say=print):
    """A copy of ROOT small enough to carry: one random crop of every
    training tile (the side chosen so that the PNGs and the test patches fit
    in `budget_mib` MiB) under OUT/imagenetcrop/train/, and the same
    test_32x32.npy. Returns (crop side, total bytes)."""
    from utils.data import list_image_files, read_image
    test = os.path.join(root, "imagenetcrop", "test_32x32.npy")
    files = list_image_files(os.path.join(root, "imagenetcrop", "train"))
    budget = int(budget_mib * 2 ** 20) - os.path.getsize(test) - 4096
    if budget <= 0:
        raise ManifestError(f"--compact-mib {budget_mib} leaves no room beside the test patches")
    images = [read_image(f).transpose(1, 2, 0) for f in files]

    def area(side):
        return sum(min(side, im.shape[0]) * min(side, im.shape[1]) for im in images)

    # first guess: the bytes per pixel of the training files themselves
    per_pixel = sum(os.path.getsize(f) for f in files) / area(10 ** 9)
    side = max(max(im.shape[:2]) for im in images)
    while side > PATCH and area(side) * per_pixel > budget:
        side -= 1
    while side >= PATCH:
        part = _prepare_out(out)
        try:
            total, written = _write_crops(root, files, images, part, side, budget, seed)
            if total <= budget:
                shutil.copyfile(test, os.path.join(part, "imagenetcrop", "test_32x32.npy"))
                total += os.path.getsize(test)
                with open(os.path.join(part, SUMMARY), "w") as f:
                    json.dump(dict(crop_side=side, files=len(files), bytes=total), f, indent=1)
                _commit_out(part, out)
                say(f"compact copy in {out}: {len(files)} crops of at most {side}x{side} px, "
                    f"{total / 2 ** 20:.1f} MiB")
                return side, total
        finally:
            shutil.rmtree(part, ignore_errors=True)
        # stopped early: extrapolate the size of all crops from those written
        side = int(side * min(0.95, (budget / (total * area(side) / written)) ** 0.5))
    raise ManifestError(f"--compact-mib {budget_mib} is too small for the {len(files)} training files")


def _write_crops(root, files, images, part, side, budget, seed):
    """One crop of at most side x side per training file into part/; stops
    once over `budget` bytes. Returns (bytes, pixels) written."""
    total, written = 0, 0
    for k, (path, im) in enumerate(zip(files, images)):
        h, w = im.shape[:2]
        rng = np.random.default_rng([seed, k])
        y = int(rng.integers(0, h - min(side, h) + 1))
        x = int(rng.integers(0, w - min(side, w) + 1))
        rel = os.path.relpath(path, os.path.join(root, "imagenetcrop", "train"))
        dest = os.path.join(part, "imagenetcrop", "train", rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        save_png(np.ascontiguousarray(im[y:y + side, x:x + side]), dest)
        total += os.path.getsize(dest)
        written += min(side, h) * min(side, w)
        if total > budget:
            break
    return total, written


def main(argv=None):
    ap = cli.parser("get_demo_photos.py", __doc__.split("\n")[0])
    ap.add_argument("--root", default="data/photos", help="output folder (replaced whole)")
    ap.add_argument("--manifest", default=MANIFEST)
    ap.add_argument("--factors", default="1,2,4", help="downscale factors of the training photos")
    ap.add_argument("--max-side", type=int, default=640,
                    help="also train on whole photos with this longest side; the held-out "
                         "downscaled set uses it too")
    ap.add_argument("--tile", type=int, default=512, help="largest side of a training file")
    ap.add_argument("--test-patches", type=int, default=128,
                    help="held-out 32x32 patches per photo and scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compact", default=None, metavar="DIR", help="also write a small copy here")
    ap.add_argument("--compact-mib", type=float, default=40.0)
    ap.add_argument("--compact-only", action="store_true",
                    help="only (re)write --compact DIR from the ROOT written before")
    ap.add_argument("--sources-root", default=None,
                    help="read SOURCE/PATH under this folder instead of the installed packages")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    args = ap.parse_args(argv)
    try:
        factors = [int(f) for f in args.factors.split(",")]
        if not factors or min(factors) < 1 or args.tile < PATCH or args.test_patches < 1 \
                or args.max_side < 0:
            raise ValueError
    except ValueError:
        print("error: --factors takes integers >= 1 (e.g. 1,2,4), --tile >= 32, "
              "--test-patches >= 1, --max-side >= 0", file=sys.stderr)
        return 2
    if args.compact_only and not args.compact:
        print("error: --compact-only needs --compact DIR", file=sys.stderr)
        return 2
    try:
        if args.compact_only:
            if not os.path.isfile(os.path.join(args.root, SUMMARY)):
                raise ManifestError(f"{args.root} was not written by this script; run it "
                                    f"without --compact-only first")
            build_compact(args.root, args.compact, args.compact_mib, args.seed)
            return 0
        entries = load_manifest(args.manifest)
        ensure_sources(entries, args.sources_root, install=not args.no_install)
        if args.sources_root is None:
            for source, path in unlisted(entries, installed_candidates()):
                print(f"warning: {source}: {path} is not in the manifest; not used")
        summary = build(entries, args.root, args.sources_root, factors, args.max_side, args.tile,
                        args.test_patches, seed=args.seed)
        if args.compact:
            build_compact(args.root, args.compact, args.compact_mib, args.seed)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"train: {len(summary['train'])} photos, heldout: {len(summary['heldout'])}, "
          f"excluded: {len(summary['excluded'])}")
    for folder, s in summary["scales"].items():
        print(f"  train/{folder}: {s['photos']} photos, {s['files']} files, "
              f"{s['pixels'] / 1e6:.1f} Mpixels")
    for folder in ("heldout_native", "heldout_downscaled"):
        print(f"  {folder}: PNG {summary[folder]['png_bits_per_dim']:.3f} bits/dim")
    print(f"written to {args.root} (summary in {os.path.join(args.root, SUMMARY)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
