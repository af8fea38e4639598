"""Train the Bit-Swap hierarchical VAE on random 32x32 patches of full-size ImageNet images.

Usage: python model/imagenetcrop_train.py [--nz=N --width=W ... --dist=1]; the
defaults are the paper's (model/config.py); see model/train.py.
"""
import os
import sys

# run as a script: make the repository root importable instead of model/
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from model.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("imagenetcrop"))
