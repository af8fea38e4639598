"""Where the networks run and how to make their outputs reproducible.

``resolve_device`` is the one interpretation of ``--device auto|cpu|cuda[:N]``
(and the paper's ``--gpu N``) for every script; ``deterministic_torch`` is
the setting the coders need so that an encoder and a decoder compute
bit-identical network outputs.
"""
import contextlib

import torch

from utils.cli import BadInput


def resolve_device(choice="auto", gpu=None, local_rank=0):
    """torch.device for ``choice``: 'auto' is CUDA when available, else CPU;
    'cuda' without an index is device ``local_rank`` (a process's own GPU
    under mpiexec/torchrun); ``gpu`` (the paper's --gpu N) means cuda:N.
    BadInput (one line) for a malformed choice or CUDA where there is none."""
    if gpu is not None:
        if choice not in ("auto", "cuda", f"cuda:{gpu}"):
            raise BadInput(f"--gpu {gpu} and --device {choice} disagree; pass one of them")
        choice = f"cuda:{gpu}"
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        choice = f"cuda:{local_rank}"
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"--device {choice!r} is not a device (auto, cpu, cuda, cuda:N): "
                       f"{str(exc).splitlines()[0]}") from None
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {choice!r}: only auto, cpu, cuda and cuda:N are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {choice}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_from_args(args, local_rank=0):
    """resolve_device for a parser built with utils.cli.add_device_argument."""
    return resolve_device(args.device, getattr(args, "gpu", None), local_rank)


@contextlib.contextmanager
def deterministic_torch():
    """One intra-op thread and deterministic kernels for the coders' network
    calls: a convolution's float32 sums may be ordered differently with
    another thread count, and one ulp of difference in a mean changes a
    quantized CDF, so the decoder would read different symbols.  Restores
    the previous settings afterwards."""
    threads = torch.get_num_threads()
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved
