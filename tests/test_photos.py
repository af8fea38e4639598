"""scripts/get_demo_photos.py: the committed manifest's split, and the data it
writes (scales, tiles, held-out sets, test patches, compact copy) on small
synthetic sources, read back through the training loader. No apt here."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import get_demo_photos as gp  # noqa: E402
from utils.data import ArrayImages, read_image, training_datasets  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATE = "/usr/share/backgrounds/mate/nature/"


def smooth_photo(seed, w, h):
    """A smooth, photo-like uint8 RGB image, distinct for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return np.clip(img + rng.integers(-3, 4, size=img.shape), 0, 255).astype(np.uint8)


def entry(source, path, split, name):
    if split is None:
        return dict(source=source, path=path, keep=False, split=None, reason="drawing")
    return dict(source=source, path=path, keep=True, split=split, name=name, reason="photo")


def write_sources(tmp_path, n_train=3, n_heldout=8, duplicate=False):
    """Synthetic sources (mate-backgrounds JPEG-free PNG 'photos' and
    scikit-image's chelsea) and a manifest for them; returns its path."""
    src = tmp_path / "sources"
    sizes = [(160, 130), (97, 130), (70, 60)]
    entries = []
    for k in range(n_train + n_heldout - 1):
        split = "train" if k < n_train else "heldout"
        path = f"{MATE}p{k}.png"
        img = smooth_photo(k, *sizes[k % len(sizes)])
        if duplicate and split == "heldout" and k == n_train:  # a resized copy of train photo 0
            img = np.asarray(Image.fromarray(smooth_photo(0, *sizes[0])).resize((120, 80), Image.LANCZOS))
        dest = src / "mate-backgrounds" / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(dest)
        entries.append(entry("mate-backgrounds", path, split, f"mate_p{k}"))
    chelsea = src / "scikit-image" / "skimage" / "data" / "chelsea.png"
    chelsea.parent.mkdir(parents=True)
    Image.fromarray(smooth_photo(99, 90, 60)).save(chelsea)
    entries.append(entry("scikit-image", "skimage/data/chelsea.png", "heldout", "skimage_chelsea"))
    entries.append(entry("mate-backgrounds", f"{MATE}logo.png", None, None))  # excluded, absent
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"photos": entries}))
    return str(src), str(manifest)


def run(tmp_path, *extra, sources=None):
    if sources is None:
        sources = write_sources(tmp_path)
    src, manifest = sources
    root = str(tmp_path / "photos")
    rc = gp.main(["--root", root, "--manifest", manifest, "--sources-root", src, "--no-install",
                  "--tile", "64", "--max-side", "100", "--test-patches", "5", *extra])
    return rc, root


# ---- the committed manifest ---------------------------------------------------
def test_committed_manifest_split_is_fixed_and_by_photo():
    entries = gp.load_manifest()            # raises on any inconsistency
    heldout, train = gp.kept(entries, "heldout"), gp.kept(entries, "train")
    assert len(heldout) >= 8 and len(train) >= 20
    assert len({e["source"] for e in heldout}) >= 3          # held out across sources
    assert not {e["name"] for e in heldout} & {e["name"] for e in train}
    assert not {e["path"] for e in heldout} & {e["path"] for e in train}
    chelsea = [e for e in entries if e["path"] == "skimage/data/chelsea.png"]
    assert len(chelsea) == 1 and chelsea[0]["keep"] and chelsea[0]["split"] == "heldout"
    # every source was gone through, and every kept file is pinned by content
    assert {e["source"] for e in entries} == set(gp.DEBIAN_SOURCES) | set(gp.PIP_SOURCES)
    assert all(len(e["sha256"]) == 64 and len(e["size"]) == 2 for e in gp.kept(entries))
    assert all(e["reason"] for e in entries if not e["keep"])


def test_readme_sample_is_the_held_out_chelsea():
    chelsea = [e for e in gp.load_manifest() if e["path"] == "skimage/data/chelsea.png"][0]
    path = gp.resolve(chelsea)
    assert np.array_equal(read_image(path), read_image(os.path.join(REPO, "samples", "chelsea.png")))


@pytest.mark.parametrize("change, message", [
    (lambda es: es.append(dict(es[0], split="heldout")), "listed twice"),
    (lambda es: (es[-2].update(split="train"), es[0].update(split="heldout")),  # chelsea
     "must be held out"),
    (lambda es: es[3].update(split="train"), "held-out photos"),          # 7 left
    (lambda es: es[-1].update(split="train"), "excluded but given split"),
    (lambda es: es[0].update(reason=""), "no reason"),
    (lambda es: es[1].update(name="mate_p0"), "also used by"),
    (lambda es: es[0].update(source="someone-elses-wallpapers"), "unknown source"),
])
def test_bad_manifests_are_rejected(tmp_path, change, message):
    _, manifest = write_sources(tmp_path)
    entries = json.loads(open(manifest).read())["photos"]
    gp.check_manifest(entries)
    change(entries)
    with pytest.raises(gp.ManifestError, match=message):
        gp.check_manifest(entries)


# ---- what the script writes -----------------------------------------------------
def test_outputs_at_each_scale_and_the_loader_reads_them(tmp_path):
    sources = write_sources(tmp_path)
    rc, root = run(tmp_path, "--compact", str(tmp_path / "compact"), "--compact-mib", "0.4",
                   sources=sources)
    assert rc == 0
    entries = json.loads(open(sources[1]).read())["photos"]
    train_names = {e["name"] for e in entries if e["keep"] and e["split"] == "train"}
    heldout_names = {e["name"] for e in entries if e["keep"] and e["split"] == "heldout"}
    base = os.path.join(root, "imagenetcrop", "train")
    assert sorted(os.listdir(base)) == ["max100", "x1", "x1_2", "x1_4"]
    for e in entries:
        if not (e["keep"] and e["split"] == "train"):
            continue
        src = read_image(gp.resolve(e, sources[0])).transpose(1, 2, 0)
        h, w = src.shape[:2]
        for folder, (ww, hh) in (("x1", (w, h)), ("x1_2", (round(w / 2), round(h / 2))),
                                 ("x1_4", (round(w / 4), round(h / 4))),
                                 ("max100", gp.fit_side(src, 100))):
            parts = sorted(f for f in os.listdir(os.path.join(base, folder))
                           if f.startswith(e["name"] + "-"))
            if min(ww, hh) < 32 or (folder == "max100" and (ww, hh) == (w, h)):
                assert not parts             # too small for a 32x32 patch, or a repeat
                continue
            tiles = [np.asarray(Image.open(os.path.join(base, folder, p))) for p in parts]
            assert all(max(t.shape[:2]) <= 64 for t in tiles)
            rows = sorted({p.rsplit("-", 2)[1] for p in parts})
            grid = np.concatenate([np.concatenate([t for p, t in zip(parts, tiles)
                                                   if p.rsplit("-", 2)[1] == r], axis=1)
                                   for r in rows])
            assert grid.shape == (hh, ww, 3)
            if folder == "x1":
                assert np.array_equal(grid, src)     # native pixels untouched
    every_train_file = [f for d in os.listdir(base) for f in os.listdir(os.path.join(base, d))]
    assert {f.rsplit("-", 2)[0] for f in every_train_file} == train_names   # none held out
    native = os.path.join(root, "heldout_native")
    down = os.path.join(root, "heldout_downscaled")
    assert {f[:-4] for f in os.listdir(native)} == heldout_names == {f[:-4] for f in os.listdir(down)}
    p3 = [e for e in entries if e.get("name") == "mate_p3"][0]          # 160x130, held out
    src = read_image(gp.resolve(p3, sources[0])).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(os.path.join(native, "mate_p3.png"))), src)
    assert Image.open(os.path.join(down, "mate_p3.png")).size == (100, 81)
    assert all(max(Image.open(os.path.join(down, f)).size) <= 100 for f in os.listdir(down))
    test = np.load(os.path.join(root, "imagenetcrop", "test_32x32.npy"))
    halves = [np.load(os.path.join(root, f"heldout_patches_{s}.npy")) for s in ("native", "downscaled")]
    assert test.shape == (2 * 5 * len(heldout_names), 32, 32, 3) and test.dtype == np.uint8
    assert np.array_equal(test, np.concatenate(halves))
    summary = json.load(open(os.path.join(root, "summary.json")))
    assert summary["scales"]["x1"]["photos"] == len(train_names)
    assert 0 < summary["heldout_native"]["png_bits_per_dim"] < 8
    # the training loader: tiles as patch sources, the fixed patches as the test set
    for where in (root, str(tmp_path / "compact")):
        train, test_set = training_datasets("imagenetcrop", where, patches_per_image=3)
        assert len(train) == 3 * len(every_train_file)
        assert train[0][0].shape == (3, 32, 32) and train[0][0].dtype == torch.float32
        assert isinstance(test_set, ArrayImages) and len(test_set) == len(test)
        assert torch.equal(test_set[7][0], torch.from_numpy(test[7].transpose(2, 0, 1).astype(np.float32)))
    compact_bytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, fs in os.walk(tmp_path / "compact") for f in fs)
    assert compact_bytes <= 0.4 * 2 ** 20


def test_same_data_on_every_run(tmp_path):
    sources = write_sources(tmp_path)
    _, root = run(tmp_path, sources=sources)
    first = np.load(os.path.join(root, "imagenetcrop", "test_32x32.npy"))
    assert run(tmp_path, sources=sources)[0] == 0          # replaces its own output
    assert np.array_equal(first, np.load(os.path.join(root, "imagenetcrop", "test_32x32.npy")))


def test_near_duplicate_on_both_sides_is_refused_and_nothing_written(tmp_path, capsys):
    rc, root = run(tmp_path, sources=write_sources(tmp_path, duplicate=True))
    assert rc == 2 and "look like the same photo" in capsys.readouterr().err
    assert not os.path.exists(root) and not os.path.exists(root + ".part")


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mine.txt").write_text("keep me")
    rc, root = run(tmp_path)
    assert rc == 2 and "not written by this script" in capsys.readouterr().err
    assert (tmp_path / "photos" / "mine.txt").read_text() == "keep me"


def test_missing_source_says_what_to_install(tmp_path, capsys):
    src, manifest = write_sources(tmp_path)
    os.remove(os.path.join(src, "mate-backgrounds", MATE.lstrip("/"), "p0.png"))
    rc, _ = run(tmp_path, sources=(src, manifest))
    assert rc == 1 and "apt-get install mate-backgrounds" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path):
    assert run(tmp_path, "--factors", "1,0")[0] == 2


def test_images_missing_from_the_manifest_are_reported():
    entries = [entry("mate-backgrounds", MATE + "a.jpg", "train", "mate_a"),
               entry("mate-backgrounds", MATE + "b.svg", None, None)]
    candidates = {"mate-backgrounds": [MATE + "a.jpg", MATE + "b.svg", MATE + "new.JPG",
                                       "/usr/share/doc/mate-backgrounds/copyright"],
                  "matplotlib": ["matplotlib/mpl-data/sample_data/new.png"]}
    assert gp.unlisted(entries, candidates) == [
        ("mate-backgrounds", MATE + "new.JPG"),
        ("matplotlib", "matplotlib/mpl-data/sample_data/new.png")]
