"""Two-process data-parallel training under torchrun and under mpiexec keeps
the parameters bitwise identical on both ranks."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import synthetic_data as sd
from conftest import ROOT

TINY = ["--nz", "2", "--width", "8", "--zchannels", "1", "--nprocessing", "1", "--blocks", "2",
        "--batch", "16", "--init-batches", "2", "--no-progress", "--max-steps", "6",
        "--interval", "1", "--dist", "1"]
SCRIPT = os.path.join(ROOT, "model", "mnist_train.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launcher(cmd, env_extra, timeout=120):
    """The finished launcher process; a job still running after `timeout`
    seconds (a hang) raises subprocess.TimeoutExpired."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def launch(cmd, env_extra):
    r = run_launcher(cmd, env_extra)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def mpiexec_two_ranks(script, args):
    """(command, extra environment) running `python script args` as two
    Open MPI ranks on this machine, as root too."""
    assert shutil.which("mpiexec"), "mpiexec missing: scripts/setup.sh installs openmpi-bin"
    cmd = ["mpiexec", "--oversubscribe", "-np", "2", sys.executable, script] + args
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "MASTER_PORT": str(free_port()), "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    return cmd, env


def check_two_ranks(stdout, out, engine="torch"):
    digests = dict(re.findall(r"rank (\d)/2: parameters sha256 ([0-9a-f]{64})", stdout))
    assert set(digests) == {"0", "1"}, stdout
    assert digests["0"] == digests["1"]
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6 and len(ckpt["rng"]) == 2
    assert f"engine {engine}" in stdout and "on 2 rank(s)" in stdout
    assert ckpt["best_elbo"] < float("inf")
    return ckpt


@pytest.fixture
def data(tmp_path):
    sd.write_mnist(str(tmp_path / "data"))
    return tmp_path


def test_torchrun_two_processes(data):
    out = data / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", SCRIPT] + TINY + [
        "--data-root", str(data / "data"), "--out", str(out)]
    check_two_ranks(launch(cmd, {}), out)


def test_mpiexec_two_processes(data):
    # --dist-engine torch: under mpiexec, auto would pick Horovod when it is
    # installed (tests/test_horovod.py covers that engine)
    out = data / "run"
    cmd, env = mpiexec_two_ranks(SCRIPT, TINY + [
        "--dist-engine", "torch", "--data-root", str(data / "data"), "--out", str(out)])
    check_two_ranks(launch(cmd, env), out)


def _leave(rank, port, delay, times):
    """One rank of test_ranks_leave_the_group_together: join a gloo group of
    two, wait `delay[rank]` seconds (a rank still writing its checkpoint),
    shut down as after a finished run, and record when it entered and left."""
    import time
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, ROOT)
    from model import distributed
    dist = distributed.setup(True, engine="torch")
    time.sleep(delay[rank])
    entered = time.time()
    dist.shutdown(finished=True)
    times[rank] = (entered, time.time())


def test_ranks_leave_the_group_together():
    # a rank that destroys its gloo group while a peer is still busy can abort
    # at exit ("terminate called without an active exception", a few times in
    # a hundred mpiexec runs on a loaded machine): after a finished run, no
    # rank may leave before the slowest one has reached its shutdown
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_leave, args=(free_port(), {0: 1.5, 1: 0.0}, shared), nprocs=2, join=True)
        times = dict(shared)
    slow_entered = times[0][0]
    fast_left = times[1][1]
    assert fast_left >= slow_entered, (fast_left, slow_entered)
