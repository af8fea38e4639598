"""Bit-Swap / BB-ANS compression experiments on imagenetcrop (the paper's protocol).

    python imagenetcrop_compress.py --nz N --bitswap 1 [--experiments 100] [--no-decode] ...

All the logic lives in utils/experiment.py; see its docstring for the
metrics, outputs and exit status.
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("imagenetcrop"))
