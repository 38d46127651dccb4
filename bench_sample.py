"""
Benchmark of sample.py: tokens/s of autoregressive generation with and without the KV cache, and of
masked-diffusion generation at several step counts, side by side in one run.

The model has the shape of the tiny CPU config (config/tiny_cpu.py: 4 layers, width 128, 4 heads,
SwiGLU 344, and its data's vocabulary of 2048) with random weights: speed does not depend on the
weights, so no checkpoint or data is needed. Its window is widened from 128 to 2048 tokens (--window)
so that <s> + 1024 new tokens fit in it; the window size costs nothing by itself. With
--window 128, AR generation jumps its window every 64 tokens (sample.generate_ar) and the cost per
token stops growing with length, with or without the cache. One sample, an empty prompt (just
<s>), plain sampling at temperature 1; each timing is the best of --repeats runs, which keeps out
most of the noise of other jobs on shared cores.

    python bench_sample.py                                    # about a minute on one CPU thread
    python bench_sample.py --window 128
    python bench_sample.py --lengths 128,256 --diffusion_steps 8,32 --device cuda

Without the cache every new token reruns the whole sequence, so the work grows with the square of
the length and the cache's advantage grows with it. A diffusion step is one forward pass over the
whole canvas, so diffusion speed is (tokens / steps) times that of one pass.
"""
import argparse
import sys

import torch

from model import DualLM, ModelConfig
from sample import generate_ar, generate_diffusion, timed


def tiny_cpu_model(window, device):
    cfg = ModelConfig(vocab_size=2048, block_size=window, n_layer=4, n_head=4, n_embd=128, intermediate_size=344)
    torch.manual_seed(0)
    return DualLM(cfg).to(device).eval()


def tokens_per_s(fn, n_tokens, device, repeats):
    return n_tokens / min(timed(fn, device)[1] for _ in range(repeats))


def main(argv=None):
    parser = argparse.ArgumentParser(description="tokens/s of AR (cache vs no cache) and diffusion sampling")
    parser.add_argument("--lengths", default="256,1024", help="AR: new tokens per run")
    parser.add_argument("--diffusion_tokens", type=int, default=256, help="diffusion: tokens in the canvas")
    parser.add_argument("--diffusion_steps", default="16,64,256", help="diffusion: step counts")
    parser.add_argument("--window", type=int, default=2048, help="the model's block_size")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on cores "
                                                                "shared with other jobs; 0: PyTorch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    steps_list = [int(s) for s in args.diffusion_steps.split(",")]
    device = torch.device(args.device)
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} must be at least 1")
    model = tiny_cpu_model(args.window, device)
    if args.diffusion_tokens >= args.window:
        raise ValueError(f"--diffusion_tokens={args.diffusion_tokens} must stay below --window={args.window} "
                         f"(<s> takes one position)")
    gen = lambda: torch.Generator(device).manual_seed(0)
    print(f"model: tiny_cpu shape (4 layers, width 128, vocab 2048), window {args.window}, "
          f"{model.num_params() / 1e6:.2f}M parameters, random weights; device {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    generate_ar(model, [], 16, generator=gen())  # warm-up: first calls allocate and pick kernels

    print("\nautoregressive, 1 sample, prompt <s>")
    print(f"{'new tokens':>10} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9}")
    for n in lengths:
        cached = tokens_per_s(lambda: generate_ar(model, [], n, generator=gen()), n, device, args.repeats)
        uncached = tokens_per_s(lambda: generate_ar(model, [], n, generator=gen(), use_cache=False), n, device,
                                args.repeats)
        print(f"{n:>10} {cached:>12.1f} {uncached:>15.1f} {cached / uncached:>8.1f}x", flush=True)

    n = args.diffusion_tokens
    print(f"\nmasked diffusion, 1 sample, prompt <s>, {n} tokens in one canvas")
    print(f"{'sampler':>10} {'steps':>6} {'tok/s':>10}")
    for sampler in ("ancestral", "confidence"):
        for steps in steps_list:
            speed = tokens_per_s(lambda: generate_diffusion(model, [], n, steps, sampler, generator=gen()), n, device,
                                 args.repeats)
            print(f"{sampler:>10} {steps:>6} {speed:>10.1f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"bench_sample.py: error: {e}")
