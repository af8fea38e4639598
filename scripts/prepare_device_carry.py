"""Prepare what travels to a GPU machine with the working tree: compact data and wheels.

    python scripts/prepare_device_carry.py [--data-root data] [--photos-mib 24]

Writes (both folders are git-ignored):
  .carry/mnist.npz        MNIST train and test, uint8 (N, 28, 28), compressed (about 11 MiB),
                          from DATA_ROOT/MNIST/raw
  .carry/photos/          a compact copy of the photo corpus (training tiles cropped to fit
                          --photos-mib, and the held-out test_32x32.npy), made by
                          scripts/get_demo_photos.py --compact-only from --photos-root, and
                          heldout_parts.json (how many test patches are native-scale, how
                          many downscaled)
  .whl/                   wheels of the pure-Python packages the GPU machine lacks
                          (tensorboardX at the version of requirements.txt), for Python 3.12
                          on x86-64, fetched with pip download
and checks that the working tree that travels (tracked and untracked
not-ignored files) plus both folders stays under --limit-mib (the device
tool takes 64 MiB). scripts/train_shipped.py --carry .carry reads the data.
Exit status: utils/cli.py.
"""
import io
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils import cli  # noqa: E402

# Missing on the GPU machine's image (its package list: safetensors, tqdm, scipy,
# scikit-learn, scikit-image, pillow, torchvision are there).
WHEELS = ("tensorboardX",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def parse_args(argv):
    p = cli.parser("prepare_device_carry.py", __doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.path.join(ROOT, "data"),
                   help="folder holding MNIST/raw")
    p.add_argument("--photos-root", default=None,
                   help="the photo corpus written by scripts/get_demo_photos.py "
                        "(default: DATA_ROOT/photos)")
    p.add_argument("--photos-mib", type=float, default=24.0, help="size of the compact photo copy")
    p.add_argument("--carry", default=os.path.join(ROOT, ".carry"), help="data folder to write")
    p.add_argument("--wheels", default=os.path.join(ROOT, ".whl"), help="wheel folder to write")
    p.add_argument("--no-wheels", action="store_true", help="skip pip download")
    p.add_argument("--limit-mib", type=float, default=63.0,
                   help="refuse when the travelling tree plus both folders is larger")
    return p.parse_args(argv)


def write_mnist(data_root, carry):
    import numpy as np
    from utils.data import DataNotFoundError, load_images
    try:
        train, test = (load_images("mnist", s, data_root)[:, 0] for s in ("train", "test"))
    except DataNotFoundError as exc:
        raise cli.BadInput(str(exc)) from None
    buf = io.BytesIO()
    np.savez_compressed(buf, train=train, test=test)
    path = os.path.join(carry, "mnist.npz")
    cli.write_atomic(path, buf.getvalue())
    return path


def write_photos(photos_root, carry, mib):
    if not os.path.isfile(os.path.join(photos_root, "imagenetcrop", "test_32x32.npy")):
        raise cli.BadInput(f"no photo corpus at {photos_root}: run `python scripts/get_demo_photos.py "
                           f"--root {photos_root}` first")
    out = os.path.join(carry, "photos")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "get_demo_photos.py"), "--root", photos_root,
           "--compact", out, "--compact-only", "--compact-mib", str(mib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise cli.RunFailure(f"get_demo_photos.py --compact-only failed: "
                             f"{cli.one_line(done.stderr or done.stdout)}")
    write_heldout_parts(photos_root, out)
    return out


def write_heldout_parts(photos_root, out):
    """OUT/heldout_parts.json: how many of test_32x32.npy's patches are
    native-scale and how many downscaled (checked against the two halves
    get_demo_photos.py writes), so that both are reported apart."""
    import json
    import numpy as np
    from utils.device_data import PARTS_FILE
    halves = [os.path.join(photos_root, f"heldout_patches_{p}.npy") for p in ("native", "downscaled")]
    if not all(map(os.path.isfile, halves)):
        return None
    test = np.load(os.path.join(out, "imagenetcrop", "test_32x32.npy"))
    native, down = (np.load(h) for h in halves)
    if not np.array_equal(test, np.concatenate([native, down])):
        raise cli.RunFailure(f"{photos_root}: test_32x32.npy is not the native then the "
                             "downscaled held-out patches")
    path = os.path.join(out, PARTS_FILE)
    cli.write_atomic(path, json.dumps({"native": len(native), "downscaled": len(down)}).encode())
    return path


def pinned_version(name):
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            m = re.match(rf"\s*{re.escape(name)}==([^\s#]+)", line, re.IGNORECASE)
            if m:
                return m.group(1)
    raise cli.RunFailure(f"{name} is not pinned in requirements.txt")


def download_wheels(folder):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    for name in WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", folder,
               f"{name}=={pinned_version(name)}"]
        for plat in PLATFORMS:
            cmd[-1:-1] = ["--platform", plat]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise cli.RunFailure(f"pip download {name} failed: {cli.one_line(done.stderr)}")
    return sorted(os.listdir(folder))


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def travelling_tree_bytes():
    """Bytes of the tracked and untracked, not ignored files (what the tool sends)."""
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    paths = [p for p in out.decode().split("\0") if p]
    return sum(os.path.getsize(os.path.join(ROOT, p)) for p in paths
               if os.path.isfile(os.path.join(ROOT, p)) and not os.path.islink(os.path.join(ROOT, p)))


def run(args):
    os.makedirs(args.carry, exist_ok=True)
    print(f"wrote {write_mnist(args.data_root, args.carry)}")
    photos_root = args.photos_root or os.path.join(args.data_root, "photos")
    print(f"wrote {write_photos(photos_root, args.carry, args.photos_mib)}")
    if not args.no_wheels:
        print(f"wrote {args.wheels}: {', '.join(download_wheels(args.wheels))}")
    tree, carry = travelling_tree_bytes(), folder_bytes(args.carry)
    wheels = folder_bytes(args.wheels) if os.path.isdir(args.wheels) else 0
    total = (tree + carry + wheels) / 2 ** 20
    print(f"travels: working tree {tree / 2 ** 20:.1f} MiB + {os.path.basename(args.carry)} "
          f"{carry / 2 ** 20:.1f} MiB + {os.path.basename(args.wheels)} {wheels / 2 ** 20:.1f} MiB "
          f"= {total:.1f} MiB (limit {args.limit_mib:g})")
    if total > args.limit_mib:
        raise cli.RunFailure(f"{total:.1f} MiB would travel, over {args.limit_mib:g}: pass a smaller "
                             "--photos-mib")


def main(argv=None):
    args = parse_args(argv)
    return cli.run_main("prepare_device_carry.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
