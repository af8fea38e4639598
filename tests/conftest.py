"""Shared test set-up: the repository root on sys.path, few torch threads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(2)
DATA = os.path.join(ROOT, "tests", "data")
