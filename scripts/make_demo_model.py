"""Package a trained model and its bins as the shipped demo model.

    python scripts/make_demo_model.py --run runs/imagenetcrop_nz4 \\
        --bins-dir bins --dataset imagenetcrop --quantbits 10 \\
        --name photos-nz4-w64 [--out models/demo] [--info '{"heldout_elbo": 3.9}']

Reads the EMA weights from RUN/model_best.pt (the architecture is read off
the state dict) and the bins written by discretization.py from --bins-dir
(the compact ``{dataset}_nz{nz}_zranges{q}.pt``, or the authors' two files);
writes OUT/model.json, OUT/checkpoint.pt (float16) and OUT/bins.pt (compact)
-- or OUT/endpoints.pt + OUT/centres.pt when only the authors' files exist.  image_compress.py loads OUT by default
when OUT is models/demo.  Files made with a previous model no longer decode
(their model hash differs).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from model.hvae import HVAE  # noqa: E402
from utils import imagecodec  # noqa: E402
from utils.bins import BinsError, LatentBins  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="training output folder (holding model_best.pt)")
    ap.add_argument("--weights", default="model_best.pt", help="state dict file inside --run")
    ap.add_argument("--bins-dir", default="bins")
    ap.add_argument("--dataset", required=True, help="dataset name used in the bins file names")
    ap.add_argument("--quantbits", type=int, default=10)
    ap.add_argument("--name", required=True, help="model name stored in every container")
    ap.add_argument("--out", default=os.path.join(imagecodec.REPO_ROOT, "models", "demo"))
    ap.add_argument("--info", default="{}", help="JSON object of notes (training command, held-out ELBO)")
    ap.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    args = ap.parse_args(argv)
    try:
        weights = torch.load(os.path.join(args.run, args.weights), map_location="cpu", weights_only=True)
        arch = HVAE.architecture_from_state_dict(weights)
        bins = LatentBins.load(args.bins_dir, args.dataset, arch["nz"], args.quantbits)
        info = json.loads(args.info)
    except (OSError, KeyError, ValueError, BinsError) as exc:
        sys.exit(f"make_demo_model: error: {exc}")
    path = imagecodec.write_model_dir(args.out, weights, arch, bins, args.name, info=info,
                                      half=not args.float32)
    model = imagecodec.load_model(path, "cpu")           # proves it loads
    print(f"wrote {path} (model {model.name}, hash {model.hash[:12]}): "
          + ", ".join(sorted(os.listdir(args.out))))


if __name__ == "__main__":
    main()
