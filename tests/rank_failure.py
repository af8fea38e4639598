"""Test driver: `model/mnist_train.py` whose rank FAIL_RANK raises in the
middle of training (at step FAIL_STEP), as a full disk, a lost GPU or a bad
file on one node would. Used by tests/test_horovod.py to check that the whole
job then ends with a clear message instead of the other ranks waiting forever
in an all-reduce. Usage: mpiexec -np 2 python tests/rank_failure.py <train flags>."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model import train  # noqa: E402

FAIL_RANK = int(os.environ.get("FAIL_RANK", "1"))
FAIL_STEP = int(os.environ.get("FAIL_STEP", "2"))
_train_step = train.Trainer._train_step


def failing_train_step(self, x, want_stop):
    if self.dist.rank == FAIL_RANK and self.step == FAIL_STEP:
        raise OSError(f"injected failure on rank {self.dist.rank} at step {self.step}")
    return _train_step(self, x, want_stop)


train.Trainer._train_step = failing_train_step
sys.exit(train.main("mnist", sys.argv[1:]))
