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

Outputs in --out (default plots/{dataset}{nz}, the reference's naming):
  {bitswap|bbans}_{q}bits_{nets,elbos,cmas,total}.npy   (E, n), bits/dim (total: bits)
  {scheme}_{q}bits_terms.npy     (E, n, 1 + nz) per-layer -ELBO terms, bits/dim
  {scheme}_{q}bits_initial.npy   (E, n) initial bits consumed so far
  {scheme}_{q}bits_summary.json  configuration, means/stds, timings
Multi-process: under mpiexec/torchrun (rank/size from the environment) each
process takes experiments rank, rank + size, ...; rank 0 merges the parts.
Exit status: 0 ok, 1 decode mismatch, 2 bad input (one-line error).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from model.config import config_for
from model.hvae import HVAE
from utils import ans, protocol
from utils.bins import BinsError, LatentBins
from utils.bitsback import BitsBackCoder, restored_initial_message
from utils.data import DataNotFoundError, load_image_folder, load_images

MESSAGE_SEED = 0x5EED


class BadInput(Exception):
    """Bad user input, missing file or data: one line, exit status 2."""


class DecodeMismatch(Exception):
    """Decoding did not give back what was encoded: one line, exit status 1."""


# ------------------------------------------------------------------ inputs

def pad_to_model(dataset, images):
    """MNIST 28x28 -> 32x32 with 2 pixels of zeros on each side (as the paper)."""
    if dataset == "mnist" and images.shape[-1] == 28:
        return np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return images


def load_model(dataset, nz, params, device="cpu"):
    """The trained HVAE from ``params``: the authors' raw state dict, or a dict
    with 'state_dict' (and optionally 'architecture')."""
    if not os.path.exists(params):
        raise BadInput(f"checkpoint {params} not found; train one with "
                       f"`python model/{dataset}_train.py --nz {nz}` and pass "
                       f"--params runs/{dataset}_nz{nz}/model_best.pt (or put the authors' "
                       f"checkpoint there)")
    try:
        ckpt = torch.load(params, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInput(f"checkpoint {params} is unreadable: {exc}") from None
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "infer_in.1.v" not in state:
        raise BadInput(f"checkpoint {params} does not hold an HVAE state dict")
    arch = ckpt.get("architecture") if isinstance(ckpt.get("architecture"), dict) else None
    if arch is None:  # a plain state dict (the authors' files, model_best.pt): read it off
        arch = HVAE.architecture_from_state_dict(state)
    if int(arch["nz"]) != nz:
        raise BadInput(f"checkpoint {params} is for nz={arch['nz']}, not --nz {nz}")
    model = HVAE(**arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise BadInput(f"checkpoint {params} does not match the {dataset} nz={nz} model: "
                       f"{' '.join(first[:2])[:300]}") from None
    return model.to(device).eval()


def load_bins(bins_dir, dataset, model, quantbits):
    try:
        bins = LatentBins.load(bins_dir, dataset, model.nz, quantbits)
        bins.check_model(model)
    except BinsError as exc:
        raise BadInput(str(exc)) from None
    return bins


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
    folder = args.folder or os.path.join(args.data_root, "imagenetfull", "test")
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
        _write_atomic(os.path.join(bitstream_dir, f"experiments{first_experiment}-"
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
    _write_atomic(path, data)
    return path


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False)


def _write_atomic(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
    p = argparse.ArgumentParser(
        prog=f"{dataset}_compress.py",
        description=f"Bit-Swap / BB-ANS compression of the {dataset} test set (the paper's protocol).")
    p.add_argument("--nz", type=int, default=cfg.nz, help="number of latent layers")
    p.add_argument("--bitswap", type=int, default=1, choices=[0, 1], help="1: Bit-Swap, 0: BB-ANS")
    p.add_argument("--quantbits", type=int, default=10, help="latent discretization bits")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index (default: CPU)")
    p.add_argument("--device", default=None, help="torch device, overrides --gpu (cpu, cuda:1, ...)")
    p.add_argument("--experiments", type=int, default=protocol.EXPERIMENTS)
    if dataset != "imagenetcrop":
        p.add_argument("--images", type=int, default=protocol.IMAGES, help="images per experiment")
    p.add_argument("--seed", type=int, default=protocol.SEED, help="image selection seed")
    p.add_argument("--params", default=None, help="checkpoint (default params/{dataset}/nz{nz})")
    p.add_argument("--bins", default="bins", help="directory of the bins files")
    p.add_argument("--data-root", default="data")
    p.add_argument("--download", action="store_true")
    if dataset == "imagenetcrop":
        p.add_argument("--folder", default=None, help="full-size test images "
                       "(default DATA_ROOT/imagenetfull/test)")
    p.add_argument("--out", default=None, help="output directory (default plots/{dataset}{nz})")
    p.add_argument("--no-decode", action="store_true", help="skip decoding (not verified lossless)")
    p.add_argument("--keep-bitstreams", action="store_true", help="write every message to OUT/bitstreams")
    p.add_argument("--precision", type=int, default=ans.DEFAULT_PRECISION, help="rANS precision bits")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(dataset, argv=None):
    args = build_parser(dataset).parse_args(argv)
    if args.experiments < 1 or getattr(args, "images", 1) < 1:
        raise BadInput("--experiments and --images must be at least 1")
    device = args.device or (f"cuda:{args.gpu}" if args.gpu is not None else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {device} requested but CUDA is not available")
    params = args.params or os.path.join("params", dataset, f"nz{args.nz}")
    model = load_model(dataset, args.nz, params, device)
    bins = load_bins(args.bins, dataset, model, args.quantbits)
    coder = BitsBackCoder(model, bins, bitswap=bool(args.bitswap), precision=args.precision,
                          device=device)
    scheme = "bitswap" if args.bitswap else "bbans"
    out = args.out or os.path.join("plots", f"{dataset}{args.nz}")
    prefix = os.path.join(out, f"{scheme}_{args.quantbits}bits")
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
        dataset=dataset, nz=args.nz, scheme=scheme, quantbits=args.quantbits,
        experiments=len(chains), images=int(res["nets"].shape[1]), seed=args.seed,
        params=params, bins=args.bins, fingerprint=fingerprint(model, bins), device=device,
        decoded=not args.no_decode,
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
    _write_atomic(f"{prefix}_summary.json", json.dumps(meta, indent=1).encode())
    title = (f"{meta['dataset']} nz={meta['nz']} {meta['scheme']} q={meta['quantbits']}: "
             f"{meta['experiments']} experiments x {meta['images']} images, bits/dim"
             f"{', decoded and verified' if meta['decoded'] else ', NOT decoded'}")
    print(format_table(title, summary))
    print(f"encode {meta['encode_ms_per_image']:.1f} ms/image"
          + (f", decode {meta['decode_ms_per_image']:.1f} ms/image" if meta["decoded"] else ""))
    print(f"results: {prefix}_*.npy, {prefix}_summary.json")


def main(dataset, argv=None):
    """Entry point of the *_compress.py scripts: one-line errors, exit status."""
    try:
        return run(dataset, argv)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DecodeMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
