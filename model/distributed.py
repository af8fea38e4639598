"""Process-group set-up for data-parallel training.

Engines, chosen by `setup(enabled, engine=...)` (the --dist and --dist-engine
flags):
  * single process (enabled False, or a world of one);
  * Horovod (as in the paper): engine "horovod", or "auto" when an MPI
    launcher (`mpiexec`, `horovodrun`) started the ranks and Horovod is
    installed. A Horovod that is installed but fails to import is an error,
    never a silent switch to torch.distributed;
  * torch.distributed otherwise (always under `torchrun`): NCCL on GPUs,
    gloo on CPU.
Rank and world size come from the torch launcher (`torchrun`: RANK,
WORLD_SIZE, LOCAL_RANK) or from Open MPI's environment (`mpiexec`:
OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK); the rendezvous address defaults to
MASTER_ADDR=127.0.0.1, MASTER_PORT=29500 (set them for multi-node mpiexec).

Invariant: every rank holds identical parameters; gradients are averaged in
one flat all-reduce per step whose buffer also carries the loss and a stop
flag, so all ranks agree on NaN detection and on when to stop.
"""
import importlib.util
import os

import torch
import torch.distributed as tdist


def launcher_env():
    """(rank, world_size, local_rank) from torchrun or Open MPI (or MPICH),
    else None: the one launcher detection of training and compression."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "OMPI_COMM_WORLD_RANK" in env:
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)))
    if "PMI_RANK" in env and "PMI_SIZE" in env:  # MPICH / Intel MPI
        return int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(env.get("MPI_LOCALRANKID", 0))
    return None


ENGINES = ("auto", "horovod", "torch")


class DistributedSetupError(RuntimeError):
    """The process group cannot be formed as asked (a one-line message)."""


def _import_horovod():
    """`horovod.torch`, or None when Horovod is not installed.

    Installed but unusable (an extension built against another torch, a
    missing MPI library, no PyTorch support) raises DistributedSetupError:
    quietly falling back would run an mpiexec job on another engine than the
    one its author installed."""
    if importlib.util.find_spec("horovod") is None:
        return None
    try:
        import horovod.torch as hvd
    except Exception as e:
        raise DistributedSetupError(
            f"Horovod is installed but `import horovod.torch` fails: {type(e).__name__}: {e} "
            "(rebuild it with `bash scripts/install_horovod.sh`, uninstall it, "
            "or pass --dist-engine torch)") from e
    return hvd


def _mpi_launched():
    """Started by an MPI launcher (mpiexec/mpirun, also under horovodrun) or by
    horovodrun's gloo mode: the launchers Horovod can join. torchrun's own
    variables win, as in `_launcher_env`."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return False
    return any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "HOROVOD_SIZE"))


def _pick_engine(requested):
    """("horovod", hvd) or ("torch", None) for --dist-engine `requested`."""
    if requested not in ENGINES:
        raise ValueError(f"--dist-engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested == "torch" or (requested == "auto" and not _mpi_launched()):
        return "torch", None
    hvd = _import_horovod()
    if hvd is not None:
        return "horovod", hvd
    if requested == "horovod":
        raise DistributedSetupError("--dist-engine horovod but Horovod is not installed "
                                    "(build it with `bash scripts/install_horovod.sh`)")
    return "torch", None


class Distributed:
    """Rank bookkeeping and the few collectives the training loop needs."""

    def __init__(self, engine="none", rank=0, world_size=1, local_rank=0, hvd=None):
        self.engine = engine
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._hvd = hvd

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1

    def all_reduce_sum(self, tensor):
        """In-place sum over ranks (no-op in a world of one)."""
        if not self.active:
            return tensor
        if self.engine == "horovod":
            self._hvd.allreduce_(tensor, op=self._hvd.Sum, name="flat")
        else:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor, root=0):
        if not self.active:
            return tensor
        if self.engine == "horovod":
            self._hvd.broadcast_(tensor, root_rank=root)
        else:
            tdist.broadcast(tensor, src=root)
        return tensor

    def broadcast_module(self, module, root=0):
        """Copy every parameter and buffer of `module` from rank `root`."""
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                self.broadcast_(t.data, root)

    def all_gather_object(self, obj):
        """List of every rank's `obj` (picklable), in rank order."""
        if not self.active:
            return [obj]
        if self.engine == "horovod":
            return self._hvd.allgather_object(obj)
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.active and self.engine == "torch":
            tdist.barrier()
        elif self.active and self.engine == "horovod":
            self._hvd.allreduce(torch.zeros(1), name="barrier")

    def shutdown(self, finished=True):
        """Leave the process group. `finished` (every rank ended its work
        normally) first waits for all ranks: a rank that tears its gloo group
        down while a peer is still writing its checkpoint can abort in the
        transport's threads ("terminate called without an active
        exception"). After an error there is no barrier, which a peer stuck
        in another collective would never reach."""
        if self.engine == "torch" and tdist.is_initialized():
            if finished:
                self.barrier()
            tdist.destroy_process_group()
        elif self.engine == "horovod":
            self._hvd.shutdown()


def setup(enabled, use_cuda=False, engine="auto"):
    """Join the process group when `enabled` (the --dist flag) with `engine`
    (the --dist-engine flag: auto, horovod or torch)."""
    if not enabled:
        return Distributed()
    engine, hvd = _pick_engine(engine)
    if engine == "horovod":
        hvd.init()
        return Distributed("horovod", hvd.rank(), hvd.size(), hvd.local_rank(), hvd)
    launched = launcher_env()
    if launched is None:
        raise DistributedSetupError("--dist=1 but no launcher found: start with `torchrun "
                                    "--nproc_per_node=N ...` or `mpiexec -np N ...` (or pass --dist=0)")
    rank, world, local = launched
    if world == 1:
        return Distributed("none", 0, 1, 0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if use_cuda else "gloo"
    tdist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return Distributed("torch", rank, world, local)
