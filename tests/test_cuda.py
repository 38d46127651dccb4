"""The GPU paths, for anyone with a GPU: compiled flex attention with document masks, bf16 autocast,
compile guards, the KV-cache sampler and eval.py under CUDA, and NCCL data parallelism. Every test is
skipped without CUDA (the NCCL one needs two GPUs); the CPU half of the flex path, compiled flex
forward against dense masks, is in test_model.py.

    python -m pytest -q tests/test_cuda.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import model as M
import sample as S
from conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def tiny_model(**overrides):
    kw = dict(vocab_size=256, block_size=128, n_layer=2, n_head=4, n_embd=64, intermediate_size=172)
    kw.update(overrides)
    torch.manual_seed(0)
    return M.DualLM(M.ModelConfig(**kw)).to(CUDA)


def batch(B=4, T=128, vocab=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, vocab, (B, T), generator=g)
    y = torch.randint(5, vocab, (B, T), generator=g)
    docs = torch.cumsum(torch.rand(B, T, generator=g) < 0.05, dim=1).int()  # ~6 documents per row
    return x.to(CUDA), y.to(CUDA), docs.to(CUDA)


def losses_and_grads(net, raw, objective, x, y, docs):
    raw.zero_grad(set_to_none=True)
    if objective == "ar":
        loss, z = M.ar_loss(net, x, y, docs)
    else:
        loss, z = M.md_loss(net, x, y, docs, generator=torch.Generator(device=CUDA).manual_seed(0))
    (loss + 1e-4 * z).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in raw.named_parameters()}


@pytest.mark.parametrize("objective", ["ar", "md"])
def test_compiled_flex_step_equals_eager_dense_step(objective):
    """train.py's CUDA path (torch.compile, flex attention with document block masks) computes the same
    losses and gradients as the eager reference (SDPA with dense boolean masks), in fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    x, y, docs = batch()
    dense = tiny_model()
    dense.attn_impl = "dense"
    flex = tiny_model()
    plan = flex._attention_plan
    used = []
    flex._attention_plan = lambda *a, **k: used.append(plan(*a, **k)[0]) or plan(*a, **k)
    want_loss, want_grads = losses_and_grads(dense, dense, objective, x, y, docs)
    got_loss, got_grads = losses_and_grads(torch.compile(flex), flex, objective, x, y, docs)
    assert "flex" in used  # the compiled model really took the flex path
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def run_train(tmp_path, dataset, *extra):
    args = [f"--data_dir={dataset}", "--n_layer=2", "--n_head=4", "--n_embd=64", "--intermediate_size=172",
            "--block_size=64", "--batch_size=8", "--gradient_accumulation_steps=2", "--lam=0.5", "--eval_iters=2",
            "--log_interval=10", "--device=cuda", *extra]
    run = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_bf16_tracks_fp32_over_50_steps(tiny_dataset, tmp_path):
    """bf16 autocast (train.py's CUDA default) follows the fp32 run: same data and noise, validation
    losses within a few percent at every evaluation, and both learn."""
    common = ["--max_iters=50", "--eval_interval=10", "--compile=False"]
    run_train(tmp_path, tiny_dataset, *common, "--dtype=float32", f"--out_dir={tmp_path / 'fp32'}")
    run_train(tmp_path, tiny_dataset, *common, "--dtype=bfloat16", f"--out_dir={tmp_path / 'bf16'}")
    fp32, bf16 = metrics(tmp_path / "fp32"), metrics(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 6
    for a, b in zip(fp32, bf16):
        for key in ("val_ar_loss", "val_md_loss"):
            assert b[key] == pytest.approx(a[key], rel=0.03), (a["iter"], key)
    assert bf16[-1]["val_ar_loss"] < bf16[0]["val_ar_loss"] - 0.3


def test_no_recompiles_after_warm_up(tiny_dataset, tmp_path):
    """A compiled run builds its four graphs (AR and MD steps, AR and MD evaluation) during the first
    step and evaluation, then none: the count in the log stays put, and dynamo logs no recompile."""
    out = run_train(tmp_path, tiny_dataset, "--max_iters=12", "--eval_interval=4", "--compile=True",
                    f"--out_dir={tmp_path / 'out'}")
    counts = [int(line.split(" graphs compiled")[0].rsplit(" ", 1)[-1]) for line in out.splitlines()
              if "graphs compiled" in line]
    assert counts[1:] == [4] * (len(counts) - 1), out


def test_kv_cache_sampler_and_eval_run_under_cuda(tiny_checkpoint, shared_data, tmp_path):
    model = M.load_checkpoint(str(tiny_checkpoint), device="cuda")
    prompt = [40, 41, 97, 130, 7]
    with torch.no_grad():
        cached = S.generate_ar(model, prompt, 24, temperature=0)
        uncached = S.generate_ar(model, prompt, 24, temperature=0, use_cache=False)
    assert cached.device.type == "cuda" and torch.equal(cached, uncached)
    out = tmp_path / "eval.json"
    run = subprocess.run([sys.executable, str(REPO / "eval.py"), "--ckpt", str(tiny_checkpoint), "--data_dir",
                          str(shared_data), "--tasks", "arc_easy", "--modes", "causal,prefix,pll,mc", "--limit", "8",
                          "--device", "cuda", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(json.loads(out.read_text())["tasks"]["arc_easy"]) >= {"causal", "prefix", "pll", "mc"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks_equal_one_process(tiny_dataset, tmp_path):
    common = [f"--data_dir={tiny_dataset}", "--n_layer=2", "--n_head=4", "--n_embd=64", "--intermediate_size=172",
              "--block_size=64", "--batch_size=4", "--gradient_accumulation_steps=4", "--lam=0.5", "--max_iters=4",
              "--eval_interval=4", "--eval_iters=2", "--dtype=float32", "--compile=False"]
    env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}
    single = subprocess.run([sys.executable, str(REPO / "train.py"), *common, "--device=cuda",
                             f"--out_dir={tmp_path / 'single'}"], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(REPO / "train.py"), *common, f"--out_dir={tmp_path / 'ddp'}"],
                         capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)["model"]
    for name in a:  # Muon's Newton-Schulz runs in bf16 on CUDA: a rounding flip there moves a weight ~1e-4
        assert (a[name] - b[name]).abs().max().item() <= 5e-4, name
