"""
The nanodual transformer: one Llama-style decoder trained as an autoregressive (AR) and a
masked-diffusion (MD) model at once (paper §3). The objectives differ only in input and attention
mask; under masked next-token prediction (MNTP) position i predicts token i+1 in every mode:

    AR:  clean input,                       causal attention,         loss on every next token
    MD:  input with tokens -> <mask> (p=t), bidirectional attention,  loss where the next token was masked

Evaluation adds `prefix` mode (paper §5.4); document ids keep packed sequences apart in any mode.
Top to bottom: config, blocks, model, losses, checkpoints, Hugging Face export.
"""
import argparse
import json
import math
import numbers
import os
import pickle
import re
import shutil
import sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# flex attention is the fast path for document/prefix masks on CUDA; it is optional elsewhere
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # older PyTorch
    create_block_mask = flex_attention = None

MODES = ("causal", "bidirectional", "prefix")


@dataclass
class ModelConfig:
    vocab_size: int = 51200
    block_size: int = 2048          # the longest sequence the model accepts
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    intermediate_size: int = 3554   # SwiGLU hidden width
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False    # the paper unties the input embedding and the LM head
    # special token ids, fixed by the tokenizer (data.py); md_loss never masks <s> or <pad>
    bos_id: int = 1
    pad_id: int = 3
    mask_id: int = 4

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name}={value!r} must be a positive integer")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0 < value < math.inf:  # inf: invalid in config.json
                raise ValueError(f"ModelConfig.{name}={value!r} must be a finite positive number")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"ModelConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             f"pick n_embd as a multiple of n_head")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"ModelConfig: head dim n_embd/n_head={self.n_embd}/{self.n_head}="
                             f"{self.n_embd // self.n_head} is odd; rotary embeddings need an even head dim")
        for name in ("bos_id", "pad_id", "mask_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"ModelConfig.{name}={value!r} is outside the vocabulary [0, {self.vocab_size})")
        if len({self.bos_id, self.pad_id, self.mask_id}) != 3:
            raise ValueError(f"ModelConfig.bos_id={self.bos_id}, pad_id={self.pad_id}, mask_id={self.mask_id} "
                             f"must be three different tokens; take them from the tokenizer (data.py)")

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)


# -----------------------------------------------------------------------------
# Attention masks: one rule becomes a dense boolean mask (CPU) or a flex-attention block mask (CUDA),
# so every path computes the same function.

def mask_rule(mode, prefix_len=None, doc_ids=None):
    """allowed(b, h, q, k): may query q of row b attend to key k (a flex-attention mask_mod)."""
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; use one of {MODES}")
    if mode == "prefix" and prefix_len is None:
        raise ValueError("mode='prefix' needs prefix_len (an int or one length per row)")

    def allowed(b, h, q, k):
        if mode == "causal":
            ok = k <= q
        elif mode == "bidirectional":
            ok = (k >= 0) & (q >= 0)  # always true, in a shape/type both backends accept
        else:  # prefix: the prefix is one bidirectional block, the rest is causal (EVAL_SPEC §4.3)
            p = prefix_len[b]
            ok = (k <= q) | ((q < p) & (k < p))
        if doc_ids is not None:
            ok = ok & (doc_ids[b, q] == doc_ids[b, k])
        return ok
    return allowed


def dense_mask(rule, B, T, device):
    """(B, 1, T, T) boolean mask from a rule, for scaled_dot_product_attention."""
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    q = torch.arange(T, device=device).view(1, 1, T, 1)
    k = torch.arange(T, device=device).view(1, 1, 1, T)
    return rule(b, None, q, k).expand(B, 1, T, T)


# -----------------------------------------------------------------------------
# Building blocks. Plain formulas under autograd, eager and compiled alike: the code read here is the
# code every run executes. (Hand-written backwards for RoPE, RMSNorm, SwiGLU and the loss saved 2-6%
# of a CPU training step, all four together; docs/bench.md has the measurement.)

def rope_cache(head_dim, max_len, theta):
    # the "rotate half" convention of Llama / Hugging Face, so exported weights need no permutation
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()  # (max_len, head_dim/2) each


def apply_rope(x, cos, sin):
    """Rotate every pair (x_j, x_{j+D/2}) of x (B, T, H, D) by its angle; cos, sin: (T, D/2)."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 as Llama does; under bf16 autocast this keeps the statistics exact
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        # separate q, k, v (not one fused qkv): Muon orthogonalises each on its own, as the official code
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, attn, kv_cache=None, layer=0):
        B, T, C = x.shape
        shape = (B, T, self.n_head, self.head_dim)  # rotated in this layout, then viewed as (B, H, T, D)
        q = apply_rope(self.q_proj(x).view(shape), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(shape), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v)
        kind, mask = attn
        if kind == "flex":  # a fused kernel inside a compiled model (train.py on CUDA); eager, a slow reference
            y = flex_attention(q, k, v, block_mask=mask)
        elif kind == "dense":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # "causal" or "full": no mask tensor needed, SDPA picks its fastest kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=(kind == "causal"))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, attn, kv_cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn, kv_cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Keys and values of the tokens seen so far, for one-token-at-a-time causal generation."""

    def __init__(self, cfg, batch_size, max_len, device, dtype=torch.float32):
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens already stored; advanced by the model after all layers ran

    def append(self, layer, k, v):
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# -----------------------------------------------------------------------------
# The model

class DualLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_cache(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.attn_impl = "auto"  # the fastest path for each mask (_attention_plan); tests force "dense" or "flex"
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                # scale the residual-branch outputs by depth (GPT-2) so activations stay O(1)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def num_params(self, non_embedding=False):
        """Total parameters, or those outside the embedding and the LM head (as the paper counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token for MFU: 6 per matmul weight + 12 * n_layer * n_embd * T of
        attention (PaLM appendix B, as nanoGPT)."""
        cfg = self.config
        T = seq_len or cfg.block_size
        n_matmul = self.num_params(non_embedding=True) + self.lm_head.weight.numel()
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * T

    def _attention_plan(self, mode, prefix_len, doc_ids, B, T, device, cached):
        """Decide once per forward how every layer attends: ("causal"|"full", None) for the SDPA
        fast paths, ("dense", bool mask) or ("flex", BlockMask)."""
        if cached > 0:  # decoding after a prefill: attend to every earlier key
            if mode != "causal" or doc_ids is not None:
                raise ValueError("with a filled kv_cache only mode='causal' without doc_ids is supported")
            if T == 1:
                return ("full", None)
            q = torch.arange(T, device=device).view(T, 1) + cached
            return ("dense", q >= torch.arange(cached + T, device=device).view(1, -1))
        if prefix_len is not None:
            if mode != "prefix":
                raise ValueError(f"prefix_len is only used by mode='prefix', not mode={mode!r}; "
                                 f"pass mode='prefix' or drop prefix_len")
            prefix_len = torch.as_tensor(prefix_len, device=device)
            if prefix_len.ndim == 0:
                prefix_len = prefix_len.expand(B)
            if prefix_len.shape != (B,) or prefix_len.is_floating_point():
                raise ValueError(f"prefix_len must be an int or {B} ints (one per row), got "
                                 f"{prefix_len.dtype} of shape {tuple(prefix_len.shape)}")
            if not torch.compiler.is_compiling() and int(prefix_len.min()) < 0:
                raise ValueError(f"prefix_len={int(prefix_len.min())} is negative; use 0 <= prefix_len <= {T}")
        if doc_ids is not None and doc_ids.shape != (B, T):
            raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)} but the tokens have shape {(B, T)}; "
                             f"give one document id per token")
        rule = mask_rule(mode, prefix_len, doc_ids)  # validates mode / prefix_len
        impl = self.attn_impl
        if impl not in ("auto", "dense", "flex"):
            raise ValueError(f"attn_impl={impl!r} is not one of 'auto', 'dense', 'flex'")
        if impl == "auto" and doc_ids is None and mode != "prefix":
            return ("causal" if mode == "causal" else "full", None)
        # flex's kernel is compiled for one shape: right inside a compiled model (fixed shapes); eager
        # callers (eval.py, sample.py) change shapes every call, so they get SDPA with a dense mask.
        use_flex = impl == "flex" or (impl == "auto" and device.type == "cuda" and flex_attention is not None
                                      and torch.compiler.is_compiling())
        if use_flex:
            return ("flex", create_block_mask(rule, B, None, T, T, device=device))
        return ("dense", dense_mask(rule, B, T, device))

    def hidden_states(self, idx, mode="causal", prefix_len=None, doc_ids=None, kv_cache=None):
        """Final (normed) hidden states (B, T, n_embd): everything but the LM head."""
        B, T = idx.shape
        cached = kv_cache.length if kv_cache is not None else 0
        if cached + T > self.config.block_size:
            raise ValueError(f"sequence length {cached + T} exceeds block_size={self.config.block_size}; "
                             f"feed at most block_size tokens (crop or slide a window)")
        if not torch.compiler.is_compiling():  # a data-dependent check: keep it out of compiled graphs
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        attn = self._attention_plan(mode, prefix_len, doc_ids, B, T, idx.device, cached)
        cos, sin = self.rope_cos[cached:cached + T], self.rope_sin[cached:cached + T]
        x = self.tok_emb(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length += T
        return self.norm(x)

    def forward(self, idx, mode="causal", prefix_len=None, doc_ids=None, targets=None,
                target_weights=None, kv_cache=None):
        """Without targets: logits (B, T, vocab); position i holds the distribution of token i+1.
        With targets: (loss, z_loss), loss = sum_i w_i * CE_i (default w: the mean over targets >= 0)
        and z_loss = mean of logsumexp_i^2 where w_i != 0."""
        h = self.hidden_states(idx, mode, prefix_len, doc_ids, kv_cache)
        if targets is None:
            return self.lm_head(h)
        if targets.shape != idx.shape:
            raise ValueError(f"targets have shape {tuple(targets.shape)} but the tokens have shape "
                             f"{tuple(idx.shape)}; give one target per position (negative: ignored)")
        if not torch.compiler.is_compiling() and int(targets.max()) >= self.config.vocab_size:
            raise ValueError(f"target id {int(targets.max())} is outside the vocabulary [0, {self.config.vocab_size})")
        if target_weights is None:
            valid = (targets >= 0).float()
            target_weights = valid / valid.sum().clamp(min=1)
        h, targets, w = h.flatten(0, 1), targets.flatten(), target_weights.flatten()
        if not torch.compiler.is_compiling():
            keep = w != 0
            if int(keep.sum()) < 0.9 * keep.numel():  # MD scores about half the positions: project only
                h, targets, w = h[keep], targets[keep], w[keep]  # those (AR ignores a few: not worth a copy)
        logits = self.lm_head(h).float()  # cross-entropy in fp32 even under bf16 autocast
        lse = logits.logsumexp(dim=-1)
        loss = ((lse - logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)) * w).sum()
        counted = (w != 0).float()
        return loss, (lse.square() * counted).sum() / counted.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# The two training objectives (DESIGN.md, "The method in one page"). Both return (loss, z_loss).

def ar_loss(model, x, y, doc_ids=None):
    """Mean next-token cross-entropy under the causal mask (paper Eq. 2). Padding (< 0) and <s>
    targets are ignored: an <s> target starts the next packed document, which no token can know
    (as in the official code)."""
    cfg = model.config if hasattr(model, "config") else model.module.config
    return model(x, mode="causal", doc_ids=doc_ids, targets=ar_targets(y, cfg.bos_id))


def ar_targets(y, bos_id):
    """The targets ar_loss scores: y with <s> (the next document's start) and padding set to -1."""
    return y.masked_fill(y == bos_id, -1)


def sample_t(batch_size, generator=None, device="cpu", antithetic=True, eps=1e-3):
    """One diffusion time t per sequence, in [eps, 1] (away from 0: the ELBO weights by 1/t).
    Antithetic (MDLM's low-discrepancy sampler): one t in each of batch_size equal strata."""
    u = torch.rand(batch_size, generator=generator, device=device)
    if antithetic:
        u = (u + torch.arange(batch_size, device=device)) / batch_size
    return eps + (1 - eps) * u


def md_loss(model, x, y, doc_ids=None, t=None, generator=None, antithetic=True, weighting="elbo"):
    """Masked-diffusion loss under MNTP (paper Eq. 4, §3). Each token of the window
    w = [x_0, y_0, ..., y_{T-1}] but <s> and <pad> becomes <mask> with probability t; position i
    is scored on y_i = w_{i+1} only if it was masked, weighted by 1/t ("elbo": the negative ELBO
    per token, unbiased) or 1 ("ce", seed 002), over the number of tokens. y_{T-1} is never in the
    input, so scoring it when its coin says masked keeps the estimate unbiased."""
    if weighting not in ("elbo", "ce"):
        raise ValueError(f"unknown md weighting {weighting!r}; use 'elbo' or 'ce'")
    cfg = model.config if hasattr(model, "config") else model.module.config
    B, T = x.shape
    if t is None:
        t = sample_t(B, generator, x.device, antithetic)
    elif t.shape != (B,) or not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError(f"t must hold one masking rate in (0, 1] per sequence ({B}), got shape {tuple(t.shape)}")
    # one coin per window token w_0..w_T; x_i = w_i and y_i = w_{i+1}, so input i and target i-1
    # share coin i: a token is masked in the input exactly when it is scored
    coins = torch.rand(B, T + 1, generator=generator, device=x.device) < t[:, None]

    def maskable(tokens):
        return (tokens != cfg.bos_id) & (tokens != cfg.pad_id) & (tokens >= 0)

    noisy_x = torch.where(coins[:, :-1] & maskable(x), torch.full_like(x, cfg.mask_id), x)
    scored = coins[:, 1:] & maskable(y)
    n_tokens = (y >= 0).sum().clamp(min=1)
    scale = (1.0 / t[:, None]) if weighting == "elbo" else torch.ones_like(t)[:, None]
    weights = scored.float() * scale / n_tokens
    return model(noisy_x, mode="bidirectional", doc_ids=doc_ids, targets=y, target_weights=weights)


# -----------------------------------------------------------------------------
# Checkpoints. train.py decides what goes in; this file owns how it is written and read.

def save_checkpoint(path, ckpt):
    """Write atomically (a flushed temporary file renamed over `path`): a crash leaves the old or the
    new file, a failed write raises OSError(errno, strerror, path). `ckpt` must hold only what
    torch.load(weights_only=True) accepts."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:  # torch's zip writer hides the error of a failed write behind its own
        cause = e.__cause__ or e.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, cause.strerror, path) from None
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(path):
    """Delete save_checkpoint(path)'s temporary files (`.NAME.tmpPID`) whose PID no longer runs."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix, removed = f".{name}.tmp", []
    for entry in os.listdir(folder):
        pid = entry[len(prefix):]
        if not entry.startswith(prefix) or not pid.isdigit():
            continue
        if int(pid) != os.getpid():  # our own PID cannot be writing yet: a dead process had it before
            try:
                os.kill(int(pid), 0)
                continue  # still running (maybe another program that reuses the PID): leave it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # running, under another user
        os.remove(os.path.join(folder, entry))
        removed.append(os.path.join(folder, entry))
    return removed


def parse_device(name):
    """torch.device(name), with one-line errors for a malformed name or a backend this machine lacks."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device={name!r} is not a device; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={name}: CUDA is not available here (torch {torch.__version__}); "
                         f"use --device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"pick an index below that")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device={name}: MPS is not available here; use --device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):  # meta holds no data; others lack a backend here
        raise ValueError(f"--device={name} cannot run a model; use cpu, cuda or mps")
    return device


def read_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True and one-line errors for the ways a file can be wrong."""
    if os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} is a folder; pass the ckpt.pt inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the ckpt.pt that train.py wrote")
    if not os.access(path, os.R_OK):
        raise ValueError(f"checkpoint {path} is not readable by this user; fix its permissions")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text suggests weights_only=False: never quoted
        refused = re.search(r"GLOBAL (\S+)|unrecognized function|Can only (create|build)", str(e))
        if refused:  # the pickle asks to import or call something: code, not data
            asks = f" (it asks for {refused.group(1)})" if refused.group(1) else ""
            raise ValueError(f"checkpoint {path} holds objects other than tensors and plain data{asks}, so it "
                             f"was not loaded; load it only if its source is trusted") from None
        raise ValueError(f"checkpoint {path} is corrupt or truncated (its pickle cannot be read); "
                         f"use an intact copy or retrain") from None
    except Exception as e:  # truncated zip, not a checkpoint at all, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({first_line[:200]}); "
                         f"use an intact copy or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a nanodual checkpoint (no 'model'/'model_config'); "
                         f"pass the ckpt.pt that train.py wrote")
    return ckpt


def num_weights(cfg):
    """The number of values in DualLM(cfg).state_dict() (a tied LM head counts twice there too)."""
    E, V, I = cfg.n_embd, cfg.vocab_size, cfg.intermediate_size
    return 2 * V * E + E + cfg.n_layer * (4 * E * E + 3 * E * I + 2 * E)


def load_checkpoint(path, device="cpu"):
    """The model of a train.py checkpoint, in eval mode; the rest of the checkpoint is `model.meta`."""
    ckpt = read_checkpoint(path)
    cfg, weights = ModelConfig.from_dict(ckpt["model_config"]), ckpt["model"]
    # a model_config that does not match its weights is refused before the model is built, so a damaged
    # one (n_layer=10**9) allocates nothing; the rotary tables, bounded by no weight, get at most
    # max(the weights' size, 1 GiB)
    if not isinstance(weights, dict) or not all(isinstance(w, torch.Tensor) for w in weights.values()):
        raise ValueError(f"checkpoint {path}: 'model' is not a dict of tensors; pass the ckpt.pt that train.py wrote")
    have, want = sum(w.numel() for w in weights.values()), num_weights(cfg)
    if have != want:
        raise ValueError(f"checkpoint {path}: the weights do not fit its model_config ({want:,} values "
                         f"expected, {have:,} found); pass the ckpt.pt that train.py wrote")
    rope_bytes = 2 * cfg.block_size * (cfg.n_embd // cfg.n_head // 2) * 4
    if rope_bytes > max(4 * have, 1 << 30):
        raise ValueError(f"checkpoint {path}: model_config block_size={cfg.block_size:,} would need "
                         f"{rope_bytes / 2**30:.1f} GiB of rotary tables; the file is damaged")
    model = DualLM(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes: weights and config disagree
        detail = (str(e).strip().splitlines()[1:] or [type(e).__name__])[0].strip()
        raise ValueError(f"checkpoint {path}: the weights do not fit its model_config ({detail[:200]}); "
                         f"pass the ckpt.pt that train.py wrote") from None
    model.meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    return model.to(device).eval()


# -----------------------------------------------------------------------------
# Export to the Hugging Face Llama format (paper §7: a dual model deploys as a plain AR model)

def hf_state_dict(model):
    """Our parameter names -> LlamaForCausalLM's. The layouts are identical (same RoPE convention)."""
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight,
           "lm_head.weight": model.lm_head.weight}
    for i, blk in enumerate(model.blocks):
        pre = f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = blk.attn_norm.weight
        out[pre + "post_attention_layernorm.weight"] = blk.mlp_norm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[pre + f"self_attn.{name}.weight"] = getattr(blk.attn, name).weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[pre + f"mlp.{name}.weight"] = getattr(blk.mlp, name).weight
    if model.config.tie_embeddings:
        del out["lm_head.weight"]  # transformers re-ties it from tie_word_embeddings
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def training_lam(meta):
    """The training λ, one per segment when a resume changed it; None without a run config."""
    segments = meta.get("segments") or []
    if segments and "lam" in segments[0].get("settings", {}):
        return [s["settings"]["lam"] for s in segments]
    return meta.get("config", {}).get("lam")


def hf_tokenizer_files(spec, bos_id, block_size):
    """tokenizer.json and tokenizer_config.json: the checkpoint's BPE with <s> put first, as every
    training document starts, and literal "<s>" in text kept as text (as data.Tokenizer does)."""
    import tokenizers
    bpe = tokenizers.Tokenizer.from_str(spec["json"])
    bpe.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos_id)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "add_bos_token": True, "add_eos_token": False, "split_special_tokens": True,
              "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
              "mask_token": "<mask>"}
    return {"tokenizer.json": bpe.to_str(), "tokenizer_config.json": json.dumps(config, indent=2)}


def check_export_dir(out_dir):
    """Refuse, before any work, an export folder that is a file, is not empty or has no parent (a
    symlink stands for the folder it points to)."""
    target = os.path.realpath(out_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"export folder {out_dir} is a file; choose a folder name")
    if os.path.isdir(target) and os.listdir(target):
        raise ValueError(f"export folder {out_dir} is not empty; choose a new folder or remove this one")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ValueError(f"export folder {out_dir}: its parent folder {parent} does not exist; create it first")


def export_hf(model, out_dir):
    """Write the Hugging Face files (docs/model.md) into a temporary folder beside out_dir, renamed
    to out_dir once complete, so a failure never leaves a half-written export."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        raise ValueError("export needs the safetensors package: pip install safetensors") from None
    check_export_dir(out_dir)
    target = os.path.realpath(out_dir)  # renaming onto a symlink would fail: rename onto what it points to
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp{os.getpid()}")
    try:
        os.makedirs(tmp)
        write_hf(model, tmp)
        os.chmod(tmp, 0o755)  # mkdir's mode follows the umask; the export is meant to be shared
        os.replace(tmp, target)  # onto a missing or empty folder: atomic
    except (OSError, SafetensorError) as e:  # a full disk, a folder we may not write, ...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OSError(f"could not write the export {out_dir} ({reason}); nothing was exported") from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def special_ids(model, tok):
    """The ids never sampled: every special token, and for tiktoken the never-trained ids between our
    added specials and the vocabulary rounded up to a multiple of 64."""
    cfg = model.config
    ids = set(tok.special_ids.values()) | {cfg.bos_id, cfg.pad_id, cfg.mask_id}
    if tok.tiktoken is not None:
        ids |= set(range(max(tok.special_ids.values()) + 1, cfg.vocab_size))
    return ids


def write_hf(model, out_dir):
    """export_hf's files, written into the existing folder out_dir."""
    from safetensors.torch import save_file
    import data  # the tokenizer
    cfg, spec = model.config, getattr(model, "meta", {}).get("tokenizer")
    tok = data.Tokenizer.from_spec(spec) if isinstance(spec, dict) else None
    banned = sorted(special_ids(model, tok)) if tok else sorted({cfg.bos_id, cfg.pad_id, cfg.mask_id})
    eos_id = tok.eos_id if tok else None
    # documents carry no </s>: it is suppressed like every special token, as in sample.py
    generation = {"bos_token_id": cfg.bos_id, "eos_token_id": eos_id, "pad_token_id": cfg.pad_id,
                  "suppress_tokens": banned}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
              "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "num_key_value_heads": cfg.n_head, "head_dim": cfg.n_embd // cfg.n_head,
              "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
              "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
              "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": cfg.bos_id, "eos_token_id": eos_id,
              "pad_token_id": cfg.pad_id, "torch_dtype": "float32",
              "nanodual_lam": training_lam(getattr(model, "meta", {}))}  # 0: the causal objective never trained
    files = {"config.json": json.dumps(config, indent=2),
             "generation_config.json": json.dumps(generation, indent=2)}
    if tok is not None and spec.get("kind") == "bpe":
        files.update(hf_tokenizer_files(spec, cfg.bos_id, cfg.block_size))
    for name, text in files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    save_file(hf_state_dict(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for name in list(files) + ["model.safetensors"]:  # safetensors writes through a private (0600) temp file
        os.chmod(os.path.join(out_dir, name), 0o644)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Inspect a nanodual checkpoint or export it to the "
                                                 "Hugging Face Llama format.", allow_abbrev=False)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--export_hf", metavar="DIR", help="write the model, its tokenizer and a generation config "
                                                          "to DIR (Hugging Face Llama format)")
    args = parser.parse_args(argv)
    if args.export_hf:
        check_export_dir(args.export_hf)
    model = load_checkpoint(args.ckpt)
    cfg = model.config
    print(f"{args.ckpt}: {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, vocab {cfg.vocab_size}; "
          f"{model.num_params() / 1e6:.2f}M parameters ({model.num_params(True) / 1e6:.2f}M non-embedding)")
    if args.export_hf:
        export_hf(model, args.export_hf)
        print(f"exported to {args.export_hf}; load with transformers.LlamaForCausalLM.from_pretrained")
        lam = training_lam(model.meta)
        if lam == 0 or (isinstance(lam, list) and not any(lam)):
            print(f"note: {args.ckpt} was trained with lam=0 (masked diffusion only): the causal objective of "
                  f"this LlamaForCausalLM was never trained; score it bidirectionally (eval.py's pll, mc modes)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # OSError: a missing file, an export folder that cannot be written
        sys.exit(f"model.py: error: {e}")
