"""model.py against independent references: a hand-written forward pass with explicit masks and a
plain softmax, Hugging Face's LlamaForCausalLM, and exact expectations computed by enumeration."""
import itertools
import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import model as M
from conftest import REPO

V = 61


def tiny_config(**overrides):
    kw = dict(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_embd=32, intermediate_size=40)
    kw.update(overrides)
    return M.ModelConfig(**kw)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    m = M.DualLM(tiny_config(**overrides))
    # random gains, so that a mix-up of the two norms of a block would show
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
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
            loss, _ = m(x, mode="causal", targets=y, target_weights=weights)
            want = -torch.log_softmax(logits[b, i], -1)[w[b, i + 1]]
            torch.testing.assert_close(loss, want)
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


@pytest.mark.parametrize("weighting", ["elbo", "ce"])
def test_md_loss_mean_matches_exact_expectation_by_enumeration(weighting):
    """Fixed t and fixed weights: E[md_loss] = sum over all 2^n mask patterns of P(pattern) * loss,
    each pattern's loss computed by hand (one sequence at a time, MNTP read-out at j-1)."""
    m = tiny_model()
    cfg = m.config
    w = torch.tensor([cfg.bos_id, 17, 23, 42, 8, 31])  # window of T+1 = 6 tokens, 5 maskable
    T, t = len(w) - 1, 0.35
    exact_losses, probs = [], []
    with torch.no_grad():
        for pattern in itertools.product([0, 1], repeat=T):
            masked = [False] + [bool(p) for p in pattern]  # position 0 is <s>
            inp = torch.tensor([cfg.mask_id if masked[i] else int(w[i]) for i in range(T)])
            logp = torch.log_softmax(m(inp[None], mode="bidirectional")[0], -1)
            total = sum(-float(logp[j - 1, w[j]]) for j in range(1, T + 1) if masked[j])
            weight = 1 / t if weighting == "elbo" else 1.0
            exact_losses.append(weight * total / T)
            probs.append(t ** sum(pattern) * (1 - t) ** (T - sum(pattern)))
        exact_losses, probs = torch.tensor(exact_losses, dtype=torch.float64), torch.tensor(probs, dtype=torch.float64)
        mean = (probs * exact_losses).sum()
        std = ((probs * (exact_losses - mean) ** 2).sum()).sqrt()
        B = 4000
        x, y = w[:-1].repeat(B, 1), w[1:].repeat(B, 1)
        loss, _ = M.md_loss(m, x, y, t=torch.full((B,), t), generator=torch.Generator().manual_seed(0),
                            weighting=weighting)  # = the mean over B independent draws
    assert abs(float(loss) - float(mean)) < 4 * float(std) / math.sqrt(B)
    assert float(std) > 0.05 * float(mean)  # the check above is not vacuous


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
    tied = M.DualLM(tiny_config(tie_embeddings=True))
    assert tied.num_params() == tied.num_params(non_embedding=True) + V * 32


@pytest.mark.parametrize("kw, field", [
    (dict(n_embd=30, n_head=4), "n_embd=30"),
    (dict(n_embd=36, n_head=4), "head dim"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(mask_id=V), "mask_id"),
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


# -----------------------------------------------------------------------------
# Checkpoints and the Hugging Face export

def write_checkpoint(path, m):
    M.save_checkpoint(str(path), {"model": m.state_dict(), "model_config": asdict(m.config),
                                  "config": {"lam": 0.5}, "iter_num": 3, "tokens_seen": 99})


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


@pytest.mark.parametrize("tie", [False, True])
def test_hf_export_gives_the_same_causal_logits(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    m = tiny_model(tie_embeddings=tie)
    write_checkpoint(tmp_path / "ckpt.pt", m)
    out = tmp_path / "hf"
    run = subprocess.run([sys.executable, str(REPO / "model.py"), "--ckpt", str(tmp_path / "ckpt.pt"),
                          "--export_hf", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    idx = random_tokens(2, 20)
    with torch.no_grad():
        ours, theirs = m(idx, mode="causal"), hf(idx).logits
    assert (ours - theirs).abs().max() <= 1e-4


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for ckpt in [tmp_path / "missing.pt", tmp_path / "bad.pt"]:
        run = subprocess.run([sys.executable, str(REPO / "model.py"), "--ckpt", str(ckpt)],
                             capture_output=True, text=True)
        assert run.returncode != 0
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
