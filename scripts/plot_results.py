"""Figures of the compression experiments (PNG, matplotlib).

    python scripts/plot_results.py mnist [--results plots] [--nz 2,4,8] [--quantbits 10] [--out DIR]

Reads what the *_compress.py scripts wrote under RESULTS/{dataset}{nz}/
({bitswap,bbans}_{q}bits_{cmas,elbos,terms}.npy) and draws:
* ``{dataset}_cma.png``: the paper's cumulative-moving-average figure, one
  panel per nz: Bit-Swap CMA vs BB-ANS CMA vs the -ELBO (mean over
  experiments, bits/dim, the paper's initial bits included) over the number of images;
* ``{dataset}_layers.png``: stack plot of the per-layer contributions to the
  -ELBO (reconstruction and the KL of every latent layer), mean over images,
  one column per nz.
A scheme whose results are missing is left out of a panel (with a note).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils import cli  # noqa: E402


def load(results, dataset, nz, scheme, quantbits, what):
    path = os.path.join(results, f"{dataset}{nz}", f"{scheme}_{quantbits}bits_{what}.npy")
    return np.load(path) if os.path.exists(path) else None


def cma_figure(results, dataset, nzs, quantbits, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(nzs), figsize=(4.2 * len(nzs), 3.4), squeeze=False)
    drawn = 0
    for ax, nz in zip(axes[0], nzs):
        elbo = None
        for scheme, label, style in (("bitswap", "Bit-Swap", "-"), ("bbans", "BB-ANS", "--")):
            cmas = load(results, dataset, nz, scheme, quantbits, "cmas")
            if cmas is None:
                continue
            x = np.arange(1, cmas.shape[1] + 1)
            ax.plot(x, np.nanmean(cmas, 0), style, label=label)
            drawn += 1
            e = load(results, dataset, nz, scheme, quantbits, "elbos")
            elbo = elbo if elbo is not None else e
        if elbo is not None:
            ax.axhline(np.nanmean(elbo), color="k", lw=0.8, ls=":", label="-ELBO")
        ax.set_title(f"{dataset}, {nz} latent layer{'s' if nz > 1 else ''}")
        ax.set_xlabel("images compressed")
        ax.set_ylabel("bits/dim (CMA incl. initial bits, paper's definition)")
        ax.set_xscale("log")
        ax.legend() if ax.lines else ax.text(0.5, 0.5, "no results", ha="center",
                                             transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def layers_figure(results, dataset, nzs, quantbits, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(nzs), 3.6))
    columns, labels = [], []
    for nz in nzs:
        terms = load(results, dataset, nz, "bitswap", quantbits, "terms")
        if terms is None:
            terms = load(results, dataset, nz, "bbans", quantbits, "terms")
        if terms is None:
            continue
        columns.append(np.nanmean(terms.reshape(-1, terms.shape[-1]), 0))
        labels.append(str(nz))
    if not columns:
        plt.close(fig)
        return 0
    depth = max(len(c) for c in columns)
    stack = np.zeros((depth, len(columns)))
    for j, c in enumerate(columns):
        stack[:len(c), j] = c
    names = ["reconstruction"] + [f"KL layer {i}" for i in range(1, depth)]
    bottom = np.zeros(len(columns))
    for row, name in zip(stack, names):
        ax.bar(labels, row, bottom=bottom, label=name)
        bottom += row
    ax.set_xlabel("latent layers (nz)")
    ax.set_ylabel("-ELBO contribution (bits/dim)")
    ax.set_title(f"{dataset}: per-layer contributions")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(columns)


def main(argv=None):
    p = cli.parser("plot_results.py", __doc__.splitlines()[0])
    p.add_argument("dataset", choices=["mnist", "cifar", "imagenet", "imagenetcrop"])
    p.add_argument("--results", default="plots",
                   help="folder holding the compress scripts' {dataset}{nz}/ result folders")
    p.add_argument("--nz", default="2,4,8", help="comma-separated latent depths")
    p.add_argument("--quantbits", type=int, default=10)
    p.add_argument("--out", default=None, help="directory for the PNGs (default: RESULTS)")
    args = p.parse_args(argv)
    nzs = [int(n) for n in args.nz.split(",")]
    out = args.out or args.results
    os.makedirs(out, exist_ok=True)
    cma_path = os.path.join(out, f"{args.dataset}_cma.png")
    layer_path = os.path.join(out, f"{args.dataset}_layers.png")
    if not cma_figure(args.results, args.dataset, nzs, args.quantbits, cma_path):
        print(f"plot_results.py: error: no results under {args.results}/{args.dataset}{{{args.nz}}}; "
              f"run {args.dataset}_compress.py first", file=sys.stderr)
        return 2
    layers_figure(args.results, args.dataset, nzs, args.quantbits, layer_path)
    print(f"wrote {cma_path}, {layer_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
