"""Tests for eval.py, CPU only, in well under a minute.

The scores of the batched scorer are checked against loops that build every input by hand from the
spec (EVAL_SPEC.md §4) and run one sequence at a time; the task readers against the real release
files in ../shared/data, decoded independently here with json/csv; the normalised score against a
number from the paper's tables; the command line against each kind of bad input."""
import collections
import csv
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import eval as ev
import model as M

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models run on one thread


@pytest.fixture(scope="module")
def tok(tiny_dataset):
    return data.Tokenizer.load(tiny_dataset)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    """The tiny checkpoint with large random weights. At the default init (std 0.02) every log-prob is
    close to -log(vocab) wherever it is read, so a wrong read position or mask would go unnoticed;
    with these weights the attention is sharp and the logits spread over tens of nats."""
    m = M.load_checkpoint(str(tiny_checkpoint))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (3.0 / math.sqrt(p.shape[1])))
    return m


@functools.lru_cache(maxsize=None)
def release_items(shared_data, task, limit=None):
    """A task's items from the release files, read once per test run (BLiMP's 67 files take a second)."""
    return tuple(ev.load_task(task, str(shared_data), limit=limit))


def load_items(shared_data, task, n, limit=None):
    return list(release_items(shared_data, task, limit)[:n])


def short_items(shared_data, task, n):
    """The n items of the first 40 with the shortest continuations (in file order): the one-sequence
    loops below run a forward pass per continuation token."""
    items = release_items(shared_data, task, limit=3 if task == "blimp" else None)[:40]
    shortest = sorted(range(len(items)), key=lambda i: sum(map(len, items[i].continuations)))[:n]
    return [items[i] for i in sorted(shortest)]


# -----------------------------------------------------------------------------
# Reference scorers: one sequence, one forward pass at a time, inputs built exactly as spec §4 writes
# them, the full logits of every position computed, and log-softmax in float64.

def joint_ids(tok, context, continuation):
    """[<s>] + enc(context + continuation) and the first continuation index P (spec §1.4)."""
    ctx = tok.encode(context)
    ids = [tok.bos_id] + tok.encode(context + continuation)
    assert ids[1:1 + len(ctx)] == ctx, "the prefix property should hold for the test items"
    return ids, 1 + len(ctx)


def logp(model, x, read, target, mode="bidirectional", prefix_len=None):
    logits = model(torch.tensor([x]), mode=mode, prefix_len=prefix_len)[0]
    return torch.log_softmax(logits[read].double(), dim=-1)[target].item()


def ref_causal(model, ids, P, mode="causal"):
    """Spec §4.2/4.3: input s_0..s_{L-2}; the output at j-1 scores s_j for every continuation j."""
    logits = model(torch.tensor([ids[:-1]]), mode=mode, prefix_len=P if mode == "prefix" else None)[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return sum(logprobs[j - 1, ids[j]].item() for j in range(P, len(ids)))


def ref_pll(model, ids, P, k, right_context="visible", tail="append"):
    """Spec §4.4: for each continuation j, <mask> over j..j+k-1 (appended past the end when tail is
    "append"), the right context kept or dropped, bidirectional attention, output j-1 scores s_j."""
    mask, total = model.config.mask_id, 0.0
    for j in range(P, len(ids)):
        n_masks = k if tail == "append" else min(k, len(ids) - j)
        x = ids[:j] + [mask] * n_masks + (ids[j + k:] if right_context == "visible" else [])
        total += logp(model, x, j - 1, ids[j])
    return total


def ref_mc(model, ids, P, n_samples, seed, masking="count"):
    """Spec §4.5 written out: sample j has t_j = j/N and masks n_j = ceil(t_j * L_c) continuation
    tokens (the subset drawn by eval's seeded generator, checked on its own below); each masked token
    i is scored at output i-1 of one bidirectional pass; weight L_c / n_j (Bernoulli masking: 1/t_j);
    mean and standard error."""
    n_cont = len(ids) - P
    patterns, _ = ev.mc_mask_patterns(seed, n_cont, n_samples, masking)
    values = []
    for j in range(1, n_samples + 1):
        subset = [P + i for i in np.flatnonzero(patterns[j - 1])]
        if masking == "count":
            assert len(subset) == math.ceil(j / n_samples * n_cont)
        x = [model.config.mask_id if p in subset else t for p, t in enumerate(ids)]
        logits = model(torch.tensor([x]), mode="bidirectional")[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        weight = n_cont / len(subset) if masking == "count" else n_samples / j
        values.append(weight * sum(logprobs[i - 1, ids[i]].item() for i in subset))
    return np.mean(values), np.std(values, ddof=1) / math.sqrt(n_samples)


def ref_ll(model, tok, mode, k, context, continuation):
    ids, P = joint_ids(tok, context, continuation)
    return ref_pll(model, ids, P, k) if mode == "pll" else ref_causal(model, ids, P, mode)


# -----------------------------------------------------------------------------
# Batched scores == the one-sequence loops

def test_references_can_fail(tiny, tok):
    """The loops above must be sensitive to what they test: the attention rule, the read position
    and the mask count each change the score."""
    ids, P = joint_ids(tok, "Question: Where is money kept?\nAnswer:", " in a bank vault")
    causal, prefix = ref_causal(tiny, ids, P), ref_causal(tiny, ids, P, "prefix")
    logits = torch.log_softmax(tiny(torch.tensor([ids[:-1]]))[0].double(), -1)
    off_by_one = sum(logits[j, ids[j + 1]].item() for j in range(P, len(ids) - 1))
    assert abs(causal - prefix) > 1e-2 and abs(causal - off_by_one) > 1e-2
    assert abs(ref_pll(tiny, ids, P, 1) - ref_pll(tiny, ids, P, 3)) > 1e-2


def test_evaluate_scores_equal_one_sequence_loops(tiny, tok, shared_data, tmp_path):
    """causal, prefix and PLL (k = 1 and 3) of evaluate() against the loops, for a PMI task (the
    "Answer:" sequences included), a per-char task and BLiMP, several batches per pass; then every
    score, the accuracies and the per-task max over k recomputed from the dump."""
    tasks = {"arc_challenge": short_items(shared_data, "arc_challenge", 3), "piqa": short_items(shared_data, "piqa", 2),
             "blimp": short_items(shared_data, "blimp", 3)}
    dump = tmp_path / "dump.jsonl"
    results = ev.evaluate(tiny, tok, tasks, ("causal", "prefix", "pll"), dump=str(dump), progress=False,
                          pll_k=(1, 3), batch_size=5)
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 4 * sum(len(it.continuations) for items in tasks.values() for it in items)
    for line in lines:
        k = line["k"] or 1
        assert line["ll"] == pytest.approx(ref_ll(tiny, tok, line["mode"], k, line["context"], line["continuation"]),
                                           rel=1e-5, abs=1e-3)
        if line["normalizer"] == "pmi":
            uncond = ref_ll(tiny, tok, line["mode"], k, "Answer:", line["continuation"])
            assert line["ll_uncond"] == pytest.approx(uncond, rel=1e-5, abs=1e-3)
            assert line["score"] == pytest.approx(line["ll"] - line["ll_uncond"])
        elif line["normalizer"] == "per_char":
            assert line["n_chars"] == len(line["continuation"]) and line["continuation"].startswith(" ")
            assert line["score"] == pytest.approx(line["ll"] / line["n_chars"])
        else:
            assert line["score"] == line["ll"] and line["context"] == ""

    # accuracy from the dumped scores: argmax, first maximum wins; BLiMP macro-averaged by paradigm
    groups = collections.defaultdict(list)
    for line in lines:
        groups[line["task"], line["mode"], line["k"], line["item"]].append(line)
    for task in tasks:
        for mode in ("causal", "prefix", "pll"):
            by_k = {}
            for k in ((1, 3) if mode == "pll" else (None,)):
                by_sub = collections.defaultdict(list)
                for (t, m, kk, _), choice_lines in groups.items():
                    if (t, m, kk) == (task, mode, k):
                        scores = [c["score"] for c in sorted(choice_lines, key=lambda c: c["choice"])]
                        by_sub[choice_lines[0]["subtask"]].append(int(np.argmax(scores)) == choice_lines[0]["gold"])
                by_k[k] = np.mean([100 * np.mean(v) for v in by_sub.values()])
            entry = results["tasks"][task][mode]
            assert entry["accuracy"] == pytest.approx(max(by_k.values()))
            assert entry["n_items"] == len(tasks[task])
            if mode == "pll":
                assert {int(k): v["accuracy"] for k, v in entry["k"].items()} == pytest.approx(by_k)


@pytest.mark.parametrize("right_context,tail", [("visible", "truncate"), ("dropped", "append"), ("dropped", "truncate")])
def test_pll_variants_equal_loop(tiny, tok, right_context, tail):
    pairs = [("Question: Where is money kept?\nAnswer:", " in a bank vault"), ("Goal: dry a cup\nAnswer:", " wipe it")]
    seqs = [(np.array(ids), P) for ids, P in (joint_ids(tok, c, x) for c, x in pairs)]
    ll, _, _ = ev.sequence_logliks(tiny, seqs, "pll", k=3, right_context=right_context, tail=tail)
    expected = [ref_pll(tiny, list(ids), P, 3, right_context, tail) for ids, P in seqs]
    assert ll == pytest.approx(expected, rel=1e-5, abs=1e-3)


def test_progress_reports_the_share_of_work_done(tiny, tok):
    """on_progress gets a rising fraction after every pass, across chunks, ending at 1, so that the
    items/s and ETA of the progress line hold from the first batch (not only once whole items end)."""
    pairs = [("Question: Where is money kept?\nAnswer:", " in a bank vault"), ("Goal: dry a cup\nAnswer:", " wipe it"),
             ("", "The cat sat on the mat.")]
    seqs = [(np.array(ids), P) for ids, P in (joint_ids(tok, c, x) for c, x in pairs)]
    for mode in ("causal", "pll", "mc"):
        seen = []
        ev.sequence_logliks(tiny, seqs, mode, k=2, n_samples=4, seeds=[1, 2, 3], batch_size=2, chunk_cells=64,
                            on_progress=seen.append)
        assert len(seen) >= 2 and 0 < seen[0] < 1, mode
        assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0), mode


def one_token_continuations(tok, context):
    words = [" the", " and", " to", " of", " a", " I", " he", " in", " my", " is"]
    return [w for w in words if len(tok.encode(context + w)) == len(tok.encode(context)) + 1][:4]


def test_mc_equals_one_masked_pass_for_one_token_continuations(tiny, tok):
    context = "Question: Who spoke first?\nAnswer:"
    conts = one_token_continuations(tok, context)
    assert len(conts) >= 2
    seqs = [(np.array(ids), P) for ids, P in (joint_ids(tok, context, c) for c in conts)]
    seqs.append((np.array(joint_ids(tok, context, " in a bank vault")[0]), seqs[0][1]))  # a longer row in the batch
    expected = [logp(tiny, list(ids[:-1]) + [tiny.config.mask_id], len(ids) - 2, int(ids[-1])) for ids, _ in seqs[:-1]]
    for n_samples in (2, 7):
        ll, stderr, _ = ev.sequence_logliks(tiny, seqs, "mc", n_samples=n_samples, seeds=list(range(len(seqs))))
        assert ll[:-1] == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert np.all(stderr[:-1] == 0) and stderr[-1] > 0


@pytest.mark.parametrize("masking", ["count", "bernoulli"])
def test_mc_equals_loop_over_samples(tiny, tok, masking):
    seqs = [joint_ids(tok, "Goal: dry a cup\nAnswer:", " wipe it with a towel"), joint_ids(tok, "", "The cat sat.")]
    ll, stderr, _ = ev.sequence_logliks(tiny, [(np.array(i), P) for i, P in seqs], "mc", n_samples=5, seeds=[11, 12],
                                        mc_masking=masking)
    for (ids, P), seed, got, got_se in zip(seqs, (11, 12), ll, stderr):
        mean, se = ref_mc(tiny, ids, P, 5, seed, masking)
        assert got == pytest.approx(mean, rel=1e-5, abs=1e-3) and got_se == pytest.approx(se, rel=1e-4, abs=1e-4)


def test_mc_mask_patterns_counts_and_seeding():
    patterns, weights = ev.mc_mask_patterns(seed=3, n_cont=4, n_samples=8)
    counts = [1, 1, 2, 2, 3, 3, 4, 4]  # ceil(j/8 * 4): uniform over 1..4 when 4 divides 8
    assert patterns.sum(axis=1).tolist() == counts and weights.tolist() == [4 / c for c in counts]
    bernoulli, weights = ev.mc_mask_patterns(seed=3, n_cont=1000, n_samples=4, masking="bernoulli")
    assert weights.tolist() == [4, 2, 4 / 3, 1] and bernoulli[-1].all()  # t_j = j/4
    assert np.abs(bernoulli.mean(axis=1) - [0.25, 0.5, 0.75, 1]).max() < 0.05
    assert np.array_equal(patterns, ev.mc_mask_patterns(3, 4, 8)[0])
    draws = {ev.mc_mask_patterns(seed, 6, 6)[0][0].tobytes() for seed in range(40)}  # t = 1/6: one mask of six
    assert len(draws) == 6


def test_prefix_equals_causal_on_blimp(tiny, tok, shared_data, tmp_path):
    """Spec §2.3: BLiMP has no context, so the bidirectional prefix is <s> alone. Also the sweep
    driver's call, read the way it reads it."""
    dump = tmp_path / "blimp.jsonl"
    results = ev.evaluate(tiny, tok, tasks=["blimp"], modes=("causal", "prefix"), data_dir=str(shared_data),
                          limit=2, progress=False, dump=str(dump))
    blimp = results["tasks"]["blimp"]
    assert blimp["causal"]["n_items"] == 134 and len(blimp["causal"]["subtasks"]) == 67
    assert 0 <= results["tasks"]["blimp"]["causal"]["accuracy"] <= 100
    assert blimp["prefix"]["accuracy"] == blimp["causal"]["accuracy"]
    assert blimp["prefix"]["subtasks"] == blimp["causal"]["subtasks"]
    ll = collections.defaultdict(dict)
    for line in map(json.loads, dump.read_text().splitlines()):
        ll[line["item"], line["choice"]][line["mode"]] = line["ll"]
    assert len(ll) == 268
    assert all(v["prefix"] == pytest.approx(v["causal"], rel=1e-5, abs=1e-4) for v in ll.values())


def test_long_sequences_keep_bos_and_cut_the_context_from_the_left():
    ids = np.arange(10)
    [(cut, start)] = ev.rolling_windows(ids, start=7, max_len=6)
    assert cut.tolist() == [0, 5, 6, 7, 8, 9] and start == 3
    [(whole, start)] = ev.rolling_windows(ids, 7, 10)
    assert whole is ids and start == 7


def with_window(model, block_size):
    """The same weights with a shorter window (block_size), to make sequences outgrow it."""
    short = M.DualLM(M.ModelConfig(**{**vars(model.config), "block_size": block_size}))
    short.load_state_dict(model.state_dict())
    return short.eval()


def test_rolling_windows_score_every_token_once_with_half_a_window_of_context():
    ids = np.arange(100)
    for start, max_len in [(30, 20), (95, 20), (2, 9), (60, 61), (1, 3)]:
        windows = ev.rolling_windows(ids, start, max_len)
        scored = []
        for window, first in windows:
            assert len(window) <= max_len and window[0] == 0 and 1 <= first < len(window)
            assert np.array_equal(window[1:], np.arange(window[1], window[-1] + 1))  # contiguous text
            for j in window[first:]:
                left = j - window[1]  # tokens before j in the window, <s> not counted
                assert left >= min(j - 1, max_len - 1 - max_len // 2)
            scored += window[first:].tolist()
        assert scored == list(range(start, 100))  # every continuation token once, in order


def ref_rolling(ids, P, M):
    """rolling_windows written out from its rule: pieces of M // 2 continuation tokens, each scored in
    a window that ends with it and holds <s> + as many tokens before its end as fit."""
    if len(ids) <= M:
        return [(ids, P)]
    out = []
    for a in range(P, len(ids), M // 2):
        b = min(a + M // 2, len(ids))
        body = ids[max(1, b - (M - 1)):b]
        out.append(([ids[0]] + body, 1 + len(body) - (b - a)))
    return out


def test_rolling_scores_equal_window_by_window_references(tiny, tok):
    """A sequence longer than the window, in every mode: the sum of the mode's one-sequence reference
    over the windows (MC: the variances add); and with a window large enough, one window whose score
    is the full-context reference."""
    short = with_window(tiny, 24)
    ids, P = joint_ids(tok, "Goal: dry a cup after washing it in the sink\nAnswer:",
                       " wipe it with a clean towel, then put it upside down on the rack to drain")
    assert len(ids) - P > 24  # the continuation alone outgrows the window
    seqs, seed = [(np.array(ids), P)], 5
    for mode, k in [("causal", 1), ("prefix", 1), ("pll", 1), ("pll", 3), ("mc", 1)]:
        ll, stderr, truncated = ev.sequence_logliks(short, seqs, mode, k=k, n_samples=3, seeds=[seed])
        limit = ev.max_length(mode, 24, k)
        windows = ref_rolling(ids, P, limit)
        assert len(windows) >= 3 and truncated.tolist() == [True]
        if mode == "mc":
            refs = [ref_mc(short, w, p, 3, seed if n == 0 else [seed, n]) for n, (w, p) in enumerate(windows)]
            assert ll[0] == pytest.approx(sum(m for m, _ in refs), rel=1e-5, abs=1e-3)
            assert stderr[0] == pytest.approx(math.sqrt(sum(se ** 2 for _, se in refs)), rel=1e-4)
        else:
            ref = sum(ref_pll(short, w, p, k) if mode == "pll" else ref_causal(short, w, p, mode) for w, p in windows)
            assert ll[0] == pytest.approx(ref, rel=1e-5, abs=1e-3)
        full, _, cut = ev.sequence_logliks(tiny, seqs, mode, k=k, n_samples=3, seeds=[seed])  # window 256
        assert not cut[0]
        if mode != "mc":
            ref = ref_pll(tiny, ids, P, k) if mode == "pll" else ref_causal(tiny, ids, P, mode)
            assert full[0] == pytest.approx(ref, rel=1e-5, abs=1e-3) and abs(full[0] - ll[0]) > 1e-3


def test_answers_that_differ_after_the_window_no_longer_tie(tiny, tok, shared_data):
    """PIQA item 142: both answers share their first 128+ tokens, so cutting a continuation at a
    128-token window gave both the same score; over rolling windows the difference counts."""
    item = ev.load_task("piqa", str(shared_data))[142]
    seqs = [joint_ids(tok, item.context, c) for c in item.continuations]
    (a, P), (b, _) = seqs
    first_difference = len(os.path.commonprefix([a, b]))
    assert first_difference - P > 128 and len(a) > 129  # they differ only after continuation token 128
    short = with_window(tiny, 128)
    for mode in ("causal", "prefix", "pll", "mc"):
        ll, _, truncated = ev.sequence_logliks(short, [(np.array(i), p) for i, p in seqs], mode, n_samples=2,
                                               seeds=[1, 1])
        assert truncated.all() and abs(ll[0] - ll[1]) > 1e-3, mode
    results = ev.evaluate(short, tok, {"piqa": [item]}, ("causal",), progress=False)
    assert results["tasks"]["piqa"]["causal"]["truncated"] == 2


def test_interrupted_eval_keeps_finished_pairs_and_a_rerun_reuses_them(tiny, tok, shared_data, tmp_path,
                                                                        monkeypatch, capsys):
    """Stopped during its second (task, mode) pair, evaluate() has the first in --out; the same call
    again reuses it, says so in one line, scores only the rest and gives what one whole run gives.
    Another checkpoint or another scoring setting reuses nothing."""
    tasks = {"piqa": load_items(shared_data, "piqa", 3), "csqa": load_items(shared_data, "csqa", 2)}
    out = tmp_path / "results.json"
    scored, real = [], ev.evaluate_mode

    def stop_at_second(model, task, items, req, mode, *args):
        if scored:
            raise KeyboardInterrupt
        scored.append((task, mode))
        return real(model, task, items, req, mode, *args)

    monkeypatch.setattr(ev, "evaluate_mode", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(tiny, tok, tasks, ("causal", "prefix"), out=str(out), batch_size=4)
    kept = json.loads(out.read_text())
    assert list(kept["tasks"]) == ["piqa"] and list(kept["tasks"]["piqa"]) == ["causal"] and not kept["complete"]
    assert "eval.py: piqa causal: accuracy" in capsys.readouterr().out  # printed once it finished

    def counting(model, task, items, req, mode, *args):
        scored.append((task, mode))
        return real(model, task, items, req, mode, *args)

    monkeypatch.setattr(ev, "evaluate_mode", counting)
    scored.clear()
    resumed = ev.evaluate(tiny, tok, tasks, ("causal", "prefix"), out=str(out), batch_size=8)  # batching differs
    said = capsys.readouterr().out
    assert scored == [("piqa", "prefix"), ("csqa", "causal"), ("csqa", "prefix")]
    assert [line for line in said.splitlines() if "reusing" in line] == [
        f"eval.py: reusing from {out} (same checkpoint and settings): piqa causal"]
    assert resumed["tasks"]["piqa"]["causal"] == kept["tasks"]["piqa"]["causal"] and resumed["complete"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(resumed))
    whole = ev.evaluate(tiny, tok, tasks, ("causal", "prefix"), progress=False)
    for task in tasks:
        for mode in ("causal", "prefix"):
            assert resumed["tasks"][task][mode]["accuracy"] == whole["tasks"][task][mode]["accuracy"]
    assert resumed["average"] == pytest.approx(whole["average"])

    scored.clear()  # everything there: nothing to score
    ev.evaluate(tiny, tok, tasks, ("causal", "prefix"), out=str(out), progress=False)
    assert scored == []
    scored.clear()  # another scoring setting
    ev.evaluate(tiny, tok, tasks, ("causal",), out=str(out), per_char_space=False, progress=False)
    assert scored == [("piqa", "causal"), ("csqa", "causal")]
    assert "differs in: per_char_space" in capsys.readouterr().out
    other = with_window(tiny, tiny.config.block_size)
    with torch.no_grad():
        other.lm_head.weight[0, 0] += 1
    scored.clear()  # other weights
    ev.evaluate(other, tok, tasks, ("causal",), out=str(out), per_char_space=False, progress=False)
    assert scored == [("piqa", "causal"), ("csqa", "causal")]
    assert "differs in: checkpoint weights" in capsys.readouterr().out
    scored.clear()  # the same weights in a shorter window, which cuts long sequences elsewhere
    ev.evaluate(with_window(other, 64), tok, tasks, ("causal",), out=str(out), per_char_space=False, progress=False)
    assert scored == [("piqa", "causal"), ("csqa", "causal")]
    assert "differs in: model config" in capsys.readouterr().out


def test_results_of_other_tasks_and_modes_are_kept_and_changed_items_are_scored_again(tiny, tok, shared_data, tmp_path,
                                                                                      capsys):
    """Issue 20: a rerun with another subset of (task, mode) pairs keeps the pairs it does not run, and a
    task whose items changed (its file cut from 4 items to 2) is scored again, saying what it replaces."""
    out, task_file = tmp_path / "e.json", tmp_path / "csqa.jsonl"
    lines = (shared_data / "csqa" / "dev_rand_split.jsonl").read_text(encoding="utf-8").splitlines()
    task_file.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    files = dict(task_files={"csqa": str(task_file)}, data_dir=str(shared_data), limit=3, progress=False)
    ev.evaluate(tiny, tok, "piqa", "causal,causal", out=str(out), **files)  # a mode named twice runs once
    first = json.loads(out.read_text())
    assert first["settings"]["modes"] == ["causal"] and ev.format_table(first).splitlines()[0].count("causal") == 1
    capsys.readouterr()
    ev.evaluate(tiny, tok, "csqa", ("causal", "prefix"), out=str(out), **files)
    merged = json.loads(out.read_text())
    assert merged["tasks"]["piqa"] == first["tasks"]["piqa"] and list(merged["tasks"]["csqa"]) == ["causal", "prefix"]
    assert merged["average"]["causal"] == pytest.approx(np.mean([merged["tasks"][t]["causal"]["normalized"]
                                                                  for t in ("piqa", "csqa")]))
    assert f"eval.py: keeping in {out} (same checkpoint and settings): piqa causal" in capsys.readouterr().out
    ev.evaluate(tiny, tok, "csqa", ("causal",), out=str(out), **files)  # nothing to score
    assert json.loads(out.read_text())["tasks"] == merged["tasks"]
    said = capsys.readouterr().out
    assert f"reusing from {out} (same checkpoint and settings): csqa causal\n" in said
    assert "keeping in" in said and "piqa causal, csqa prefix" in said
    task_file.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")  # the file was cut: another result
    ev.evaluate(tiny, tok, "csqa", ("causal",), out=str(out), **files)
    said = capsys.readouterr().out
    assert f"eval.py: {out} scored csqa on other items (another task file, --limit, ...); replacing csqa causal, " \
           f"csqa prefix" in said
    final = json.loads(out.read_text())
    assert final["tasks"]["csqa"]["causal"]["n_items"] == 2 and "prefix" not in final["tasks"]["csqa"]
    assert final["tasks"]["piqa"] == first["tasks"]["piqa"]
    ev.evaluate(tiny, tok, "csqa", ("causal",), out=str(out), **dict(files, seed=1))  # other settings: all replaced
    assert "(differs in: seed); replacing piqa causal, csqa causal" in capsys.readouterr().out
    assert list(json.loads(out.read_text())["tasks"]) == ["csqa"]


def test_a_full_disk_names_the_path_and_leaves_no_temporary_file(tiny, tok, shared_data, tmp_path, monkeypatch):
    tasks = {"piqa": load_items(shared_data, "piqa", 2)}
    with pytest.raises(OSError, match="cannot write --dump /dev/full .No space left on device."):
        ev.evaluate(tiny, tok, tasks, ("causal",), dump="/dev/full", progress=False)
    out = tmp_path / "e.json"

    def full_disk(obj, f, **kwargs):
        f.write("{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev.json, "dump", full_disk)
    with pytest.raises(OSError, match=f"cannot write --out {re.escape(str(out))} .No space left on device."):
        ev.evaluate(tiny, tok, tasks, ("causal",), out=str(out), progress=False)
    assert os.listdir(tmp_path) == []


def test_whole_run_progress(tiny, tok, shared_data, capsys):
    """Every pass's progress line ends with the whole run's share of work and ETA, and each pair's
    result line with the share done so far: rising, 100% at the end."""
    tasks = {"piqa": short_items(shared_data, "piqa", 2), "blimp": load_items(shared_data, "blimp", 2, limit=3)}
    ev.evaluate(tiny, tok, tasks, ("causal", "pll"), pll_k=(1, 2))
    captured = capsys.readouterr()
    results = [line for line in captured.out.splitlines() if line.startswith("eval.py: ")]
    assert [line.split(":")[1] for line in results] == [" piqa causal", " piqa pll", " blimp causal", " blimp pll"]
    shares = [int(line.split("whole run ")[1].split("%")[0]) for line in results]
    assert shares == sorted(shares) and 0 < shares[0] < 100 and shares[-1] == 100 and "ETA" in results[0]
    assert "piqa pll k=2: 2/2 items" in captured.err and "; whole run " in captured.err


# -----------------------------------------------------------------------------
# Tasks: label decoding and prompts on the real release files

def raw_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_arc(shared_data):
    raw = raw_jsonl(shared_data / "arc" / "ARC-Challenge-Test.jsonl")
    items = ev.load_task("arc_challenge", str(shared_data))
    assert len(items) == len(raw) == 1150
    for it, r in zip(items, raw):
        labels = [c["label"] for c in r["question"]["choices"]]
        assert it.id == r["id"] and it.gold == labels.index(r["answerKey"])
        assert it.context == f"Question: {r['question']['stem']}\nAnswer:"
        assert it.continuations == [" " + c["text"] for c in r["question"]["choices"]]
    assert collections.Counter(len(it.continuations) for it in items) == {4: 1144, 3: 3, 5: 3}
    # the 22 digit-keyed rows are missing from this copy: decode one as the release writes it
    record = {"id": "NYSEDREGENTS_2015_8_1", "answerKey": "3", "question": {"stem": "Which is a gas?", "choices": [
        {"label": str(n), "text": t} for n, t in enumerate(["rock", "water", "air", "ice"], 1)]}}
    assert ev.qa_item("x:1", record, "1").gold == 2
    easy = ev.load_task("arc_easy", str(shared_data))
    raw_easy = raw_jsonl(shared_data / "arc" / "ARC-Easy-Test.jsonl")
    assert [it.context for it in easy] == [f"Question: {r['question']['stem']}\nAnswer:" for r in raw_easy]
    mosaic = ev.load_task("arc_easy", str(shared_data), path=str(shared_data / "arc" / "arc_easy_test.jsonl"))
    assert [(i.context, i.continuations, i.gold) for i in easy] == [(i.context, i.continuations, i.gold) for i in mosaic]
    assert collections.Counter(it.gold for it in easy) == {0: 565, 1: 592, 2: 634, 3: 585}


def test_csqa_and_obqa(shared_data):
    raw = raw_jsonl(shared_data / "csqa" / "dev_rand_split.jsonl")
    items = ev.load_task("csqa", str(shared_data))
    assert len(items) == 1221 and all(len(it.continuations) == 5 for it in items)
    assert [it.gold for it in items] == ["ABCDE".index(r["answerKey"]) for r in raw]
    assert items[0].context == f"Question: {raw[0]['question']['stem']}\nAnswer:"
    jsonl = ev.load_task("obqa", str(shared_data))
    tsv = ev.load_task("obqa", str(shared_data), path=str(shared_data / "obqa" / "test.tsv"))
    assert len(tsv) == 500 and [vars(i) for i in tsv] == [vars(i) for i in jsonl]
    assert collections.Counter("ABCD"[it.gold] for it in tsv) == {"A": 138, "B": 126, "C": 132, "D": 104}


def test_piqa_labels_come_from_the_lst_file(shared_data):
    raw = raw_jsonl(shared_data / "piqa" / "valid.jsonl")
    labels = (shared_data / "piqa" / "valid-labels.lst").read_text().split()
    items = ev.load_task("piqa", str(shared_data))
    assert len(items) == 1838 and [it.gold for it in items] == [int(x) for x in labels]
    assert collections.Counter(it.gold for it in items) == {0: 910, 1: 928}
    assert items[5].context == f"Goal: {raw[5]['goal']}\nAnswer:"
    assert items[5].continuations == [" " + raw[5]["sol1"], " " + raw[5]["sol2"]]


def test_siqa_labels_are_one_based(shared_data):
    raw = raw_jsonl(shared_data / "siqa" / "dev.jsonl")
    items = ev.load_task("siqa", str(shared_data))
    assert collections.Counter(it.gold for it in items) == {0: 643, 1: 654, 2: 657}  # labels 1:643 2:654 3:657
    r = raw[0]
    assert items[0].context == f"Question: {r['context']} {r['question']}\nAnswer:"
    assert items[0].continuations == [" " + r["answerA"], " " + r["answerB"], " " + r["answerC"]]


def test_mmlu_is_read_as_strings(shared_data):
    items = ev.load_task("mmlu", str(shared_data))
    assert len(items) == 14042 and len({it.subtask for it in items}) == 57
    with open(shared_data / "mmlu" / "test" / "abstract_algebra_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    algebra = [it for it in items if it.subtask == "abstract_algebra"]
    assert [it.continuations for it in algebra] == [[" " + c for c in row[1:5]] for row in rows]
    assert [" 0", " 1", " 0,1", " 0,4"] in [it.continuations for it in algebra]  # not 0, 1, 1, 4
    assert algebra[0].context == ("The following are multiple choice questions (with answers) about abstract algebra."
                                  f"\n\nQuestion: {rows[0][0].strip()}\nAnswer:")
    assert [it.gold for it in algebra] == ["ABCD".index(row[5]) for row in rows]
    bare = ev.load_task("mmlu", str(shared_data), limit=2, mmlu_description=False)
    assert len(bare) == 114 and bare[0].context == f"Question: {rows[0][0].strip()}\nAnswer:"


def test_hellaswag_preprocessing_vectors_and_labels(shared_data):
    assert ev.hellaswag_preprocess("Home and Garden: How to clean a rug. [title] Vacuum the rug. [step] Use a brush "
                                   "attachment.") == "Home and Garden: How to clean a rug. Vacuum the rug. Use a brush attachment."
    assert ev.hellaswag_preprocess("Health: How to stay calm [title] Breathe deeply. [substeps] Count to ten.") == \
        "Health: How to stay calm. Breathe deeply. Count to ten."
    record = {"ind": 7, "activity_label": "Travel", "ctx_a": "We arrive.", "ctx_b": "the man in the USA",
              "endings": ["waves. [step] Hi", "sleeps", "eats", "runs"], "label": "1"}
    item = ev.hellaswag_item("x:1", record, "7")
    assert item.context == "Travel: We arrive. The man in the usa"  # str.capitalize lower-cases the rest
    assert item.continuations[0] == " waves. Hi" and item.gold == 1
    assert ev.hellaswag_item("x:1", dict(record, ctx_b=""), "7").context == "Travel: We arrive."
    jsonl = ev.load_task("hellaswag", str(shared_data))
    text = ev.load_task("hellaswag", str(shared_data), path=str(shared_data / "hellaswag" / "hellaswag_val_full.txt"))
    assert len(jsonl) == len(text) == 10042
    assert jsonl[0].context == "Roof shingle removal: A man is sitting on a roof. He"  # ctx_b "he" capitalised
    assert jsonl[0].continuations[3] == " starts pulling up roofing on a roof." and jsonl[0].gold == 3
    assert collections.Counter(it.gold for it in text) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert [it.gold for it in jsonl] == [it.gold for it in text]
    assert [it.continuations for it in jsonl] == [it.continuations for it in text]


def test_blimp_pairs(shared_data):
    items = release_items(shared_data, "blimp")
    assert len(items) == 67_000 and collections.Counter(it.subtask for it in items).most_common()[-1][1] == 1000
    raw = raw_jsonl(shared_data / "blimp" / "adjunct_island.jsonl")[0]
    assert vars(items[0]) == {"id": f"adjunct_island/{raw['pairID']}", "context": "", "gold": 0,
                              "continuations": [raw["sentence_good"], raw["sentence_bad"]], "subtask": "adjunct_island"}


def test_hugging_face_rows_decode_like_the_release_files(shared_data):
    """The optional --source hf route, offline: release records rewritten in the layouts of the hub
    datasets (ai2_arc, social_i_qa, piqa, mmlu) must give the same items."""
    arc = raw_jsonl(shared_data / "arc" / "ARC-Challenge-Test.jsonl")[:3]
    rows = [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]}} for r in arc]
    assert [vars(i) for i in ev.hf_items("arc_challenge", rows)] == \
        [vars(i) for i in ev.load_task("arc_challenge", str(shared_data), limit=3)]
    siqa = [dict(r, label=lab) for r, lab in zip(raw_jsonl(shared_data / "siqa" / "dev.jsonl")[:3],
                                                  (shared_data / "siqa" / "dev-labels.lst").read_text().split())]
    assert [(i.context, i.continuations, i.gold) for i in ev.hf_items("siqa", siqa)] == \
        [(i.context, i.continuations, i.gold) for i in ev.load_task("siqa", str(shared_data), limit=3)]
    piqa = [dict(r, label=int(lab)) for r, lab in zip(raw_jsonl(shared_data / "piqa" / "valid.jsonl")[:3],
                                                       (shared_data / "piqa" / "valid-labels.lst").read_text().split())]
    assert [i.gold for i in ev.hf_items("piqa", piqa)] == [i.gold for i in ev.load_task("piqa", str(shared_data), limit=3)]
    mmlu = ev.hf_items("mmlu", [{"question": "1+1?", "subject": "college_mathematics", "choices": ["0", "2", "4", "0,1"],
                                 "answer": 1}])[0]
    assert (mmlu.gold, mmlu.continuations[3], mmlu.subtask) == (1, " 0,1", "college_mathematics")


def test_tokenisation_prefix_property(tok, shared_data):
    """Spec §1.4 and §7.1: [<s>] + enc(context + continuation), the continuation starting at
    1 + len(enc(context)), on items of every task; a boundary token that straddles is flagged and
    scored as continuation."""
    for task in ev.TASKS:
        items = release_items(shared_data, task, limit=3 if task in ("blimp", "mmlu") else 100)
        pairs = [(it.context, c) for it in items for c in it.continuations]
        ids, starts, ok = ev.encode_pairs(tok, pairs, tok.bos_id)
        assert all(ok), task
        for (context, cont), got, start in zip(pairs, ids, starts):
            assert got.tolist() == [tok.bos_id] + tok.encode(context + cont)
            assert start == 1 + len(tok.encode(context))
    context, cont = "Goal: the ba", "nk"
    (ids,), (start,), (ok,) = ev.encode_pairs(tok, [(context, cont)], tok.bos_id)
    ctx = tok.encode(context)
    assert not ok and ids.tolist()[1:start] == ctx[:start - 1] and start - 1 < len(ctx)


# -----------------------------------------------------------------------------
# Scores

def test_normalised_score_matches_the_paper():
    """Spec §7.6: App. K's autoregressive 1-repetition PIQA, normalised 40.9, is raw 70.45 % at r = 50."""
    assert ev.normalized_score(70.45, ev.TASKS["piqa"][1]) == pytest.approx(40.9)
    assert ev.normalized_score(100 / 3, ev.TASKS["siqa"][1]) == pytest.approx(0)
    assert ev.normalized_score(100, ev.TASKS["csqa"][1]) == pytest.approx(100)
    assert ev.n_chars(" bank") == 5 and ev.n_chars(" bank", count_space=False) == 4


def test_macro_average_and_first_maximum():
    items = [ev.Item(str(i), "", ["a", "b"], 0, subtask=s) for i, s in enumerate("abbb")]
    accuracy, subtasks = ev.task_accuracy(items, [True, False, False, True])
    assert subtasks == {"a": 100.0, "b": pytest.approx(100 / 3)} and accuracy == pytest.approx(200 / 3)
    assert ev.choice_score("pmi", -5.0, -7.0) == 2.0 and ev.choice_score("per_char", -6.0, chars=3) == -2.0


def test_random_baseline_per_item(tiny, tok, shared_data):
    """Spec §8's alternative r for ARC: the mean of 100/choices over the items (here 3 and 5 choices)."""
    items = ev.load_task("arc_challenge", str(shared_data))
    items = [next(it for it in items if len(it.continuations) == n) for n in (3, 5)]
    for how, r in (("task", 25.0), ("items", (100 / 3 + 100 / 5) / 2)):
        entry = ev.evaluate(tiny, tok, {"arc_challenge": items}, ("causal",), progress=False,
                            random_baseline=how)["tasks"]["arc_challenge"]["causal"]
        assert entry["random_baseline"] == pytest.approx(r)
        assert entry["normalized"] == pytest.approx(100 * (entry["accuracy"] - r) / (100 - r))


def test_missing_task_is_skipped_with_the_path(tiny, tok, shared_data, tmp_path):
    (tmp_path / "csqa").mkdir()
    lines = (shared_data / "csqa" / "dev_rand_split.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    (tmp_path / "csqa" / "dev_rand_split.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = ev.evaluate(tiny, tok, "csqa,piqa", ("causal",), data_dir=str(tmp_path), progress=False)
    assert results["tasks"]["csqa"]["causal"]["n_items"] == 2
    assert str(tmp_path / "piqa" / "valid.jsonl") in results["skipped"]["piqa"]
    assert results["average"]["causal"] == results["tasks"]["csqa"]["causal"]["normalized"]


def test_malformed_files_name_file_and_line(tmp_path):
    bad = tmp_path / "x_test.csv"
    bad.write_text('q1,a,b,c,d,A\n"q2, with comma",a,b,c,D\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x_test.csv:2: expected 6 columns"):
        ev.read_mmlu(str(tmp_path))
    (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2, encoding="utf-8")
    (tmp_path / "valid-labels.lst").write_text("0\n\n2\n", encoding="utf-8")  # a blank line does not shift the count
    with pytest.raises(ValueError, match=r"valid-labels.lst:3: label '2'"):
        ev.load_task("piqa", path=str(tmp_path / "valid.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.jsonl: holds no items"):
        ev.load_task("csqa", path=str(tmp_path / "empty.jsonl"))


def qa_line(labels, texts, key="A"):
    choices = [{"label": label, "text": text} for label, text in zip(labels, texts)]
    return json.dumps({"id": "q", "question": {"stem": "Where?", "choices": choices}, "answerKey": key})


def test_items_without_two_different_choices_are_refused(tmp_path):
    """With one choice, or only copies of one, every answer is right; with repeated labels the answerKey
    names no single choice. Each is refused, naming file and line, instead of being scored."""
    good = qa_line("AB", ["here", "there"])
    cases = {
        "csqa": (qa_line("A", ["here"]), "1 choice(s); an item needs at least two different choices"),
        "obqa": (qa_line("AAAA", ["here", "there", "near", "far"]), "the choice labels ['A', 'A', 'A', 'A'] repeat"),
        "arc_easy": (qa_line("ABC", ["here", "here", "here"]), "3 choice(s), all the same text"),
        # issue 20: with --per_char_space off it would score -inf
        "arc_challenge": (qa_line("ABC", ["here", "", "there"]), "choice 1 has empty text"),
    }
    for task, (line, message) in cases.items():
        path = tmp_path / f"{task}.jsonl"
        path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(f"{task}: {path}:3: {message}")):
            ev.load_task(task, path=str(path))
    (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "a"}\n', encoding="utf-8")
    (tmp_path / "valid-labels.lst").write_text("0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="valid.jsonl:1: 2 choice.s., all the same text"):
        ev.load_task("piqa", path=str(tmp_path / "valid.jsonl"))
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "x_test.csv").write_text("q1,a,b,c,d,A\nq2,same,same,same,same,B\n", encoding="utf-8")
    with pytest.raises(ValueError, match="x_test.csv:2: 4 choice.s., all the same text"):
        ev.load_task("mmlu", path=str(tmp_path / "mmlu"))
    # some choices may repeat (the release files have such items), and BLiMP's 7 identical pairs stand (spec §2.3)
    path = tmp_path / "partial.jsonl"
    path.write_text(qa_line("ABC", ["here", "here", "there"], key="C") + "\n", encoding="utf-8")
    assert ev.load_task("csqa", path=str(path))[0].continuations == [" here", " here", " there"]
    (tmp_path / "blimp").mkdir()
    (tmp_path / "blimp" / "p.jsonl").write_text(json.dumps({"UID": "p", "pairID": "1", "sentence_good": "A b.",
                                                            "sentence_bad": "A b."}) + "\n", encoding="utf-8")
    assert len(ev.load_task("blimp", path=str(tmp_path / "blimp"))) == 1


# -----------------------------------------------------------------------------
# Held-out text

def test_heldout_losses_equal_train_validation_loss_and_a_pll_loop(tiny, tok, tiny_dataset):
    """Causal: model.ar_loss, train.py's validation loss (document masking), on the same windows, another
    code path. PLL: one forward pass per masked token over each document's piece of a window."""
    entry = ev.heldout_losses(tiny, tok, tiny_dataset, 3, progress=False)
    x, y, docs = data.val_windows(tiny_dataset, tiny.config.block_size - 1, 3)
    with torch.no_grad():
        assert entry["causal_loss"] == pytest.approx(M.ar_loss(tiny, x, y, docs)[0].item(), rel=1e-5)
    seqs, n_windows = ev.heldout_sequences(tiny_dataset, tiny.config.block_size, 3, tok.bos_id)
    assert n_windows == entry["windows"] == 3 and len(seqs) > 3  # the windows hold several documents
    assert all(tok.bos_id not in ids[1:] for ids, _ in seqs)    # no piece crosses a document start
    assert entry["tokens"] == int((y != tok.bos_id).sum()) == sum(len(ids) - 1 for ids, _ in seqs)
    with torch.no_grad():
        pll = sum(ref_pll(tiny, ids.tolist(), 1, 1) for ids, _ in seqs)
    assert entry["pll_loss"] == pytest.approx(-pll / entry["tokens"], rel=1e-5)
    assert abs(entry["pll_loss"] - entry["causal_loss"]) > 0.1  # two measures, not one read twice


# -----------------------------------------------------------------------------
# Command line

def start_cli(*args):
    # a shell's background job (`pytest ... &`) ignores SIGINT, and so would eval.py: give it the default
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen([sys.executable, str(REPO / "eval.py"), *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=restore)


def run_main_for_error(args):
    """main's one-line error, as the command line would print it (after "eval.py: error: ")."""
    with pytest.raises((ValueError, OSError)) as error:
        ev.main(list(map(str, args)))
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


def test_cli(tiny_checkpoint, shared_data, tmp_path, capsys):
    """Three processes at once (most of their time is importing torch): a good run writes the results
    JSON with the checkpoint's run config and its progress line; a bad input is one line on stderr and
    a non-zero exit; Ctrl-C once the first (task, mode) pair is in --out is one line saying that --out
    keeps it. Then, in-process: the same command again reuses everything, and each other bad input is
    main's one-line error (which the command line prints as "eval.py: error: ..."; checked above)."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    ok = ["--ckpt", tiny_checkpoint, "--data_dir", shared_data, "--tasks", "csqa", "--modes", "causal,prefix"]
    out, interrupted = tmp_path / "results.json", tmp_path / "interrupted.json"
    ctrl_c = start_cli("--ckpt", tiny_checkpoint, "--data_dir", shared_data, "--tasks", "csqa,blimp",
                       "--modes", "causal,pll,mc", "--limit", "3", "--out", interrupted)
    good = start_cli(*ok, "--limit", "2", "--out", out)
    bad = start_cli("--ckpt", garbage)
    deadline = time.time() + 120
    while not interrupted.exists() and ctrl_c.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    ctrl_c.send_signal(signal.SIGINT)
    _, stderr = ctrl_c.communicate(timeout=60)
    assert ctrl_c.returncode != 0 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (f"eval.py: interrupted (Ctrl-C); {interrupted} keeps every (task, "
                                               f"mode) result finished so far; the same command goes on from there")
    assert json.loads(interrupted.read_text())["tasks"]["csqa"]["causal"]["n_items"] == 3
    _, stderr = bad.communicate(timeout=120)
    assert bad.returncode != 0 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("eval.py: error: ") and "corrupt" in stderr, stderr
    stdout, stderr = good.communicate(timeout=120)
    assert good.returncode == 0, stderr
    results = json.loads(out.read_text())
    assert results["run"]["lam"] == 0.5 and results["run"]["repetitions"] == 1.0
    assert results["tasks"]["csqa"]["prefix"]["n_items"] == 2 and "csqa" in stdout
    assert "csqa prefix: 2/2 items (" in stderr and "items/s" in stderr  # the progress line
    assert "eval.py: csqa causal: accuracy" in stdout and "; whole run " in stderr
    import gp_fit  # the file is what gp_fit.py --results reads
    runs = gp_fit.read_runs(results_paths=[str(out)])
    assert (runs["lambda"][0], runs["repetitions"][0]) == (0.5, 1.0)
    assert runs["score"][0] == results["average"]["causal"]

    ev.main(list(map(str, ok + ["--limit", "2", "--out", out])))  # the same command: nothing left to score
    again = capsys.readouterr()
    assert "items/s" not in again.err, again.err
    assert f"eval.py: reusing from {out} (same checkpoint and settings): csqa causal, csqa prefix" in again.out
    assert json.loads(out.read_text())["tasks"] == results["tasks"]

    broken = tmp_path / "broken"
    shutil.copytree(shared_data / "csqa", broken / "csqa")
    path = broken / "csqa" / "dev_rand_split.jsonl"
    path.write_text(path.read_text(encoding="utf-8").split("\n", 1)[0] + "\n{oops\n", encoding="utf-8")
    cases = {
        "does not exist": ["--ckpt", tmp_path / "none.pt"],
        "corrupt": ["--ckpt", garbage],
        "unknown task 'foo'; valid tasks: arc_easy, arc_challenge, blimp": ["--ckpt", garbage, "--tasks", "piqa,foo"],
        "unknown mode 'beam'; valid modes: causal, prefix, pll, mc": ["--ckpt", garbage, "--modes", "causal,beam"],
        "dev_rand_split.jsonl:2: not valid JSON": ["--ckpt", tiny_checkpoint, "--data_dir", broken, "--tasks", "csqa"],
        "'0' is not a positive integer": ok + ["--limit", "0"],
        "'1.5' is not a positive integer": ok + ["--limit", "1.5"],
        "must be >= 1": ok + ["--modes", "pll", "--pll_k", "1,0"],
        "does not exist or is not writable": ok + ["--out", tmp_path / "no_such_folder" / "results.json"],
        # before loading the model (this checkpoint is garbage), not after the evaluation
        f"--out {tmp_path} is a folder; give the path of a file in it": ["--ckpt", garbage, "--out", tmp_path],
        f"--dump {tmp_path} is a folder": ["--ckpt", garbage, "--dump", tmp_path],
        "--tasks none evaluates nothing without --heldout N": ["--ckpt", garbage, "--tasks", "none"],
        "records no dataset; give --heldout_data DIR": ["--ckpt", tiny_checkpoint, "--tasks", "none", "--heldout", "2"],
    }
    for expected, args in cases.items():
        assert expected in run_main_for_error(args), expected
        assert capsys.readouterr().err == "", expected  # the error is the only line


def test_heldout_on_the_command_line_is_kept_by_a_rerun_and_needs_the_model_tokenizer(tiny_checkpoint, tiny_dataset,
                                                                                       shared_data, tmp_path, capsys):
    out = tmp_path / "results.json"
    heldout = ["--ckpt", tiny_checkpoint, "--heldout", "2", "--heldout_data", tiny_dataset]
    ev.main(list(map(str, heldout + ["--tasks", "none", "--out", out])))
    first = json.loads(out.read_text())["heldout"]
    assert first["windows"] == 2 and first["tokens"] > 400 and first["pll_loss"] > 0
    assert "held-out loss per token (2 windows): causal" in capsys.readouterr().out
    ev.main(list(map(str, ["--ckpt", tiny_checkpoint, "--data_dir", shared_data, "--tasks", "csqa", "--limit", "2",
                           "--out", out])))
    results = json.loads(out.read_text())
    assert results["heldout"] == first and results["tasks"]["csqa"]["causal"]["n_items"] == 2
    other = tmp_path / "other_tokenizer"
    shutil.copytree(tiny_dataset, other)
    spec = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    error = run_main_for_error(["--ckpt", tiny_checkpoint, "--tasks", "none", "--heldout", "2", "--heldout_data", other])
    assert f"--heldout_data {other} has another tokenizer than the checkpoint" in error


def test_cli_never_writes_over_an_input_or_a_foreign_file(tiny_checkpoint, shared_data, tmp_path):
    """Issue 20: each case is a one-line error (main's ValueError, which the command line prints as
    "eval.py: error: ..."), and every file stays as it was. In-process: a process each would cost seconds."""
    ok = ["--ckpt", tiny_checkpoint, "--data_dir", shared_data, "--tasks", "csqa", "--modes", "causal,prefix"]
    # inputs and foreign files that a bad --out or --dump must leave as they are (issue 20)
    ckpt, task = tmp_path / "ckpt.pt", tmp_path / "arc.jsonl"
    shutil.copy(tiny_checkpoint, ckpt)
    shutil.copy(shared_data / "arc" / "ARC-Easy-Test.jsonl", task)
    notes, dump_like = tmp_path / "notes.json", tmp_path / "notes.jsonl"
    notes.write_text('{"my": "notes"}')
    dump_like.write_text('{"task": "csqa"}\n')
    edited = {name: tmp_path / f"{name}.json" for name in ("missing", "string", "list", "text")}
    entry = {"accuracy": 25.0, "normalized": 0.0}
    for name, tasks in (("missing", {"csqa": {"causal": {"accuracy": 25.0}}}), ("string", {"csqa": {"causal": "x"}}),
                        ("list", []), ("text", {"csqa": {"causal": dict(entry, accuracy="99")}})):
        edited[name].write_text(json.dumps({"fingerprint": "f", "settings": {}, "tasks": tasks}))
    untouched = {path: path.read_bytes() for path in [ckpt, task, notes, dump_like, *edited.values()]}
    ok_copy = ["--ckpt", ckpt, "--data_dir", shared_data, "--tasks", "arc_easy", "--task_file", f"arc_easy={task}"]
    piqa_alone = tmp_path / "piqa_alone.jsonl"
    piqa_alone.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    cases = {
        f"--out {ckpt} is the --ckpt input": ok_copy + ["--out", ckpt],
        f"--dump {task} is the --task_file arc_easy input": ok_copy + ["--dump", task],
        "--out and --dump are both": ok_copy + ["--out", tmp_path / "e.json", "--dump", tmp_path / "x/../e.json"],
        f"--out {notes} is not a valid eval.py results file ('fingerprint' is missing": ok_copy + ["--out", notes],
        f"--dump {dump_like} exists and is not an eval.py dump": ok_copy + ["--dump", dump_like],
        "tasks.csqa.causal is not a result with a numeric": ok_copy + ["--out", edited["missing"]],
        "tasks.csqa.causal is not a result": ok_copy + ["--out", edited["string"]],
        "'tasks' is missing or not a JSON object); start afresh with another --out":
            ok_copy + ["--out", edited["list"]],
        f"--out {edited['text']} is not a valid eval.py results file": ok_copy + ["--out", edited["text"]],
        f"--task_file arc_easy={tmp_path} is a folder; arc_easy reads one file":
            ok + ["--tasks", "arc_easy", "--task_file", f"arc_easy={tmp_path}"],
        f"--task_file blimp={task} is a file; blimp reads the folder of blimp":
            ok + ["--tasks", "blimp", "--task_file", f"blimp={task}"],
        "piqa_alone-labels.lst is missing": ok + ["--tasks", "piqa", "--task_file", f"piqa={piqa_alone}"],
        "is not an integer of 64 bits": ok + ["--seed", "123456789012345678901234"],
        "--device=meta cannot run a model": ok + ["--device", "meta"],
        "unrecognized arguments: --lim 2": ok + ["--lim", "2"],
    }
    for expected, args in cases.items():
        with pytest.raises(ValueError) as error:
            ev.main(list(map(str, args)))
        assert expected in str(error.value) and "\n" not in str(error.value), (expected, str(error.value))
    assert all(path.read_bytes() == content for path, content in untouched.items())
    assert not (tmp_path / "e.json").exists() and not list(tmp_path.glob("*.tmp*"))
