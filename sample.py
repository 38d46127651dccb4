"""
Sample from a nanodual checkpoint, autoregressively or by masked diffusion; docs/sample.md has the commands,
every option and the samplers in detail. Every sequence starts with <s>, special tokens are never sampled,
and, by MNTP, the output at position j-1 is the distribution of token j.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import data
from cli import ArgumentParser, Progress, arg_type, check_distinct_paths, check_output_file, write_atomically
from model import KVCache, load_checkpoint, parse_device, special_ids

SAMPLERS = ("ancestral", "confidence")
MIN_TEMPERATURE = 1e-5  # below it, greedy: logits / 1e-39 would overflow, and at 1e-5 a gap of 1e-4 is e^10
REVEAL_RULES = ("count", "bernoulli")  # ancestral only: how many positions a step reveals


# -----------------------------------------------------------------------------
# Drawing tokens from logits

def check_sampling_args(temperature, top_k, top_p):
    if not 0 <= temperature < math.inf:  # also rejects nan, which would make every probability nan
        raise ValueError(f"temperature={temperature} must be a finite number >= 0; use 0 for greedy decoding "
                         f"or a positive value")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k={top_k} is negative; use 0 or None to turn it off, or a positive count")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} is outside (0, 1]; use 1 to turn nucleus sampling off")


def filter_logits(logits, top_k=None, top_p=1.0):
    """-inf for every logit outside the top_k (None or 0: off) and outside the nucleus, the smallest set
    of most probable tokens whose probability reaches top_p (Holtzman et al. 2020)."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each token
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def draw(logits, temperature, top_k, top_p, generator, banned_ids):
    """One token per row of logits (..., V): (ids, each id's probability under its distribution)."""
    logits = logits.float().index_fill(-1, banned_ids, -math.inf)
    if temperature < MIN_TEMPERATURE:
        prob, ids = logits.softmax(dim=-1).max(dim=-1)
        return ids, prob
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    ids = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    return ids, probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def default_banned_ids(model, banned_ids=None):
    """The ids never to generate, on the model's device: those given, or <s>, <pad> and <mask>."""
    cfg = model.config
    ids = banned_ids if banned_ids is not None else (cfg.bos_id, cfg.pad_id, cfg.mask_id)
    return torch.tensor(sorted(set(ids)), dtype=torch.long, device=model.lm_head.weight.device)


def start_of_document(model, prompt_ids, num_samples):
    """(num_samples, 1 + len(prompt)) tensor of <s> + prompt, after checking that the prompt fits."""
    cfg = model.config
    prompt_ids = [int(i) for i in prompt_ids]
    if 1 + len(prompt_ids) > cfg.block_size:
        raise ValueError(f"the prompt is {len(prompt_ids)} tokens (+1 for <s>) but the model's block_size is "
                         f"{cfg.block_size}; shorten the prompt")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    if any(not 0 <= i < cfg.vocab_size for i in prompt_ids):
        raise ValueError(f"the prompt holds token ids outside the vocabulary [0, {cfg.vocab_size}); "
                         f"encode it with the checkpoint's tokenizer")
    start = torch.tensor([cfg.bos_id] + prompt_ids, dtype=torch.long, device=model.lm_head.weight.device)
    return start.repeat(num_samples, 1)


# -----------------------------------------------------------------------------
# Autoregressive generation

@torch.no_grad()
def generate_ar(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=1.0, generator=None,
                use_cache=True, prefix_prompt=False, num_samples=1, banned_ids=None, on_step=None):
    """Left-to-right generation in causal mode; returns (num_samples, 1 + len(prompt_ids) + max_new_tokens)
    ids: <s>, the prompt, the new tokens. A full window jumps to its last block_size/2 tokens and the
    cache is refilled from them (one prefill per half window); without the cache, the same windows."""
    check_sampling_args(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    seq = start_of_document(model, prompt_ids, num_samples)
    P, window = seq.size(1), model.config.block_size
    banned = default_banned_ids(model, banned_ids)
    cache = None
    if use_cache:
        cache = KVCache(model.config, num_samples, min(window, P + max_new_tokens), seq.device,
                        model.lm_head.weight.dtype)
    start, refill = 0, True  # the model's window is seq[:, start:]; refill: the cache must be (re)filled
    for _ in range(max_new_tokens):
        if seq.size(1) - start > window:
            start, refill = seq.size(1) - max(window // 2, 1), True
        # prefix mode: the part of the prompt still in the window attends to itself bidirectionally
        mode, prefix_len = ("prefix", max(P - start, 0)) if prefix_prompt else ("causal", None)
        if cache is None:  # recompute the whole window: the slow reference
            h = model.hidden_states(seq[:, start:], mode, prefix_len)
        elif refill:  # prefill the whole window once, in its own attention mode
            cache.length, refill = 0, False
            h = model.hidden_states(seq[:, start:], mode, prefix_len, kv_cache=cache)
        else:  # one new token that attends to everything cached
            h = model.hidden_states(seq[:, -1:], "causal", kv_cache=cache)
        token, _ = draw(model.lm_head(h[:, -1]), temperature, top_k, top_p, generator, banned)
        seq = torch.cat([seq, token.unsqueeze(1)], dim=1)
        if on_step is not None:
            on_step(seq)
    return seq


# -----------------------------------------------------------------------------
# Masked-diffusion generation

def predict(model, canvas, rows, positions):
    """Logits for the tokens at (rows, positions) of the canvas under bidirectional attention.
    MNTP: the token at position j is predicted by the output at position j-1."""
    h = model.hidden_states(canvas, "bidirectional")
    return model.lm_head(h[rows, positions - 1])


def highest(score, count):
    """Boolean mask of the count[r] highest-scoring entries of each row r; -inf entries never count."""
    order = score.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(score.size(1), device=score.device).expand_as(order))
    return (rank < count.unsqueeze(1)) & (score > -math.inf)


def unmask_block(model, canvas, n, steps, sampler, temperature, top_k, top_p, generator, banned, on_step,
                 reveal="count"):
    """Fill the last n positions of canvas (K, L), all <mask>, in `steps` iterations; returns the canvas."""
    mask_id = model.config.mask_id
    first = canvas.size(1) - n
    for i in range(steps):
        masked = canvas[:, first:] == mask_id  # (K, n)
        remaining = steps - i
        if sampler == "ancestral":
            # from t = remaining/steps to s = t - 1/steps: reveal probability (t-s)/t = 1/remaining;
            # "count": n_masked/remaining positions, stochastically rounded, a uniformly random subset
            if reveal == "bernoulli":  # MDLM exactly: one independent coin per masked position
                coins = torch.rand(masked.shape, generator=generator, device=canvas.device)
                revealed = masked & (coins * remaining < 1)
            else:
                n_masked = masked.sum(dim=1)
                whole, frac = n_masked // remaining, (n_masked % remaining).float() / remaining
                u = torch.rand(n_masked.shape, generator=generator, device=canvas.device)
                count = whole + (u < frac).long()
                revealed = highest(torch.rand(masked.shape, generator=generator, device=canvas.device)
                                   .masked_fill(~masked, -math.inf), count)
            if revealed.any():  # when nothing is revealed the canvas stays as it is: no model call
                rows, cols = revealed.nonzero(as_tuple=True)
                tokens, _ = draw(predict(model, canvas, rows, first + cols), temperature, top_k, top_p,
                                 generator, banned)
                canvas[rows, first + cols] = tokens
        else:  # confidence: draw every masked token, keep the k most probable; sum of k over steps = n
            k = n * (i + 1) // steps - n * i // steps
            if k > 0:
                rows, cols = masked.nonzero(as_tuple=True)
                tokens, prob = draw(predict(model, canvas, rows, first + cols), temperature, top_k, top_p,
                                    generator, banned)
                score = torch.full(masked.shape, -math.inf, device=canvas.device)
                score[rows, cols] = prob
                keep = highest(score, torch.full((canvas.size(0),), k, device=canvas.device))[rows, cols]
                canvas[rows[keep], first + cols[keep]] = tokens[keep]
        if on_step is not None:
            on_step(canvas.clone())
    return canvas


@torch.no_grad()
def generate_diffusion(model, prompt_ids, n_tokens, steps, sampler="ancestral", block_size=None, temperature=1.0,
                       top_k=None, top_p=1.0, generator=None, num_samples=1, banned_ids=None, on_step=None,
                       reveal="count"):
    """Masked-diffusion generation of n_tokens after <s> + prompt: in one canvas, or (block_size) in
    blocks left to right, `steps` steps each; returns (num_samples, 1 + len(prompt_ids) + n_tokens) ids."""
    check_sampling_args(temperature, top_k, top_p)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if reveal not in REVEAL_RULES:
        raise ValueError(f"unknown reveal rule {reveal!r}; use one of {', '.join(REVEAL_RULES)}")
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if n_tokens < 1:
        raise ValueError(f"n_tokens={n_tokens} must be at least 1")
    seq = start_of_document(model, prompt_ids, num_samples)
    window = model.config.block_size
    if block_size is None:
        if seq.size(1) + n_tokens > window:
            raise ValueError(f"<s> + prompt ({seq.size(1)} tokens) + {n_tokens} new tokens exceeds the model's "
                             f"block_size {window}; generate in blocks with --block_size")
        block_size = n_tokens
    elif not 1 <= block_size < window:
        raise ValueError(f"block_size={block_size} must be in [1, {window - 1}] (below the model's block_size "
                         f"{window}, so that every block has context)")
    banned = default_banned_ids(model, banned_ids)
    mask = torch.full((num_samples, block_size), model.config.mask_id, dtype=torch.long, device=seq.device)
    n_context = seq.size(1)
    while seq.size(1) - n_context < n_tokens:
        b = min(block_size, n_tokens - (seq.size(1) - n_context))
        context = seq[:, -(window - b):]  # the window slides once context + block outgrow the model
        canvas = unmask_block(model, torch.cat([context, mask[:, :b]], dim=1), b, steps, sampler, temperature,
                              top_k, top_p, generator, banned, on_step, reveal)
        seq = torch.cat([seq, canvas[:, -b:]], dim=1)
    return seq


# -----------------------------------------------------------------------------
# Generative perplexity and the speed-quality curve

def causal_nll(model, seq):
    """Per-token NLL of a (L,) sequence in causal mode: entry i is -log p(seq[i+1] | seq[:i+1]). Past the
    model's window, windows advance by half a block and score only new tokens (strided perplexity)."""
    L, W = seq.size(0), model.config.block_size
    nll = torch.full((L - 1,), math.nan)
    done, end = 0, min(L, W)  # entries [0, done) are filled; the current window is [end - W, end)
    while done < L - 1:
        start = max(0, end - W)
        logits = model(seq[start:end].unsqueeze(0))[0, :-1].float()
        window_nll = F.cross_entropy(logits, seq[start + 1:end], reduction="none")  # entry m: token start+1+m
        nll[done:end - 1] = window_nll[done - start:].cpu()
        done, end = end - 1, min(L, end + W // 2)
    return nll


def unigram_entropy(tokens):
    """Entropy (nats) of the empirical token distribution of one sample."""
    counts = torch.bincount(tokens).float()
    p = counts[counts > 0] / tokens.numel()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def score_samples(model, sequences, n_context):
    """{"nll", "ppl", "entropy"} of the tokens after the first n_context of each row of sequences (K, L)."""
    scores = []
    for seq in sequences:
        nll = float(causal_nll(model, seq)[n_context - 1:].mean())
        scores.append({"nll": nll, "ppl": math.exp(nll), "entropy": unigram_entropy(seq[n_context:].cpu())})
    return scores


def timed(fn, device):
    """(fn(), seconds), waiting for the GPU to finish when there is one."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


def speed_quality_curve(model, prompt_ids, n_tokens, steps_list, sampler="ancestral", block_size=None,
                        temperature=1.0, top_k=None, top_p=1.0, num_samples=4, seed=1337, banned_ids=None,
                        on_row=None, reveal="count"):
    """An AR row (the reference), then one row per diffusion step count, averaged over
    num_samples samples drawn with a fresh generator seeded with `seed`; on_row(row) sees each row."""
    device = model.lm_head.weight.device
    generate_ar(model, prompt_ids, 1, temperature=0)  # warm-up: the first call allocates and picks kernels
    rows = []
    for method, steps in [("ar", n_tokens)] + [("diffusion", s) for s in steps_list]:
        generator = torch.Generator(device).manual_seed(seed)
        if method == "ar":
            run = lambda: generate_ar(model, prompt_ids, n_tokens, temperature, top_k, top_p, generator,
                                      num_samples=num_samples, banned_ids=banned_ids)
        else:
            run = lambda: generate_diffusion(model, prompt_ids, n_tokens, steps, sampler, block_size, temperature,
                                             top_k, top_p, generator, num_samples, banned_ids, reveal=reveal)
        seqs, seconds = timed(run, device)
        scores = score_samples(model, seqs, 1 + len(prompt_ids))
        mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("nll", "entropy")}
        rows.append({"method": method, "steps": steps, "tokens_per_s": num_samples * n_tokens / seconds,
                     "nll": mean["nll"], "ppl": math.exp(mean["nll"]), "entropy": mean["entropy"]})
        if on_row is not None:
            on_row(rows[-1])
    return rows


CURVE_HEADER = f"{'method':>9} {'steps':>6} {'tokens/s':>10} {'gen NLL':>8} {'gen PPL':>9} {'entropy':>8}"


def format_row(r):
    return (f"{r['method']:>9} {r['steps']:>6} {r['tokens_per_s']:>10.1f} {r['nll']:>8.3f} {r['ppl']:>9.1f} "
            f"{r['entropy']:>8.3f}")


# -----------------------------------------------------------------------------
# Command line

def check_out(path, inputs):
    """--out may replace an earlier output of sample.py, but never an input or any other file."""
    check_output_file("--out", path, "samples.jsonl")
    check_distinct_paths([("--out", path)], inputs)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:  # the first line is enough to tell: every line of an output is one sample or one curve row
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline(1 << 20))
        ours = isinstance(first, dict) and ({"sample", "text", "ids"} <= first.keys() or
                                            {"method", "steps", "nll"} <= first.keys())
    except (OSError, ValueError):  # unreadable, binary, or not JSON
        ours = False
    if not ours:
        raise ValueError(f"--out {path} exists and is not an output of sample.py (JSON lines of samples or curve "
                         f"rows); give another path, or delete that file first")


def positive(text):
    return int(text) if int(text) >= 1 else None


def step_counts(text):
    steps = [positive(s) for s in text.split(",")]
    return steps if all(steps) else None


def parse_args(argv):
    parser = ArgumentParser(description="Generate text from a nanodual checkpoint, autoregressively or by masked "
                                        "diffusion.", allow_abbrev=False)
    count = arg_type(positive, "must be a whole number of at least 1")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--mode", default="ar", choices=["ar", "diffusion"],
                        help="ar (left to right) or diffusion (iterative unmasking)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text that every sample continues (default: none, just <s>)")
    prompt.add_argument("--prompt_file", help="read the prompt from this UTF-8 file")
    parser.add_argument("--max_new_tokens", type=count, default=256)
    parser.add_argument("--num_samples", type=count, default=1)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help=f"0 (or anything below {MIN_TEMPERATURE:g}) = greedy")
    parser.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    parser.add_argument("--seed", default=1337, type=arg_type(lambda t: int(t) if 0 <= int(t) < 2**64 else None,
                        "must be an integer from 0 to 2**64 - 1 (torch's generators take 64 bits)"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_cache", action="store_true", help="ar: recompute the sequence at every step")
    parser.add_argument("--prefix_prompt", action="store_true", help="ar: the prompt attends bidirectionally")
    parser.add_argument("--steps", type=count, default=64, help="diffusion: unmasking steps per block")
    parser.add_argument("--sampler", default="ancestral", choices=SAMPLERS, help="diffusion: ancestral or confidence")
    parser.add_argument("--reveal", default="count", choices=REVEAL_RULES, help="ancestral: count (the expected "
                        "number of positions per step) or bernoulli (MDLM's independent coins)")
    parser.add_argument("--block_size", type=int, help="diffusion: generate blocks of this many tokens")
    parser.add_argument("--score", action="store_true", help="report generative NLL and unigram entropy")
    parser.add_argument("--sweep_steps", type=arg_type(step_counts, "is not a comma list of step counts of at least "
                        "1, e.g. 1,4,16"), help="diffusion: print the speed-quality curve for these step counts, "
                        "e.g. 1,4,16,64")
    parser.add_argument("--out", help="write one JSON line per sample (per curve row with --sweep_steps)")
    args = parser.parse_args(argv)
    check_sampling_args(args.temperature, args.top_k, args.top_p)  # before the checkpoint is loaded
    if args.out:
        check_out(args.out, [("--ckpt", args.ckpt), ("--prompt_file", args.prompt_file)])
    ar_only = [f for f in ("no_cache", "prefix_prompt") if getattr(args, f)]
    diffusion_only = [f for f in ("block_size", "sweep_steps") if getattr(args, f) is not None]
    if args.mode == "ar" and diffusion_only:
        raise ValueError(f"--{diffusion_only[0]} applies to --mode diffusion only")
    if args.mode == "diffusion" and ar_only:
        raise ValueError(f"--{ar_only[0]} applies to --mode ar only")
    return args


def read_prompt(args):
    if args.prompt_file is None:
        return args.prompt or ""
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {args.prompt_file} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"--prompt_file {args.prompt_file} is a folder; give the path of a text file") from None
    except OSError as e:
        raise ValueError(f"cannot read prompt file {args.prompt_file} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read prompt file {args.prompt_file} as UTF-8 text ({e}); save it as UTF-8") from None


def main(argv=None):
    args, existed = None, False
    try:
        args = parse_args(argv)
        existed = bool(args.out) and os.path.exists(args.out)
        write_samples(args)
    except (ValueError, OSError) as e:  # OSError: files that cannot be read or written
        sys.exit(f"sample.py: error: {e}")
    except KeyboardInterrupt:  # --out is written once, at the end: it is either complete or as it was
        if args and args.out:
            kept = f"{args.out} is as it was" if existed else f"nothing was written to {args.out}"
        else:
            kept = "the rows printed above are complete" if args and args.sweep_steps else "no sample was complete"
        sys.exit(f"sample.py: interrupted (Ctrl-C); {kept}")


def write_samples(args):
    """Generate, print and (--out) write what args ask for."""
    prompt = read_prompt(args)
    device = parse_device(args.device)
    model = load_checkpoint(args.ckpt, device)
    if "tokenizer" not in model.meta:
        raise ValueError(f"checkpoint {args.ckpt} holds no tokenizer spec; pass a checkpoint written by train.py")
    tok = data.Tokenizer.from_spec(model.meta["tokenizer"])
    prompt_ids = tok.encode(prompt)
    banned = special_ids(model, tok)
    top_k = args.top_k or None

    if args.sweep_steps:
        print(CURVE_HEADER, flush=True)
        rows = speed_quality_curve(model, prompt_ids, args.max_new_tokens, args.sweep_steps, args.sampler,
                                   args.block_size, args.temperature, top_k, args.top_p, args.num_samples,
                                   args.seed, banned, on_row=lambda row: print(format_row(row), flush=True),
                                   reveal=args.reveal)
        if args.out:
            write_atomically("--out", args.out, lambda f: f.writelines(json.dumps(row) + "\n" for row in rows))
        return

    generator = torch.Generator(device).manual_seed(args.seed)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": top_k,
                "top_p": args.top_p}  # and those of the mode, below: each JSON line records them
    # on_step: a progress line (rate, ETA) on stderr every few seconds, so long generations show progress
    if args.mode == "ar":
        progress = Progress(args.max_new_tokens * args.num_samples, "generate", "tokens")
        on_step = lambda seq: progress.update(args.num_samples)
        settings.update(use_cache=not args.no_cache, prefix_prompt=args.prefix_prompt)
        run = lambda: generate_ar(model, prompt_ids, args.max_new_tokens, args.temperature, top_k, args.top_p,
                                  generator, not args.no_cache, args.prefix_prompt, args.num_samples, banned,
                                  on_step)
    else:
        n_blocks = math.ceil(args.max_new_tokens / (args.block_size or args.max_new_tokens))
        progress = Progress(args.steps * n_blocks, "unmask", "steps")
        on_step = lambda canvas: progress.update(1)
        settings.update(sampler=args.sampler, reveal=args.reveal, steps=args.steps, block_size=args.block_size)
        run = lambda: generate_diffusion(model, prompt_ids, args.max_new_tokens, args.steps, args.sampler,
                                         args.block_size, args.temperature, top_k, args.top_p, generator,
                                         args.num_samples, banned, on_step, args.reveal)
    seqs, seconds = timed(run, device)
    n_context = 1 + len(prompt_ids)
    scores = score_samples(model, seqs, n_context) if args.score else [{}] * len(seqs)
    new_tokens = seqs[:, n_context:].tolist()
    print(f"{len(seqs)} sample(s) x {args.max_new_tokens} tokens in {seconds:.2f}s "
          f"({len(seqs) * args.max_new_tokens / seconds:.1f} tokens/s)", file=sys.stderr)
    lines = []
    for i, (ids, score) in enumerate(zip(new_tokens, scores)):
        text = tok.decode(ids)
        if args.out:
            record = {"sample": i, "prompt": prompt, "text": text, "prompt_ids": prompt_ids, "ids": ids,
                      "mode": args.mode, "settings": settings, "seed": args.seed, "ckpt": args.ckpt, **score}
            lines.append(json.dumps(record) + "\n")
        else:
            print(prompt + text)
            if score:
                print(f"[gen NLL {score['nll']:.3f} nats/token (ppl {score['ppl']:.1f}), "
                      f"unigram entropy {score['entropy']:.3f} nats]")
            print("---------------")
    if args.out:  # atomically: a samples file that exists holds every sample
        write_atomically("--out", args.out, lambda f: f.writelines(lines))
        print(f"wrote {len(new_tokens)} sample(s) to {args.out}")
    if args.score:
        mean_nll = sum(s["nll"] for s in scores) / len(scores)
        mean_entropy = sum(s["entropy"] for s in scores) / len(scores)
        print(f"mean gen NLL {mean_nll:.3f} nats/token (ppl {math.exp(mean_nll):.1f}), "
              f"mean unigram entropy {mean_entropy:.3f} nats")


if __name__ == "__main__":
    main()
