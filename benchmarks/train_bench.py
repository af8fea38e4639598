"""Training throughput (images/s) of the paper's MNIST model (nz=8, width 61,
batch 128) through the real training step (forward, backward, gradient
clipping, Adam, EMA). Not a test: run it and quote the median.

  python benchmarks/train_bench.py [--steps 12 --repeats 3 --nz 8 --width 61] [--ceiling]
  python benchmarks/train_bench.py --device cuda --precision fp32,tf32,bf16 --batch 128,512 \
      --channels-last both

--batch, --precision (model/speed.py) and --channels-last (on, off or both)
take lists: one line per combination, all in one process.

--ceiling also times, in the same run, forward + backward of every
convolution with at least 16 input and output channels at the model's own
shapes (the residual layers: most of the arithmetic) with nothing else, and
prints the images/s a step could reach if everything else were free: an
upper bound set by this CPU's convolution kernels.
"""
import os
import statistics
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import train as T  # noqa: E402
from model.distributed import Distributed  # noqa: E402
from utils import cli  # noqa: E402
from utils.data import ArrayImages  # noqa: E402
from utils.device import device_from_args  # noqa: E402


def main(argv=None):
    p = cli.parser("train_bench.py", __doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--nz", type=int, default=8)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", default="128", help="batch size(s), comma-separated")
    p.add_argument("--steps", type=int, default=12, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    cli.add_device_argument(p)
    p.add_argument("--precision", default="fp32",
                   help="fp32, tf32 and/or bf16 (model/speed.py), comma-separated")
    p.add_argument("--channels-last", nargs="?", const="on", default="off",
                   choices=("on", "off", "both"),
                   help="hidden activations in channels_last (HVAE.channels_last)")
    p.add_argument("--ceiling", action="store_true",
                   help="also time the large convolutions alone (an upper bound on images/s)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    layouts = {"on": [True], "off": [False], "both": [False, True]}[a.channels_last]
    device = str(device_from_args(a))
    for batch in [int(b) for b in a.batch.split(",")]:
        for precision in a.precision.split(","):
            for channels_last in layouts:
                bench(a, device, batch, precision, channels_last)


def bench(a, device, batch, precision, channels_last):
    cfg, args = T.parse_args(a.dataset, ["--nz", str(a.nz), "--batch", str(batch),
                                         "--device", device, "--init-batches", "1",
                                         "--precision", precision, "--out", "/nonexistent"]
                             + (["--width", str(a.width)] if a.width else [])
                             + (["--channels-last"] if channels_last else []))
    rng = np.random.default_rng(0)
    c, h, w = cfg.xs
    images = rng.integers(0, 256, size=(batch * 2, c, h, w), dtype=np.uint8)
    trainer = T.Trainer(cfg, args, Distributed(), datasets=(ArrayImages(images), ArrayImages(images)))
    trainer.start()
    cuda = trainer.device.type == "cuda"
    x = torch.from_numpy(images[:batch].astype(np.float32)).to(trainer.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(a.warmup):
        trainer._train_step(x, False)
    if cuda:
        torch.cuda.synchronize()
    rates, cpu_rates = [], []
    for _ in range(a.repeats):
        t, c0 = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            trainer._train_step(x, False)
        if cuda:
            torch.cuda.synchronize()
        rates.append(a.steps * batch / (time.perf_counter() - t))
        # CPU seconds spread over the threads: what an idle machine would give
        # (the CPU here is shared, so wall-clock rates swing with the load)
        cpu = (time.process_time() - c0) / torch.get_num_threads()
        cpu_rates.append(a.steps * batch / cpu)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    layout = "channels_last" if channels_last else "NCHW"
    if a.ceiling:
        ceiling, gflop = conv_ceiling(trainer.model, x, a.repeats)
        print(f"large convolutions alone (forward + backward, {gflop:.2f} GFLOP per image): "
              f"median {ceiling:.1f} images/s: the most a training step can reach here")
    where = (torch.cuda.get_device_name(trainer.device) if cuda else
             f"{torch.get_num_threads()} threads, load avg {load:.2f}")
    line = (f"{layout} {precision} {a.dataset} nz={cfg.nz} width={cfg.width} batch={batch} on "
            f"{trainer.device} ({where}): median {statistics.median(rates):.1f} images/s "
            f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")
    if not cuda:
        line += f"; CPU-time rate median {statistics.median(cpu_rates):.1f} images/s"
    print(line, flush=True)


def conv_ceiling(model, x, repeats):
    """(images/s, GFLOP per image) of forward + backward of the model's large
    convolutions alone, each timed at the shapes one training batch gives it."""
    import torch.nn.functional as F
    from utils.modules import WnConv2d
    shapes = []
    hooks = [m.register_forward_hook(lambda m, inp, out: shapes.append(
        (tuple(inp[0].shape), tuple(m.v.shape), m.padding)))
        for m in model.modules()
        if isinstance(m, WnConv2d) and m.in_channels >= 16 and m.out_channels >= 16]
    with torch.no_grad():
        model.loss(x)
    for h in hooks:
        h.remove()
    dev = x.device
    calls = [(torch.randn(xs, requires_grad=True, device=dev),
              torch.randn(ws, requires_grad=True, device=dev), pad) for xs, ws, pad in shapes]
    grads = [torch.randn(xs[0], ws[0], xs[2], xs[3], device=dev) for xs, ws, _ in shapes]
    macs = sum(xs[0] * xs[2] * xs[3] * int(np.prod(ws)) for xs, ws, _ in shapes)

    def one_pass():
        for (inp, w, pad), g in zip(calls, grads):
            torch.autograd.grad(F.conv2d(inp, w, None, 1, pad), (inp, w), g)
    one_pass()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one_pass()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    batch = x.shape[0]
    # forward + input gradient + weight gradient: 3 x 2 FLOP per multiply-add
    return batch / statistics.median(times), 6 * macs / batch / 1e9


if __name__ == "__main__":
    main()
