"""The paper's MNIST experiment end to end, from trained checkpoints to REPRODUCTION.md.

    python scripts/reproduce_mnist.py [--nz 2,4,8] [--params-dir runs] [--bins DIR]
        [--experiments 100] [--images 100] [--data-root data] [--out reproduction]

For every nz (the model PARAMS_DIR/mnist_nz{nz}/model_best.pt, or
--params-template with ``{nz}``: anything model/package.py loads, e.g. the
shipped packages ``mnist-nz{nz}``):
1. bins: a package's own; otherwise found beside the weights (or in --bins),
   or derived there with discretization.py (--compact-only);
2. Bit-Swap and BB-ANS (utils/experiment.py, i.e. mnist_compress.py
   --bitswap 1 / 0) on E experiments x n test images, every image decoded and
   checked; results under OUT/results/mnist{nz}/;
then benchmark_compress.py mnist on the same images (checked: same indices),
the figures of scripts/plot_results.py (OUT/mnist_cma.png, OUT/mnist_layers.png),
the training budget read from each run folder (checkpoint.pt: epochs, steps,
best test -ELBO; TensorBoard event files: wall time; a stdout log
``{run}.log`` or ``{run}/*.log``: device), and finally
OUT/reproduction.json (every number) and OUT/REPRODUCTION.md (tables generated
from it, the paper's numbers beside them).  The report's discussion section,
between the DISCUSSION markers, is written by hand and kept when the report is
regenerated.

``--export FOLDER`` instead writes each model, with its bins, as a package
FOLDER/mnist-nz{nz}/ (model/package.py: float16 weights, bins, model.json
holding the run's training budget and hardware; how the repository's
models/mnist-nz*/ were made); a report generated from packages reads the
budget from their model.json.

Every step runs in this process (the scripts' ``main(argv)``); the first
failing step stops the run with its exit status (2: bad input, 1: decode
mismatch or a failed codec).  --reuse-results skips a compression whose
summary JSON already matches this configuration, records the same
weights-and-bins fingerprint and the current results format (long runs can
be resumed).

Initial bits are reported under both definitions (utils/experiment.py): the
paper's (what the first image's first pops take, plus one 32-bit word; the
paper's CMA figures are on this one) and the strict one (the deepest point
the message reaches below its start) beside it.  -ELBO is the paper's (one
fresh continuous posterior sample per image); net - ELBO is against it, and
the coder's overhead is net minus the -ELBO at the coded latents.
"""
import glob
import json
import os
import platform
import re
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils import cli  # noqa: E402
from utils.cli import write_atomic  # noqa: E402

DATASET = "mnist"
DIMS_CODED, DIMS_PIXELS = 1024, 784     # MNIST is coded padded to 32x32
TO_PIXELS = DIMS_CODED / DIMS_PIXELS
SCHEMES = (("bitswap", "Bit-Swap", 1), ("bbans", "BB-ANS", 0))

# The paper's MNIST results (authors' result arrays, 100 x 100 protocol),
# bits/dim at 32x32; None where the paper gives no figure.
PAPER = {
    2: dict(elbo=0.980, bitswap=dict(net=0.980, cma1=2.64, cma100=0.997),
            bbans=dict(net=None, cma1=5.04, cma100=1.021)),
    4: dict(elbo=0.970, bitswap=dict(net=0.972, cma1=2.60, cma100=0.988),
            bbans=dict(net=None, cma1=8.90, cma100=1.050)),
    8: dict(elbo=0.972, bitswap=dict(net=0.974, cma1=2.56, cma100=0.990),
            bbans=dict(net=None, cma1=16.79, cma100=1.132)),
}
PAPER_LZMA_PIXELS = 1.49      # the target: Bit-Swap CMA@100 below LZMA (28x28)

DISCUSSION_BEGIN = "<!-- DISCUSSION:BEGIN (hand-written; kept when the report is regenerated) -->"
DISCUSSION_END = "<!-- DISCUSSION:END -->"
DISCUSSION_TEMPLATE = """\
*(No discussion written yet: replace this text; it is kept when the report is
regenerated.)* Points a discussion covers:

- the training budget against the paper's (GPU-days) and what it does to -ELBO;
- how much of each gap to the paper is the model (-ELBO) and how much the
  coder (net - ELBO, initial bits); the coder part must behave like the paper's;
- Bit-Swap vs BB-ANS CMA@1 as nz grows; CMA@100 vs the classical codecs;
- every other difference from the paper, and its cause.
"""


class StepFailed(cli.RunFailure):
    """A step failed with this exit status (a script's own message is
    already printed; ``message`` replaces the generic one otherwise)."""

    def __init__(self, step, status, message=None):
        super().__init__(message or f"{step} failed (exit status {status})")
        self.status = status


# ------------------------------------------------------------------ steps

def checkpoint_path(args, nz):
    return args.params_template.format(nz=nz, params_dir=args.params_dir)


def results_dir(args, nz):
    return os.path.join(args.out, "results", f"{DATASET}{nz}")


def ensure_bins(args, nz, params):
    """'found' when the model's bins exist (a package's own, or in --bins /
    beside the weights), else derive the compact ones with discretization.py."""
    from model import package
    try:
        package.load(params, dataset=DATASET, nz=nz, quantbits=args.quantbits,
                     bins_dir=args.bins)
        return "found"
    except package.BinsNotFound:
        pass
    except package.ModelError as exc:
        raise StepFailed(f"loading {params}", exc.status, str(exc)) from None
    import discretization
    status = discretization.main([
        DATASET, "--nz", str(nz), "--quantbits", str(args.quantbits), "--params", params,
        "--data-root", args.data_root, "--compact-only", "--samples-per-bin",
        str(args.samples_per_bin), "--no-progress"] + (["--bins", args.bins] if args.bins else []))
    if status:
        raise StepFailed(f"discretization.py (nz={nz})", status)
    return "derived"


def summary_path(args, nz, scheme):
    return os.path.join(results_dir(args, nz), f"{scheme}_{args.quantbits}bits_summary.json")


def current_fingerprint(args, nz, params):
    """The fingerprint (model tensors + bins) a fresh run would record: results
    made from another checkpoint or other bins at the same paths are not reused."""
    from utils import experiment
    net, bins = experiment.load_model(DATASET, params, nz, args.quantbits, args.bins)
    return experiment.fingerprint(net, bins)


def compress(args, nz, params, scheme, bitswap):
    """One mnist_compress.py run; returns its summary JSON (a dict)."""
    from utils import experiment
    path = summary_path(args, nz, scheme)
    if args.reuse_results and os.path.exists(path):
        old = _read_json(path)
        if (old.get("decoded") and old.get("results_format") == experiment.RESULTS_FORMAT
                and old.get("experiments") == args.experiments
                and old.get("images") == args.images and old.get("seed") == args.seed
                and old.get("fingerprint") == current_fingerprint(args, nz, params)):
            print(f"reusing {path}")
            return old
    status = experiment.main(DATASET, [
        "--nz", str(nz), "--bitswap", str(bitswap), "--quantbits", str(args.quantbits),
        "--experiments", str(args.experiments), "--images", str(args.images),
        "--seed", str(args.seed), "--params", params, "--device", "cpu",
        "--data-root", args.data_root, "--out", results_dir(args, nz), "--no-progress"]
        + (["--bins", args.bins] if args.bins else []))
    if status:
        raise StepFailed(f"mnist_compress.py --nz {nz} --bitswap {bitswap}", status)
    return _read_json(path)


def benchmark(args):
    import benchmark_compress
    path = os.path.join(args.out, "results", "benchmark_mnist.json")
    status = benchmark_compress.main([
        DATASET, "--experiments", str(args.experiments), "--images", str(args.images),
        "--seed", str(args.seed), "--data-root", args.data_root, "--out", path,
        "--no-progress"])
    if status:
        raise StepFailed("benchmark_compress.py mnist", status)
    return _read_json(path)


def plot(args):
    from scripts import plot_results
    status = plot_results.main([DATASET, "--results", os.path.join(args.out, "results"),
                                "--nz", ",".join(map(str, args.nz)),
                                "--quantbits", str(args.quantbits), "--out", args.out])
    if status:
        raise StepFailed("scripts/plot_results.py", status)
    return [os.path.join(args.out, f"{DATASET}_{kind}.png") for kind in ("cma", "layers")]


# ------------------------------------------------------------------ training budget

def training_budget(params):
    """What the model says about its training (None where unknown): a
    package's model.json, else the run folder of the weights (checkpoint.pt:
    epochs, steps, best test -ELBO; TensorBoard event files: wall time; a
    stdout log ``{run}.log`` or ``{run}/*.log``: device)."""
    from model import package
    got = package.read_weights(params)
    run = os.path.dirname(os.path.abspath(got["source"]))
    info = dict(run_dir=run, parameters=None, epochs=None, steps=None, batch=None,
                images_seen=None, best_test_elbo=None, world_size=None, architecture=None,
                tensorboard_wall_s=None, tensorboard_files=0, log_wall_s=None, device=None,
                log_files=[], hardware=None)
    info["parameters"] = int(sum(v.numel() for k, v in got["state"].items()
                                 if not k.endswith("num_batches_tracked")))
    if got["kind"] == "package":
        # an export: the run's budget travels in its model.json
        recorded = got["info"].get("training", {})
        info.update({k: v for k, v in recorded.items() if k in info and k != "parameters"})
        info["exported_from"] = recorded.get("run_dir")
        return info
    ckpt = os.path.join(run, "checkpoint.pt")
    if os.path.exists(ckpt):
        obj = package.read_checkpoint(ckpt)
        cfg = obj.get("config", {})
        info.update(epochs=int(obj["epoch"]), steps=int(obj["step"]),
                    batch=cfg.get("batch"), world_size=obj.get("world_size"),
                    best_test_elbo=_finite(obj.get("best_elbo")),
                    architecture=obj.get("architecture"))
        if info["batch"]:
            info["images_seen"] = info["steps"] * int(info["batch"])
    events = sorted(glob.glob(os.path.join(run, "logs", "events.out.tfevents.*")))
    spans = [s for s in map(_event_span, events) if s is not None]
    if spans:
        info["tensorboard_wall_s"] = float(sum(spans))
        info["tensorboard_files"] = len(spans)
    logs = [p for p in [run + ".log"] + sorted(glob.glob(os.path.join(run, "*.log")))
            if os.path.isfile(p)]
    info["log_files"] = logs
    for path in logs:
        wall, device = _parse_stdout_log(path)
        if wall is not None:
            info["log_wall_s"] = (info["log_wall_s"] or 0.0) + wall
        info["device"] = info["device"] or device
    return info


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _event_span(path):
    """Seconds between the first and last event of one TensorBoard file
    (one training session); None when it holds fewer than two events."""
    from tensorboardX.proto import event_pb2
    times = []
    with open(path, "rb") as f:
        while True:
            head = f.read(12)                    # uint64 length, uint32 crc
            if len(head) < 12:
                break
            n = int.from_bytes(head[:8], "little")
            data = f.read(n)
            f.read(4)                            # crc of the data
            if len(data) < n:
                break                            # a file still being written
            event = event_pb2.Event()
            event.ParseFromString(data)
            times.append(event.wall_time)
    return max(times) - min(times) if len(times) >= 2 else None


EPOCH_LINE = re.compile(r"^epoch (\d+) step (\d+): .*?, (\d+)s")


def _parse_stdout_log(path):
    """(wall seconds at the last epoch line of every session, summed; device)."""
    total, last, device = 0.0, None, None
    with open(path, errors="replace") as f:
        for raw in f:
            for line in raw.split("\r"):
                m = EPOCH_LINE.match(line.strip())
                if m:
                    seconds = float(m.group(3))
                    if last is not None and seconds < last:   # a new (resumed) session
                        total += last
                    last = seconds
                d = re.search(r"device (\S+), engine", line)
                if d:
                    device = d.group(1).rstrip(",")
    return (total + last if last is not None else None), device


def hardware():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                python=platform.python_version(), torch=torch.__version__,
                system=platform.platform())


# ------------------------------------------------------------------ the report

def cma_points(images):
    return sorted({1, min(50, images), images})


def collect(args, argv, runs, bench, figures, elapsed):
    from utils.experiment import RESULTS_FORMAT
    return dict(command="python scripts/reproduce_mnist.py " + shlex.join(argv),
                results_format=RESULTS_FORMAT,
                generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), elapsed_s=elapsed,
                experiments=args.experiments, images=args.images, seed=args.seed,
                quantbits=args.quantbits, dims_coded=DIMS_CODED, dims_pixels=DIMS_PIXELS,
                hardware=hardware(), training_hardware=args.training_hardware or "; ".join(
                    sorted({r["training"]["hardware"] for r in runs if r["training"].get("hardware")}))
                or None,
                runs=runs, benchmark=bench, figures=figures, paper={str(k): v for k, v in PAPER.items()})


def _f(x, digits=4):
    return "—" if x is None else f"{x:.{digits}f}"


def _mean(summary, key):
    entry = summary["summary"].get(key)
    return None if entry is None else entry["mean"]


def per_nz_rows(run, images):
    """[(label, Bit-Swap value, BB-ANS value, paper Bit-Swap, paper BB-ANS)], bits/dim."""
    bs, bb = run["bitswap"], run["bbans"]
    paper = PAPER.get(run["nz"])
    pb = paper["bitswap"] if paper else {}
    pa = paper["bbans"] if paper else {}
    pel = paper["elbo"] if paper else None
    rows = [("-ELBO (fresh posterior sample, as the paper)", _mean(bs, "elbo"),
             _mean(bb, "elbo"), pel, pel),
            ("-ELBO at the coded latents", _mean(bs, "elbo_coded"), _mean(bb, "elbo_coded"),
             None, None),
            ("net", _mean(bs, "net"), _mean(bb, "net"), pb.get("net"), pa.get("net")),
            ("net - ELBO", _mean(bs, "net_minus_elbo"), _mean(bb, "net_minus_elbo"),
             _diff(pb.get("net"), pel), _diff(pa.get("net"), pel)),
            ("coder overhead (net - coded -ELBO)", _mean(bs, "coder_overhead"),
             _mean(bb, "coder_overhead"), None, None)]
    for k in cma_points(images):
        key = {1: "cma1", 100: "cma100"}.get(k) if k == 1 or images == 100 else None
        rows.append((f"CMA@{k}, paper's initial bits", _mean(bs, f"cma@{k}"),
                     _mean(bb, f"cma@{k}"), pb.get(key), pa.get(key)))
        rows.append((f"CMA@{k}, strict initial bits", _mean(bs, f"cma_strict@{k}"),
                     _mean(bb, f"cma_strict@{k}"), None, None))
    return rows


def _diff(a, b):
    return None if a is None or b is None else a - b


def _paper_initial(nz, scheme):
    """The paper's initial bits implied by its figures: (CMA@1 - -ELBO) * dims."""
    p = PAPER.get(nz)
    if p is None:
        return ""
    return f"~{(p[scheme]['cma1'] - p['elbo']) * DIMS_CODED:,.0f}"


def render(report, discussion, report_dir):
    E, n = report["experiments"], report["images"]
    out = ["# Bit-Swap on MNIST: reproduction report", "",
           "Every number and figure below is generated (do not edit by hand) by:", "",
           "```", report["command"], "```", "",
           f"Protocol: {E} experiments x {n} test images (seed {report['seed']}), each "
           f"experiment one chain on one ANS message; {report['quantbits']}-bit latent bins; "
           "every image decoded and checked bit for bit. Bits/dim are per coded dimension "
           f"(MNIST is padded to 32x32 = {DIMS_CODED}) unless marked *per pixel* "
           f"(x{DIMS_CODED}/{DIMS_PIXELS}, per pixel of the 28x28 image, the classical "
           "codecs' unit). Means over experiments; CMA includes the initial bits. "
           "Initial bits by the paper's definition (the reference scripts': what the first "
           "image's pops take before its first push -- Bit-Swap: the pop of z1, BB-ANS: all "
           "nz pops -- plus one 32-bit word), the strict one (the deepest point the message "
           "reaches below its start) beside it. -ELBO as the paper: at one fresh continuous "
           "posterior sample per image; coder overhead = net minus the -ELBO at the coded "
           f"latents. Results format {report.get('results_format', '—')}. "
           f"Generated {report['generated']} in {report['elapsed_s']:.0f} s.", ""]
    runs = report["runs"]
    out += ["## Summary (paper's numbers in brackets)", ""]
    for unit, scale in (("bits/dim, 32x32", 1.0), ("bits per pixel, 28x28", TO_PIXELS)):
        out += [f"{unit}:", "",
                "| nz | -ELBO | Bit-Swap net | Bit-Swap CMA@last | BB-ANS CMA@last | "
                "Bit-Swap CMA@1 | BB-ANS CMA@1 | Bit-Swap CMA@1, strict | BB-ANS CMA@1, strict |",
                "|---|---|---|---|---|---|---|---|---|"]
        for run in runs:
            bs, bb = run["bitswap"], run["bbans"]
            p = PAPER.get(run["nz"])

            def cell(x, ref):
                s = _f(None if x is None else x * scale)
                return s + (f" ({ref * scale:.3f})" if ref is not None else "")
            last = n == 100   # the paper's CMA@100 compares only with n = 100
            out.append(f"| {run['nz']} | {cell(_mean(bs, 'elbo'), p['elbo'] if p else None)} | "
                       f"{cell(_mean(bs, 'net'), p['bitswap']['net'] if p else None)} | "
                       f"{cell(_mean(bs, 'cma@last'), p['bitswap']['cma100'] if p and last else None)} | "
                       f"{cell(_mean(bb, 'cma@last'), p['bbans']['cma100'] if p and last else None)} | "
                       f"{cell(_mean(bs, 'cma@1'), p['bitswap']['cma1'] if p else None)} | "
                       f"{cell(_mean(bb, 'cma@1'), p['bbans']['cma1'] if p else None)} | "
                       f"{cell(_mean(bs, 'cma_strict@1'), None)} | "
                       f"{cell(_mean(bb, 'cma_strict@1'), None)} |")
        out.append("")
    out += ["CMA@last is CMA@%d (the paper's CMA@100 when n = 100), with the paper's "
            "initial bits, as every CMA not marked strict." % n, ""]

    out += ["## Per nz", ""]
    for run in runs:
        out += [f"### nz = {run['nz']}", "",
                f"Checkpoint `{run['params']}`, bins `{run['bins_dir']}` ({run['bins']}).", "",
                "| metric | Bit-Swap | BB-ANS | paper Bit-Swap | paper BB-ANS | "
                "Bit-Swap per pixel | BB-ANS per pixel |", "|---|---|---|---|---|---|---|"]
        for label, a, b, pa, pb in per_nz_rows(run, n):
            out.append(f"| {label} | {_f(a)} | {_f(b)} | {_f(pa, 3)} | {_f(pb, 3)} | "
                       f"{_f(None if a is None else a * TO_PIXELS)} | "
                       f"{_f(None if b is None else b * TO_PIXELS)} |")
        bs, bb = run["bitswap"], run["bbans"]
        gap_pct = [100 * _mean(s, "net_minus_elbo") / _mean(s, "elbo") for s in (bs, bb)]
        out += [f"| (net - ELBO) / ELBO, % | {gap_pct[0]:.3f} | {gap_pct[1]:.3f} | | | | |",
                f"| initial bits, paper's definition (bits) | "
                f"{_f(_mean(bs, 'initial_bits'), 1)} | {_f(_mean(bb, 'initial_bits'), 1)} "
                f"| {_paper_initial(run['nz'], 'bitswap')} | {_paper_initial(run['nz'], 'bbans')} "
                "| | |",
                f"| initial bits, strict (bits) | {_f(_mean(bs, 'initial_bits_strict'), 1)} | "
                f"{_f(_mean(bb, 'initial_bits_strict'), 1)} | | | | |",
                f"| encode / decode ms per image | {bs['encode_ms_per_image']:.1f} / "
                f"{bs['decode_ms_per_image']:.1f} | {bb['encode_ms_per_image']:.1f} / "
                f"{bb['decode_ms_per_image']:.1f} | | | | |", ""]

    bench = report["benchmark"]
    out += ["## Classical codecs on the same images", "",
            f"benchmark_compress.py: {bench['experiments']} experiments x "
            f"{bench['images_per_experiment']} images, the same test images as above. "
            "Reference: the published figures of the reference code on the MNIST test set.", "",
            "| codec | bits per pixel (28x28) | std | ratio | bits/dim at 32x32 | reference |",
            "|---|---|---|---|---|---|"]
    for name, c in bench["codecs"].items():
        if c["status"] != "ok":
            out.append(f"| {c['label']} | {c['status']}: {c.get('reason', '')} | | | | |")
            continue
        out.append(f"| {c['label']} | {c['bits_per_dim_mean']:.4f} | {c['bits_per_dim_std']:.4f} "
                   f"| {c['compression_ratio']:.2f}x | {c['bits_per_dim_mean'] / TO_PIXELS:.4f} "
                   f"| {_f(c['reference_bits_per_dim'], 2)} |")
    for run in runs:
        for scheme, label, _ in SCHEMES:
            v = _mean(run[scheme], "cma@last")
            out.append(f"| {label} nz={run['nz']} (CMA@{n}) | {v * TO_PIXELS:.4f} | | "
                       f"{8 / (v * TO_PIXELS):.2f}x | {v:.4f} | |")
    out.append("")

    out += ["## The paper's claims, checked on these numbers", ""] + checks(report) + [""]

    out += ["## Figures", ""]
    cma, layers = (os.path.relpath(f, report_dir) for f in report["figures"])
    out += [f"![CMA]({cma})", "", f"![layers]({layers})", "",
            f"`{cma}`: CMA of Bit-Swap and BB-ANS over the number of images, with the -ELBO; "
            f"`{layers}`: per-layer contributions to the -ELBO (stack plot).", ""]

    out += ["## Training budget and hardware", "",
            "| nz | parameters | epochs | steps | batch | images seen | best test -ELBO "
            "(checkpoint) | wall time (TensorBoard) | wall time (stdout log) | device |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        t = run["training"]
        out.append(f"| {run['nz']} | {t['parameters']:,} | {t['epochs'] if t['epochs'] is not None else '—'} "
                   f"| {t['steps'] if t['steps'] is not None else '—'} | {t['batch'] or '—'} | "
                   f"{t['images_seen'] if t['images_seen'] is not None else '—'} | "
                   f"{_f(t['best_test_elbo'])} | {_hours(t['tensorboard_wall_s'])} | "
                   f"{_hours(t['log_wall_s'])} | {t['device'] or '—'} |")
    h = report["hardware"]
    out += ["", "Wall time (TensorBoard) sums, over the event files (one per training "
            "session), the time between the first and last logged event; (stdout log) sums "
            "the time at each session's last completed epoch. '—': not found.", "",
            f"This report was generated on: {h['cpu']}, {h['cores']} cores, "
            f"{'GPU ' + h['gpu'] if h['gpu'] else 'no GPU'}, torch {h['torch']} "
            f"({h['torch_threads']} thread{'s' if h['torch_threads'] != 1 else ''}), Python {h['python']}, {h['system']}.", "",
            "Checkpoints trained on: "
            + (report.get("training_hardware") or "the machine above") + ".", ""]

    out += ["## Discussion", "", DISCUSSION_BEGIN, discussion.strip("\n"), DISCUSSION_END, ""]
    return "\n".join(out)


def _hours(seconds):
    if seconds is None:
        return "—"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def checks(report):
    runs, n = report["runs"], report["images"]
    lines = []
    for run in runs:
        bs = run["bitswap"]
        gap = _mean(bs, "net_minus_elbo")
        pct = 100 * gap / _mean(bs, "elbo")
        lines.append(f"- nz={run['nz']}: Bit-Swap net - ELBO = {gap:+.4f} bits/dim = {pct:.3f}% "
                     f"of -ELBO ({'within' if abs(pct) <= 0.5 else 'NOT within'} 0.5%); coder "
                     f"overhead (net - coded -ELBO) {_mean(bs, 'coder_overhead'):+.5f} bits/dim.")
    lzma = report["benchmark"]["codecs"].get("lzma", {})
    best = min(runs, key=lambda r: _mean(r["bitswap"], "cma@last"))
    v = _mean(best["bitswap"], "cma@last") * TO_PIXELS
    ref = lzma.get("bits_per_dim_mean") if lzma.get("status") == "ok" else None
    lines.append(f"- Best Bit-Swap CMA@{n} (nz={best['nz']}): {v:.4f} bits per pixel; LZMA on "
                 f"these images {_f(ref)}, published {PAPER_LZMA_PIXELS}; paper's Bit-Swap "
                 f"1.29: {'below' if ref is not None and v < ref else 'NOT below'} LZMA.")
    if len(runs) > 1:
        bb1 = [_mean(r["bbans"], "cma@1") for r in runs]
        bs1 = [_mean(r["bitswap"], "cma@1") for r in runs]
        nzs = ", ".join(str(r["nz"]) for r in runs)
        grows = all(b > a for a, b in zip(bb1, bb1[1:]))
        lines.append(f"- CMA@1 over nz = {nzs}: BB-ANS {', '.join(_f(x, 3) for x in bb1)} "
                     f"({'grows' if grows else 'does NOT grow'} with nz); Bit-Swap "
                     f"{', '.join(_f(x, 3) for x in bs1)} (spread "
                     f"{max(bs1) - min(bs1):.3f}).")
        strict = [_mean(r["bitswap"], "initial_bits_strict") for r in runs]
        lines.append(f"- Bit-Swap strict initial bits over nz = {nzs}: "
                     f"{', '.join(_f(x, 0) for x in strict)} (BB-ANS: "
                     f"{', '.join(_f(_mean(r['bbans'], 'initial_bits_strict'), 0) for r in runs)}).")
    return lines


def existing_discussion(path):
    """The hand-written discussion of an earlier report at ``path``, if any."""
    if not os.path.exists(path):
        return DISCUSSION_TEMPLATE
    text = open(path).read()
    if DISCUSSION_BEGIN in text and DISCUSSION_END in text:
        return text.split(DISCUSSION_BEGIN, 1)[1].split(DISCUSSION_END, 1)[0]
    return DISCUSSION_TEMPLATE


# ------------------------------------------------------------------ CLI

def _read_json(path):
    with open(path) as f:
        return json.load(f)


def export(args, folder):
    """Write each nz's model (the template) with its bins as a package
    FOLDER/mnist-nz{nz}/ (model/package.py: float16 weights, compact bins,
    model.json with the run's training budget and hardware), so a report
    generated from the exported packages still states how they were trained."""
    from model import package
    for nz in args.nz:
        params = checkpoint_path(args, nz)
        ensure_bins(args, nz, params)
        model = package.load(params, dataset=DATASET, nz=nz, quantbits=args.quantbits,
                             bins_dir=args.bins)
        training = training_budget(params)
        training["hardware"] = args.training_hardware or _describe_hardware(hardware())
        training["exported_from"] = os.path.abspath(model.source)
        got = package.read_weights(params)
        path = package.write_package(
            os.path.join(folder, f"{DATASET}-nz{nz}"), got["state"], model.architecture,
            model.bins, f"{DATASET}-nz{nz}", DATASET, model.weights_kind, training=training,
            notes={"made_by": "python scripts/reproduce_mnist.py --export"}, force=args.force)
        print(f"exported {params} -> {path}")
    return 0


def _display_path(path):
    """`path` relative to the working directory when it lies inside it (the
    report is committed: it should not name the machine's folders)."""
    rel = os.path.relpath(path)
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel


def _describe_hardware(h):
    return (f"{h['cpu']}, {h['cores']} cores, {'GPU ' + h['gpu'] if h['gpu'] else 'no GPU'}, "
            f"torch {h['torch']}")


def _exists(spec):
    from model import package
    try:
        package.resolve(spec)
        return True
    except package.ModelError:
        return False


def parse_args(argv):
    p = cli.parser("reproduce_mnist.py", __doc__.splitlines()[0])
    p.add_argument("--nz", default="2,4,8", help="comma-separated latent depths")
    p.add_argument("--params-dir", default="runs", help="folder of the training runs")
    p.add_argument("--params-template", default="{params_dir}/mnist_nz{nz}/model_best.pt",
                   help="checkpoint path with {nz} (and optionally {params_dir})")
    p.add_argument("--bins", default=None,
                   help="bins folder for models that are not packages (default: beside the "
                        "weights, then bins/; derived there when missing)")
    p.add_argument("--quantbits", type=int, default=10)
    p.add_argument("--samples-per-bin", type=int, default=30,
                   help="discretization.py samples per bin (when deriving bins)")
    p.add_argument("--experiments", type=int, default=100)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--seed", type=int, default=100, help="image selection seed (the paper's)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="reproduction", help="results, figures, the report")
    p.add_argument("--report", default=None, help="report path (default OUT/REPRODUCTION.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--reuse-results", action="store_true",
                   help="skip a compression whose summary JSON matches this configuration")
    p.add_argument("--training-hardware", default=None, metavar="TEXT",
                   help="the machine the checkpoints were trained on, for the report "
                        "(default: the machine generating it)")
    p.add_argument("--export", metavar="FOLDER", default=None,
                   help="only write each model with its bins as a package "
                        "FOLDER/mnist-nz{nz} (float16, training budget in model.json) and exit")
    p.add_argument("--force", action="store_true",
                   help="with --export: replace existing packages (e.g. the shipped ones)")
    args = p.parse_args(argv)
    try:
        args.nz = [int(x) for x in args.nz.split(",") if x.strip()]
    except ValueError:
        p.error(f"--nz must be comma-separated integers, got {args.nz!r}")
    if not args.nz or min(args.nz) < 1:
        p.error("--nz needs at least one depth >= 1")
    if args.experiments < 1 or args.images < 1:
        p.error("--experiments and --images must be at least 1")
    args.report = args.report or os.path.join(args.out, "REPRODUCTION.md")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    return cli.run_main("reproduce_mnist.py", lambda: reproduce(args, argv))


def reproduce(args, argv):
    from model import package
    if args.threads:
        torch.set_num_threads(args.threads)
    missing = [checkpoint_path(args, nz) for nz in args.nz if not _exists(checkpoint_path(args, nz))]
    if missing:
        raise cli.BadInput(f"checkpoint(s) not found: {', '.join(missing)}; train them with "
                           "`python model/mnist_train.py --nz N` (or pass --params-template)")
    if args.export:
        return export(args, args.export)
    t0 = time.time()
    runs = []
    for nz in args.nz:
        params = checkpoint_path(args, nz)
        print(f"== nz={nz}: {params}", flush=True)
        run = dict(nz=nz, params=params, bins=ensure_bins(args, nz, params))
        run["bins_dir"] = _display_path(package.load(params, dataset=DATASET, nz=nz,
                                                     quantbits=args.quantbits,
                                                     bins_dir=args.bins).bins.source)
        for scheme, _, bitswap in SCHEMES:
            run[scheme] = compress(args, nz, params, scheme, bitswap)
            if not run[scheme].get("decoded"):
                raise StepFailed(f"{scheme} nz={nz} was not decoded", 1)
        run["training"] = training_budget(params)
        runs.append(run)
    bench = benchmark(args)
    chosen = np.array(runs[0]["bitswap"]["selection"])
    if not np.array_equal(chosen, np.array(bench["indices"])):
        raise cli.RunFailure("benchmark_compress.py coded other images than mnist_compress.py")
    figures = plot(args)
    report = collect(args, argv, runs, bench, figures, time.time() - t0)
    write_atomic(os.path.join(args.out, "reproduction.json"), json.dumps(report, indent=1))
    write_atomic(args.report, render(report, existing_discussion(args.report),
                                       os.path.dirname(os.path.abspath(args.report))))
    print(f"wrote {args.report}, {os.path.join(args.out, 'reproduction.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
