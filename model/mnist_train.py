"""Train the Bit-Swap hierarchical VAE on MNIST (padded to 32x32).

Usage: python model/mnist_train.py [--nz=N --width=W ... --dist=1]; the
defaults are the paper's (model/config.py); see model/train.py.
"""
import os
import sys

# run as a script: make the repository root importable instead of model/
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from model.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("mnist"))
