"""Package a trained model and its bins (model/package.py's format).

    python scripts/make_package.py runs/demo_photos --dataset imagenetcrop \\
        --name photos-nz2-w64 --weights raw --out models/demo --force \\
        [--notes '{"heldout_test_elbo": 5.29}'] [--training-hardware '2-core CPU']

SOURCE is anything the loader reads: a training run folder or its
checkpoint.pt (--weights ema, the default, or raw), model_best.pt, a
state-dict file.  Its bins are found like the compress scripts find them
(--bins DIR, else beside the weights, else bins/) and must have been derived
from these weights (recorded fingerprint).  Writes OUT/model.json,
OUT/weights.safetensors (float16 unless --float32) and OUT/bins.pt; the
training budget is read from the run's checkpoint.pt.  A package replaces an
existing one only with --force.  image_compress.py uses models/demo by
default; files coded with a previous model no longer decode (its identity
differs).  Exit status: utils/cli.py.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import cli  # noqa: E402


def parse_args(argv):
    ap = cli.parser("make_package.py", __doc__.split("\n")[0])
    ap.add_argument("source", help="training run folder, checkpoint.pt or state-dict file")
    ap.add_argument("--dataset", required=True, help="dataset the model codes (bins file names)")
    ap.add_argument("--name", required=True, help="model name (stored in every demo container)")
    ap.add_argument("--out", required=True, help="package folder to write")
    ap.add_argument("--weights", default="ema", choices=["ema", "raw"],
                    help="for a training checkpoint: its EMA weights or the raw ones")
    ap.add_argument("--bins", default=None, help="bins folder (default: beside the weights, then bins/)")
    ap.add_argument("--quantbits", type=int, default=10)
    ap.add_argument("--notes", default="{}", help="JSON object of notes (held-out figures, command)")
    ap.add_argument("--training-hardware", default=None, metavar="TEXT",
                    help="where the model was trained (stored in model.json)")
    ap.add_argument("--continues", default=None, metavar="PACKAGE",
                    help="the package (folder or shipped name) this run continued: its training "
                         "record is kept and this run's added to it")
    ap.add_argument("--float32", action="store_true", help="store float32 weights")
    ap.add_argument("--force", action="store_true", help="replace an existing package")
    return ap.parse_args(argv)


def training_budget(got):
    """Steps, epochs, images seen and best test -ELBO of a training checkpoint."""
    info = got["info"] if got["kind"] == "checkpoint" else {}
    cfg = info.get("config") or {}
    budget = dict(steps=info.get("step"), epochs=info.get("epoch"), batch=cfg.get("batch"),
                  best_test_elbo=info.get("best_elbo"), world_size=info.get("world_size"),
                  run_dir=os.path.dirname(os.path.abspath(got["source"])),
                  architecture=got.get("architecture"), device=info.get("device"))
    if budget["steps"] is not None and budget["batch"]:
        budget["images_seen"] = budget["steps"] * budget["batch"]
    spent = info.get("budget") or {}          # training time measured by model/train.py
    if spent:
        budget.update(images_seen=int(spent["images"]), wall_s=round(spent["wall_s"], 1),
                      cpu_s=round(spent["cpu_s"], 1))
    return budget


def main(argv=None):
    args = parse_args(argv)

    def work():
        from model import package
        try:
            notes = json.loads(args.notes)
        except ValueError as exc:
            raise cli.BadInput(f"--notes is not JSON: {exc}") from None
        model = package.load(args.source, dataset=args.dataset, quantbits=args.quantbits,
                             bins_dir=args.bins, weights=args.weights)
        got = package.read_weights(args.source, args.weights)
        if got["kind"] == "package":             # repackaging (e.g. new bins): same record
            training = dict(got["info"].get("training") or {})
            notes = {**(got["info"].get("notes") or {}), **notes}
        else:
            training = training_budget(got)
            training["hardware"] = args.training_hardware
            if args.continues:
                previous = package.read_weights(args.continues)
                if previous["kind"] != "package":
                    raise cli.BadInput(f"--continues {args.continues} is not a model package")
                training = package.combined_training(previous["info"].get("training"), training)
        path = package.write_package(args.out, got["state"], model.architecture, model.bins,
                                     args.name, args.dataset, model.weights_kind,
                                     training=training, notes=notes, half=not args.float32,
                                     force=args.force)
        again = package.load(path)                       # proves it loads
        print(f"wrote {path} (model {again.name}, identity {again.identity[:12]}): "
              + ", ".join(sorted(os.listdir(path))))

    return cli.run_main("make_package.py", work)


if __name__ == "__main__":
    sys.exit(main())
