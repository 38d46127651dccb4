"""
How fast are the model, the optimizer and a dual training step? Two measurements, each taken side
by side in one run (variants interleaved round by round, median reported), because only ratios
measured together mean anything on a shared machine:

1. forward+backward tokens/s of the model in every attention mode, and the Muon+AdamW step time
   next to the forward+backward time;
2. a full training step (forward, backward, optimizer) for pure AR (λ=1), pure masked diffusion
   (λ=0) and λ=0.5: tokens/s, MFU on known GPUs, and the dual/AR cost ratio.

    python bench.py                                  # ~14M-parameter model on CPU
    python bench.py --size 125m --device cuda --compile   # on a GPU: bf16 autocast, MFU
"""
import argparse
import statistics
import time
from contextlib import nullcontext

import torch

import model as modeling
from muon import MuonAdamW
from train import peak_flops

SIZES = {  # n_layer, n_head, n_embd, intermediate_size
    "10m": (6, 6, 384, 1024),
    "125m": (12, 12, 768, 2048),
    "470m": (24, 16, 1024, 3554),
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats):
    """Median seconds of `repeats` calls of fn (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(variants, dev, rounds, repeats):
    """Median time per variant, measuring every variant once per round so drifts hit all alike."""
    for fn in variants.values():  # warm-up (and compilation)
        fn()
        fn()
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(timed(fn, dev, repeats))
    return {name: statistics.median(s) for name, s in samples.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="10m", choices=list(SIZES))
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    dev = torch.device(args.device)
    torch.manual_seed(0)
    n_layer, n_head, n_embd, hidden = SIZES[args.size]
    cfg = modeling.ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=n_layer,
                               n_head=n_head, n_embd=n_embd, intermediate_size=hidden)
    raw = modeling.DualLM(cfg).to(dev)
    net = torch.compile(raw) if args.compile else raw
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    opt = MuonAdamW(raw, lr=1e-3)
    B, T = args.batch_size, args.block_size
    x = torch.randint(5, cfg.vocab_size, (B, T), device=dev)
    y = torch.randint(5, cfg.vocab_size, (B, T), device=dev)
    prefix_len = torch.randint(1, T, (B,), device=dev)
    doc_ids = torch.cumsum(torch.rand(B, T, device=dev) < 4 / T, dim=1).int()  # ~4 documents per row
    tokens = B * T
    print(f"model {args.size}: {raw.num_params() / 1e6:.1f}M parameters ({raw.num_params(True) / 1e6:.1f}M "
          f"non-embedding), batch {B} x {T} tokens, device {dev}, threads {torch.get_num_threads()}, "
          f"compile {args.compile}")

    # 1. forward+backward per attention mode, and the optimizer step
    def fwd_bwd(mode, **kw):
        def run():
            with autocast:
                loss, _ = net(x, mode=mode, targets=y, **kw)
            loss.backward()
        return run

    def opt_step():
        opt.step()  # the gradients left by the last backward; zeroing them is not part of the step

    times = interleaved({
        "causal": fwd_bwd("causal"),
        "bidirectional": fwd_bwd("bidirectional"),
        "prefix": fwd_bwd("prefix", prefix_len=prefix_len),
        "causal + documents": fwd_bwd("causal", doc_ids=doc_ids),
        "bidirectional + documents": fwd_bwd("bidirectional", doc_ids=doc_ids),
        "optimizer step (Muon + AdamW)": opt_step,
    }, dev, args.rounds, args.repeats)
    base = times["causal"]
    print(f"\n{'forward+backward':<30} {'tokens/s':>10} {'ms':>8} {'vs causal':>10}")
    for name, t in times.items():
        speed = f"{tokens / t:>10,.0f}" if "optimizer" not in name else f"{'':>10}"
        print(f"{name:<30} {speed} {1000 * t:>8.1f} {t / base:>9.2f}x")
    print(f"Muon+AdamW step = {times['optimizer step (Muon + AdamW)'] / base:.2f} x one causal forward+backward "
          f"of {tokens} tokens")

    # 2. full training steps: two micro-batches per step, as train.py runs them
    generator = torch.Generator(device=dev).manual_seed(0)

    def train_step(objectives):
        def run():
            for objective in objectives:
                with autocast:
                    if objective == "ar":
                        loss, zl = modeling.ar_loss(net, x, y)
                    else:
                        loss, zl = modeling.md_loss(net, x, y, generator=generator)
                ((loss + 1e-4 * zl) / len(objectives)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    steps = interleaved({"AR (λ=1)": train_step(["ar", "ar"]), "MD (λ=0)": train_step(["md", "md"]),
                         "dual (λ=0.5)": train_step(["ar", "md"])}, dev, args.rounds, args.repeats)
    peak = peak_flops(dev)
    flops = raw.flops_per_token(T) * 2 * tokens
    print(f"\n{'training step (2 micro-batches)':<32} {'tokens/s':>10} {'MFU':>6} {'cost vs AR':>11}")
    for name, t in steps.items():
        mfu = f"{100 * flops / t / peak:>5.1f}%" if peak else f"{'-':>6}"
        print(f"{name:<32} {2 * tokens / t:>10,.0f} {mfu} {t / steps['AR (λ=1)']:>10.3f}x")


if __name__ == "__main__":
    main()
