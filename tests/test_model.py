"""model.py against independent references: a hand-written forward pass with explicit masks and a
plain softmax, Hugging Face's LlamaForCausalLM, and exact expectations computed by enumeration."""
import errno
import itertools
import json
import math
import os
import resource
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import model as M
from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run fastest on one thread

V = 61


def tiny_config(**overrides):
    kw = dict(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_embd=32, intermediate_size=40)
    kw.update(overrides)
    return M.ModelConfig(**kw)


def tiny_model(seed=0, sharp=False, **overrides):
    torch.manual_seed(seed)
    m = M.DualLM(tiny_config(**overrides))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:  # random gains, so that a mix-up of the two norms of a block would show
                p.uniform_(0.5, 1.5)
            elif sharp:  # O(1) activations: predictions that depend strongly on the context
                p.normal_(0, 1.0 if name == "tok_emb.weight" else 3.0 if name == "lm_head.weight" else 1 / p.shape[1] ** 0.5)
    return m.eval()


def random_tokens(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, V, (B, T), generator=g)


# -----------------------------------------------------------------------------
# A slow, obviously-correct forward pass: explicit per-pair masks, RoPE by rotating each
# (i, i + D/2) pair by angle pos * theta^(-2i/D), plain softmax attention.

def allowed_pair(mode, q, k, prefix_len, docs):
    if mode == "causal":
        ok = k <= q
    elif mode == "bidirectional":
        ok = True
    else:
        ok = k <= q or (q < prefix_len and k < prefix_len)
    return ok and (docs is None or docs[q] == docs[k])


def reference_logits(m, idx, mode, prefix_len=None, doc_ids=None):
    cfg = m.config
    B, T = idx.shape
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(x):  # x: (T, H, D)
        out = x.clone()
        for pos in range(T):
            for i in range(D // 2):
                angle = pos * cfg.rope_theta ** (-2 * i / D)
                c, s = math.cos(angle), math.sin(angle)
                a, b = x[pos, :, i], x[pos, :, i + D // 2]
                out[pos, :, i], out[pos, :, i + D // 2] = a * c - b * s, b * c + a * s
        return out

    rows = []
    for b in range(B):
        P = None if prefix_len is None else (prefix_len if isinstance(prefix_len, int) else int(prefix_len[b]))
        docs = None if doc_ids is None else doc_ids[b].tolist()
        mask = torch.tensor([[allowed_pair(mode, q, k, P, docs) for k in range(T)] for q in range(T)])
        x = m.tok_emb.weight[idx[b]]
        for blk in m.blocks:
            h = rms(x, blk.attn_norm.weight)
            q = rope((h @ blk.attn.q_proj.weight.T).view(T, H, D))
            k = rope((h @ blk.attn.k_proj.weight.T).view(T, H, D))
            v = (h @ blk.attn.v_proj.weight.T).view(T, H, D)
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
            scores = scores.masked_fill(~mask, float("-inf"))
            att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, H * D)
            x = x + att @ blk.attn.o_proj.weight.T
            h = rms(x, blk.mlp_norm.weight)
            gate, up = h @ blk.mlp.gate_proj.weight.T, h @ blk.mlp.up_proj.weight.T
            x = x + (gate * torch.sigmoid(gate) * up) @ blk.mlp.down_proj.weight.T
        rows.append(rms(x, m.norm.weight) @ m.lm_head.weight.T)
    return torch.stack(rows)


@pytest.mark.parametrize("impl", ["auto", "dense", "flex"])
@pytest.mark.parametrize("mode", M.MODES)
@pytest.mark.parametrize("with_docs", [False, True])
def test_every_attention_path_matches_the_reference(impl, mode, with_docs):
    m = tiny_model()
    m.attn_impl = impl
    idx = random_tokens(3, 12)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 12, [0] * 3 + [1] * 4 + [2] * 5]) if with_docs else None
    prefix_len = torch.tensor([4, 7, 1]) if mode == "prefix" else None
    with torch.no_grad():  # flex attention on CPU has no backward
        got = m(idx, mode=mode, prefix_len=prefix_len, doc_ids=doc_ids)
        want = reference_logits(m, idx, mode, prefix_len, doc_ids)
    assert got.shape == (3, 12, V)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_prefix_mode_never_leaks_the_continuation():
    m = tiny_model()
    idx = random_tokens(2, 14)
    P = torch.tensor([5, 9])
    base = m(idx, mode="prefix", prefix_len=P)
    for b in range(2):
        for c in range(int(P[b]), 14):  # change one continuation token
            changed = idx.clone()
            changed[b, c] = (changed[b, c] + 1 - 5) % (V - 5) + 5
            out = m(changed, mode="prefix", prefix_len=P)
            torch.testing.assert_close(out[b, :c], base[b, :c], atol=0, rtol=0)
            assert not torch.allclose(out[b, c:], base[b, c:])  # the test can fail
    # ...while a prefix token is seen by every earlier prefix position (bidirectional prefix)
    changed = idx.clone()
    changed[1, 8] = (changed[1, 8] + 1 - 5) % (V - 5) + 5
    out = m(changed, mode="prefix", prefix_len=P)
    assert not torch.allclose(out[1, :8], base[1, :8])


@pytest.mark.parametrize("mode", M.MODES)
def test_document_masking_isolates_documents(mode):
    m = tiny_model()
    idx = random_tokens(1, 15)
    doc_ids = torch.tensor([[0] * 4 + [1] * 6 + [2] * 5])
    prefix_len = 6 if mode == "prefix" else None
    base = m(idx, mode=mode, prefix_len=prefix_len, doc_ids=doc_ids)
    changed = idx.clone()
    changed[0, 6] = (changed[0, 6] + 1 - 5) % (V - 5) + 5  # a token of document 1
    out = m(changed, mode=mode, prefix_len=prefix_len, doc_ids=doc_ids)
    torch.testing.assert_close(out[0, :4], base[0, :4], atol=0, rtol=0)
    torch.testing.assert_close(out[0, 10:], base[0, 10:], atol=0, rtol=0)
    assert not torch.allclose(out[0, 4:10], base[0, 4:10])


def test_mntp_alignment_loss_at_i_scores_token_i_plus_1():
    m = tiny_model()
    w = random_tokens(2, 11)
    x, y = w[:, :-1], w[:, 1:]
    logits = m(x, mode="causal")
    for b in range(2):
        for i in range(10):
            weights = torch.zeros(2, 10)
            weights[b, i] = 1.0
            loss, z = m(x, mode="causal", targets=y, target_weights=weights)  # LM head on one position only
            want = -torch.log_softmax(logits[b, i], -1)[w[b, i + 1]]
            torch.testing.assert_close(loss, want)
            torch.testing.assert_close(z, torch.logsumexp(logits[b, i], -1).square())
    loss, z = M.ar_loss(m, x, y)
    want = -torch.log_softmax(logits, -1).gather(2, y.unsqueeze(2)).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(z, torch.logsumexp(logits, -1).square().mean())


def test_ar_loss_ignores_padding_targets():
    m = tiny_model()
    w = random_tokens(2, 9)
    x, y = w[:, :-1], w[:, 1:].clone()
    y[1, 5:] = -1
    loss, _ = M.ar_loss(m, x, y)
    logp = torch.log_softmax(m(x), -1)
    keep = y >= 0
    want = -logp[keep].gather(1, y[keep].unsqueeze(1)).mean()
    torch.testing.assert_close(loss, want)


def test_ar_loss_ignores_targets_that_start_the_next_document():
    # packed windows: the last token of a document cannot know that <s> comes next, so that target
    # is not trained (as in the official code); everything else still is
    m = tiny_model()
    w = random_tokens(2, 13)
    w[0, 5], w[1, 9], w[1, 0] = m.config.bos_id, m.config.bos_id, m.config.bos_id
    x, y = w[:, :-1], w[:, 1:]
    docs = torch.cumsum(x == m.config.bos_id, 1)
    loss, _ = M.ar_loss(m, x, y, docs)
    logp = torch.log_softmax(m(x, doc_ids=docs), -1)
    keep = y != m.config.bos_id
    assert keep.sum() == 2 * 12 - 2
    torch.testing.assert_close(loss, -logp[keep].gather(1, y[keep].unsqueeze(1)).mean())
    assert not torch.isclose(loss, -logp.gather(2, y.unsqueeze(2)).mean())


def test_norm_and_loss_statistics_stay_fp32_under_bf16_autocast():
    """Under CPU bf16 autocast (train.py's CUDA default runs the same code), RMSNorm normalises in fp32
    and its weight gradient stays fp32, even with a bf16 input and the backward called inside autocast;
    the loss and the z-loss come from fp32 logits."""
    torch.manual_seed(0)
    x = torch.randn(4, 64, 96).bfloat16().requires_grad_()
    norm = M.RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    grad = torch.randn(4, 64, 96).bfloat16()
    want = torch.nn.functional.rms_norm(x.float(), (96,), norm.weight, 1e-5)
    want.backward(grad.float())
    want_grad, norm.weight.grad = norm.weight.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = norm(x)
        got.backward(grad)
    assert got.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    torch.testing.assert_close(got, want.detach().bfloat16(), atol=0, rtol=0)
    torch.testing.assert_close(norm.weight.grad, want_grad, rtol=1e-5, atol=1e-5)
    m = tiny_model()
    w = random_tokens(2, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, z = M.ar_loss(m, w[:, :-1], w[:, 1:])
        logits = m.lm_head(m.hidden_states(w[:, :-1])).float()
    assert loss.dtype == z.dtype == torch.float32
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()))
    torch.testing.assert_close(z, logits.logsumexp(-1).square().mean())


class RecordingModel(torch.nn.Module):
    """Wraps a model and keeps every input it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.inputs = inner, inner.config, []

    def forward(self, idx, **kw):
        self.inputs.append(idx.clone())
        return self.inner(idx, **kw)


def test_md_loss_never_masks_bos_or_pad_and_masks_everything_else_at_t_1():
    m = RecordingModel(tiny_model())
    cfg = m.config
    x = random_tokens(3, 12)
    x[:, 0] = cfg.bos_id
    x[1, 6] = cfg.bos_id
    x[2, 9] = cfg.pad_id
    y = random_tokens(3, 12, seed=2)
    M.md_loss(m, x, y, t=torch.ones(3))
    seen = m.inputs[-1]
    special = (x == cfg.bos_id) | (x == cfg.pad_id)
    assert torch.equal(seen[special], x[special])
    assert (seen[~special] == cfg.mask_id).all()
    for seed in range(20):  # and at random t, <s> survives every draw
        M.md_loss(m, x, y, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(m.inputs[-1][special], x[special])


def test_antithetic_t_is_stratified_over_the_batch():
    for seed in range(10):
        B, eps = 16, 1e-3
        t = M.sample_t(B, torch.Generator().manual_seed(seed), antithetic=True, eps=eps)
        u = (t - eps) / (1 - eps)
        assert sorted((u * B).floor().long().tolist()) == list(range(B))
        assert t.min() >= eps and t.max() <= 1


def enumerate_md_losses(m, w):
    """Every mask pattern of the window w (w[0] = <s> never masked): (number masked, sum over the
    masked tokens j of -log p(w_j) read at position j-1, divided by T), by hand, one sequence at a time."""
    cfg, T = m.config, len(w) - 1
    assert int(w[0]) == cfg.bos_id
    out = []
    with torch.no_grad():
        for pattern in itertools.product([0, 1], repeat=T):
            masked = [False] + [bool(p) for p in pattern]
            inp = torch.tensor([cfg.mask_id if masked[i] else int(w[i]) for i in range(T)])
            logp = torch.log_softmax(m(inp[None], mode="bidirectional")[0].double(), -1)
            out.append((sum(pattern), sum(-float(logp[j - 1, w[j]]) for j in range(1, T + 1) if masked[j]) / T))
    return out


# a window of T+1 = 6 tokens, 5 of them maskable. The sharp model's cross-entropies vary by several
# nats with the mask pattern, so scoring the wrong position, masking <s> or a wrong weight all move the
# mean by many standard errors (checked by breaking md_loss on purpose).
WINDOW = [1, 17, 23, 42, 8, 31]  # 1 = <s>


@pytest.mark.parametrize("weighting", ["elbo", "ce"])
def test_md_loss_mean_matches_exact_expectation_at_fixed_t(weighting):
    """Fixed t: E[md_loss] = sum over all 2^5 mask patterns of P(pattern) * loss(pattern)."""
    m = tiny_model(sharp=True)
    w, T, t = torch.tensor(WINDOW), len(WINDOW) - 1, 0.35
    weight = 1 / t if weighting == "elbo" else 1.0
    exact = [(t ** k * (1 - t) ** (T - k), weight * loss) for k, loss in enumerate_md_losses(m, w)]
    mean = sum(p * v for p, v in exact)
    std = math.sqrt(sum(p * (v - mean) ** 2 for p, v in exact))
    B = 4000
    with torch.no_grad():
        loss, _ = M.md_loss(m, w[:-1].repeat(B, 1), w[1:].repeat(B, 1), t=torch.full((B,), t),
                            generator=torch.Generator().manual_seed(0), weighting=weighting)  # mean of B draws
    assert abs(float(loss) - mean) < 4 * std / math.sqrt(B)
    assert std > 0.05 * mean  # the check above is not vacuous


def integral_of_t_power(m, eps):
    """The integral of t^m over [eps, 1]."""
    return -math.log(eps) if m == -1 else (1 - eps ** (m + 1)) / (m + 1)


@pytest.mark.parametrize("weighting", ["elbo", "ce"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_md_loss_mean_over_t_matches_exact_expectation(weighting, antithetic):
    """t drawn by md_loss itself (uniform on [eps, 1], stratified or not): E[md_loss] is the integral
    over t of the fixed-t expectation, exact here by expanding (1-t)^(T-k) into powers of t. For the
    ELBO weighting this is the model's negative ELBO per token (MDLM Eq. 10)."""
    m = tiny_model(sharp=True)
    w, T, eps = torch.tensor(WINDOW), len(WINDOW) - 1, 1e-3
    p = 1 if weighting == "elbo" else 0  # the weight is t^-p

    def expect(k, power):  # E_t[t^(-power*p) t^k (1-t)^(T-k)] for t uniform on [eps, 1]
        return sum(math.comb(T - k, a) * (-1) ** a * integral_of_t_power(k - power * p + a, eps)
                   for a in range(T - k + 1)) / (1 - eps)

    losses = enumerate_md_losses(m, w)
    mean = sum(expect(k, 1) * loss for k, loss in losses)
    var = sum(expect(k, 2) * loss ** 2 for k, loss in losses) - mean ** 2  # i.i.d. t; stratifying only lowers it
    B = 4000
    with torch.no_grad():
        loss, _ = M.md_loss(m, w[:-1].repeat(B, 1), w[1:].repeat(B, 1), generator=torch.Generator().manual_seed(0),
                            antithetic=antithetic, weighting=weighting)
    assert abs(float(loss) - mean) < 4 * math.sqrt(var / B)
    assert math.sqrt(var) > 0.05 * mean


def test_kv_cache_matches_full_forward():
    m = tiny_model()
    idx = random_tokens(2, 16)
    full = m(idx, mode="causal")
    cache = M.KVCache(m.config, 2, 16, "cpu")
    parts = [m(idx[:, :7], kv_cache=cache), m(idx[:, 7:10], kv_cache=cache)]  # prefill + a 3-token chunk
    parts += [m(idx[:, i:i + 1], kv_cache=cache) for i in range(10, 16)]  # then one token at a time
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # prefix prefill + causal decoding = prefix mode over the whole sequence
    full = m(idx, mode="prefix", prefix_len=6)
    cache = M.KVCache(m.config, 2, 16, "cpu")
    parts = [m(idx[:, :6], mode="prefix", prefix_len=6, kv_cache=cache)]
    parts += [m(idx[:, i:i + 1], kv_cache=cache) for i in range(6, 16)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_sizes_of_the_paper_model():
    with torch.device("meta"):
        big = M.DualLM(M.ModelConfig())  # the paper's defaults: 24 x 1024, 16 heads, SwiGLU 3554, vocab 51200
    per_layer = 4 * 1024 * 1024 + 3 * 1024 * 3554 + 2 * 1024
    non_embedding = 24 * per_layer + 1024
    assert big.num_params(non_embedding=True) == non_embedding  # ~360M
    assert big.num_params() == non_embedding + 2 * 51200 * 1024  # ~470M, untied
    assert big.flops_per_token() == 6 * (non_embedding + 51200 * 1024) + 12 * 24 * 1024 * 2048
    assert round(big.num_params() / 1e6) == 468 and round(non_embedding / 1e6) == 363  # the paper's "470M, 360M"
    tied = M.DualLM(tiny_config(tie_embeddings=True))
    assert tied.num_params() == tied.num_params(non_embedding=True) + V * 32


@pytest.mark.parametrize("kw, field", [
    (dict(n_embd=30, n_head=4), "n_embd=30"),
    (dict(n_embd=36, n_head=4), "head dim"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(mask_id=V), "mask_id=61"),
    (dict(mask_id=1), "bos_id=1, pad_id=3, mask_id=1"),
    (dict(rope_theta=0.0), "rope_theta=0.0"),
    (dict(norm_eps=-1e-5), "norm_eps=-1e-05"),
    (dict(rope_theta=float("inf")), "rope_theta=inf must be a finite"),  # "Infinity" in config.json
    (dict(norm_eps=float("nan")), "norm_eps=nan"),
])
def test_bad_configs_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**kw)


def test_bad_inputs_raise_value_errors():
    m = tiny_model()
    with pytest.raises(ValueError, match="exceeds block_size=24"):
        m(random_tokens(1, 25))
    with pytest.raises(ValueError, match="token id 61 is outside the vocabulary"):
        m(torch.tensor([[1, 2, 61]]))
    with pytest.raises(ValueError, match="token id -2"):
        m(torch.tensor([[1, -2]]))
    with pytest.raises(ValueError, match="unknown attention mode"):
        m(random_tokens(1, 4), mode="sideways")
    with pytest.raises(ValueError, match="prefix_len"):
        m(random_tokens(1, 4), mode="prefix")
    x = random_tokens(2, 6)
    with pytest.raises(ValueError, match=r"prefix_len must be an int or 2 ints .* shape \(3,\)"):
        m(x, mode="prefix", prefix_len=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="prefix_len=-1 is negative"):
        m(x, mode="prefix", prefix_len=[2, -1])
    with pytest.raises(ValueError, match="prefix_len is only used by mode='prefix', not mode='causal'"):
        m(x, mode="causal", prefix_len=3)
    with pytest.raises(ValueError, match=r"doc_ids has shape \(2, 5\)"):
        m(x, doc_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="target id 61 is outside the vocabulary"):
        m(x, targets=torch.full((2, 6), V))
    with pytest.raises(ValueError, match=r"targets have shape \(2, 5\)"):
        m(x, targets=x[:, 1:])
    with pytest.raises(ValueError, match="t must hold one masking rate"):
        M.md_loss(m, x, x, t=torch.zeros(2))
    m.attn_impl = "fast"
    with pytest.raises(ValueError, match="attn_impl='fast'"):
        m(x, doc_ids=torch.zeros(2, 6, dtype=torch.long))


def test_parse_device_refuses_devices_that_cannot_run_a_model():
    assert M.parse_device("cpu") == torch.device("cpu")
    for name, message in [("meta", "--device=meta cannot run a model; use cpu, cuda or mps"),
                          ("gpu", "--device='gpu' is not a device")]:
        with pytest.raises(ValueError, match=message):
            M.parse_device(name)


def test_attention_plan_uses_the_fast_paths_on_cpu():
    m = tiny_model()
    x = random_tokens(2, 6)
    docs = torch.zeros(2, 6, dtype=torch.long)
    plan = lambda **kw: m._attention_plan(B=2, T=6, device=x.device, cached=0, **kw)[0]
    assert plan(mode="causal", prefix_len=None, doc_ids=None) == "causal"  # SDPA is_causal
    assert plan(mode="bidirectional", prefix_len=None, doc_ids=None) == "full"  # SDPA without a mask
    assert plan(mode="prefix", prefix_len=[1, 2], doc_ids=None) == "dense"
    assert plan(mode="causal", prefix_len=None, doc_ids=docs) == "dense"
    m.attn_impl = "flex"
    assert plan(mode="causal", prefix_len=None, doc_ids=None) == "flex"


def test_attention_plan_on_cuda_uses_flex_only_inside_compiled_models(monkeypatch):
    """No GPU here: the mask builders are stubbed, only the choice is checked. Flex attention compiles a
    kernel per shape, which a compiled training step wants and eager evaluation (shapes change every
    batch) does not."""
    monkeypatch.setattr(M, "dense_mask", lambda *a: "dense mask")
    monkeypatch.setattr(M, "create_block_mask", lambda *a, **kw: "block mask")
    m = tiny_model()
    docs = torch.zeros(2, 6, dtype=torch.long)
    cuda = torch.device("cuda")
    assert m._attention_plan("causal", None, docs, 2, 6, cuda, 0) == ("dense", "dense mask")
    assert m._attention_plan("causal", None, None, 2, 6, cuda, 0) == ("causal", None)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert m._attention_plan("causal", None, docs, 2, 6, cuda, 0) == ("flex", "block mask")


# -----------------------------------------------------------------------------
# Checkpoints and the Hugging Face export

def write_checkpoint(path, m, lam=0.5):
    M.save_checkpoint(str(path), {"model": m.state_dict(), "model_config": asdict(m.config),
                                  "config": {"lam": lam}, "iter_num": 3, "tokens_seen": 99})


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    m = tiny_model()
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, m)
    loaded = M.load_checkpoint(str(path))
    assert not loaded.training and loaded.meta["iter_num"] == 3 and loaded.meta["config"]["lam"] == 0.5
    idx = random_tokens(1, 8)
    torch.testing.assert_close(loaded(idx), m(idx), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load_checkpoint(str(tmp_path / "nope.pt"))
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        M.load_checkpoint(str(tmp_path / "trunc.pt"))
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a nanodual checkpoint"):
        M.load_checkpoint(str(tmp_path / "other.pt"))
    M.save_checkpoint(str(tmp_path / "mismatch.pt"), {"model": m.state_dict(),
                                                      "model_config": asdict(tiny_config(n_layer=3))})
    with pytest.raises(ValueError, match=r"weights do not fit its model_config \(27,936 values expected, 19,936"):
        M.load_checkpoint(str(tmp_path / "mismatch.pt"))
    renamed = {k.replace("blocks.1.", "blocks.2."): v for k, v in m.state_dict().items()}  # same size, other names
    M.save_checkpoint(str(tmp_path / "renamed.pt"), {"model": renamed, "model_config": asdict(m.config)})
    with pytest.raises(ValueError, match="weights do not fit its model_config .*blocks.1"):
        M.load_checkpoint(str(tmp_path / "renamed.pt"))


def test_num_weights_counts_what_the_model_holds():
    for kw in [{}, {"tie_embeddings": True}, {"n_layer": 3, "intermediate_size": 40}]:
        m = tiny_model(**kw)
        assert M.num_weights(m.config) == sum(w.numel() for w in m.state_dict().values())


def test_an_absurd_model_config_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    m = tiny_model()
    monkeypatch.setattr(M, "DualLM", None)  # building any model from here on fails the test
    for absurd, message in [({"n_layer": 10**9}, r"weights do not fit its model_config \(\d[\d,]+ values expected"),
                            ({"n_embd": 2**20, "n_head": 2**10}, "weights do not fit its model_config"),
                            ({"block_size": 10**13}, "block_size=10,000,000,000,000 would need .* GiB of rotary "
                                                     "tables; the file is damaged")]:
        path = tmp_path / "absurd.pt"
        M.save_checkpoint(str(path), {"model": m.state_dict(), "model_config": {**asdict(m.config), **absurd}})
        with pytest.raises(ValueError, match=message):
            M.load_checkpoint(str(path))


def test_a_pickle_that_asks_to_run_code_is_refused_with_its_own_message(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": Payload(), "model_config": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as e:
        M.load_checkpoint(str(tmp_path / "evil.pt"))
    assert str(e.value) == (f"checkpoint {tmp_path / 'evil.pt'} holds objects other than tensors and plain data "
                            f"(it asks for {os.system.__module__}.system), so it was not loaded; load it only if its "
                            f"source is trusted")
    assert "weights_only" not in str(e.value) and not marker.exists()


def test_a_failed_checkpoint_write_names_the_path_and_keeps_the_old_file(tmp_path):
    # a real failed write inside torch.save: the file size limit makes the kernel refuse it (EFBIG),
    # as a full disk would (ENOSPC), and torch wraps that OSError in a RuntimeError of its own
    path = tmp_path / "ckpt.pt"
    M.save_checkpoint(str(path), {"w": torch.ones(10)})
    before = path.read_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()  # the limit holds for a whole process: a forked child's (a new one would import torch again)
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            M.save_checkpoint(str(path), {"w": torch.ones(100_000)})
        except OSError as e:
            os.write(write_end, f"{e.errno} {e.filename}".encode())
        except BaseException as e:
            os.write(write_end, repr(e).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as child:
        said = child.read()
    os.waitpid(pid, 0)
    assert said.split() == [str(errno.EFBIG), str(path)], said
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "ckpt.pt"
    stale, live, other = (tmp_path / f".ckpt.pt.tmp{dead.pid}", tmp_path / f".ckpt.pt.tmp{os.getppid()}",
                          tmp_path / f".other.pt.tmp{dead.pid}")
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert M.remove_stale_temporaries(str(path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.parametrize("tie", [False, True])
def test_hf_export_gives_the_same_causal_logits(tmp_path, tie, capsys):
    transformers = pytest.importorskip("transformers")
    m = tiny_model(sharp=True, tie_embeddings=tie)  # attention that depends on position and content
    write_checkpoint(tmp_path / "ckpt.pt", m)
    out = tmp_path / "hf"
    M.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--export_hf", str(out)])  # as a process: test_hf_generate_...
    assert json.loads((out / "config.json").read_text())["nanodual_lam"] == 0.5
    assert "note:" not in capsys.readouterr().out
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    idx = random_tokens(2, 20)
    with torch.no_grad():
        ours, theirs = m(idx, mode="causal"), hf(idx).logits
    assert (ours - theirs).abs().max() <= 1e-4, (ours - theirs).abs().max()


def test_hf_export_of_an_md_only_checkpoint_says_so_and_fills_a_symlinked_folder(tmp_path, capsys):
    """A lam=0 checkpoint never trained its causal objective: the export says so in one line and
    config.json records the training lam. The export folder is a symlink to an empty folder, which
    is filled (renaming onto the symlink itself failed with "Not a directory")."""
    pytest.importorskip("safetensors")
    write_checkpoint(tmp_path / "ckpt.pt", tiny_model(), lam=0.0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    M.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--export_hf", str(tmp_path / "link")])
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")] == [
        f"note: {tmp_path / 'ckpt.pt'} was trained with lam=0 (masked diffusion only): the causal objective of "
        f"this LlamaForCausalLM was never trained; score it bidirectionally (eval.py's pll, mc modes)"]
    assert (tmp_path / "link").is_symlink()
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["nanodual_lam"] == 0.0
    assert M.training_lam({"config": {"lam": 1.0}, "segments": [{"settings": {"lam": 0.0}},
                                                               {"settings": {"lam": 0.5}}]}) == [0.0, 0.5]


def sharp_checkpoint(path, tiny_checkpoint):
    """The tiny checkpoint (tokenizer included) with weights whose predictions depend strongly on the
    context, so that greedy decoding is far from ties."""
    ckpt = torch.load(str(tiny_checkpoint), weights_only=True)
    gen = torch.Generator().manual_seed(3)
    for name, p in ckpt["model"].items():
        if p.dim() == 2:
            ckpt["model"][name] = torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[1]))
    M.save_checkpoint(str(path), ckpt)
    return path


def test_hf_export_tokenizer_puts_bos_first(tmp_path, tiny_checkpoint):
    """AutoTokenizer gives exactly what eval.py and sample.py feed the model: <s>, then the text's ids
    (literal "<s>" in the text stays text); lm-evaluation-harness's default relies on this."""
    transformers = pytest.importorskip("transformers")
    import data
    m = M.load_checkpoint(str(tiny_checkpoint))
    M.export_hf(m, str(tmp_path))
    ours = data.Tokenizer.from_spec(m.meta["tokenizer"])
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ["ROMEO: What light through yonder window breaks?", "a <s> b </s> <unk> <mask>", ""]:
        assert theirs(text)["input_ids"] == [ours.bos_id] + ours.encode(text), text
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.mask_token_id) == (
        ours.bos_id, ours.eos_id, ours.pad_id, ours.mask_id)


def test_hf_generate_equals_sample_greedy(tmp_path, tiny_checkpoint):
    """transformers' plain generate(do_sample=False) from the tokenizer's ids gives sample.py's greedy
    tokens, 50 of them: generation_config.json suppresses the special tokens sample.py never samples,
    and </s> (never in the training documents) cannot end the text early. Every file is 0644."""
    transformers = pytest.importorskip("transformers")
    import data
    import sample
    ckpt = sharp_checkpoint(tmp_path / "ckpt.pt", tiny_checkpoint)
    out = tmp_path / "hf"
    # the command line's export, in its own process while sample.py's greedy tokens are computed here
    run = subprocess.Popen([sys.executable, str(REPO / "model.py"), "--ckpt", str(ckpt), "--export_hf", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    m = M.load_checkpoint(str(ckpt))
    tok = data.Tokenizer.from_spec(m.meta["tokenizer"])
    prompts = ["ROMEO:", "First Citizen:\nBefore we proceed"]
    greedy = [sample.generate_ar(m, tok.encode(prompt), 50, temperature=0, banned_ids=M.special_ids(m, tok))
              for prompt in prompts]
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0 and stderr == "" and f"exported to {out}" in stdout, stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    for n, (prompt, ours) in enumerate(zip(prompts, greedy)):
        inputs = hf_tok(prompt, return_tensors="pt")
        if n == 1:  # a model that wants <s> mid-text, as trained models do: <s> outscores the most
            # frequent greedy token wherever that one wins, and every other logit stays as it was
            favourite = torch.bincount(ours[0, inputs.input_ids.size(1):]).argmax()
            with torch.no_grad():
                hf.lm_head.weight[tok.bos_id] = 1.01 * hf.lm_head.weight[favourite]
        with torch.no_grad():
            theirs = hf.generate(**inputs, do_sample=False, max_new_tokens=50)
        assert theirs[0].tolist() == ours[0].tolist(), prompt
    hf.generation_config.suppress_tokens = None  # the test can fail: without the suppression <s> comes out
    with torch.no_grad():
        free = hf.generate(**inputs, do_sample=False, max_new_tokens=50)
    assert tok.bos_id in free[0, 1:].tolist()


def test_hf_export_on_a_full_disk_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "hf"
    with pytest.raises(OSError) as e:
        M.export_hf(tiny_model(), str(out))
    assert str(e.value).startswith(f"could not write the export {out} (Error while serializing: I/O error: No space "
                                   f"left on device (os error 28)); nothing was exported")
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary twin


def test_cli_errors_are_one_line(tmp_path, capsys):
    """Each bad input is main's one-line error (which the command line prints as "model.py: error: ...",
    checked in a process of its own for the first), and the folder it refused stays as it was."""
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    write_checkpoint(tmp_path / "good.pt", tiny_model())
    (tmp_path / "a_file").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    run = subprocess.run([sys.executable, str(REPO / "model.py"), "--ckpt", str(tmp_path / "bad.pt")],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("model.py: error: ") and "corrupt" in run.stderr, run.stderr
    for args, message in [(["--ckpt", tmp_path / "missing.pt"], "does not exist"),
                          (["--ckpt", tmp_path / "good.pt", "--export_hf", tmp_path / "a_file"], "is a file"),
                          # checked before the checkpoint is even read
                          (["--ckpt", tmp_path / "bad.pt", "--export_hf", tmp_path / "full"], "is not empty"),
                          (["--ckpt", tmp_path / "bad.pt", "--export_hf", tmp_path / "no" / "hf"], "does not exist")]:
        with pytest.raises((ValueError, OSError)) as error:
            M.main([str(a) for a in args])
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
        assert capsys.readouterr().err == "", message  # the error is the only line
    assert os.listdir(tmp_path / "full") == ["notes.txt"]


def test_cli_takes_no_abbreviated_options(capsys):
    with pytest.raises(SystemExit):
        M.main(["--ckpt", "ckpt.pt", "--export", "hf"])  # would be taken as --export_hf
    assert "unrecognized arguments: --export hf" in capsys.readouterr().err


def test_compiled_flex_forward_on_cpu_matches_dense():
    """The CPU half of the CUDA flex path (tests/test_cuda.py has the rest): flex attention with a
    document block mask, compiled by inductor, gives the dense-mask logits. Flex attention has no
    backward on the CPU in torch 2.13, so only the forward can be checked here."""
    m = tiny_model(n_layer=1).eval()
    x = random_tokens(2, 24)
    docs = torch.cumsum(torch.rand(2, 24, generator=torch.Generator().manual_seed(0)) < 0.15, dim=1).int()
    with torch.no_grad():
        want = m(x, mode="bidirectional", doc_ids=docs)
        m.attn_impl = "flex"
        got = torch.compile(m)(x, mode="bidirectional", doc_ids=docs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
