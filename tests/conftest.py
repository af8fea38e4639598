"""Shared test set-up: the repository root on sys.path, few torch threads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
DATA = os.path.join(ROOT, "tests", "data")


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one thread is several times faster than two on a
    shared 2-core machine (no spinning workers); restored afterwards. Test
    modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
