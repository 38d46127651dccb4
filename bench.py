"""
How fast is nanodual? Every comparison runs side by side in one run (variants take turns round by
round): on a shared machine only ratios measured together mean anything. Figures: docs/bench.md.
One subcommand per benchmark (listed below); `python bench.py SUBCOMMAND -h` has its options. E.g.:

    python bench.py nanogpt ../shared/anchors/nanoGPT   # train.py against nanoGPT's train.py
    python bench.py prepare                              # data.py on parquet against JSON lines
    python bench.py train --device cuda --size 125m --compile    # on a GPU: bf16 autocast, MFU
    python bench.py nanogpt PATH --device cuda --compile         # both trainers compiled, bf16
"""
import argparse
import filecmp
import functools
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout

import numpy as np
import torch

import data
import model as modeling
from muon import MuonAdamW
from sample import generate_ar, generate_diffusion, timed

REPO = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")

SIZES = {  # n_layer, n_head, n_embd, intermediate_size; default vocab_size, block_size, batch_size
    "10m": (6, 6, 384, 1024, 4096, 256, 8),
    "125m": (12, 12, 768, 2048, 51200, 1024, 16),
    "470m": (24, 16, 1024, 3554, 51200, 2048, 16),
}


# -----------------------------------------------------------------------------
# Timing helpers (sample.timed times one call, waiting for the GPU)

def interleaved(variants, dev, rounds, repeats):
    """Seconds per call of each variant: the median over rounds of each round's median of `repeats`
    calls. Every variant runs in every round, so drifts hit all alike."""
    for fn in variants.values():  # warm-up (and compilation)
        fn()
        fn()
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(statistics.median(timed(fn, dev)[1] for _ in range(repeats)))
    return {name: statistics.median(s) for name, s in samples.items()}


def model_setup(args):
    """A DualLM of --size with random weights and random batches (speed does not depend on either)."""
    dev = modeling.parse_device(args.device)
    torch.manual_seed(0)
    n_layer, n_head, n_embd, hidden, vocab, block, batch = SIZES[args.size]
    vocab, T, B = args.vocab_size or vocab, args.block_size or block, args.batch_size or batch
    cfg = modeling.ModelConfig(vocab_size=vocab, block_size=T, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                               intermediate_size=hidden)
    raw = modeling.DualLM(cfg).to(dev)
    net = torch.compile(raw) if args.compile else raw
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    batch = {"x": torch.randint(5, vocab, (B, T), device=dev), "y": torch.randint(5, vocab, (B, T), device=dev),
             "prefix_len": torch.randint(1, T, (B,), device=dev),
             "doc_ids": torch.cumsum(torch.rand(B, T, device=dev) < 4 / T, dim=1).int()}  # ~4 documents a row
    print(f"model {args.size}: {raw.num_params() / 1e6:.1f}M parameters ({raw.num_params(True) / 1e6:.1f}M "
          f"non-embedding), batch {B} x {T} tokens, vocab {vocab}, device {dev}, threads {torch.get_num_threads()}, "
          f"compile {args.compile}")
    return dev, raw, net, autocast, batch


# -----------------------------------------------------------------------------
# bench.py model: forward+backward per attention mode, and the optimizer step

def bench_model(args):
    dev, raw, net, autocast, b = model_setup(args)
    x, y = b["x"], b["y"]
    opt = MuonAdamW(raw, lr=1e-3)
    tokens = x.numel()

    def fwd_bwd(mode, **kw):
        def run():
            with autocast:
                loss, _ = net(x, mode=mode, targets=y, **kw)
            loss.backward()
        return run

    times = interleaved({
        "causal": fwd_bwd("causal"),
        "bidirectional": fwd_bwd("bidirectional"),
        "prefix": fwd_bwd("prefix", prefix_len=b["prefix_len"]),
        "causal + documents": fwd_bwd("causal", doc_ids=b["doc_ids"]),
        "bidirectional + documents": fwd_bwd("bidirectional", doc_ids=b["doc_ids"]),
        "optimizer step (Muon + AdamW)": opt.step,  # on the last backward's gradients, never zeroed
    }, dev, args.rounds, args.repeats)
    base = times["causal"]
    print(f"\n{'forward+backward':<30} {'tokens/s':>10} {'ms':>8} {'vs causal':>10}")
    for name, t in times.items():
        speed = f"{tokens / t:>10,.0f}" if "optimizer" not in name else f"{'':>10}"
        print(f"{name:<30} {speed} {1000 * t:>8.1f} {t / base:>9.2f}x")
    print(f"Muon+AdamW step = {times['optimizer step (Muon + AdamW)'] / base:.2f} x one causal forward+backward "
          f"of {tokens} tokens")


# -----------------------------------------------------------------------------
# bench.py train: full training steps (two micro-batches, as train.py runs them)

def bench_train(args):
    from train import peak_flops
    dev, raw, net, autocast, b = model_setup(args)
    x, y, docs = b["x"], b["y"], b["doc_ids"]
    opt = MuonAdamW(raw, lr=1e-3)
    generator = torch.Generator(device=dev).manual_seed(0)

    def train_step(objectives, doc_ids=None):
        def run():
            for objective in objectives:
                with autocast:
                    if objective == "ar":
                        loss, zl = modeling.ar_loss(net, x, y, doc_ids)
                    else:
                        loss, zl = modeling.md_loss(net, x, y, doc_ids, generator=generator)
                ((loss + 1e-4 * zl) / len(objectives)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    steps = interleaved({"AR (λ=1)": train_step(["ar", "ar"]), "MD (λ=0)": train_step(["md", "md"]),
                         "dual (λ=0.5)": train_step(["ar", "md"]),
                         "AR + documents": train_step(["ar", "ar"], docs),
                         "dual + documents": train_step(["ar", "md"], docs)}, dev, args.rounds, args.repeats)
    peak = peak_flops(dev)
    tokens = 2 * x.numel()
    flops = raw.flops_per_token(x.size(1)) * tokens
    print(f"\n{'training step (2 micro-batches)':<32} {'tokens/s':>10} {'MFU':>6} {'cost vs AR':>11}")
    for name, t in steps.items():
        mfu = f"{100 * flops / t / peak:>5.1f}%" if peak else f"{'-':>6}"
        print(f"{name:<32} {tokens / t:>10,.0f} {mfu} {t / steps['AR (λ=1)']:>10.3f}x")
    if dev.type == "cuda":
        memory = f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"
    else:
        memory = f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    print(memory + ("" if peak else "; MFU is printed on known GPUs (train.PEAK_FLOPS)"))
    if peak and not args.compile:  # compiled, every position goes through the LM head (static shapes)
        print("(MFU counts the LM head at every position; an eager MD micro-batch projects only its masked "
              "ones, so its MFU reads high)")


# -----------------------------------------------------------------------------
# bench.py eval: the batched semi-autoregressive PLL against a one-sequence loop, then every mode.
# A tiny random-weight model (speed does not depend on the weights), a 512-token BPE of Tiny Shakespeare.

def pll_loop(model, seqs, k):
    """PLL with k masks (EVAL_SPEC §4.4) as the spec writes it: one masked input per forward pass."""
    cfg, out = model.config, []
    with torch.inference_mode():
        for ids, start in seqs:
            ids, total = list(ids), 0.0
            for j in range(start, len(ids)):
                x = ids[:j] + [cfg.mask_id] * k + ids[j + k:]
                logits = model(torch.tensor([x]), mode="bidirectional")[0]
                total += torch.log_softmax(logits[j - 1].float(), dim=-1)[ids[j]].item()
            out.append(total)
    return np.array(out)


def bench_eval(args):
    import eval as ev
    tasks = ev.parse_names(args.tasks, ev.TASKS, "task")
    text_path = os.path.join(args.data_dir, "corpus", "tinyshakespeare", "input.txt")
    if not os.path.isfile(text_path):
        raise FileNotFoundError(f"{text_path} does not exist; pass --data_dir (the shared data folder)")
    text = open(text_path, encoding="utf-8").read()[:200_000]
    tok = data.train_bpe(text.split("\n\n"), 512)
    cfg = modeling.ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=args.n_layer, n_head=4,
                               n_embd=args.n_embd, intermediate_size=int(args.n_embd * 8 / 3 + 1) // 2 * 2,
                               bos_id=tok.bos_id, pad_id=tok.pad_id, mask_id=tok.mask_id)
    torch.manual_seed(0)
    model, cpu = modeling.DualLM(cfg).eval(), torch.device("cpu")
    print(f"model: {cfg.n_layer} layers, width {cfg.n_embd}, vocab {cfg.vocab_size}, random weights, "
          f"{torch.get_num_threads()} thread(s)")
    for task in tasks:
        items = ev.load_task(task, args.data_dir)[:args.items]
        seqs = ev.build_requests(tok, task, items, seed=0, bos_id=cfg.bos_id)["seqs"]
        n_tokens = sum(len(ids) - start for ids, start in seqs)
        mean_len = np.mean([len(ids) for ids, _ in seqs])
        print(f"\n{task}: {len(items)} items, {len(seqs)} sequences of {mean_len:.0f} tokens on average, "
              f"{n_tokens} continuation tokens (= PLL passes per k)")
        ev.sequence_logliks(model, seqs[:4], "pll", k=args.k)  # warm-up: first calls allocate and pick kernels
        loop, loop_s = timed(lambda: pll_loop(model, seqs, args.k), cpu)
        batched, batched_s = timed(lambda: ev.sequence_logliks(model, seqs, "pll", k=args.k)[0], cpu)
        diff = float(np.max(np.abs(loop - batched)))
        if not np.allclose(loop, batched, rtol=1e-5, atol=1e-3):
            raise ValueError(f"{task}: batched PLL differs from the loop by up to {diff:.2e}")
        print(f"  PLL k={args.k} on the same sequences, max |score difference| {diff:.1e}:")
        print(f"    one-sequence loop  {loop_s:7.2f} s  {len(items) / loop_s:8.1f} items/s")
        print(f"    batched            {batched_s:7.2f} s  {len(items) / batched_s:8.1f} items/s   "
              f"speed-up {loop_s / batched_s:.1f}x")
        print(f"  evaluate(), every mode (pll = k 1 and 6 together; mc N = {args.mc_samples}):")
        results = ev.evaluate(model, tok, {task: items}, ev.MODES, progress=False, mc_samples=args.mc_samples)
        for mode in ev.MODES:
            seconds = results["tasks"][task][mode]["seconds"]
            print(f"    {mode:<7} {seconds:7.2f} s  {len(items) / seconds:8.1f} items/s")


# -----------------------------------------------------------------------------
# bench.py sample: AR generation with and without the KV cache, and diffusion at several step counts,
# in the tiny CPU config's shape with random weights and a window widened to --window.

def bench_sample(args):
    lengths = [int(n) for n in args.lengths.split(",")]
    steps_list = [int(s) for s in args.diffusion_steps.split(",")]
    device = modeling.parse_device(args.device)
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} must be at least 1")
    if args.diffusion_tokens >= args.window:
        raise ValueError(f"--diffusion_tokens={args.diffusion_tokens} must stay below --window={args.window} "
                         f"(<s> takes one position)")
    cfg = modeling.ModelConfig(vocab_size=2048, block_size=args.window, n_layer=4, n_head=4, n_embd=128,
                               intermediate_size=344)
    torch.manual_seed(0)
    model = modeling.DualLM(cfg).to(device).eval()
    gen = lambda: torch.Generator(device).manual_seed(0)

    def tokens_per_s(fn, n_tokens):
        return n_tokens / min(timed(fn, device)[1] for _ in range(args.repeats))

    print(f"model: tiny_cpu shape (4 layers, width 128, vocab 2048), window {args.window}, "
          f"{model.num_params() / 1e6:.2f}M parameters, random weights; device {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    generate_ar(model, [], 16, generator=gen())  # warm-up: first calls allocate and pick kernels
    print("\nautoregressive, 1 sample, prompt <s>")
    print(f"{'new tokens':>10} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9}")
    for n in lengths:
        cached = tokens_per_s(lambda: generate_ar(model, [], n, generator=gen()), n)
        uncached = tokens_per_s(lambda: generate_ar(model, [], n, generator=gen(), use_cache=False), n)
        print(f"{n:>10} {cached:>12.1f} {uncached:>15.1f} {cached / uncached:>8.1f}x", flush=True)
    n = args.diffusion_tokens
    print(f"\nmasked diffusion, 1 sample, prompt <s>, {n} tokens in one canvas")
    print(f"{'sampler':>10} {'steps':>6} {'tok/s':>10}")
    for sampler in ("ancestral", "confidence"):
        for steps in steps_list:
            speed = tokens_per_s(lambda: generate_diffusion(model, [], n, steps, sampler, generator=gen()), n)
            print(f"{sampler:>10} {steps:>6} {speed:>10.1f}", flush=True)


# -----------------------------------------------------------------------------
# bench.py nanogpt PATH: nanodual's train.py against nanoGPT's own, unmodified one (run from its own
# folder: it reads configurator.py from there), same shape, same tokens (method: docs/bench.md)

NANOGPT_LINE = re.compile(r"^iter (\d+): loss \S+, time ([\d.]+)ms")
NANODUAL_LINE = re.compile(r"^iter (\d+)/\d+ \|.*\| ([\d,]+) tok/s")


def prepare_shared_tokens(folder, text_path, vocab_size):
    """One token folder for both trainers: data.py's output, plus nanoGPT's meta.pkl."""
    if not os.path.isfile(text_path):
        raise FileNotFoundError(f"{text_path} does not exist; pass --input (a text file, e.g. Tiny Shakespeare)")
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        meta = data.prepare([text_path], folder, vocab_size=vocab_size, doc_split="blank_line")
    if meta["dtype"] != "uint16":
        raise ValueError(f"nanoGPT reads uint16 tokens; use --vocab_size <= 65536, not {vocab_size}")
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": meta["vocab_size"]}, f)
    return meta


def run_trainer(cmd, cwd, pattern, tokens_per_step, warmup, env):
    """Run one trainer to the end; seconds per step of its logged steps after the warm-up."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}): {tail[0][:300]}")
    seconds = {}
    for line in proc.stdout.splitlines():
        match = pattern.match(line)
        if match:
            step, value = int(match.group(1)), float(match.group(2).replace(",", ""))
            seconds[step] = value / 1000 if pattern is NANOGPT_LINE else tokens_per_step / value
    kept = [s for step, s in sorted(seconds.items())][warmup:]
    if not kept:
        raise RuntimeError(f"{' '.join(cmd[:2])} logged no step after the warm-up; raise --steps")
    return kept


def bench_nanogpt(args):
    nanogpt = os.path.abspath(args.path)
    if not os.path.isfile(os.path.join(nanogpt, "train.py")) or not os.path.isfile(os.path.join(nanogpt, "model.py")):
        raise FileNotFoundError(f"{args.path} is not a nanoGPT checkout (no train.py / model.py); pass its folder")
    if args.rounds < 2 or args.steps < 1 or args.warmup < 0:
        raise ValueError("need --rounds >= 2, --steps >= 1 and --warmup >= 0")
    L, H, d, T = args.n_layer, args.n_head, args.n_embd, args.block_size
    if d % 3:
        raise ValueError(f"--n_embd={d} must be a multiple of 3, so that nanodual's SwiGLU of width 8d/3 "
                         f"has nanoGPT's MLP weights")
    intermediate = 8 * d // 3  # gate, up, down: 3 x d x 8d/3 = nanoGPT's 2 x d x 4d
    # the model's own checks (heads, head dim, ...) before any trainer runs
    modeling.ModelConfig(vocab_size=args.vocab_size, block_size=T, n_layer=L, n_head=H, n_embd=d,
                         intermediate_size=intermediate)
    dtype = "bfloat16" if modeling.parse_device(args.device).type == "cuda" else "float32"
    G = 2  # micro-batches per step: the dual step runs one AR and one MD micro-batch
    tokens_per_step = args.batch_size * G * T
    n_iters = args.warmup + args.steps
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = {"n_layer": L, "n_head": H, "n_embd": d, "block_size": T, "batch_size": args.batch_size,
              "gradient_accumulation_steps": G, "device": args.device, "dtype": dtype, "compile": args.compile,
              "max_iters": n_iters, "eval_iters": 1, "log_interval": 1, "learning_rate": 6e-4,
              "weight_decay": 0.1, "grad_clip": 1.0}
    with tempfile.TemporaryDirectory(prefix="bench_nanogpt_") as tmp:
        tokens = os.path.join(tmp, "tokens")
        meta = prepare_shared_tokens(tokens, args.input, args.vocab_size)
        flags = lambda opts: [f"--{k}={v}" for k, v in opts.items()]
        # nanoGPT: eval_interval beyond the run, so it evaluates once at step 0 and saves no checkpoint
        trainers = {"nanoGPT": ([sys.executable, os.path.join(nanogpt, "train.py")] + flags({
            **common, "dataset": tokens, "out_dir": os.path.join(tmp, "out_nanogpt"), "eval_interval": 10 ** 9,
            "dropout": 0.0, "bias": False, "decay_lr": False, "init_from": "scratch"}), nanogpt, NANOGPT_LINE)}
        for name, extra in (("nanodual, doc masking off", {"lam": 1.0, "doc_masking": False}),
                            ("nanodual, doc masking on", {"lam": 1.0, "doc_masking": True}),
                            ("nanodual, dual λ=0.5 (masking on)", {"lam": 0.5, "doc_masking": True})):
            trainers[name] = ([sys.executable, os.path.join(REPO, "train.py")] + flags({
                **common, **extra, "data_dir": tokens, "out_dir": os.path.join(tmp, "out_nanodual"),
                "intermediate_size": intermediate, "optimizer": "adamw", "eval_interval": n_iters,
                "lr_schedule": "wsd", "decay_frac": 0.0, "overwrite": True}), REPO, NANODUAL_LINE)
        print(f"shape: {L} layers, {H} heads, width {d} (nanodual's intermediate_size {intermediate}), context {T}, "
              f"{G} x {args.batch_size} sequences per step, vocab {meta['vocab_size']}, AdamW, {dtype}, compile "
              f"{args.compile}, device {args.device}; {args.threads} thread(s) per trainer; {args.rounds} rounds x "
              f"{args.steps} steps (after {args.warmup} warm-up) each", flush=True)
        speed = {name: [] for name in trainers}  # tokens/s of every round: the median of its timed steps
        for r in range(args.rounds):
            # every other round in reverse order, so a steady drift favours no trainer over a pair of rounds
            for name in (list(trainers) if r % 2 == 0 else list(trainers)[::-1]):
                cmd, cwd, pattern = trainers[name]
                kept = run_trainer(cmd, cwd, pattern, tokens_per_step, args.warmup, env)
                speed[name].append(tokens_per_step / statistics.median(kept))
                print(f"  round {r + 1}: {name:<36} {speed[name][-1]:>10,.0f} tok/s", flush=True)

    # achieved FLOP/s = (6 x matmul weights + attention) per token x tokens/s, one formula for both
    V = meta["vocab_size"]
    attention = 12 * L * d * T
    flops = {"nanoGPT": 6 * (L * 12 * d * d + V * d) + attention}  # qkv, proj, 4x MLP; LM head (tied)
    nanodual = 6 * (L * (4 * d * d + 3 * d * intermediate) + V * d) + attention  # q, k, v, o, gate, up, down
    # ratios within a round (runs back to back), then their median: the machine drifts between rounds
    paired = lambda a, b: [x / y for x, y in zip(speed[a], speed[b])]
    spread = lambda ratios: (f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
                             if len(set(ratios)) > 1 else f"{ratios[0]:.3f}x")
    print(f"\n{'trainer':<36} {'tokens/s':>10} {'GFLOP/s':>9}   vs nanoGPT: median of the rounds (range)")
    for name in trainers:
        f, tokens_per_sec = flops.get(name, nanodual), statistics.median(speed[name])
        ratios = [x * f / flops["nanoGPT"] for x in paired(name, "nanoGPT")]
        print(f"{name:<36} {tokens_per_sec:>10,.0f} {tokens_per_sec * f / 1e9:>9.2f}   {spread(ratios)}")
    off, on, dual = list(trainers)[1:]
    masking_cost = [x - 1 for x in paired(off, on)]
    print(f"document masking costs {statistics.median(masking_cost):+.1%} time per token (on vs off; rounds "
          f"{min(masking_cost):+.1%} to {max(masking_cost):+.1%}); the dual step runs at {spread(paired(dual, on))} "
          f"the AR step's tokens/s")
    print(f"(tokens/s: medians of {args.steps} steps per run, then over the {args.rounds} rounds; FLOPs per "
          f"token: nanoGPT {flops['nanoGPT'] / 1e6:.1f}M, nanodual {nanodual / 1e6:.1f}M, counted the same "
          f"way for AR and MD)")


# -----------------------------------------------------------------------------
# bench.py prepare: data.py on parquet against the same documents as JSON lines (issue 23)

# Runs argv[1:] and prints its peak RSS (its own, and its waited-for children's, the largest). From a
# small process: a child forked from this one (torch loaded) would report this one's RSS as its peak.
PEAK_RSS_OF_CHILD = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"peak_rss_kb {usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))"""


def bench_prepare(args):
    """Each input in its own data.py process: tokens/s, wall time, peak RSS; both must give the same output."""
    import json
    import pyarrow as pa
    import pyarrow.parquet as pq
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_prepare_")
    os.makedirs(work, exist_ok=True)
    paths = {"parquet": os.path.join(work, "docs.parquet"), "jsonl": os.path.join(work, "docs.jsonl")}
    tokenizer = os.path.join(work, "tokenizer.json")
    if not all(os.path.exists(p) for p in [*paths.values(), tokenizer]):
        # documents of about 4 KB (paragraphs of the novels, as web pages are), every copy made distinct
        novels = sorted(os.path.join(args.corpus, f) for f in os.listdir(args.corpus) if f.endswith(".txt"))
        paragraphs = [p for f in novels for p in open(f, encoding="utf-8-sig").read().split("\n\n") if p.strip()]
        docs, current = [], []
        for p in paragraphs:
            current.append(p)
            if sum(map(len, current)) > 4000:
                docs.append("\n\n".join(current))
                current = []
        texts = [f"({copy}) {d}" for copy in range(args.copies) for d in docs]
        pq.write_table(pa.table({"text": texts}), paths["parquet"], row_group_size=args.row_group_rows,
                       compression=args.compression)
        with open(paths["jsonl"], "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        data.train_bpe(texts[:2000], args.vocab_size).bpe.save(tokenizer)
    sizes = {kind: os.path.getsize(p) / 1e6 for kind, p in paths.items()}
    print(f"data.py on {sizes['parquet']:.0f} MB of parquet ({args.compression}, {args.row_group_rows} rows per row "
          f"group) and the same documents as {sizes['jsonl']:.0f} MB of JSON lines ({args.copies} copies of the "
          f"novels' paragraphs), {args.workers} workers, {args.rounds} round(s) in {work}")
    print(f"{'input':>8} {'wall s':>8} {'tokens/s':>10} {'peak RSS MB':>12} {'output MB':>10}")
    data_py = [sys.executable, "-c", PEAK_RSS_OF_CHILD, sys.executable, os.path.join(REPO, "data.py")]
    for _ in range(args.rounds):
        for kind, path in paths.items():
            out_dir = os.path.join(work, f"out_{kind}")
            log = os.path.join(work, f"log_{kind}.txt")
            t0 = time.perf_counter()
            with open(log, "w") as f:
                run = subprocess.run([*data_py, "--input", path, "--out_dir", out_dir, "--tokenizer", tokenizer,
                                      "--workers", str(args.workers)], stdout=f, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
            stdout = open(log).read()
            if run.returncode != 0:
                raise RuntimeError(f"data.py failed on {path}: {stdout.strip().splitlines()[-1]}")
            peak_mb = int(re.search(r"peak_rss_kb (\d+)", stdout).group(1)) / 1024
            rate = float(re.search(r"([\d,]+) tokens/s", stdout).group(1).replace(",", ""))
            output = sum(os.path.getsize(os.path.join(out_dir, n)) for n in data.OUTPUTS) / 1e6
            print(f"{kind:>8} {wall:>8.1f} {rate:>10,.0f} {peak_mb:>12.0f} {output:>10.0f}", flush=True)
    same = all(filecmp.cmp(os.path.join(work, "out_parquet", n), os.path.join(work, "out_jsonl", n), shallow=False)
               for n in ("train.bin", "val.bin", "train.idx"))
    print(f"train.bin, val.bin, train.idx identical: {same}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{model,train,eval,sample,nanogpt,prepare}",
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    def model_options(p):
        p.add_argument("--size", default="10m", choices=list(SIZES))
        for name in ("vocab_size", "block_size", "batch_size"):
            p.add_argument(f"--{name}", type=int, help="default: by --size (bench.SIZES)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
        p.add_argument("--rounds", type=int, default=5)
        p.add_argument("--repeats", type=int, default=2)

    model_options(sub.add_parser("model", help="forward+backward per attention mode; the optimizer step"))
    model_options(sub.add_parser("train", help="training steps AR / MD / dual: tokens/s, MFU, peak memory"))

    p = sub.add_parser("eval", help="batched PLL vs a one-sequence loop; items/s of every scoring mode")
    p.add_argument("--data_dir", default=SHARED_DATA, help="the shared data folder (tasks and Tiny Shakespeare)")
    p.add_argument("--tasks", default="arc_easy,blimp", help="comma list of tasks, each benchmarked on its own")
    p.add_argument("--items", type=int, default=40, help="items per task (the first ones of the file)")
    p.add_argument("--k", type=int, default=6, help="masks for the PLL comparison")
    p.add_argument("--mc_samples", type=int, default=32)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on shared cores)")

    p = sub.add_parser("sample", help="tokens/s of AR (cache vs no cache) and diffusion sampling")
    p.add_argument("--lengths", default="256,1024", help="AR: new tokens per run")
    p.add_argument("--diffusion_tokens", type=int, default=256, help="diffusion: tokens in the canvas")
    p.add_argument("--diffusion_steps", default="16,64,256", help="diffusion: step counts")
    p.add_argument("--window", type=int, default=2048, help="the model's block_size")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: PyTorch's default)")

    p = sub.add_parser("nanogpt", help="train.py against nanoGPT's train.py: tokens/s and achieved FLOP/s")
    p.add_argument("path", help="a nanoGPT checkout (its train.py runs unmodified, from its own folder)")
    p.add_argument("--input", default=os.path.join(SHARED_DATA, "corpus", "tinyshakespeare", "input.txt"),
                   help="the text both trainers train on")
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384, help="a multiple of 3: nanodual's SwiGLU is 8/3 as wide")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8, help="sequences per micro-batch (2 per step)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile both trainers (bf16 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each trainer (they run one at a time)")
    p.add_argument("--rounds", type=int, default=2, help="every trainer runs once per round (at least 2)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps of every run, not timed")
    p = sub.add_parser("prepare", help="data.py on parquet against the same documents as JSON lines")
    p.add_argument("--corpus", default=os.path.join(SHARED_DATA, "corpus", "english_novels"))
    p.add_argument("--copies", type=int, default=4, help="copies of the corpus (4: a 218 MB parquet file)")
    p.add_argument("--compression", default="none", help="parquet compression (none, snappy, zstd)")
    p.add_argument("--row_group_rows", type=int, default=10_000, help="documents per parquet row group")
    p.add_argument("--vocab_size", type=int, default=8192, help="of the BPE trained on the first 2,000 documents")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--work_dir", help="where the inputs and outputs go (kept and reused; default: a new temp dir)")
    args = parser.parse_args(argv)

    if getattr(args, "threads", 0) and args.command in ("eval", "sample"):
        torch.set_num_threads(args.threads)
    {"model": bench_model, "train": bench_train, "eval": bench_eval, "sample": bench_sample,
     "nanogpt": bench_nanogpt, "prepare": bench_prepare}[args.command](args)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"bench.py: error: {e}")
