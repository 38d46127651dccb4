"""
Train a dual-objective language model: one transformer, two objectives, in the ratio lam (paper §3).

    python train.py config/tiny_cpu.py                              # CPU or one GPU
    torchrun --nproc_per_node=8 train.py config/lambda_0.5.py       # DDP on 8 GPUs

An optimizer step is G = gradient_accumulation_steps micro-batches, counted over all ranks; each runs
one objective, so every compute graph stays static. Micro-batch g of a step in epoch e is AR iff
(g + e) mod G < lam * G: the paper's "k of N devices run AR", rotated every epoch as the official
code does. Data, objective and noise depend only on (seed, step, g), never on the rank, so one
process reproduces N ranks, and resuming is exact.
"""
import fcntl
import importlib.util
import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from fractions import Fraction

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import model as modeling
from configurator import configure, settings
from muon import MuonAdamW
from cli import format_seconds

# -----------------------------------------------------------------------------
# Settings (defaults: a small run on Tiny Shakespeare). Config files and --key=value change them.
# I/O
data_dir = "data_shakespeare"   # a folder prepared by data.py
out_dir = "out"
eval_interval = 100             # evaluate, log metrics and checkpoint every this many steps
eval_iters = 8                  # validation batches (of batch_size windows) per objective
log_interval = 10
resume = False                  # continue the run whose checkpoint is out_dir/ckpt.pt
overwrite = False               # a fresh run may replace the checkpoint and metrics already in out_dir
seed = 1337
wandb_log = False               # also send every evaluation's metrics to Weights & Biases (pip install wandb)
wandb_project = "nanodual"      # the W&B project of the run
wandb_run_name = "run"          # the W&B name of the run
# the dual objective
lam = 0.5                       # share of AR micro-batches: 1 = pure AR, 0 = pure masked diffusion
ar_weight = 1.0                 # factor on the AR loss: 1 is the paper's corrected Eq. (App. B erratum); the
                                # published checkpoints were trained with 2, which makes the AR share of the
                                # gradient 2*lam/(1+lam) instead of lam
md_weighting = "elbo"           # "elbo": weight 1/t (paper Eq. 4); "ce": plain cross-entropy (seed 002)
md_antithetic = True            # MDLM's low-discrepancy sampler for t across the micro-batch
z_loss = 1e-4                   # weight of the mean squared log-partition (PaLM's z-loss; paper §5.1)
doc_masking = True              # packed documents do not attend to each other
# data
repetitions = 0.0               # r > 0: train on a random T/r-token subset of the documents, r times over
                                # (paper §5.1); 0: all data
subset_seed = 0                 # which documents form that subset: a seed of its own, so runs that differ
                                # in seed (or lam) train on the same tokens
batch_size = 16                 # sequences per micro-batch (per rank)
block_size = 256
gradient_accumulation_steps = 4 # micro-batches per optimizer step, over all ranks
# model
n_layer = 6
n_head = 4
n_embd = 256
intermediate_size = 688
rope_theta = 10000.0
tie_embeddings = False
# optimizer
optimizer = "muon"              # "muon" (Muon + AdamW, paper §5.1) or "adamw" (everything AdamW)
learning_rate = 0.007
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # 0 disables clipping
max_iters = 1000
lr_schedule = "wsd"             # "wsd": warmup-stable-decay (paper §5.1); "cosine"
warmup_iters = 0
decay_frac = 0.25               # wsd: the last decay_frac of the steps decay linearly to 0 (2048 of 8192)
min_lr_frac = 0.1               # cosine: the final lr as a fraction of learning_rate
overfit_patience = 3            # flag an objective whose val loss rose this many evals while its train loss fell
# system
device = "auto"                 # "auto", "cpu", "cuda", "cuda:1", "mps"
dtype = "auto"                  # "auto" (bfloat16 on CUDA, float32 elsewhere), "float32", "bfloat16"
compile = None                  # None: torch.compile on CUDA, not on CPU; or True / False
# -----------------------------------------------------------------------------

MODEL_KEYS = ("n_layer", "n_head", "n_embd", "intermediate_size", "rope_theta", "tie_embeddings", "block_size")
# dense bf16 peaks; the first name contained in the device name wins (H100 PCIe and NVL before SXM)
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
              "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def ar_micro_batches(lam, G, world=1):
    """Number of AR micro-batches per step; lam must be a multiple of 1/G."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} is outside [0, 1]; 1 is pure AR, 0 pure masked diffusion")
    n_ar = round(lam * G)
    if abs(n_ar - lam * G) > 1e-9:
        lower, upper = math.floor(lam * G) / G, math.ceil(lam * G) / G
        need = Fraction(lam).limit_denominator(1 << 16).denominator
        need = need * world // math.gcd(need, world)  # G must also split evenly over the ranks
        raise ValueError(f"lam={lam} is not a multiple of 1/gradient_accumulation_steps=1/{G}: the nearest "
                         f"valid values are {lower:g} and {upper:g}; for lam={lam} exactly set "
                         f"gradient_accumulation_steps to a multiple of {need}"
                         + (f" (a multiple of the world size {world} too)" if world > 1 else ""))
    return n_ar


def objective_of(g, epoch, G, n_ar):
    """"ar" or "md" for micro-batch g of a step in `epoch`: n_ar of the G, rotating every epoch."""
    return "ar" if (g + epoch) % G < n_ar else "md"


def lr_factor(it):
    """Learning rate at step `it` as a fraction of learning_rate."""
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if lr_schedule == "wsd":  # stable, then a linear decay that reaches 0 at max_iters
        decay_iters = int(decay_frac * max_iters)
        decay_start = max_iters - decay_iters
        return 1.0 if it < decay_start else (max_iters - it) / max(decay_iters, 1)
    progress = (it - warmup_iters) / max(max_iters - warmup_iters, 1)
    return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def noise_seed(step, g):
    """The diffusion noise of micro-batch g of a step: a function of (seed, step, g) only."""
    return (seed * 1_000_003 + step * 4_099 + g) % (1 << 62)


def validation_batch(val_x, val_y, val_docs, i, batch_size, noise):
    """(x, y, doc ids, MD rates t, n real windows) of validation batch i, padded to batch_size windows
    (target -1, t = 1) so that a compiled model sees one shape; the padding changes no real window's t."""
    sl = slice(i * batch_size, (i + 1) * batch_size)
    dev = noise.device
    x, y, docs = val_x[sl].to(dev), val_y[sl].to(dev), val_docs[sl].to(dev)
    n, pad = len(x), batch_size - len(x)
    t = modeling.sample_t(n, noise, dev, antithetic=True)
    if pad:
        x = torch.cat([x, x[:1].expand(pad, -1)])
        y = torch.cat([y, y.new_full((pad, y.size(1)), -1)])
        docs = torch.cat([docs, docs[:1].expand(pad, -1)])
        t = torch.cat([t, t.new_ones(pad)])
    return x, y, docs, t, n


def compiled_graphs():
    """Graphs torch.compile has built in this process: a run needs four (AR and MD, with and without grad)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def peak_flops(dev):
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def overfitting(history, key_val, key_train, patience):
    """True when the validation loss rose at each of the last `patience` evaluations while the
    training loss fell over the same span (the paper's definition, §5.3 footnote)."""
    recent = [h for h in history if h.get(key_val) is not None and h.get(key_train) is not None][-(patience + 1):]
    if len(recent) < patience + 1:
        return False
    val_rising = all(b[key_val] > a[key_val] for a, b in zip(recent, recent[1:]))
    return val_rising and recent[-1][key_train] < recent[0][key_train]


def plot_curves(history, path):
    """Training (dotted) and validation (solid) losses against tokens, into the PNG path, atomically."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed
    fig = Figure(figsize=(6, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, color in (("ar", "tab:blue"), ("md", "tab:orange")):
        for split, style in (("val", "-"), ("train", ":")):
            points = [(h["tokens"], h[f"{split}_{name}_loss"]) for h in history
                      if h.get(f"{split}_{name}_loss") is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, marker="." if split == "val" else None,
                        label=f"{split} {name.upper()}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = f"{path}.tmp"  # one name: a run killed mid-write leaves one stray file, replaced by the next
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write (a full disk) leaves no half picture
            os.remove(tmp)


def check_settings():
    """One-line errors for values no run can use (configure() has already checked their types)."""
    for key in ("batch_size", "block_size", "max_iters", "eval_interval", "eval_iters", "log_interval",
                "overfit_patience"):
        if globals()[key] < 1:
            raise ValueError(f"{key}={globals()[key]} must be a positive integer")
    for key in ("repetitions", "warmup_iters", "grad_clip", "z_loss", "weight_decay", "ar_weight"):
        if globals()[key] < 0:
            raise ValueError(f"{key}={globals()[key]} must be >= 0 (0 turns it off" +
                             ("; repetitions=0 trains on all the data)" if key == "repetitions" else ")"))
    for key in ("decay_frac", "min_lr_frac"):
        if not 0 <= globals()[key] <= 1:
            raise ValueError(f"{key}={globals()[key]} must be in [0, 1]")
    for key in ("seed", "subset_seed"):  # torch's generators take 64-bit seeds; data.py's epoch seeds are 63-bit
        if not 0 <= globals()[key] < 2**63:
            raise ValueError(f"{key}={globals()[key]} must be an integer from 0 to 2**63 - 1")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate} must be positive")
    for key, allowed in (("optimizer", ("muon", "adamw")), ("lr_schedule", ("wsd", "cosine")),
                         ("md_weighting", ("elbo", "ce")), ("dtype", ("auto", "float32", "bfloat16"))):
        if globals()[key] not in allowed:
            raise ValueError(f"{key}={globals()[key]!r} is not one of {allowed}")
    if compile not in (None, True, False):
        raise ValueError(f"compile={compile!r} must be True, False or None (None: on for CUDA, off for CPU)")
    if resume and overwrite:
        raise ValueError("resume=True continues the checkpoint in out_dir and overwrite=True replaces it; pick one")


def claim_out_dir(ckpt_path):
    """Check out_dir and lock it (an flock, which the kernel releases even on SIGKILL): two runs in one
    out_dir would interleave their metrics. Returns the lock file, to keep open for the whole run."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir={out_dir} is a file, not a folder; choose another out_dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, "train.lock"), "a+")  # "a+": do not erase the holder's PID
    except OSError as e:
        raise ValueError(f"out_dir={out_dir} cannot be created or written ({e.strerror}); "
                         f"choose another out_dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        raise ValueError(f"out_dir={out_dir} is in use by another train.py (PID {holder}); wait for it to "
                         f"finish or choose another out_dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if os.path.exists(ckpt_path) and not resume and not overwrite:
        raise ValueError(f"out_dir={out_dir} already holds a checkpoint ({ckpt_path}); resume it with "
                         f"--resume=True, or choose another out_dir, or pass --overwrite=True")
    return lock


@contextmanager
def stop_if_write_fails(path, ckpt_path):
    """Turn a failed write (a full disk, a lost mount) into one line that says what survived."""
    try:
        yield
    except OSError as e:
        kept = (f"the previous checkpoint {ckpt_path} was kept; continue with --resume=True once it is fixed"
                if os.path.exists(ckpt_path) else "no checkpoint had been written yet")
        raise OSError(f"could not write {path} ({e.strerror or e}); {kept}") from None


DATA_FILES = ("train.bin", "train.idx", "val.bin")


def dataset_fingerprint(data_dir):
    """meta.json's contents and each token file's [size, mtime] (None if missing): cheap at every eval."""
    try:
        with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):  # missing, or caught half-written
        meta = None
    files = {}
    for name in DATA_FILES:
        try:
            st = os.stat(os.path.join(data_dir, name))
            files[name] = [st.st_size, st.st_mtime_ns]
        except OSError:
            files[name] = None
    return {"meta": meta, "files": files}


def dataset_changes(old, new, times=True):
    """What differs between two fingerprints, in words ([] if nothing). times=False compares contents
    only (meta.json and the sizes): a dataset copied or prepared again from the same corpus is the same."""
    changes = ["meta.json's contents"] if old["meta"] != new["meta"] else []
    for name in DATA_FILES:
        a, b = old["files"].get(name), new["files"].get(name)
        if a != b and (a is None or b is None or a[0] != b[0]):
            changes.append(f"{name} " + ("missing" if b is None else "created" if a is None else
                                         f"{a[0]:,} -> {b[0]:,} bytes"))
        elif a != b and times:
            changes.append(f"{name} rewritten")
    return changes


def resumable_checkpoint(ckpt_path, meta, tokenizer, fingerprint, config, log):
    """The checkpoint to resume, checked to continue this run (same dataset, model and optimizer), and
    its segments, extended by one if settings changed."""
    if not os.path.isfile(ckpt_path):
        raise ValueError(f"resume=True but there is no checkpoint at {ckpt_path}; run without --resume=True")
    ckpt = modeling.read_checkpoint(ckpt_path)
    missing = [k for k in ("optimizer", "config", "iter_num", "tokens_seen", "history", "tokenizer") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {ckpt_path} lacks {', '.join(missing)}, so it cannot resume a run (it was "
                         f"not written by train.py); start a fresh run in another out_dir")
    if ckpt["model_config"]["vocab_size"] != meta["vocab_size"]:
        raise ValueError(f"data folder {data_dir} has vocabulary size {meta['vocab_size']} but the checkpoint "
                         f"was trained with {ckpt['model_config']['vocab_size']}; resume with the data it used")
    if not data.same_tokenizer(ckpt["tokenizer"], tokenizer.to_spec()):
        raise ValueError(f"the tokenizer of data folder {data_dir} differs from the one the checkpoint was "
                         f"trained with (same vocabulary size, other tokens); resume with the data it used")
    recorded = ckpt.get("data", {}).get("fingerprint")  # absent in checkpoints from before it was recorded
    changes = dataset_changes(recorded, fingerprint, times=False) if recorded else []
    if changes:
        raise ValueError(f"data folder {data_dir} is not the dataset the checkpoint was trained on "
                         f"({', '.join(changes)}); resume with the data it used")
    if recorded and dataset_changes(recorded, fingerprint):
        log(f"note: the files of data folder {data_dir} were written again since the checkpoint, with the same "
            f"description and sizes: taken to be the same dataset")
    for key in MODEL_KEYS + ("optimizer",):
        if ckpt["config"].get(key) != config[key]:
            raise ValueError(f"{key}={config[key]} differs from the checkpoint's {ckpt['config'].get(key)}; "
                             f"resume with the configuration the run started with")
    old_config = ckpt["config"]
    # resume and overwrite say how a run started, not how it trains
    changed = [k for k in config if k in old_config and old_config[k] != config[k] and k not in ("resume", "overwrite")]
    # one segment per stretch of steps run with the same settings (docs/train.md); older checkpoints: one
    segments = ckpt.get("segments") or [{"from_iter": 0, "to_iter": ckpt["iter_num"], "settings": {}}]
    if changed:  # allowed (e.g. a longer max_iters), but the run is then not the one that was started
        log("note: resuming with changed settings: " + ", ".join(f"{k} {old_config[k]!r} -> {config[k]!r}"
                                                                 for k in changed))
        for segment in segments:  # a newly changed setting held its old value in every earlier segment
            for k in changed:
                segment["settings"].setdefault(k, old_config[k])
        segments.append({"from_iter": ckpt["iter_num"], "to_iter": ckpt["iter_num"],
                         "settings": {k: config[k] for k in segments[-1]["settings"]}})
    return ckpt, segments


def start_metrics(metrics_path, ckpt_path, iter_num):
    """A fresh run starts a fresh log (and, with overwrite=True, drops the old checkpoint); a resumed
    run drops what was logged after its checkpoint, at iter_num."""
    if not resume:
        for path in (metrics_path, ckpt_path):
            if os.path.exists(path):
                os.remove(path)
        return
    if not os.path.exists(metrics_path):
        return

    def logged_before_checkpoint(line):
        try:
            return json.loads(line)["iter"] <= iter_num
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            return False
    with open(metrics_path) as f:
        kept = [line for line in f if logged_before_checkpoint(line)]
    with stop_if_write_fails(metrics_path, ckpt_path):  # rewritten atomically: the log is never lost
        with open(metrics_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(metrics_path + ".tmp", metrics_path)


def main(argv):
    configure(globals(), argv)
    check_settings()
    config = {k: globals()[k] for k in sorted(settings(globals()))}  # the resolved run config, saved with the model
    wandb = None
    if wandb_log:  # imported only when asked for: most runs never need it
        try:
            import wandb
        except ImportError:
            raise ValueError("wandb_log=True but the wandb package is not installed; pip install wandb, "
                             "or run with --wandb_log=False") from None

    # --- processes and devices ---------------------------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    G = gradient_accumulation_steps
    if G < 1 or G % world != 0:
        raise ValueError(f"gradient_accumulation_steps={G} must be a positive multiple of the world size "
                         f"{world} (each rank runs G/world micro-batches); use {world * max(1, round(G / world))}")
    n_ar = ar_micro_batches(lam, G, world)
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = modeling.parse_device(device if world == 1 or device != "cuda" else f"cuda:{local_rank}")
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        else:  # share the cores between the processes of this machine
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    master = rank == 0
    ptdtype = torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and dev.type == "cuda") else torch.float32
    autocast = torch.autocast(dev.type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()
    use_compile = (dev.type == "cuda") if compile is None else compile
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def log(*args):
        if master:
            print(*args, flush=True)

    # --- out_dir: checked and locked before any work (only rank 0 writes to it) ---------------
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if master:
        lock = claim_out_dir(ckpt_path)  # noqa: F841 (the lock is held while this file stays open)
        for path in modeling.remove_stale_temporaries(ckpt_path):
            log(f"removed {path}, left by a run killed while writing a checkpoint")

    # --- data: a random subset of T/r tokens of whole documents, r times over (paper §5.1) ---
    fingerprint = dataset_fingerprint(data_dir)  # before reading: a change while reading is caught later
    meta = data.load_meta(data_dir)
    tokenizer = data.Tokenizer.load(data_dir)
    windows_per_step = G * batch_size
    total_windows = max_iters * windows_per_step
    unique = None
    if repetitions > 0:
        unique = int(total_windows // repetitions) * block_size  # T/r, in whole windows
        if unique < block_size:
            raise ValueError(f"repetitions={repetitions} leaves fewer than one window of block_size={block_size} "
                             f"unique tokens for a budget of {total_windows * block_size:,} tokens; lower repetitions")
    windows = data.TrainWindows(data_dir, block_size, unique_tokens=unique, seed=seed, subset_seed=subset_seed)
    val_x, val_y, val_docs = data.val_windows(data_dir, block_size, eval_iters * batch_size)
    tokens_per_step = windows_per_step * block_size
    epochs = total_windows / windows.n_windows
    log(f"data: {data_dir}, vocab {meta['vocab_size']}, {windows.unique_tokens:,} unique training tokens "
        f"({windows.n_windows:,} windows of {block_size}); budget {total_windows * block_size:,} tokens "
        f"= {epochs:.2f} epochs; {len(val_x)} validation windows")

    # --- model and optimizer -----------------------------------------------------------------
    ckpt, segments = None, [{"from_iter": 0, "to_iter": 0, "settings": {}}]
    if resume:
        ckpt, segments = resumable_checkpoint(ckpt_path, meta, tokenizer, fingerprint, config, log)
    model_config = modeling.ModelConfig(
        vocab_size=meta["vocab_size"], block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        intermediate_size=intermediate_size, rope_theta=rope_theta, tie_embeddings=tie_embeddings,
        bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id)
    raw_model = modeling.DualLM(model_config).to(dev)
    opt = MuonAdamW(raw_model, lr=learning_rate, weight_decay=weight_decay, adamw_betas=(beta1, beta2),
                    use_muon=(optimizer == "muon"))
    log(opt.describe())
    iter_num, tokens_seen, history = 0, 0, []
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        iter_num, tokens_seen, history = ckpt["iter_num"], ckpt["tokens_seen"], ckpt["history"]
        log(f"resumed from {ckpt_path} at step {iter_num}")
        del ckpt
    n_params = raw_model.num_params()
    log(f"model: {n_params / 1e6:.2f}M parameters ({raw_model.num_params(True) / 1e6:.2f}M non-embedding); "
        f"lam={lam}: {n_ar} of {G} micro-batches AR; device {dev}, {ptdtype}, compile={use_compile}, world {world}")
    model = torch.compile(raw_model) if use_compile else raw_model
    train_model = DDP(model, device_ids=[local_rank] if dev.type == "cuda" else None) if world > 1 else model
    flops_per_step = raw_model.flops_per_token(block_size) * tokens_per_step
    peak = peak_flops(dev)

    # --- metrics -----------------------------------------------------------------------------
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if master:
        start_metrics(metrics_path, ckpt_path, iter_num)
    curves_path = os.path.join(out_dir, "curves.png")
    draw_curves = master and importlib.util.find_spec("matplotlib") is not None  # optional: only for curves.png
    if master and not draw_curves:
        log(f"note: matplotlib is not installed, so {curves_path} is not drawn; pip install matplotlib for it")
    if master and wandb:
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)

    @torch.no_grad()
    def evaluate():
        """Validation loss of both objectives on the fixed held-out windows. MD uses fixed seeds and
        stratified t, and always the ELBO weighting, so evaluations compare across runs and lam."""
        model.eval()
        sums = torch.zeros(3, device=dev)  # AR loss x scored targets, scored targets, MD loss x windows
        n_batches = -(-len(val_x) // batch_size)  # the last one may hold fewer windows: it is padded
        for i in range(rank, n_batches, world):
            noise = torch.Generator(device=dev).manual_seed(10_000 + i)
            x, y, docs, t, n = validation_batch(val_x, val_y, val_docs, i, batch_size, noise)
            docs = docs if doc_masking else None
            with autocast:  # the AR loss is a mean over scored targets (not <s>, not padding), MD over windows
                scored = (modeling.ar_targets(y, tokenizer.bos_id) >= 0).sum()
                sums[0] += modeling.ar_loss(model, x, y, docs)[0] * scored
                sums[1] += scored
                sums[2] += modeling.md_loss(model, x, y, docs, t=t, generator=noise, weighting="elbo")[0] * n
        if world > 1:
            dist.all_reduce(sums)
        model.train()
        return [(sums[0] / sums[1]).item(), (sums[2] / len(val_x)).item()]

    # --- the training loop -------------------------------------------------------------------
    my_micro_batches = range(rank * G // world, (rank + 1) * G // world)
    train_sums = torch.zeros(2, device=dev)   # summed AR / MD micro-batch losses since the last eval
    train_counts = torch.zeros(2, device=dev)
    log_sums, log_counts = torch.zeros(2, device=dev), torch.zeros(2, device=dev)  # ... since the last log line
    nonfinite = torch.zeros((), dtype=torch.int32, device=dev)
    t_log, tokens_at_log, iter_at_log = time.time(), tokens_seen, iter_num
    tokens_per_sec, mfu, start_iter, t_start = None, None, iter_num, time.time()
    raw_model.train()
    while True:
        # evaluate, log and checkpoint (a resumed run did this for its first step before it stopped)
        if (iter_num % eval_interval == 0 or iter_num == max_iters) and not (resume and iter_num == start_iter):
            # first: a dataset rewritten under the run (data.py into the same folder) would be read with
            # the document index loaded at start; the last checkpoint predates the change
            changes = dataset_changes(fingerprint, dataset_fingerprint(data_dir))
            if world > 1:  # all ranks stop together
                changed = torch.tensor(len(changes), device=dev)
                dist.all_reduce(changed, op=dist.ReduceOp.MAX)
                changes = changes or (["on another rank"] if changed.item() else [])
            if changes:
                raise ValueError(f"data folder {data_dir} changed during training ({', '.join(changes)}); stopped "
                                 f"before step {iter_num} so as not to mix two datasets; {last_checkpoint()} "
                                 f"(it checks that the data is the run's)")
            val_ar, val_md = evaluate()
            if world > 1:
                dist.all_reduce(train_sums)
                dist.all_reduce(train_counts)
                dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
            if nonfinite.item() or not (math.isfinite(val_ar) and math.isfinite(val_md)):
                raise non_finite_loss(iter_num, ckpt_path)
            means = [float(s / c) if c > 0 else None for s, c in zip(train_sums, train_counts)]
            row = {"iter": iter_num, "tokens": tokens_seen,
                   "epoch": round(iter_num * windows_per_step / windows.n_windows, 4),
                   "train_ar_loss": means[0], "train_md_loss": means[1], "val_ar_loss": val_ar, "val_md_loss": val_md,
                   "lr": learning_rate * lr_factor(min(iter_num, max_iters - 1)), "tokens_per_sec": tokens_per_sec,
                   "mfu": mfu, "elapsed": round(time.time() - t_start, 2)}
            history.append(row)
            row["overfit_ar"] = overfitting(history, "val_ar_loss", "train_ar_loss", overfit_patience)
            row["overfit_md"] = overfitting(history, "val_md_loss", "train_md_loss", overfit_patience)
            train_sums.zero_()
            train_counts.zero_()
            if master:
                with stop_if_write_fails(metrics_path, ckpt_path), open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if draw_curves:
                    try:
                        plot_curves(history, curves_path)
                    except OSError as e:  # an optional picture (e.g. a full disk): the run goes on
                        log(f"warning: could not write {curves_path} ({e.strerror or e}); training goes on")
                if wandb:
                    wandb.log(row, step=iter_num)
                flags = [name for name in ("ar", "md") if row[f"overfit_{name}"]]
                trained = " ".join(f"{name} {m:.4f}" for name, m in zip(("ar", "md"), means) if m is not None)
                log(f"eval {iter_num}: val ar {val_ar:.4f} md {val_md:.4f}" + (f" | train {trained}" if trained else "")
                    + (f" | {compiled_graphs()} graphs compiled" if use_compile else "")
                    + (f" | OVERFITTING: {', '.join(flags)} (val loss rising while train loss falls)" if flags else ""))
                segments[-1]["to_iter"] = iter_num
                # "config" is the latest segment's; "lam" is None when segments ran at different lam
                with stop_if_write_fails(ckpt_path, ckpt_path):
                    modeling.save_checkpoint(ckpt_path, {
                        "model": raw_model.state_dict(), "model_config": asdict(model_config),
                        "optimizer": opt.state_dict(), "config": config, "iter_num": iter_num,
                        "tokens_seen": tokens_seen, "lam": None if "lam" in segments[0]["settings"] else lam,
                        "segments": segments, "history": history, "tokenizer": tokenizer.to_spec(),
                        "data": {"data_dir": os.path.abspath(data_dir), "vocab_size": meta["vocab_size"],
                                 "unique_tokens": windows.unique_tokens, "n_windows": windows.n_windows,
                                 "params": n_params, "non_embedding_params": raw_model.num_params(True),
                                 "total_tokens": total_windows * block_size, "epochs": epochs,
                                 "fingerprint": fingerprint}})
            # the next log line's tokens/s and MFU count training steps only, not this evaluation
            t_log, tokens_at_log, iter_at_log = time.time(), tokens_seen, iter_num
        if iter_num >= max_iters:
            break

        # one optimizer step: this rank's share of the G micro-batches
        opt.set_lr_factor(lr_factor(iter_num))
        epoch = windows.epoch_of(iter_num * windows_per_step)
        for i, g in enumerate(my_micro_batches):
            x, y, docs = windows.batch((iter_num * G + g) * batch_size, batch_size)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            docs = docs.to(dev, non_blocking=True) if doc_masking else None
            objective = objective_of(g, epoch, G, n_ar)
            last = i == len(my_micro_batches) - 1
            sync = train_model.no_sync() if world > 1 and not last else nullcontext()
            with sync:
                with autocast:  # the forward only: PyTorch advises running backward outside autocast
                    if objective == "ar":
                        loss, zl = modeling.ar_loss(train_model, x, y, docs)
                    else:
                        noise = torch.Generator(device=dev).manual_seed(noise_seed(iter_num, g))
                        loss, zl = modeling.md_loss(train_model, x, y, docs, generator=noise,
                                                    antithetic=md_antithetic, weighting=md_weighting)
                # mean over all G micro-batches once DDP has averaged over the world
                weight = ar_weight if objective == "ar" else 1.0
                ((weight * loss + z_loss * zl) * (world / G)).backward()
            k = 0 if objective == "ar" else 1
            for sums, counts in ((train_sums, train_counts), (log_sums, log_counts)):
                sums[k] += loss.detach()
                counts[k] += 1
            nonfinite |= ~torch.isfinite(loss.detach())
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        iter_num += 1
        tokens_seen += tokens_per_step

        if iter_num % log_interval == 0 or iter_num == max_iters:
            if world > 1:  # the line shows every rank's micro-batches, and all ranks stop together
                dist.all_reduce(log_sums)
                dist.all_reduce(log_counts)
                dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
            if nonfinite.item():  # checked here too, so a blow-up stops within log_interval steps
                raise non_finite_loss(iter_num, ckpt_path)
            dt = time.time() - t_log
            tokens_per_sec = (tokens_seen - tokens_at_log) / dt
            mfu = flops_per_step * (iter_num - iter_at_log) / dt / (peak * world) if peak else None
            t_log, tokens_at_log, iter_at_log = time.time(), tokens_seen, iter_num
            eta = (time.time() - t_start) / (iter_num - start_iter) * (max_iters - iter_num)
            losses = " ".join(f"{name} {float(s / c):.4f}" for name, s, c in zip(("ar", "md"), log_sums, log_counts)
                              if c > 0)  # the mean over the micro-batches since the last log line
            log_sums.zero_()
            log_counts.zero_()
            log(f"iter {iter_num}/{max_iters} | {losses} | lr {learning_rate * lr_factor(iter_num - 1):.2e} | "
                f"{tokens_per_sec:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if mfu else "") +
                f" | eta {format_seconds(eta)}")

    log(f"done: {iter_num} steps, {tokens_seen:,} tokens in {format_seconds(time.time() - t_start)}; "
        f"checkpoint {ckpt_path}" + (f"; {compiled_graphs()} graphs compiled" if use_compile else ""))
    if master and wandb:
        wandb.finish()


def non_finite_loss(step, ckpt_path):
    return FloatingPointError(f"non-finite loss before step {step}; the last good checkpoint {ckpt_path} was "
                              f"kept. Lower learning_rate or check the data")


def last_checkpoint():
    """Where a stopped run can be continued from: the checkpoint in out_dir, if there is one."""
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.isfile(ckpt_path):
        return f"the last checkpoint is {ckpt_path}; continue with --resume=True"
    return f"no checkpoint had been written to {out_dir} yet"


def run(argv):
    """main(argv) as the command line runs it: a failure ends it with one line on stderr, exit status 1."""
    try:
        main(argv)
        if dist.is_initialized():  # after main's DDP model is gone, and once every rank is done: tearing the
            dist.barrier()         # group down under a live DDP reducer, or before another rank finished,
            dist.destroy_process_group()  # could abort a gloo rank at exit (SIGABRT after a good run)
    except BrokenPipeError:  # the reader of stdout went away (`train.py ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        sys.exit(f"train.py: stopped: its output was closed; {last_checkpoint()}")
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: a failed write, a missing file
        sys.exit(f"train.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"train.py: interrupted (Ctrl-C); {last_checkpoint()}")


if __name__ == "__main__":
    run(sys.argv[1:])
