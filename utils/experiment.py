"""The paper's compression experiments (shared by the four *_compress.py scripts).

Protocol (utils/protocol.py): E experiments of n test images drawn without
replacement with a fixed seed; each experiment is one chain: its images are
coded one after another on one message that starts as a seeded random head
over a virtual random stack (ans underflow seed).  All experiments run at once
as the lanes of one ``ans.Message`` (the networks see a batch of E images).
Full-size images (imagenetcrop): one experiment per photo, cropped to
multiples of 32 and coded block by block (row-major), chains of equal length
batched together.

Accounting per chain (exact, from the coder's own counters):
  effective size  = message bits - 32 * words borrowed from the virtual stack
  net (image j)   = growth of the effective size while coding image j, / dims
  initial bits    = bits of the initial head + 32 * borrowed words (so far)
  total (image j) = message bits after image j = initial bits + sum of nets * dims
  CMA (image j)   = total / (dims * (j + 1))
  -ELBO (image j) = single-sample -ELBO at the coded latents (BitsBackCoder.encode)
Everything is decoded again by default (the mirror image, from the serialized
message) and checked image by image; the decoded message must equal the
initial one (head plus the borrowed words pushed back).

Model: --params (default: the shipped package for the dataset and nz, e.g.
mnist-nz8) is anything model/package.py loads; its bins come with it (a
package) or from --bins / beside the weights / bins/.

Outputs in --out (default plots/{dataset}{nz}, the reference's naming):
  {bitswap|bbans}_{q}bits_{nets,elbos,cmas,total}.npy   (E, n), bits/dim (total: bits)
  {scheme}_{q}bits_terms.npy     (E, n, 1 + nz) per-layer -ELBO terms, bits/dim
  {scheme}_{q}bits_initial.npy   (E, n) initial bits consumed so far
  {scheme}_{q}bits_summary.json  configuration, means/stds, timings
Multi-process: under mpiexec/torchrun (rank/size from the environment) each
process takes experiments rank, rank + size, ...; rank 0 merges the parts.
Exit status (utils/cli.py): 0 ok, 1 decode mismatch, 2 bad input (one line).
"""
import hashlib
import json
import os
import time

import numpy as np
import torch

from model import package
from model.config import config_for
from utils import ans, cli, protocol
from utils.bitsback import BitsBackCoder, restored_initial_message
from utils.cli import BadInput, write_atomic
from utils.data import DataNotFoundError, load_image_folder, load_images
from utils.device import device_from_args

MESSAGE_SEED = 0x5EED


class DecodeMismatch(cli.RunFailure):
    """Decoding did not give back what was encoded: one line, exit status 1."""


# ------------------------------------------------------------------ inputs

def pad_to_model(dataset, images):
    """MNIST 28x28 -> 32x32 with 2 pixels of zeros on each side (as the paper)."""
    if dataset == "mnist" and images.shape[-1] == 28:
        return np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return images


def default_params(dataset, nz=None):
    """The shipped package for ``dataset`` and ``nz`` (None: the paper's nz
    if one is shipped, else the dataset's only one); BadInput naming what to
    pass when there is none."""
    name = (package.shipped_default(dataset, nz) if nz is not None else
            package.shipped_default(dataset, config_for(dataset).nz) or package.shipped_default(dataset))
    if name is None:
        raise BadInput(f"no shipped {dataset} model{f' with nz={nz}' if nz else ''} "
                       f"(shipped: {', '.join(package.shipped_names())}); train one with "
                       f"`python model/{dataset}_train.py` and pass --params RUN_FOLDER")
    return name


def load_model(dataset, params, nz=None, quantbits=None, bins_dir=None, device="cpu"):
    """(network, bins) for coding ``dataset`` with ``params`` (see
    model/package.load: refuses models of another dataset, shape or nz, and
    bins of other weights, in one line)."""
    model = package.load(params, dataset=dataset, nz=nz, quantbits=quantbits,
                         bins_dir=bins_dir, device=device)
    return model.net, model.bins


def fingerprint(model, bins):
    """SHA-256 of what decides the coded bits: the model's tensors (by name) and
    the bins; lets a resumed run tell whether old results came from these."""
    h = hashlib.sha256()
    arrays = [(k, v.detach().to("cpu", torch.float64).numpy())
              for k, v in sorted(model.state_dict().items())]
    arrays += [("bins.endpoints", bins.endpoints), ("bins.centres", bins.centres)]
    for name, a in arrays:
        h.update(name.encode())
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    return h.hexdigest()


def experiments_32x32(dataset, args):
    """uint8 (E, n, C, 32, 32) and the test-set indices (E, n)."""
    try:
        data = load_images(dataset, "test", args.data_root, download=args.download)
    except DataNotFoundError as exc:
        raise BadInput(str(exc)) from None
    if args.images > len(data):
        raise BadInput(f"--images {args.images} is larger than the test set ({len(data)} images)")
    try:
        idx = protocol.select_experiments(len(data), args.experiments, args.images, args.seed)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return pad_to_model(dataset, data[idx.reshape(-1)]).reshape(idx.shape + (-1, 32, 32)), idx


def image_blocks(image, block=protocol.BLOCK):
    """(C, H, W) with H, W multiples of ``block`` -> (blocks, C, block, block), row-major."""
    c, h, w = image.shape
    return (image.reshape(c, h // block, block, w // block, block)
            .transpose(1, 3, 0, 2, 4).reshape(-1, c, block, block))


def experiments_full_size(args):
    """List of block arrays (one per photo) and the chosen file indices."""
    folder = args.folder or os.path.join(args.data_root, "imagenetcrop", "test")
    try:
        images = load_image_folder(folder)
    except DataNotFoundError as exc:
        raise BadInput(str(exc)) from None
    chosen, names = [], []
    for i in protocol.full_size_order(len(images), seed=args.seed) if images else []:
        image = images[i]
        if image.shape[0] != 3 or min(image.shape[1:]) < protocol.BLOCK:
            continue
        chosen.append(image_blocks(protocol.crop_to_multiple(image)))
        names.append(int(i))
        if len(chosen) == args.experiments:
            break
    if not chosen:
        raise BadInput(f"no usable RGB images of at least 32x32 in {folder}")
    return chosen, names


# ------------------------------------------------------------------ coding

def code_chains(coder, chains, seed=MESSAGE_SEED, decode=True, first_experiment=0,
                bitstream_dir=None, keep_bitstreams=False, progress=False):
    """Code E chains of n images (uint8 (E, n, C, H, W)) as E lanes.

    Returns a dict of arrays: nets, elbos, cmas (bits/dim), total, initial
    (bits), terms (E, n, 1 + nz, bits/dim), and encode_s / decode_s.  Raises
    DecodeMismatch naming the experiment and image (the bitstream is kept in
    ``bitstream_dir``; every message when ``keep_bitstreams``)."""
    chains = np.asarray(chains)
    lanes, n = chains.shape[:2]
    dims = coder.dims
    message = ans.Message.random(lanes, 0, seed=seed, precision=coder.precision,
                                 underflow_seed=seed)
    initial = message.copy()
    head_bits = initial.lane_bits().astype(np.float64)
    out = {k: np.zeros((lanes, n)) for k in ("nets", "elbos", "cmas", "total", "initial")}
    out["terms"] = np.zeros((lanes, n, 1 + coder.nz))
    effective = head_bits.copy()
    t0 = time.perf_counter()
    for j in _progress(range(n), progress, "encode"):
        terms = coder.encode(message, chains[:, j], terms=True)
        bits = message.lane_bits().astype(np.float64)
        borrowed = 32.0 * message.borrowed_words
        out["nets"][:, j] = (bits - borrowed - effective) / dims
        effective = bits - borrowed
        out["initial"][:, j] = head_bits + borrowed
        out["total"][:, j] = bits
        out["cmas"][:, j] = bits / (dims * (j + 1))
        out["terms"][:, j] = terms / dims
        out["elbos"][:, j] = terms.sum(1) / dims
    out["encode_s"] = time.perf_counter() - t0
    data = message.to_bytes()
    if keep_bitstreams:
        write_atomic(os.path.join(bitstream_dir, f"experiments{first_experiment}-"
                                   f"{first_experiment + lanes - 1}.ans"), data)
    if decode:
        t0 = time.perf_counter()
        received = ans.Message.from_bytes(data)
        for j in _progress(reversed(range(n)), progress, "decode"):
            x = coder.decode(received, lanes)
            bad = np.flatnonzero((x.reshape(lanes, -1) != chains[:, j].reshape(lanes, -1)).any(1))
            if bad.size:
                path = _keep(bitstream_dir, first_experiment, data)
                raise DecodeMismatch(f"decode mismatch: experiment {first_experiment + bad[0]}, "
                                     f"image {j} (bitstream kept in {path})")
        expected = restored_initial_message(initial, message.borrowed_words)
        if received != expected:
            path = _keep(bitstream_dir, first_experiment, data)
            raise DecodeMismatch(f"decode mismatch: experiments {first_experiment}-"
                                 f"{first_experiment + lanes - 1} did not restore the initial "
                                 f"message (bitstream kept in {path})")
        out["decode_s"] = time.perf_counter() - t0
    return out


def _keep(directory, first, data):
    directory = directory or "."
    path = os.path.join(directory, f"mismatch_experiments{first}.ans")
    write_atomic(path, data)
    return path


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False)


# ------------------------------------------------------------------ summary

def summarize(res, dims_note=""):
    """Means/stds across experiments of the per-experiment averages."""
    nets, elbos, cmas = res["nets"], res["elbos"], res["cmas"]
    per_exp_net = np.nanmean(nets, 1)
    per_exp_elbo = np.nanmean(elbos, 1)
    n = nets.shape[1]
    s = dict(net=_ms(per_exp_net), elbo=_ms(per_exp_elbo),
             gap=_ms(per_exp_net - per_exp_elbo),
             initial_bits=_ms(np.nanmax(res["initial"], 1)))
    for k in sorted({1, min(50, n), n}):
        s[f"cma@{k}"] = _ms(cmas[:, k - 1])
    last = np.array([row[~np.isnan(row)][-1] for row in cmas])
    s["cma@last"] = _ms(last)
    return s


def _ms(a):
    a = np.asarray(a, dtype=np.float64)
    return {"mean": float(np.nanmean(a)), "std": float(np.nanstd(a))}


def format_table(title, summary):
    lines = [title, f"{'metric':<16}{'mean':>12}{'std':>12}"]
    for k, v in summary.items():
        lines.append(f"{k:<16}{v['mean']:>12.4f}{v['std']:>12.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ ranks

def rank_and_size():
    """(rank, size) from mpiexec (Open MPI / MPICH) or torchrun environments."""
    for r, s in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                 ("PMIX_RANK", "PMIX_SIZE"), ("RANK", "WORLD_SIZE")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return 0, 1


# ------------------------------------------------------------------ CLI

def build_parser(dataset):
    cfg = config_for(dataset)
    shipped = package.shipped_default(dataset, cfg.nz)
    p = cli.parser(
        f"{dataset}_compress.py",
        f"Bit-Swap / BB-ANS compression of the {dataset} test set (the paper's protocol).\n"
        "Bits/dim are per coded dimension" + (" (MNIST: per pixel of the 32x32-padded image; "
                                              "x 1024/784 for 28x28 pixels)." if dataset == "mnist" else "."))
    p.add_argument("--params", default=None,
                   help="model: package folder or shipped name, training run folder or "
                        "checkpoint.pt, or a state-dict file (default: the shipped model for "
                        f"the dataset and --nz{f', {shipped}' if shipped else ''})")
    p.add_argument("--nz", type=int, default=None,
                   help=f"latent layers; checked against the model (default: the model's, "
                        f"or {cfg.nz} to pick the shipped model)")
    p.add_argument("--bitswap", type=int, default=1, choices=[0, 1], help="1: Bit-Swap, 0: BB-ANS")
    p.add_argument("--quantbits", type=int, default=None,
                   help="latent discretization bits (default: the package's, else 10)")
    p.add_argument("--bins", default=None,
                   help="folder of bins files (default: the package's own bins; for other "
                        "files the folder of the weights, then bins/)")
    cli.add_device_argument(p)
    p.add_argument("--experiments", type=int, default=protocol.EXPERIMENTS)
    if dataset != "imagenetcrop":
        p.add_argument("--images", type=int, default=protocol.IMAGES, help="images per experiment")
    p.add_argument("--seed", type=int, default=protocol.SEED, help="image selection seed")
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true")
    if dataset == "imagenetcrop":
        p.add_argument("--folder", default=None, help="full-size test images "
                       "(default DATA_ROOT/imagenetcrop/test)")
    p.add_argument("--out", default=None, help="output directory (default plots/{dataset}{nz})")
    p.add_argument("--no-decode", action="store_true", help="skip decoding (not verified lossless)")
    p.add_argument("--keep-bitstreams", action="store_true", help="write every message to OUT/bitstreams")
    p.add_argument("--precision", type=int, default=ans.DEFAULT_PRECISION, help="rANS precision bits")
    cli.add_progress_argument(p)
    return p


def run(dataset, argv=None):
    args = build_parser(dataset).parse_args(argv)
    if args.experiments < 1 or getattr(args, "images", 1) < 1:
        raise BadInput("--experiments and --images must be at least 1")
    device = device_from_args(args)
    params = args.params or default_params(dataset, args.nz)
    model, bins = load_model(dataset, params, args.nz, args.quantbits, args.bins, device)
    nz, quantbits = model.nz, bins.quantbits
    coder = BitsBackCoder(model, bins, bitswap=bool(args.bitswap), precision=args.precision,
                          device=device)
    scheme = "bitswap" if args.bitswap else "bbans"
    out = args.out or os.path.join("plots", f"{dataset}{nz}")
    prefix = os.path.join(out, f"{scheme}_{quantbits}bits")
    rank, size = rank_and_size()

    if dataset == "imagenetcrop":
        chains, selection = experiments_full_size(args)
    else:
        images, selection = experiments_32x32(dataset, args)
        chains = list(images)
    mine = list(range(rank, len(chains), size))
    bitstreams = os.path.join(out, "bitstreams", scheme)
    res = _code_groups(coder, chains, mine, args, bitstreams)
    if size > 1:
        _save_part(prefix, rank, size, mine, res)
        if rank != 0:
            return 0
        mine, res = _merge_parts(prefix, size)
    _write_results(prefix, res, dict(
        dataset=dataset, nz=nz, scheme=scheme, quantbits=quantbits,
        experiments=len(chains), images=int(res["nets"].shape[1]), seed=args.seed,
        params=params, bins=getattr(bins, "source", None), fingerprint=fingerprint(model, bins),
        device=str(device), decoded=not args.no_decode,
        processes=size, precision=args.precision, selection=np.asarray(selection).tolist()))
    return 0


def _code_groups(coder, chains, mine, args, bitstreams):
    """Chains of equal length run together; results padded with NaN to the longest."""
    n_max = max(len(chains[e]) for e in mine) if mine else 0
    keys = ("nets", "elbos", "cmas", "total", "initial")
    res = {k: np.full((len(mine), n_max), np.nan) for k in keys}
    res["terms"] = np.full((len(mine), n_max, 1 + coder.nz), np.nan)
    res["encode_s"] = res["decode_s"] = 0.0
    by_len = {}
    for row, e in enumerate(mine):
        by_len.setdefault(len(chains[e]), []).append((row, e))
    for length, members in sorted(by_len.items()):
        rows = [r for r, _ in members]
        part = code_chains(coder, np.stack([chains[e] for _, e in members]),
                           decode=not args.no_decode, first_experiment=members[0][1],
                           bitstream_dir=bitstreams, keep_bitstreams=args.keep_bitstreams,
                           progress=not args.no_progress)
        for k in keys + ("terms",):
            res[k][rows, :length] = part[k]
        res["encode_s"] += part["encode_s"]
        res["decode_s"] += part.get("decode_s", 0.0)
    res["images_coded"] = int(sum(len(chains[e]) for e in mine))
    return res


def _save_part(prefix, rank, size, mine, res):
    path = f"{prefix}_part{rank}of{size}.npz"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, experiments=np.array(mine), **{k: np.asarray(v) for k, v in res.items()})
    os.replace(tmp, path)


def _merge_parts(prefix, size, timeout_s=7 * 24 * 3600):
    paths = [f"{prefix}_part{r}of{size}.npz" for r in range(size)]
    t0 = time.time()
    while not all(os.path.exists(p) for p in paths):
        if time.time() - t0 > timeout_s:
            raise BadInput(f"gave up waiting for the other processes' results ({paths})")
        time.sleep(1.0)
    parts = [dict(np.load(p)) for p in paths]
    order = np.concatenate([p["experiments"] for p in parts])
    n_max = max(p["nets"].shape[1] for p in parts)
    res = {}
    for k in ("nets", "elbos", "cmas", "total", "initial", "terms"):
        arrays = []
        for p in parts:
            a = p[k]
            pad = [(0, 0), (0, n_max - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            arrays.append(np.pad(a, pad, constant_values=np.nan))
        res[k] = np.concatenate(arrays)[np.argsort(order)]
    for k in ("encode_s", "decode_s", "images_coded"):
        res[k] = float(sum(float(p[k]) for p in parts))
    for p in paths:
        os.remove(p)
    return sorted(order.tolist()), res


def _write_results(prefix, res, meta):
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    for k in ("nets", "elbos", "cmas", "total", "initial", "terms"):
        tmp = f"{prefix}_{k}.tmp.npy"
        np.save(tmp, res[k])
        os.replace(tmp, f"{prefix}_{k}.npy")
    summary = summarize(res)
    n_img = max(res["images_coded"], 1)
    meta.update(summary=summary, encode_ms_per_image=1e3 * res["encode_s"] / n_img,
                decode_ms_per_image=1e3 * res["decode_s"] / n_img if meta["decoded"] else None)
    write_atomic(f"{prefix}_summary.json", json.dumps(meta, indent=1))
    unit = ("bits/dim = bits per dim of the 32x32-padded image (x 1024/784 for 28x28 pixels)"
            if meta["dataset"] == "mnist" else "bits/dim = bits per 8-bit sample (pixel x channel)")
    title = (f"{meta['dataset']} nz={meta['nz']} {meta['scheme']} q={meta['quantbits']}: "
             f"{meta['experiments']} experiments x {meta['images']} images"
             f"{', decoded and verified' if meta['decoded'] else ', NOT decoded'}; "
             f"{unit}; initial_bits in bits")
    print(format_table(title, summary))
    print(f"encode {meta['encode_ms_per_image']:.1f} ms/image"
          + (f", decode {meta['decode_ms_per_image']:.1f} ms/image" if meta["decoded"] else ""))
    print(f"results: {prefix}_*.npy, {prefix}_summary.json")


def main(dataset, argv=None):
    """Entry point of the *_compress.py scripts (exit status: utils/cli.py)."""
    return cli.run_main(f"{dataset}_compress.py", lambda: run(dataset, argv))
