"""Training-recipe curves: held-out ELBO against CPU-minutes, and the choice.

Each run folder holds the `curve.csv` that `--curve-minutes` writes and the
run's `config.json`. The script plots every run's held-out ELBO (EMA
weights) against CPU-minutes, fits `elbo(t) = a + b * t**-c` to each curve
past its first few minutes, extrapolates it to the budget (`--budget-minutes`;
a curve that reached the budget is read there instead),
and names the recipe with the lowest extrapolated held-out ELBO: the recipe to
continue. When some curve is too short to fit, the choice falls back to the
lowest held-out ELBO at the largest CPU budget that every run reached. With `--collect DIR` it first copies each run's two files into
`DIR/<run name>/`, so the committed figure can be regenerated from committed
data (`python scripts/plot_recipes.py DIR/*`).

    python scripts/plot_recipes.py runs/recipes/mnist_* --collect benchmarks/recipes/mnist \\
        --title "MNIST nz=8" --png benchmarks/recipes/mnist.png

CPU-minutes are the process CPU time the training steps used (evaluation
excluded), which equals wall minutes x threads on an unloaded machine and
stays comparable when other work shares the cores.
"""
import csv
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from model.config import TrainConfig  # noqa: E402
from utils import cli  # noqa: E402

KNOBS = ("width", "nz", "zchannels", "blocks", "batch", "lr", "decay", "dropout")
DEFAULT_EMA_DECAY = TrainConfig.ema_decay     # a run that changed it says so


def read_run(folder):
    with open(os.path.join(folder, "curve.csv")) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{folder}/curve.csv has no points")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    cols = {k: np.array([float(r[k]) for r in rows]) for k in
            ("step", "images", "wall_s", "cpu_s", "threads", "lr", "test_elbo", "train_elbo")}
    return dict(name=os.path.basename(os.path.normpath(folder)), config=config, **cols)


def learning_rate_changes(run):
    """[(step, new lr)] where a resumed run was given another learning rate
    (config.json holds only the last one): a jump between two curve points
    that the per-step decay cannot explain. The new rate applies after the
    earlier point, which a run writes when it stops."""
    lr, step = run["lr"], run["step"]
    return [(int(step[i - 1]), float(lr[i])) for i in range(1, len(lr))
            if not 0.9 <= lr[i] / lr[i - 1] <= 1.1]


def describe(config, run=None):
    changes = learning_rate_changes(run) if run is not None else []
    knobs = dict(config)
    if changes:        # the recipe's first learning rate, then each change
        knobs["lr"] = (f"{run['lr'][0]:.2g}"
                       + "".join(f" then {lr:g} from step {s:,}" for s, lr in changes))
    text = ", ".join(f"{k} {knobs[k]:g}" if isinstance(knobs[k], float) else f"{k} {knobs[k]}"
                     for k in KNOBS if k in knobs)
    if config.get("hflip"):
        text += ", mirrored patches"
    if config.get("ema_decay", DEFAULT_EMA_DECAY) != DEFAULT_EMA_DECAY:
        text += f", weights average decay {config['ema_decay']:g}"
    precision = config.get("run_options", {}).get("precision", "fp32")
    if precision != "fp32":     # the arithmetic of its training steps
        text += f", {precision} steps"
    # "start": where a run that did not start from scratch took its weights
    return text + (f", from {config['start']}" if config.get("start") else "")


def fit_power_law(minutes, elbo, skip_minutes=3.0):
    """Least-squares fit of a + b * t**-c (c in (0, 3]) to the points past
    `skip_minutes`; returns (a, b, c) or None with too few points."""
    from scipy.optimize import curve_fit
    keep = minutes > skip_minutes
    t, y = minutes[keep], elbo[keep]
    if len(t) < 4:
        return None

    def f(t, a, b, c):
        return a + b * t ** -c

    try:
        p, _ = curve_fit(f, t, y, p0=(y[-1] - 0.1, 1.0, 0.5),
                         bounds=([0.0, 0.0, 1e-3], [y.min(), np.inf, 3.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return tuple(float(v) for v in p)


def extrapolate(run, budget_minutes):
    """The power-law fit of the run's curve (None if too short) and its
    held-out ELBO at the budget: measured when the curve reached the budget
    (a fit is only needed beyond the data), else the fit's extrapolation."""
    minutes = run["cpu_s"] / 60
    fit = fit_power_law(minutes, run["test_elbo"])
    if minutes[-1] >= budget_minutes:
        return fit, at_minutes(run, budget_minutes)
    if fit is None:
        return fit, math.nan
    a, b, c = fit
    return fit, a + b * budget_minutes ** -c


def at_minutes(run, minutes):
    """Held-out ELBO interpolated at `minutes` CPU-minutes (within the curve)."""
    return float(np.interp(minutes, run["cpu_s"] / 60, run["test_elbo"]))


def main(argv=None):
    p = cli.parser("plot_recipes.py", __doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders with curve.csv and config.json")
    p.add_argument("--title", default="recipes")
    p.add_argument("--png", default=None, help="write the figure here")
    p.add_argument("--collect", default=None,
                   help="copy each run's curve.csv and config.json into this folder first")
    p.add_argument("--budget-minutes", type=float, default=180.0,
                   help="CPU-minutes at which the recipes are compared")
    args = p.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.collect:
        for r, folder in zip(runs, args.runs):
            dest = os.path.join(args.collect, r["name"])
            os.makedirs(dest, exist_ok=True)
            for name in ("curve.csv", "config.json"):
                shutil.copyfile(os.path.join(folder, name), os.path.join(dest, name))

    # every run measured up to at least this many CPU-minutes
    common = min(r["cpu_s"][-1] / 60 for r in runs)
    print(f"{args.title}: held-out ELBO (bits/dim, EMA weights) against CPU-minutes")
    print(f"| run | recipe | CPU-min | held-out ELBO | train ELBO | at {common:.1f} CPU-min | "
          f"fit a + b t^-c | at {args.budget_minutes:g} CPU-min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        fit, at_budget = extrapolate(r, args.budget_minutes)
        r["fit"], r["at_budget"] = fit, at_budget
        r["at_common"] = at_minutes(r, common)
        fit_s = "-" if fit is None else f"{fit[0]:.3f} + {fit[1]:.3f} t^-{fit[2]:.2f}"
        print(f"| {r['name']} | {describe(r['config'], r)} | {r['cpu_s'][-1] / 60:.1f} | "
              f"{r['test_elbo'][-1]:.4f} | {r['train_elbo'][-1]:.4f} | {r['at_common']:.4f} | "
              f"{fit_s} | {at_budget:.3f} |")
    if all(math.isfinite(r["at_budget"]) for r in runs):
        best = min(runs, key=lambda r: r["at_budget"])
        print(f"choice: {best['name']} (lowest extrapolated held-out ELBO at "
              f"{args.budget_minutes:g} CPU-minutes: {best['at_budget']:.3f})")
    else:
        best = min(runs, key=lambda r: r["at_common"])
        print(f"choice: {best['name']} (lowest held-out ELBO at {common:.1f} CPU-minutes, the "
              f"budget every run reached: {best['at_common']:.4f}; too few points past the first "
              f"minutes to extrapolate every curve)")

    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for r in runs:
            minutes = r["cpu_s"] / 60
            line, = ax.plot(minutes, r["test_elbo"], "o-", ms=3,
                            label=f"{r['name']}: {describe(r['config'], r)}")
            if r["fit"] is not None:
                a, b, c = r["fit"]
                t = np.linspace(max(minutes[0], 1.0), args.budget_minutes, 200)
                ax.plot(t, a + b * t ** -c, ":", color=line.get_color(), lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("CPU-minutes of training, log scale (evaluation excluded)")
        ax.set_ylabel("held-out -ELBO (bits/dim)")
        ax.set_title(f"{args.title}\n(dots measured; dotted: the fit, extrapolated)", fontsize=10)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lo = min(r["test_elbo"].min() for r in runs)
        hi = np.percentile(np.concatenate([r["test_elbo"] for r in runs]), 90)
        ax.set_ylim(lo - 0.1 * (hi - lo) - 0.02, hi)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        fig.savefig(args.png, dpi=120, bbox_inches="tight")
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
