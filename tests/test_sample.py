"""Tests for sample.py on the random-weight tiny checkpoint (2 layers, width 64, block 256), CPU only.

Every sampler is checked against something independent: the model called directly in the mode the
sampler claims to use (greedy references), hand-computed distributions (top-k / top-p), and the
MDLM reveal probability (t-s)/t (a counting test)."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model as M
import sample as S
from conftest import run_main

REPO = Path(__file__).resolve().parents[1]
PROMPT = [40, 41, 97, 130, 7, 256, 300, 18, 77, 5, 460, 64]  # ordinary (non-special) token ids


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run on one thread


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return M.load_checkpoint(str(tiny_checkpoint))


def banned(m):
    return [m.config.bos_id, m.config.pad_id, m.config.mask_id]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def masks(canvas, m):
    return (canvas == m.config.mask_id).sum(dim=1)


# -----------------------------------------------------------------------------
# Drawing tokens

def test_top_k_top_p_against_hand_computed_sets():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # ranked: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    logits = probs.log()
    kept = lambda **kw: set(torch.isfinite(S.filter_logits(logits, **kw))[0].nonzero().flatten().tolist())
    assert kept(top_k=2) == {1, 3}
    assert kept(top_p=0.4) == {1}           # 0.5 alone reaches 0.4
    assert kept(top_p=0.7) == {1, 3}        # 0.5 < 0.7 <= 0.8
    assert kept(top_p=0.83) == {1, 3, 0}    # 0.8 < 0.83 <= 0.95
    assert kept(top_p=1.0) == {0, 1, 2, 3}
    # top-k first, then the nucleus of the renormalised rest: 0.5/0.95 + 0.3/0.95 = 0.842 >= 0.83
    assert kept(top_k=3, top_p=0.83) == {1, 3}
    # kept logits are unchanged (filtering only removes)
    out = S.filter_logits(logits, top_p=0.7)
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])


def test_draw_follows_the_filtered_distribution_and_never_draws_banned_ids():
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = probs.log().repeat(20000, 1)
    logits[:, 0] = 10.0  # id 0 would dominate, but it is banned
    ids, p = S.draw(logits, 1.0, None, 0.7, gen(0), torch.tensor([0]))
    # without id 0: [0.25, 0.2, 0.1, 0.05] / 0.6 -> nucleus 0.7 keeps ids 1, 2 (0.417 + 0.333 = 0.75)
    expected = torch.tensor([0.0, 0.25, 0.2, 0.0, 0.0]) / 0.45
    freq = torch.bincount(ids, minlength=5).float() / len(ids)
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / len(ids)).sqrt() + 1e-9)
    torch.testing.assert_close(p, expected[ids])
    greedy, p = S.draw(logits[:1], 0.0, None, 1.0, None, torch.tensor([0]))
    assert greedy.item() == 1 and abs(p.item() - 0.25 / 0.6) < 1e-5


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.5, None, 1.0), (0.5, 3, 1.0), (2.0, None, 0.6)])
def test_draw_applies_temperature_then_top_k_and_top_p(temperature, top_k, top_p):
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])  # sorted, so the top k / the nucleus are a head
    ids, p = S.draw(probs.log().repeat(20000, 1), temperature, top_k, top_p, gen(1),
                    torch.tensor([], dtype=torch.long))
    expected = probs ** (1 / temperature)  # softmax(log p / T) is proportional to p^(1/T)
    expected /= expected.sum()
    if top_k:
        expected[top_k:] = 0
    # the nucleus of the tempered distribution: T = 2 gives [.298, .236, .211, ...], so top_p = 0.6 keeps
    # three tokens (nucleus before tempering: two)
    expected[(expected.cumsum(0) - expected) >= top_p] = 0
    expected /= expected.sum()
    freq = torch.bincount(ids, minlength=5).float() / len(ids)
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / len(ids)).sqrt() + 1e-9)
    torch.testing.assert_close(p, expected[ids])


# -----------------------------------------------------------------------------
# Autoregressive generation

def greedy_reference(m, prompt, n, mode):
    """Slow, obviously correct: rerun the whole window every step and take the argmax. The window is
    the last block_size tokens until the text outgrows it, then jumps to the last block_size/2
    tokens (sample.generate_ar's documented rule); in prefix mode the part of <s> + prompt still
    inside the window is the prefix."""
    W, P = m.config.block_size, 1 + len(prompt)
    seq, start = [m.config.bos_id] + prompt, 0
    with torch.no_grad():
        for _ in range(n):
            if len(seq) - start > W:
                start = len(seq) - W // 2
            prefix_len = max(P - start, 0) if mode == "prefix" else None
            logits = m(torch.tensor([seq[start:]]), mode=mode, prefix_len=prefix_len)[0, -1]
            logits[banned(m)] = -math.inf
            seq.append(int(logits.argmax()))
    return torch.tensor(seq)


def test_ar_greedy_cache_equals_no_cache_and_reference(tiny):
    n = 60
    history = []
    cached = S.generate_ar(tiny, PROMPT, n, temperature=0, num_samples=2, on_step=history.append)
    uncached = S.generate_ar(tiny, PROMPT, n, temperature=0, use_cache=False, num_samples=2)
    assert cached.shape == (2, 1 + len(PROMPT) + n)
    assert torch.equal(cached, uncached)
    assert [h.size(1) for h in history] == list(range(2 + len(PROMPT), 2 + len(PROMPT) + n))  # one token per step
    assert all(torch.equal(h, cached[:, :h.size(1)]) for h in history)
    assert torch.equal(cached[0], greedy_reference(tiny, PROMPT, n, "causal"))
    assert cached[0, 0] == tiny.config.bos_id and cached[:, 1:1 + len(PROMPT)].tolist() == [PROMPT] * 2


def test_ar_cache_prefills_once_then_feeds_one_token_per_step(tiny, monkeypatch):
    fed = []  # (tokens fed, mode, tokens already cached) of every model call
    real = tiny.hidden_states

    def spy(idx, mode="causal", prefix_len=None, doc_ids=None, kv_cache=None):
        fed.append((idx.size(1), mode, kv_cache.length if kv_cache is not None else None))
        return real(idx, mode, prefix_len, doc_ids, kv_cache)
    monkeypatch.setattr(tiny, "hidden_states", spy)
    P, n = 1 + len(PROMPT), 20
    S.generate_ar(tiny, PROMPT, n, temperature=0, prefix_prompt=True)
    assert fed == [(P, "prefix", 0)] + [(1, "causal", P + i) for i in range(n - 1)]
    fed.clear()
    S.generate_ar(tiny, PROMPT, n, temperature=0, use_cache=False)
    assert fed == [(P + i, "causal", None) for i in range(n)]
    # beyond the window: one refill of half a window (128 tokens) when <s> + 250 + 6 tokens overflow it
    fed.clear()
    S.generate_ar(tiny, [9] * 250, 10, temperature=0)
    assert [f for f in fed if f[0] > 1] == [(251, "causal", 0), (128, "causal", 0)] and len(fed) == 10


def test_ar_prefix_prompt_cache_equals_prefix_mode_reference(tiny):
    n = 40
    reference = greedy_reference(tiny, PROMPT, n, "prefix")
    cached = S.generate_ar(tiny, PROMPT, n, temperature=0, prefix_prompt=True)
    uncached = S.generate_ar(tiny, PROMPT, n, temperature=0, prefix_prompt=True, use_cache=False)
    assert torch.equal(cached[0], reference) and torch.equal(uncached[0], reference)
    # the check has teeth: prefix mode changes the greedy continuation of this prompt
    assert not torch.equal(reference, greedy_reference(tiny, PROMPT, n, "causal"))


@pytest.mark.parametrize("mode", ["causal", "prefix"])
def test_ar_beyond_the_window_cache_equals_no_cache_and_reference(tiny, mode):
    # a 205-token start and 200 new tokens in a 256-token window: the window jumps twice (at 257 and
    # 386 tokens), the first time with 76 prompt tokens still inside it
    prompt, n = PROMPT * 17, 200
    prefix = mode == "prefix"
    cached = S.generate_ar(tiny, prompt, n, temperature=0, prefix_prompt=prefix)
    uncached = S.generate_ar(tiny, prompt, n, temperature=0, prefix_prompt=prefix, use_cache=False)
    assert cached.shape == (1, 1 + len(prompt) + n)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[0], greedy_reference(tiny, prompt, n, mode))


def test_ar_prompt_longer_than_the_window_is_an_error(tiny):
    with pytest.raises(ValueError, match="shorten the prompt"):
        S.generate_ar(tiny, [9] * 256, 1)
    # <s> + 255 tokens fill the window exactly: allowed, and the window jumps for the second token
    out = S.generate_ar(tiny, [9] * 255, 2, temperature=0)
    assert out.shape == (1, 258) and torch.equal(out, S.generate_ar(tiny, [9] * 255, 2, temperature=0,
                                                                     use_cache=False))


# -----------------------------------------------------------------------------
# Diffusion generation

@pytest.mark.parametrize("sampler, block_size", [("ancestral", None), ("confidence", None),
                                                 ("ancestral", 16), ("confidence", 16)])
def test_diffusion_fills_every_mask_and_keeps_the_prompt(tiny, sampler, block_size):
    n, P = 40, 1 + len(PROMPT)
    history = []
    out = S.generate_diffusion(tiny, PROMPT, n, steps=5, sampler=sampler, block_size=block_size,
                               generator=gen(0), num_samples=3, on_step=history.append)
    assert out.shape == (3, P + n)
    assert out[:, 0].eq(tiny.config.bos_id).all() and out[:, 1:P].tolist() == [PROMPT] * 3
    new = out[:, P:]
    assert not torch.isin(new, torch.tensor(banned(tiny))).any()  # no <mask> survives, no special is drawn
    if block_size is None:  # one canvas: check every intermediate step too
        for before, after in zip(history, history[1:]):
            assert torch.equal(after[:, :P], out[:, :P])  # the prompt is never touched
            revealed = before != tiny.config.mask_id
            assert torch.equal(after[revealed], before[revealed])  # revealed tokens stay fixed
            assert masks(after, tiny).sum() < masks(before, tiny).sum()  # every step reveals something


@pytest.mark.parametrize("mode", ["ar", "ancestral", "confidence"])
def test_same_seed_same_samples(tiny, mode):
    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # the global RNG must play no part: only the generator counts
        if mode == "ar":
            return S.generate_ar(tiny, PROMPT, 30, top_k=50, top_p=0.9, generator=gen(seed), num_samples=2)
        return S.generate_diffusion(tiny, PROMPT, 30, steps=6, sampler=mode, generator=gen(seed), num_samples=2)
    assert torch.equal(run(1, global_seed=0), run(1, global_seed=1))
    assert not torch.equal(run(1, global_seed=0), run(2, global_seed=0))


def mntp_greedy(m, canvas, positions):
    """Reference greedy tokens for `positions`: bidirectional attention, read at position j-1."""
    with torch.no_grad():
        logits = m(canvas.unsqueeze(0), mode="bidirectional")[0, positions - 1]
    logits[:, banned(m)] = -math.inf
    return logits.argmax(dim=-1), logits.softmax(dim=-1).max(dim=-1).values


def test_ancestral_greedy_one_step_per_token_reveals_one_token_per_step(tiny):
    n = 12
    histories = []
    for global_seed in range(2):
        torch.manual_seed(global_seed)  # only the generator may matter
        history = []
        out = S.generate_diffusion(tiny, PROMPT, n, steps=n, sampler="ancestral", temperature=0,
                                   generator=gen(3), on_step=history.append)
        histories.append(history)
    assert all(torch.equal(a, b) for a, b in zip(*histories))  # deterministic
    history = histories[0]
    assert len(history) == n
    before = torch.cat([out[0, :1 + len(PROMPT)], torch.full((n,), tiny.config.mask_id)])
    for step, canvas in enumerate(history):
        changed = (canvas[0] != before).nonzero().flatten()
        assert len(changed) == 1 and masks(canvas, tiny).item() == n - 1 - step
        j = changed.item()
        token, _ = mntp_greedy(tiny, before, changed)
        assert canvas[0, j] == token.item()  # the argmax of the prediction made at position j-1
        before = canvas[0]
    assert torch.equal(history[-1][0], out[0])


def test_ancestral_reveals_each_masked_position_with_probability_one_over_steps_left(tiny):
    # MDLM: from t = 1 to s = 1 - 1/4 each masked token is revealed with probability (t-s)/t = 1/4;
    # then from t = 3/4 to s = 1/2 with probability 1/3, etc., and the last step reveals the rest
    n, steps, K = 10, 4, 400
    history = []
    S.generate_diffusion(tiny, [], n, steps=steps, sampler="ancestral", generator=gen(0), num_samples=K,
                         on_step=history.append)
    masked_before = torch.full((K,), n)
    for i, canvas in enumerate(history):
        left = masks(canvas, tiny)
        revealed, expected = masked_before - left, masked_before.float() / (steps - i)
        assert ((revealed == expected.floor()) | (revealed == expected.ceil())).all()  # no binomial noise
        masked_before = left
    assert masked_before.eq(0).all()
    first = (history[0][:, 1:] != tiny.config.mask_id).float()  # per position, revealed at step 1?
    assert abs(first.mean().item() - 0.25) < 0.01  # the exact mean of floor/ceil rounding of 2.5
    assert (first.mean(dim=0) - 0.25).abs().max() < 4 * math.sqrt(0.25 * 0.75 / K)  # uniform over positions


def test_bernoulli_reveal_flips_one_coin_per_masked_position(tiny):
    # --reveal bernoulli is MDLM's sampler verbatim: at step i each of the still-masked tokens is
    # revealed independently with probability 1/(steps - i), so the count is binomial (it varies)
    n, steps, K = 10, 4, 400
    history = []
    S.generate_diffusion(tiny, [], n, steps=steps, sampler="ancestral", generator=gen(0), num_samples=K,
                         on_step=history.append, reveal="bernoulli")
    masked_before = torch.full((K,), n)
    for i, canvas in enumerate(history[:-1]):
        left = masks(canvas, tiny)
        revealed, p = (masked_before - left).float(), 1 / (steps - i)
        keep = masked_before > 0
        mean = (masked_before[keep] * p).float()
        z = (revealed[keep] - mean).sum() / (mean * (1 - p)).sum().sqrt()
        assert abs(z) < 4  # the binomial mean
        if i == 0:  # Binomial(10, 1/4): variance 1.875, far from the count rule's 0.25
            assert 1.4 < revealed.var().item() < 2.4
        masked_before = left
    assert masks(history[-1], tiny).eq(0).all()  # the last step (s = 0) reveals everything


def test_confidence_reveals_the_most_probable_positions_on_an_even_schedule(tiny):
    n, steps = 10, 4
    history = []
    out = S.generate_diffusion(tiny, PROMPT, n, steps=steps, sampler="confidence", temperature=0,
                               on_step=history.append)
    counts = [n - masks(history[0], tiny).item()]
    counts += [(masks(a, tiny) - masks(b, tiny)).item() for a, b in zip(history, history[1:])]
    assert counts == [2, 3, 2, 3]  # floor(10 (i+1)/4) - floor(10 i/4)
    start = torch.cat([out[0, :1 + len(PROMPT)], torch.full((n,), tiny.config.mask_id)])
    positions = torch.arange(1 + len(PROMPT), len(start))
    tokens, confidence = mntp_greedy(tiny, start, positions)
    top2 = positions[confidence.topk(2).indices]
    revealed = (history[0][0] != start).nonzero().flatten()
    assert sorted(revealed.tolist()) == sorted(top2.tolist())
    assert torch.equal(history[0][0, top2], tokens[top2 - positions[0]])


def test_block_generation_goes_beyond_one_window(tiny):
    n, b, window = 600, 64, tiny.config.block_size
    history = []
    out = S.generate_diffusion(tiny, PROMPT, n, steps=2, block_size=b, generator=gen(0), on_step=history.append)
    P = 1 + len(PROMPT)
    assert out.shape == (1, P + n) and masks(out, tiny).item() == 0
    assert out[0, 1:P].tolist() == PROMPT
    finished = history[1::2]  # the canvas after each block's last step
    assert len(finished) == math.ceil(n / b)
    for k, canvas in enumerate(finished):
        end = P + min((k + 1) * b, n)
        assert canvas.size(1) == min(end, window)
        assert torch.equal(canvas[0], out[0, max(0, end - window):end])  # the last window tokens as context


# -----------------------------------------------------------------------------
# Scoring

def test_score_samples_against_direct_computation(tiny):
    torch.manual_seed(0)
    seqs = torch.randint(5, tiny.config.vocab_size, (2, 50))
    with torch.no_grad():
        logits = tiny(seqs, mode="causal")
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), seqs[:, 1:], reduction="none")
    scores = S.score_samples(tiny, seqs, 13)
    for row, score in enumerate(scores):
        assert abs(score["nll"] - nll[row, 12:].mean().item()) < 1e-5
        assert abs(score["ppl"] - math.exp(score["nll"])) < 1e-6 * score["ppl"]
        counts = torch.bincount(seqs[row, 13:]).float()
        p = counts[counts > 0] / counts.sum()
        assert abs(score["entropy"] - float(-(p * p.log()).sum())) < 1e-5
    assert abs(S.unigram_entropy(torch.tensor([5, 5, 6, 6])) - math.log(2)) < 1e-6
    assert S.unigram_entropy(torch.tensor([7, 7, 7])) == 0


def test_causal_nll_slides_over_sequences_longer_than_the_window(tiny):
    # reference, token by token: token i is scored by the first window that holds it, where windows
    # end at W, W + W/2, W + 2 W/2, ... (capped at the sequence end) and span W tokens
    W, L = tiny.config.block_size, 600
    seq = torch.randint(5, tiny.config.vocab_size, (L,), generator=gen(1))
    nll = S.causal_nll(tiny, seq)
    assert nll.shape == (L - 1,)
    window_logits = {}
    reference = []
    for i in range(1, L):
        end = W
        while end <= i:
            end += W // 2
        end = min(end, L)
        start = max(0, end - W)
        if (start, end) not in window_logits:
            with torch.no_grad():
                window_logits[start, end] = tiny(seq[None, start:end])[0]
        reference.append(torch.nn.functional.cross_entropy(window_logits[start, end][i - 1 - start], seq[i]))
        assert i - start >= min(i, W // 2)  # every token past the first window has half a window of context
    assert sorted(window_logits) == [(0, 256), (128, 384), (256, 512), (344, 600)]
    torch.testing.assert_close(nll, torch.stack(reference))


def test_speed_quality_curve_rows(tiny):
    rows = S.speed_quality_curve(tiny, PROMPT, 8, [1, 8], num_samples=2)
    assert [(r["method"], r["steps"]) for r in rows] == [("ar", 8), ("diffusion", 1), ("diffusion", 8)]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["nll"]) and r["entropy"] > 0 for r in rows)
    assert "gen NLL" in S.CURVE_HEADER and [S.format_row(r).split()[:2] for r in rows] == [["ar", "8"], ["diffusion", "1"],
                                                                                       ["diffusion", "8"]]


@pytest.mark.parametrize("temperature", [1e-39, 5e-324, 9.9e-6])
def test_temperatures_below_the_floor_decode_greedily(temperature):
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-6]]).repeat(64, 1)
    ids, p = S.draw(logits, temperature, None, 1.0, gen(0), torch.tensor([], dtype=torch.long))
    greedy, p0 = S.draw(logits, 0.0, None, 1.0, gen(0), torch.tensor([], dtype=torch.long))
    assert torch.equal(ids, greedy) and torch.equal(p, p0) and (ids == 1).all()
    assert S.MIN_TEMPERATURE == 1e-5  # and at the floor itself, sampling: finite probabilities, no crash
    ids, p = S.draw(logits, S.MIN_TEMPERATURE, None, 1.0, gen(0), torch.tensor([], dtype=torch.long))
    assert set(ids.tolist()) <= {1, 3} and torch.isfinite(p).all()


# -----------------------------------------------------------------------------
# Command line

def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of sample.main(args) run in this process."""
    run = run_main(S.main, *args)
    return run.returncode, run.stdout, run.stderr


def test_cli_writes_json_lines_with_scores(tiny_checkpoint, tmp_path, capsys):
    import data
    tok = data.Tokenizer.from_spec(M.read_checkpoint(str(tiny_checkpoint))["tokenizer"])
    out = tmp_path / "samples.jsonl"
    code, _, err = run_cli(capsys, "--ckpt", tiny_checkpoint, "--mode", "diffusion", "--prompt", "ROMEO:",
                           "--max_new_tokens", 20, "--num_samples", 2, "--steps", 4, "--sampler", "confidence",
                           "--block_size", 8, "--score", "--seed", 7, "--out", out)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert rec["prompt"] == "ROMEO:" and rec["prompt_ids"] == tok.encode("ROMEO:")
        assert len(rec["ids"]) == 20 and rec["text"] == tok.decode(rec["ids"])
        assert rec["mode"] == "diffusion" and rec["seed"] == 7 and rec["settings"]["steps"] == 4
        assert math.isfinite(rec["nll"]) and rec["entropy"] > 0
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("ROMEO:", encoding="utf-8")
    greedy = []
    for temperature in (0, "1e-39"):  # far below the floor is greedy decoding too, not a crash in multinomial
        code, stdout, err = run_cli(capsys, "--ckpt", tiny_checkpoint, "--mode", "ar", "--prompt_file", prompt_file,
                                    "--max_new_tokens", 10, "--temperature", temperature, "--prefix_prompt", "--score")
        assert code == 0, err
        greedy.append(stdout)
    assert greedy[0].startswith("ROMEO:") and "mean gen NLL" in greedy[0] and greedy[1] == greedy[0]


def test_cli_greedy_ar_with_and_without_cache_writes_the_same_tokens(tiny_checkpoint, tmp_path, capsys):
    records = {}
    for flag in ([], ["--no_cache"]):
        out = tmp_path / f"ar{len(flag)}.jsonl"
        code, _, err = run_cli(capsys, "--ckpt", tiny_checkpoint, "--mode", "ar", "--prompt", "ROMEO:",
                               "--max_new_tokens", 12, "--temperature", 0, "--num_samples", 2, "--out", out, *flag)
        assert code == 0, err
        records[bool(flag)] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["settings"]["use_cache"] for rec in records[False] + records[True]] == [True] * 2 + [False] * 2
    assert [rec["ids"] for rec in records[False]] == [rec["ids"] for rec in records[True]]
    assert all(len(rec["ids"]) == 12 for rec in records[False])


def test_cli_sweep_prints_the_curve(tiny_checkpoint, capsys):
    code, stdout, err = run_cli(capsys, "--ckpt", tiny_checkpoint, "--mode", "diffusion", "--max_new_tokens", 8,
                                "--num_samples", 2, "--sweep_steps", "1,4")
    assert code == 0, err
    assert "gen NLL" in stdout and len(stdout.strip().splitlines()) == 4  # header, ar, 2 step counts


BAD_INPUT = {  # case: (extra arguments, text the one-line error must contain)
    "missing_ckpt": ([], "does not exist"),
    "folder_ckpt": ([], "is a folder; pass the ckpt.pt inside it"),
    "corrupt_ckpt": ([], "is corrupt or truncated"),
    "mismatched_ckpt": ([], "the weights do not fit its model_config"),
    "long_prompt": (["--prompt", "O Romeo, Romeo, wherefore art thou Romeo? " * 60], "shorten the prompt"),
    "steps_0": (["--mode", "diffusion", "--steps", 0], "argument --steps: '0' must be a whole number of at least 1"),
    "max_new_tokens_not_a_number": (["--max_new_tokens", "ten"], "'ten' must be a whole number of at least 1"),
    "unknown_mode": (["--mode", "beam"], "argument --mode: invalid choice: 'beam'"),
    "top_p_0": (["--top_p", 0], "top_p=0.0 is outside (0, 1]"),
    "top_p_above_1": (["--top_p", 1.5], "top_p=1.5 is outside (0, 1]"),
    "temperature_nan": (["--temperature", "nan"], "temperature=nan must be a finite number >= 0"),
    "diffusion_too_long": (["--mode", "diffusion", "--max_new_tokens", 300], "generate in blocks with --block_size"),
    "bad_device": (["--device", "gpu0"], "is not a device"),
    "binary_prompt_file": (["--prompt_file", "BINARY"], "as UTF-8 text"),
    "prompt_and_prompt_file": (["--prompt", "a", "--prompt_file", "BINARY"], "not allowed with argument --prompt"),
    "unknown_reveal": (["--mode", "diffusion", "--reveal", "all"], "argument --reveal: invalid choice: 'all'"),
    "bad_sweep_steps": (["--mode", "diffusion", "--sweep_steps", "1,0"], "'1,0' is not a comma list of step counts"),
    "block_size_in_ar_mode": (["--block_size", 8], "--block_size applies to --mode diffusion only"),
    "prompt_file_is_a_folder": (["--prompt_file", "TMP"], "--prompt_file TMP is a folder; give the path of a text file"),
    "seed_beyond_64_bits": (["--seed", "9" * 24], f"'{'9' * 24}' must be an integer from 0 to 2**64 - 1"),
    "meta_device": (["--device", "meta"], "--device=meta cannot run a model"),
    "abbreviated_option": (["--temp", 0], "unrecognized arguments: --temp 0"),  # not taken as --temperature
    # output paths are checked before the checkpoint is even read (CORRUPT: this one is garbage)
    "out_in_missing_folder": (["--ckpt", "CORRUPT", "--out", "TMP/missing/samples.jsonl"],
                              "--out TMP/missing/samples.jsonl: the folder TMP/missing does not exist or is not writable"),
    "out_is_a_folder": (["--ckpt", "CORRUPT", "--out", "TMP"], "--out TMP is a folder; give the path of a file in it"),
}


@pytest.fixture
def bad_files(tiny_checkpoint, tmp_path):
    """The files the bad-input cases name, in tmp_path."""
    corrupt, binary, mismatched = tmp_path / "corrupt.pt", tmp_path / "prompt.bin", tmp_path / "mismatched.pt"
    corrupt.write_bytes(b"not a checkpoint")
    binary.write_bytes(b"\xff\xfe\x00")
    ckpt = M.read_checkpoint(str(tiny_checkpoint))  # a real checkpoint whose config claims one layer more
    ckpt["model_config"]["n_layer"] += 1
    torch.save(ckpt, mismatched)
    return {"CORRUPT": corrupt, "BINARY": binary, "MISMATCHED": mismatched}


def test_cli_bad_input_is_one_line(tiny_checkpoint, tmp_path, bad_files, capsys):
    """Every case in-process (sample.main), as the command line runs it; one case through a real
    `python sample.py` below."""
    for case, (extra, message) in sorted(BAD_INPUT.items()):
        ckpt = {"missing_ckpt": tmp_path / "nope.pt", "corrupt_ckpt": bad_files["CORRUPT"], "folder_ckpt": tmp_path,
                "mismatched_ckpt": bad_files["MISMATCHED"]}.get(case, tiny_checkpoint)
        extra = [bad_files.get(a, str(a).replace("TMP", str(tmp_path))) for a in extra]
        # a later --max_new_tokens or --ckpt overrides this one
        code, _, err = run_cli(capsys, "--ckpt", ckpt, "--max_new_tokens", 4, *extra)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("sample.py: error:"), (case, err)
        assert message.replace("TMP", str(tmp_path)) in lines[0], (case, lines[0])


def test_cli_bad_input_from_the_shell_is_one_line(bad_files):
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(bad_files["CORRUPT"])],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("sample.py: error: ") and "is corrupt or truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_out_never_replaces_an_input_or_another_file(tiny_checkpoint, tmp_path, capsys):
    ckpt, prompt, notes = tmp_path / "ckpt.pt", tmp_path / "prompt.txt", tmp_path / "notes.txt"
    shutil.copy(tiny_checkpoint, ckpt)
    (tmp_path / "link.pt").symlink_to(ckpt)
    prompt.write_text("ROMEO:", encoding="utf-8")
    notes.write_text("my notes\n")
    before = {path: path.read_bytes() for path in (ckpt, prompt, notes)}
    for out, message in ((ckpt, f"--out {ckpt} is the --ckpt input: writing it would destroy that file"),
                         (tmp_path / "link.pt", "is the --ckpt input"),
                         (prompt, f"--out {prompt} is the --prompt_file input"),
                         (notes, f"--out {notes} exists and is not an output of sample.py")):
        code, _, err = run_cli(capsys, "--ckpt", ckpt, "--prompt_file", prompt, "--max_new_tokens", 4, "--out", out)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and message in lines[0], err
    assert all(path.read_bytes() == content for path, content in before.items())
    # sample.py's own output, samples or curve rows, is replaced by the next run
    out = tmp_path / "samples.jsonl"
    for extra in (["--mode", "diffusion", "--sweep_steps", "1", "--num_samples", 1], ["--mode", "ar"]):
        code, _, err = run_cli(capsys, "--ckpt", ckpt, "--max_new_tokens", 4, "--out", out, *extra)
        assert code == 0, err
    assert json.loads(out.read_text())["sample"] == 0


def test_cli_ctrl_c_is_one_line_that_says_what_was_kept(tiny_checkpoint, tmp_path):
    out = tmp_path / "samples.jsonl"
    out.write_text(json.dumps({"sample": 0, "text": "earlier", "ids": [5]}) + "\n")
    before = out.read_bytes()
    # the default SIGINT disposition: a background pytest (a job control shell) starts its children ignoring it
    proc = subprocess.Popen([sys.executable, str(REPO / "sample.py"), "--ckpt", str(tiny_checkpoint),
                             "--max_new_tokens", "1000000", "--out", str(out)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("generate: "):  # its progress line: generating
            line = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [line for line in stderr.splitlines() if not line.startswith("generate: ")]
    assert proc.returncode != 0 and lines == [f"sample.py: interrupted (Ctrl-C); {out} is as it was"], stderr
    assert out.read_bytes() == before
