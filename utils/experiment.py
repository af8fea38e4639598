"""The paper's compression experiments (shared by the four *_compress.py scripts).

Protocol (utils/protocol.py): E experiments of n test images drawn without
replacement with a fixed seed; each experiment is one chain: its images are
coded one after another on one message that starts as a random head over a
virtual random stack (ans underflow seed), both seeded by the experiment's
id.  The experiments run at once as the lanes of one ``ans.Message``; the
networks see blocks of ``--net-batch`` consecutive experiments, and whole
blocks are dealt to the processes, so every array is the same whatever the
number of processes.  Full-size images (imagenetcrop): one experiment per
photo, cropped to multiples of 32 and coded block by block (row-major),
chains of equal length batched together.

Accounting per chain (exact, from the coder's own counters):
  effective size  = message bits - 32 * words borrowed from the virtual stack
  net (image j)   = growth of the effective size while coding image j, / dims
Initial bits, two definitions, each with its totals and CMA:
  paper's (the reference scripts): what the first image's pops take from the
                    message before its first push (Bit-Swap: the pop of z1;
                    BB-ANS: all nz pops), plus one 32-bit word; later dips
                    below the start come from a large random initial state
                    and are not charged
  total (image j) = paper's initial bits + sum of nets so far * dims
  strict:           the whole initial head plus every word ever borrowed
                    (the deepest point the message reaches below its start)
  total_strict    = message bits after image j (= strict initial + nets)
  CMA (image j)   = total / (dims * (j + 1)), each definition
-ELBO (image j): the paper's, at one fresh continuous posterior sample
(seeded by experiment id and image index); elbos_coded: at the coded latents,
which the net rate must match (net - elbos_coded = the coder's overhead).
Everything is decoded again by default (the mirror image, from the serialized
message) and checked image by image; the decoded message must equal the
initial one (head plus the borrowed words pushed back).

Model: --params (default: the shipped package for the dataset and nz, e.g.
mnist-nz8) is anything model/package.py loads; its bins come with it (a
package) or from --bins / beside the weights / bins/.

Outputs in --out (default plots/{dataset}{nz}, the reference's naming):
  {bitswap|bbans}_{q}bits_{nets,elbos,cmas,total}.npy   (E, n), bits/dim (total: bits)
      (cmas/total: the paper's initial bits, as the reference's files)
  {scheme}_{q}bits_{cmas,total,initial}_strict.npy      the strict definition
  {scheme}_{q}bits_initial.npy   (E, n) the paper's initial bits (bits)
  {scheme}_{q}bits_elbos_coded.npy  -ELBO at the coded latents
  {scheme}_{q}bits_terms{,_coded}.npy  (E, n, 1 + nz) per-layer -ELBO terms, bits/dim
  {scheme}_{q}bits_summary.json  configuration, results_format, means/stds, timings
Multi-process: under mpiexec/torchrun (rank/size from the environment, as
training detects them) each process takes its blocks of experiments; rank 0
merges the parts (part files of an aborted run are removed at start).
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
from model.distributed import launcher_env
from utils import ans, cli, protocol
from utils.bitsback import BitsBackCoder, restored_initial_message
from utils.cli import BadInput, write_atomic
from utils.data import DataNotFoundError, load_image_folder, load_images
from utils.device import device_from_args

MESSAGE_SEED = 0x5EED
NET_BATCH = 25          # 4 blocks of the paper's 100 experiments; smaller blocks cost speed


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

def code_chains(coder, chains, seed=MESSAGE_SEED, decode=True, experiments=None,
                bitstream_dir=None, keep_bitstreams=False, progress=False, net_batch=None):
    """Code E chains of n images (uint8 (E, n, C, H, W)) as E lanes.

    ``experiments``: the experiment id of each chain (default 0..E-1).  A
    chain's initial message (head and borrowed words) and its -ELBO samples
    are seeded by its id, and the networks see sub-batches of the chains
    whose ids share ``id // net_batch`` (all at once when None), so a chain's
    arrays do not depend on which other chains run beside it.

    Returns a dict of (E, n) arrays: nets, elbos (the paper's -ELBO: one
    fresh continuous posterior sample), elbos_coded (at the coded latents),
    and per initial-bits definition (module docstring) initial / total /
    cmas (the paper's) and initial_strict / total_strict / cmas_strict;
    terms / terms_coded (E, n, 1 + nz); encode_s / decode_s.  Raises
    DecodeMismatch naming the experiment and image (the bitstream is kept in
    ``bitstream_dir``; every message when ``keep_bitstreams``)."""
    chains = np.asarray(chains)
    lanes, n = chains.shape[:2]
    dims = coder.dims
    ids = np.arange(lanes) if experiments is None else np.asarray(experiments, dtype=np.int64)
    if ids.shape != (lanes,):
        raise ValueError(f"need one experiment id per chain: {ids.shape} for {lanes} chains")
    message = ans.Message.random(lanes, 0, seed=seed, precision=coder.precision,
                                 underflow_seed=seed, lane_ids=ids)
    initial = message.copy()
    head_bits = initial.lane_bits().astype(np.float64)
    keys = ("nets", "elbos", "elbos_coded", "initial", "total", "cmas",
            "initial_strict", "total_strict", "cmas_strict")
    out = {k: np.zeros((lanes, n)) for k in keys}
    out["terms"] = np.zeros((lanes, n, 1 + coder.nz))
    out["terms_coded"] = np.zeros((lanes, n, 1 + coder.nz))
    effective = head_bits.copy()
    first_pops = {}

    def effective_bits(m):
        return m.lane_bits().astype(np.float64) - 32.0 * m.borrowed_words

    def before_first_push(m):
        first_pops["effective"] = effective_bits(m)

    sizes = _net_batch_sizes(ids, net_batch)
    t0 = time.perf_counter()
    with coder.net_batches(sizes):
        for j in _progress(range(n), progress, "encode"):
            terms = coder.encode(message, chains[:, j], terms=True,
                                 before_first_push=before_first_push if j == 0 else None)
            if j == 0:
                # The paper's initial bits: what the first image's pops took
                # before its first push, plus one 32-bit word (reference scripts).
                paper_initial = head_bits - first_pops["effective"] + 32.0
            now = effective_bits(message)
            out["nets"][:, j] = (now - effective) / dims
            effective = now
            bits = message.lane_bits().astype(np.float64)
            out["initial_strict"][:, j] = head_bits + 32.0 * message.borrowed_words
            out["total_strict"][:, j] = bits
            out["cmas_strict"][:, j] = bits / (dims * (j + 1))
            out["initial"][:, j] = paper_initial
            out["total"][:, j] = paper_initial + now - head_bits
            out["cmas"][:, j] = out["total"][:, j] / (dims * (j + 1))
            out["terms_coded"][:, j] = terms / dims
            out["elbos_coded"][:, j] = terms.sum(1) / dims
            sampled = coder.sampled_elbo_terms(chains[:, j], elbo_seeds(ids, j, seed))
            out["terms"][:, j] = sampled / dims
            out["elbos"][:, j] = sampled.sum(1) / dims
    out["encode_s"] = time.perf_counter() - t0
    data = message.to_bytes()
    if keep_bitstreams:
        write_atomic(os.path.join(bitstream_dir, f"experiments{_id_range(ids)}.ans"), data)
    if decode:
        t0 = time.perf_counter()
        received = ans.Message.from_bytes(data)
        with coder.net_batches(sizes):
            for j in _progress(reversed(range(n)), progress, "decode"):
                x = coder.decode(received, lanes)
                bad = np.flatnonzero((x.reshape(lanes, -1) != chains[:, j].reshape(lanes, -1)).any(1))
                if bad.size:
                    path = _keep(bitstream_dir, ids, data)
                    raise DecodeMismatch(f"decode mismatch: experiment {ids[bad[0]]}, "
                                         f"image {j} (bitstream kept in {path})")
        expected = restored_initial_message(initial, message.borrowed_words)
        if received != expected:
            path = _keep(bitstream_dir, ids, data)
            raise DecodeMismatch(f"decode mismatch: experiment(s) {_id_range(ids, ', ')} did not "
                                 f"restore the initial message (bitstream kept in {path})")
        out["decode_s"] = time.perf_counter() - t0
    return out


def elbo_seeds(experiments, image, seed=MESSAGE_SEED):
    """Seeds of the -ELBO's posterior samples for ``image`` of each experiment:
    a function of (seed, experiment id, image index) only."""
    return np.array([np.random.SeedSequence([seed, int(e), int(image)]).generate_state(1)[0]
                     for e in experiments], dtype=np.int64)


def _net_batch_sizes(ids, net_batch):
    """Sizes of the runs of consecutive chains with the same ``id // net_batch``."""
    if net_batch is None:
        return [len(ids)]
    block = np.asarray(ids) // net_batch
    cuts = np.flatnonzero(np.diff(block)) + 1
    return np.diff(np.concatenate([[0], cuts, [len(ids)]])).tolist()


def _id_range(ids, sep="_"):
    """Experiment ids as runs: [0..9, 20..29] -> '0-9_20-29' (sep '_')."""
    ids = np.asarray(ids).tolist()
    runs, first = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[k - 1] + 1:
            a, b = ids[first], ids[k - 1]
            runs.append(f"{a}" if a == b else f"{a}-{b}")
            first = k
    return sep.join(runs)


def _keep(directory, ids, data):
    directory = directory or "."
    path = os.path.join(directory, f"mismatch_experiments{_id_range(ids)}.ans")
    write_atomic(path, data)
    return path


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False)


# ------------------------------------------------------------------ summary

# Version of the result files' layout and meaning; bumped whenever either
# changes, so that old results are never reused as if they were new ones.
# 2: the paper's initial bits (and strict beside them), the paper's -ELBO.
RESULTS_FORMAT = 2

ARRAYS = ("nets", "elbos", "elbos_coded", "initial", "total", "cmas",
          "initial_strict", "total_strict", "cmas_strict", "terms", "terms_coded")

# Plain labels of the summary's keys (stdout table and reports).
LABELS = {
    "net": "net (bits/dim)",
    "elbo": "-ELBO, fresh posterior sample as the paper (bits/dim)",
    "elbo_coded": "-ELBO at the coded latents (bits/dim)",
    "net_minus_elbo": "net - ELBO (bits/dim)",
    "coder_overhead": "coder overhead: net - coded -ELBO (bits/dim)",
    "initial_bits": "initial bits, paper's definition (bits)",
    "initial_bits_strict": "initial bits, strict: deepest point (bits)",
}


def label(key):
    """Plain label of a summary key ('cma@k', 'cma_strict@k' included)."""
    if key in LABELS:
        return LABELS[key]
    name, _, k = key.partition("@")
    which = "strict initial bits" if name == "cma_strict" else "paper's initial bits"
    return f"CMA@{k}, {which} (bits/dim)"


def summarize(res):
    """Means/stds across experiments of the per-experiment averages."""
    nets, elbos, coded = res["nets"], res["elbos"], res["elbos_coded"]
    per_exp_net = np.nanmean(nets, 1)
    per_exp_elbo = np.nanmean(elbos, 1)
    per_exp_coded = np.nanmean(coded, 1)
    n = nets.shape[1]
    s = dict(net=_ms(per_exp_net), elbo=_ms(per_exp_elbo), elbo_coded=_ms(per_exp_coded),
             net_minus_elbo=_ms(per_exp_net - per_exp_elbo),
             coder_overhead=_ms(per_exp_net - per_exp_coded),
             initial_bits=_ms(np.nanmax(res["initial"], 1)),
             initial_bits_strict=_ms(np.nanmax(res["initial_strict"], 1)))
    for name, array in (("cma", "cmas"), ("cma_strict", "cmas_strict")):
        cmas = res[array]
        for k in sorted({1, min(50, n), n}):
            s[f"{name}@{k}"] = _ms(cmas[:, k - 1])
        s[f"{name}@last"] = _ms([row[~np.isnan(row)][-1] for row in cmas])
    return s


def _ms(a):
    a = np.asarray(a, dtype=np.float64)
    return {"mean": float(np.nanmean(a)), "std": float(np.nanstd(a))}


def format_table(title, summary):
    width = max(len(label(k)) for k in summary) + 2
    lines = [title, f"{'metric':<{width}}{'mean':>12}{'std':>12}"]
    for k, v in summary.items():
        digits = 1 if k.startswith("initial") else 4
        lines.append(f"{label(k):<{width}}{v['mean']:>12.{digits}f}{v['std']:>12.{digits}f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ ranks

def rank_and_size():
    """(rank, size) of this process: the launcher detection training uses."""
    launched = launcher_env()
    return (0, 1) if launched is None else launched[:2]


def my_experiments(experiments, rank, size, net_batch):
    """Whole blocks of ``net_batch`` consecutive experiments, dealt round-robin
    to the processes: a block's chains always share their network batches."""
    blocks = -(-experiments // net_batch)
    return [e for b in range(rank, blocks, size)
            for e in range(b * net_batch, min((b + 1) * net_batch, experiments))]


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
    p.add_argument("--precision", type=int, default=ans.DEFAULT_PRECISION,
                   help="rANS precision bits (31: the authors' coder)")
    p.add_argument("--net-batch", type=int, default=NET_BATCH,
                   help="experiments whose images the networks see together (fixed blocks, "
                        "dealt whole to processes: results do not depend on the process count)")
    cli.add_progress_argument(p)
    return p


def run(dataset, argv=None):
    args = build_parser(dataset).parse_args(argv)
    if args.experiments < 1 or getattr(args, "images", 1) < 1:
        raise BadInput("--experiments and --images must be at least 1")
    if args.net_batch < 1:
        raise BadInput("--net-batch must be at least 1")
    if not ans.MIN_PRECISION <= args.precision <= ans.MAX_PRECISION:
        raise BadInput(f"--precision must be in [{ans.MIN_PRECISION}, {ans.MAX_PRECISION}], "
                       f"got {args.precision}")
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
    _remove_stale_parts(prefix, rank, size)

    if dataset == "imagenetcrop":
        chains, selection = experiments_full_size(args)
    else:
        images, selection = experiments_32x32(dataset, args)
        chains = list(images)
    mine = my_experiments(len(chains), rank, size, args.net_batch)
    bitstreams = os.path.join(out, "bitstreams", scheme)
    meta = dict(
        dataset=dataset, nz=nz, scheme=scheme, quantbits=quantbits,
        results_format=RESULTS_FORMAT, experiments=len(chains), seed=args.seed,
        params=params, bins=getattr(bins, "source", None), fingerprint=fingerprint(model, bins),
        device=str(device), decoded=not args.no_decode, processes=size,
        precision=args.precision, net_batch=args.net_batch,
        selection=np.asarray(selection).tolist())
    res = _code_groups(coder, chains, mine, args, bitstreams)
    if size > 1:
        run_key = _run_key(meta)
        _save_part(prefix, rank, size, mine, res, run_key)
        if rank != 0:
            return 0
        mine, res = _merge_parts(prefix, size, run_key)
    meta["images"] = int(res["nets"].shape[1])
    _write_results(prefix, res, meta)
    return 0


def _code_groups(coder, chains, mine, args, bitstreams):
    """Chains of equal length run together; results padded with NaN to the longest."""
    n_max = max(len(chains[e]) for e in mine) if mine else 0
    res = {k: np.full((len(mine), n_max), np.nan) for k in ARRAYS if not k.startswith("terms")}
    for k in ("terms", "terms_coded"):
        res[k] = np.full((len(mine), n_max, 1 + coder.nz), np.nan)
    res["encode_s"] = res["decode_s"] = 0.0
    by_len = {}
    for row, e in enumerate(mine):
        by_len.setdefault(len(chains[e]), []).append((row, e))
    for length, members in sorted(by_len.items()):
        rows = [r for r, _ in members]
        part = code_chains(coder, np.stack([chains[e] for _, e in members]),
                           decode=not args.no_decode, experiments=[e for _, e in members],
                           bitstream_dir=bitstreams, keep_bitstreams=args.keep_bitstreams,
                           progress=not args.no_progress, net_batch=args.net_batch)
        for k in ARRAYS:
            res[k][rows, :length] = part[k]
        res["encode_s"] += part["encode_s"]
        res["decode_s"] += part.get("decode_s", 0.0)
    res["images_coded"] = int(sum(len(chains[e]) for e in mine))
    return res


def _part_path(prefix, rank, size):
    return f"{prefix}_part{rank}of{size}.npz"


def _remove_stale_parts(prefix, rank, size):
    """Part files left by an aborted run: every process removes its own;
    rank 0 also those of runs with another number of processes."""
    import glob
    own = _part_path(prefix, rank, size)
    for path in glob.glob(f"{glob.escape(prefix)}_part*of*.npz"):
        if path == own or (rank == 0 and not path.endswith(f"of{size}.npz")):
            os.remove(path)


def _run_key(meta):
    """What the processes of one run agree on; a part with another key is stale."""
    shared = {k: v for k, v in meta.items() if k != "device"}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()


def _save_part(prefix, rank, size, mine, res, run_key):
    path = _part_path(prefix, rank, size)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, experiments=np.array(mine, dtype=np.int64), run_key=np.array(run_key),
             **{k: np.asarray(v) for k, v in res.items()})
    os.replace(tmp, path)


def _merge_parts(prefix, size, run_key, timeout_s=7 * 24 * 3600):
    """Rank 0: wait for every process's part of this run, merge, remove them."""
    paths = [_part_path(prefix, r, size) for r in range(size)]
    t0 = time.time()
    parts = [None] * size
    while any(p is None for p in parts):
        for r, path in enumerate(paths):
            if parts[r] is None and os.path.exists(path):
                part = _read_part(path)
                if part is not None and str(part.get("run_key")) == run_key:
                    parts[r] = part                   # else stale: wait for the new one
        if any(p is None for p in parts):
            if time.time() - t0 > timeout_s:
                raise BadInput(f"gave up waiting for the other processes' results ({paths})")
            time.sleep(1.0)
    order = np.concatenate([p["experiments"] for p in parts]).astype(np.int64)
    n_max = max(p["nets"].shape[1] for p in parts)
    res = {}
    for k in ARRAYS:
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


def _read_part(path):
    """A part file's arrays, or None when it is not (or no longer) readable."""
    try:
        with np.load(path) as data:
            return dict(data)
    except Exception:   # replaced or removed meanwhile, or not an npz: treat as absent
        return None


def _write_results(prefix, res, meta):
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    for k in ARRAYS:
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
             f"{unit}; initial bits in bits")
    print(format_table(title, summary))
    print(f"encode {meta['encode_ms_per_image']:.1f} ms/image"
          + (f", decode {meta['decode_ms_per_image']:.1f} ms/image" if meta["decoded"] else ""))
    print(f"results: {prefix}_*.npy, {prefix}_summary.json")


def main(dataset, argv=None):
    """Entry point of the *_compress.py scripts (exit status: utils/cli.py)."""
    return cli.run_main(f"{dataset}_compress.py", lambda: run(dataset, argv))
