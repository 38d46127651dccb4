"""
Benchmark of eval.py: the batched semi-autoregressive PLL against the plain loop that builds one
masked input at a time and runs it alone, on the same items, with the scores of the two checked to
agree; then items/s of every scoring mode through evaluate().

The model is tiny and has random weights (2 layers, width 64, 4 heads, block 256, like the test
fixture): speed does not depend on the weights. The tokenizer is a byte-level BPE of 512 tokens
trained in a second on Tiny Shakespeare, so only ../shared/data is needed.

    OMP_NUM_THREADS=1 python bench_eval.py                  # about 15 s on one CPU thread
    python bench_eval.py --tasks piqa --items 50 --n_embd 256 --n_layer 6

The loop is what an evaluator without batching does: one forward pass per (sequence, target
position), each projecting every position through the LM head. The batched scorer packs rows of
many sequences into each pass, sorts them by length to cut padding, and projects only the one
hidden state per row that is scored. Every PLL row is still a full-length bidirectional pass, so
batching saves only the loop's fixed cost per pass: on a CPU the speed-up is largest for short
sequences (BLiMP) and shrinks as they grow. On a GPU, where the loop is bound by kernel launches, it
should be far larger (not measured yet).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import data
import eval as ev
from model import DualLM, ModelConfig


def bpe_tokenizer(data_dir):
    text = open(os.path.join(data_dir, "corpus", "tinyshakespeare", "input.txt"), encoding="utf-8").read()[:200_000]
    return data.train_bpe(text.split("\n\n"), 512)


def pll_loop(model, seqs, k):
    """PLL with k masks (spec §4.4; right context visible, masks appended at the tail), one masked
    input per forward pass, read exactly as the spec writes it."""
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


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description="batched PLL vs a one-sequence loop; items/s of every mode")
    p.add_argument("--data_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data"))
    p.add_argument("--tasks", default="arc_easy,blimp", help="comma list of tasks, each benchmarked on its own")
    p.add_argument("--items", type=int, default=40, help="items per task (the first ones of the file)")
    p.add_argument("--k", type=int, default=6, help="masks for the PLL comparison")
    p.add_argument("--mc_samples", type=int, default=32)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on shared cores)")
    args = p.parse_args(argv)
    tasks = ev.parse_names(args.tasks, ev.TASKS, "task")
    torch.set_num_threads(args.threads)
    tok = bpe_tokenizer(args.data_dir)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=args.n_layer, n_head=4, n_embd=args.n_embd,
                      intermediate_size=int(args.n_embd * 8 / 3 + 1) // 2 * 2,
                      bos_id=tok.bos_id, pad_id=tok.pad_id, mask_id=tok.mask_id)
    torch.manual_seed(0)
    model = DualLM(cfg).eval()
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
        loop, loop_s = timed(lambda: pll_loop(model, seqs, args.k))
        (batched, _, _), batched_s = timed(lambda: ev.sequence_logliks(model, seqs, "pll", k=args.k))
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


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"bench_eval.py: error: {e}")
