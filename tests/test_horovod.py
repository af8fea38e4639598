"""The Horovod engine: two ranks under mpiexec keep identical parameters and
end exactly where torch.distributed ends; a failure on one rank ends the whole
job (both engines); and how the engine is chosen, including an installed but
broken Horovod, which is reported instead of silently replaced.

The runs need Horovod (`bash scripts/install_horovod.sh`). Without it they
are skipped with that reason, except under CI (CI=true, as `.ci/run` sets),
where a missing Horovod fails them: CI must exercise this engine."""
import os
import sys

import pytest
import torch

from conftest import ROOT
from model import distributed
from model.train import main as train_main
from test_distributed import (SCRIPT, TINY, check_two_ranks, data, launch,  # noqa: F401 (fixture)
                              mpiexec_two_ranks, run_launcher)

FAILING_SCRIPT = os.path.join(ROOT, "tests", "rank_failure.py")


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def horovod():
    """horovod.torch; skip (fail under CI) when it is not installed, fail
    when it is installed but broken."""
    try:
        hvd = distributed._import_horovod()
    except distributed.DistributedSetupError as e:
        pytest.fail(str(e))
    if hvd is None:
        reason = "Horovod is not installed (bash scripts/install_horovod.sh builds it)"
        if in_ci():
            pytest.fail(reason + "; CI must run the Horovod tests")
        pytest.skip(reason)
    return hvd


def train_two_ranks(data, engine):
    out = data / f"run_{engine}"
    cmd, env = mpiexec_two_ranks(SCRIPT, TINY + [
        "--dist-engine", engine, "--data-root", str(data / "data"), "--out", str(out)])
    return check_two_ranks(launch(cmd, env), out, engine)


def test_horovod_two_ranks_match_torch_distributed(horovod, data):
    hvd_ckpt = train_two_ranks(data, "horovod")  # identical parameters on both ranks
    torch_ckpt = train_two_ranks(data, "torch")
    # Same seed, same shards, and every step all-reduces the same flat
    # gradient buffer. With two ranks each element of the sum is a single
    # float32 addition a + b, exactly rounded and commutative, so Horovod
    # (gloo ring all-reduce) and torch.distributed (gloo) must agree bit for
    # bit; with more ranks the summation order may differ between the two
    # and the results by float32 rounding.
    for part in ("model", "ema"):
        for name, value in hvd_ckpt[part].items():
            assert torch.equal(value, torch_ckpt[part][name]), f"{part}.{name} differs"
    assert hvd_ckpt["best_elbo"] == torch_ckpt["best_elbo"]


@pytest.mark.parametrize("engine", ["horovod", "torch"])
def test_failure_on_one_rank_ends_the_job(engine, data, request):
    if engine == "horovod":
        request.getfixturevalue("horovod")
    # rank 1 raises at step 2 while rank 0 waits for it in the step's
    # all-reduce: the job must end (a hang hits the timeout), non-zero, with
    # the cause and the failing rank named
    cmd, env = mpiexec_two_ranks(FAILING_SCRIPT, TINY + [
        "--dist-engine", engine, "--data-root", str(data / "data"), "--out", str(data / "run")])
    r = run_launcher(cmd, dict(env, FAIL_RANK="1", FAIL_STEP="2"), timeout=120)
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-3000:]
    assert f"engine {engine}" in r.stdout, log[-3000:]
    assert "error on rank 1/2: OSError: injected failure on rank 1 at step 2" in r.stderr, log[-3000:]
    assert "parameters sha256" not in r.stdout


# -- choosing the engine (no Horovod needed) ---------------------------------
MPI_ENV = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
           "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}


def set_launcher(monkeypatch, env):
    for key in list(MPI_ENV) + list(TORCHRUN_ENV) + ["PMI_SIZE", "HOROVOD_SIZE"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def hide_horovod(monkeypatch):
    for name in [m for m in sys.modules if m == "horovod" or m.startswith("horovod.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def no_horovod(monkeypatch):
    """Horovod as if not installed (a None entry makes find_spec say so)."""
    hide_horovod(monkeypatch)
    monkeypatch.setitem(sys.modules, "horovod", None)


@pytest.fixture
def broken_horovod(monkeypatch, tmp_path):
    """A Horovod whose extension does not load, as after a torch upgrade."""
    hide_horovod(monkeypatch)
    package = tmp_path / "horovod"
    (package / "torch").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '0.28.1'\n")
    (package / "torch" / "__init__.py").write_text(
        "raise ImportError('mpi_lib_v2.so: undefined symbol: _ZN3c1015SmallVectorBase')\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_missing_horovod_means_torch_distributed(no_horovod, monkeypatch):
    set_launcher(monkeypatch, MPI_ENV)
    assert distributed._import_horovod() is None
    assert distributed._pick_engine("auto") == ("torch", None)
    with pytest.raises(distributed.DistributedSetupError, match="Horovod is not installed"):
        distributed._pick_engine("horovod")


def test_broken_horovod_is_reported_not_replaced(broken_horovod, monkeypatch, capsys):
    set_launcher(monkeypatch, MPI_ENV)
    with pytest.raises(distributed.DistributedSetupError,
                       match="installed but `import horovod.torch` fails: ImportError: .*undefined symbol"):
        distributed._pick_engine("auto")
    # through the training entry point: one line, exit status 2, before any work
    assert train_main("mnist", ["--dist", "1", "--data-root", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist_train.py: error: Horovod is installed but") and \
        err.count("\n") == 1, err
    # asking for torch.distributed does not touch Horovod at all
    assert distributed._pick_engine("torch") == ("torch", None)


def test_torchrun_never_uses_horovod(broken_horovod, monkeypatch):
    # torchrun's ranks are not MPI ranks: Horovod would see a world of one in
    # every process; auto picks torch.distributed without importing Horovod
    set_launcher(monkeypatch, TORCHRUN_ENV)
    assert distributed._pick_engine("auto") == ("torch", None)
    set_launcher(monkeypatch, {})
    assert distributed._pick_engine("auto") == ("torch", None)
    with pytest.raises(ValueError, match="--dist-engine must be one of"):
        distributed._pick_engine("nccl")
