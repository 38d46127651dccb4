"""
Zero-shot evaluation of a nanodual checkpoint: nine multiple-choice tasks in four scoring modes (paper §4),
as EVAL_SPEC.md ("spec §n") fixes them; docs/eval.md describes files, modes and results.

    python eval.py --ckpt out/ckpt.pt --tasks all --modes causal,prefix,pll,mc --out results.json

Under MNTP the hidden state at i predicts token i+1 in every mode (paper §3): causal is the AR likelihood
(Eq. 2), prefix lets <s> + context attend bidirectionally (§5.4), pll masks k tokens per continuation
token (App. E/H), mc estimates the diffusion ELBO by Monte Carlo (App. D, Eq. 4).
"""
import contextlib
import csv
import glob
import hashlib
import json
import os
import random
import re
import sys
import time
import zlib
from collections import Counter, namedtuple
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from cli import (ArgumentParser, Progress, RunProgress, arg_type, check_distinct_paths, check_output_file,
                 write_atomically)

# where task files are looked for when --data_dir is not given (README: "Evaluation data")
DEFAULT_DATA_DIR = os.environ.get("NANODUAL_EVAL_DATA", "eval_data")

# task: normalisation, random baseline 100/choices in % (spec §2.1), its files under --data_dir (the
# first that exists wins) and its Hugging Face dataset, config and split (--source hf)
Task = namedtuple("Task", "normalisation baseline files hf")
TASKS = {
    "arc_easy": Task("per_char", 25.0, ["arc/ARC-Easy-Test.jsonl", "arc/arc_easy_test.jsonl"],
                     ("allenai/ai2_arc", "ARC-Easy", "test")),
    "arc_challenge": Task("pmi", 25.0, ["arc/ARC-Challenge-Test.jsonl", "arc/arc_challenge_test.jsonl"],
                          ("allenai/ai2_arc", "ARC-Challenge", "test")),
    "blimp": Task("none", 50.0, ["blimp"], ("nyu-mll/blimp", None, "train")),  # hub: one config per paradigm
    "csqa": Task("pmi", 20.0, ["csqa/dev_rand_split.jsonl"], ("tau/commonsense_qa", None, "validation")),
    "hellaswag": Task("per_char", 25.0, ["hellaswag/hellaswag_val.jsonl", "hellaswag/hellaswag_val_full.txt"],
                      ("Rowan/hellaswag", None, "validation")),
    "mmlu": Task("per_char", 25.0, ["mmlu/test"], ("cais/mmlu", "all", "test")),
    "obqa": Task("pmi", 25.0, ["obqa/test.jsonl", "obqa/test.tsv"], ("allenai/openbookqa", "main", "test")),
    "piqa": Task("per_char", 50.0, ["piqa/valid.jsonl"], ("ybisk/piqa", None, "validation")),
    "siqa": Task("per_char", 100.0 / 3, ["siqa/dev.jsonl"], ("allenai/social_i_qa", None, "validation")),
}
FOLDER_TASKS = ("blimp", "mmlu")  # one file per paradigm or subject
MODES = ("causal", "prefix", "pll", "mc")
UNCONDITIONAL_CONTEXT = "Answer:"  # the PMI reference context of OLMES (spec §3)
OLMES_SUBSAMPLED = ("arc_easy", "hellaswag", "piqa", "siqa")  # spec §1.7


# -----------------------------------------------------------------------------
# Tasks: release files -> Items, with the OLMES cloze prompts of spec §2.1; continuations carry
# their leading space (spec §1.2).

@dataclass
class Item:
    id: str                 # stable across runs: names the item in --dump and seeds its MC masks
    context: str            # "" for BLiMP, whose sentences are scored whole (spec §2.3)
    continuations: list
    gold: int
    subtask: str = ""       # BLiMP paradigm or MMLU subject: both tasks are macro-averaged


def malformed(where, what):
    return ValueError(f"{where}: {what}; fix the file or download it again (README: Evaluation data)")


def checked(where, item):
    """The item, if two or more choices differ and none is empty (repeats occur in the releases: §1.1)."""
    n, empty = len(item.continuations), [i for i, c in enumerate(item.continuations) if not c.strip()]
    if n < 2 or len(set(item.continuations)) < 2:
        raise malformed(where, f"{n} choice(s)" + (", all the same text" if n > 1 else "") +
                        "; an item needs at least two different choices")
    if empty:
        raise malformed(where, f"choice {empty[0]} has empty text; every choice needs words to score")
    return item


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")  # not splitlines(): JSON strings may hold a raw U+2028 or \x0c
        return lines[:-1] if lines[-1] == "" else lines
    except UnicodeDecodeError as e:
        raise malformed(path, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        advice = "; check the file's permissions" if isinstance(e, PermissionError) else ""
        raise ValueError(f"cannot read {path} ({e.strerror}){advice}") from None


def jsonl_records(path):
    """("path:line", record) for each non-blank line."""
    records = []
    for n, line in enumerate(read_lines(path), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise malformed(f"{path}:{n}", f"not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise malformed(f"{path}:{n}", "not a JSON object")
            records.append((f"{path}:{n}", record))
    return records


def get(record, *keys, where, kind=str):
    """record[k0][k1]..., or a one-line error naming `where`."""
    value, name = record, ".".join(keys)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise malformed(where, f"missing field {name!r}")
        value = value[key]
    if not isinstance(value, kind):
        raise malformed(where, f"field {name!r} has the wrong type ({type(value).__name__}: {value!r})")
    return value


def qa_item(where, record, item_id):
    """The AI2 layout of ARC, CSQA and OBQA; gold is the answerKey's position among the labels (spec §2.2)."""
    stem = get(record, "question", "stem", where=where)
    choices = get(record, "question", "choices", where=where, kind=list)
    labels, texts = [get(c, "label", where=where) for c in choices], [get(c, "text", where=where) for c in choices]
    key = get(record, "answerKey", where=where).strip()
    if len(set(labels)) < len(labels):
        raise malformed(where, f"the choice labels {labels} repeat, so the answerKey {key!r} names no single choice")
    if key not in labels:
        raise malformed(where, f"answerKey {key!r} is not one of the choice labels {labels}")
    return checked(where, Item(str(record.get("id", item_id)), f"Question: {stem}\nAnswer:", [" " + t for t in texts],
                               labels.index(key)))


def ai2_record(item_id, stem, labels, texts, key):
    """A question of another layout (MosaicML's ARC, OBQA's TSV, the hub) in the AI2 layout of qa_item."""
    return {"id": item_id, "answerKey": key,
            "question": {"stem": stem, "choices": [{"label": a, "text": t} for a, t in zip(labels, texts)]}}


def read_qa(path):
    items = []
    for n, (where, record) in enumerate(jsonl_records(path)):
        if "query" in record:  # the MosaicML variant of ARC
            query, choices = get(record, "query", where=where), get(record, "choices", where=where, kind=list)
            gold = get(record, "gold", where=where, kind=int)
            if not query.startswith("Question: ") or not 0 <= gold < len(choices):
                raise malformed(where, "expected a 'Question: ...' query and 0 <= gold < number of choices")
            record = ai2_record(f"{os.path.basename(path)}:{n}", query.removeprefix("Question: "),
                                [str(i) for i in range(len(choices))], choices, str(gold))
        items.append(qa_item(where, record, where))
    return items


def read_obqa_tsv(path):
    """The release's Data/Main/test.tsv: ID, Question Stem, Choices "(A) .. (B) ..", ..., Answer Key."""
    lines, items = read_lines(path), []
    header, need = lines[0].split("\t") if lines else [], ("ID", "Question Stem", "Choices", "Answer Key")
    if any(name not in header for name in need):
        raise malformed(f"{path}:1", f"expected the header columns {need}")
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cols = dict(zip(header, line.split("\t")))
        choices = re.findall(r"\(([A-Z])\) (.*?)(?= \([A-Z]\) |$)", cols.get("Choices", ""))
        if len(cols) != len(header) or not choices:
            raise malformed(f"{path}:{n}", f"expected {len(header)} tab-separated columns with '(A) ...' choices")
        items.append(qa_item(f"{path}:{n}", ai2_record(cols["ID"], cols["Question Stem"], *zip(*choices),
                                                       cols["Answer Key"]), cols["ID"]))
    return items


def hellaswag_preprocess(text):
    """OLMES's HellaSwag clean-up (spec §2.2): WikiHow [title]/[step] markers out, double spaces in."""
    text = re.sub(r"\.? \[title\]", ". ", text.strip())
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_item(where, record, item_id):
    ctx = get(record, "ctx_a", where=where) + " " + get(record, "ctx_b", where=where).capitalize()
    query = hellaswag_preprocess(get(record, "activity_label", where=where) + ": " + ctx)
    endings = get(record, "endings", where=where, kind=list)
    label = str(get(record, "label", where=where, kind=(int, str)))  # int in the release, str on HF
    if not label.isdigit() or int(label) >= len(endings):
        raise malformed(where, f"label {label!r} is not an index into the {len(endings)} endings")
    return checked(where, Item(str(record.get("ind", item_id)), query, [" " + hellaswag_preprocess(e) for e in endings],
                               int(label)))


def read_hellaswag_text(path):
    """The 6-line text variant: "label: ctx", gold, 4 endings, already preprocessed (ctx_b's capital is lost)."""
    lines, items = read_lines(path), []
    if len(lines) % 6:
        raise malformed(f"{path}:{len(lines) - len(lines) % 6 + 1}", "the last item has fewer than 6 lines")
    for start in range(0, len(lines), 6):
        context, label, *endings = lines[start:start + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise malformed(f"{path}:{start + 2}", f"label {label!r} should be 0..3")
        items.append(checked(f"{path}:{start + 1}", Item(str(start // 6), hellaswag_preprocess(context),
                                                         [" " + hellaswag_preprocess(e) for e in endings], int(label))))
    return items


def mmlu_item(where, subject, question, choices, gold, item_id, description=True):
    """OLMES v0.1 prepends the subject line even at 0 shots (spec §2.2)."""
    about = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return checked(where, Item(item_id, (about if description else "") + f"Question: {question.strip()}\nAnswer:",
                               [" " + c for c in choices], gold, subtask=subject))


def read_mmlu(folder, description=True):
    """<subject>_test.csv: no header; question, A, B, C, D, answer letter (spec §2.2)."""
    paths, items = sorted(glob.glob(os.path.join(folder, "*_test.csv"))), []
    if not paths:
        raise FileNotFoundError(f"no *_test.csv files in {folder}")
    for path in paths:
        subject = os.path.basename(path)[: -len("_test.csv")]
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.reader(f)
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                        raise malformed(where, "expected 6 columns: question, A, B, C, D, answer letter A-D")
                    items.append(mmlu_item(where, subject, row[0], row[1:5], "ABCD".index(row[5].strip()),
                                           f"{subject}/{reader.line_num}", description))
        except (UnicodeDecodeError, csv.Error) as e:
            raise malformed(path, f"not a readable CSV ({e})") from None
    return items


# PIQA and SIQA: flat records, their labels in a .lst file beside the jsonl, one per line.
# task: (prompt template over the record's fields, the choice fields, the labels in choice order)
FLAT_LAYOUTS = {
    "piqa": ("Goal: {goal}\nAnswer:", ("sol1", "sol2"), ("0", "1")),
    "siqa": ("Question: {context} {question}\nAnswer:", ("answerA", "answerB", "answerC"), ("1", "2", "3")),
}


def flat_item(task, where, record, label, item_id):
    template, choice_fields, labels = FLAT_LAYOUTS[task]
    prompt = template.format(**{name: get(record, name, where=where) for name in re.findall(r"{(\w+)}", template)})
    choices = [" " + get(record, name, where=where) for name in choice_fields]
    return checked(where, Item(item_id, prompt, choices, labels.index(str(label))))


def read_flat(task, path):
    records, labels_path = jsonl_records(path), path[: -len(".jsonl")] + "-labels.lst"
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"{labels_path} is missing (the labels that go with {path}); "
                                f"download the task again (README: Evaluation data)")
    valid = FLAT_LAYOUTS[task][2]
    # blank lines are skipped, as in the jsonl, without shifting the line numbers
    labels = [(n, s) for n, s in enumerate(map(str.strip, read_lines(labels_path)), 1) if s]
    for n, label in labels:
        if label not in valid:
            raise malformed(f"{labels_path}:{n}", f"label {label!r} should be one of {valid}")
    if len(labels) != len(records):
        raise malformed(labels_path, f"{len(labels)} labels for {len(records)} items")
    return [flat_item(task, where, record, label, str(n))
            for n, ((where, record), (_, label)) in enumerate(zip(records, labels))]


def blimp_item(where, record):
    uid = get(record, "UID", where=where)
    # not `checked`: the release has 7 pairs of one sentence twice (passive_1.jsonl:325), a tie (spec §2.3)
    return Item(f"{uid}/{record.get('pairID', where)}", "",
                [get(record, "sentence_good", where=where), get(record, "sentence_bad", where=where)], 0, subtask=uid)


def hf_items(name, rows, mmlu_description=True):
    """--source hf: a task's rows on the hub, through the same item builders."""
    items = []
    for n, row in enumerate(rows):
        where = f"{TASKS[name].hf[0]} row {n}"
        if name in FLAT_LAYOUTS:
            items.append(flat_item(name, where, row, row["label"], str(n)))
        elif name == "hellaswag":
            items.append(hellaswag_item(where, row, str(n)))
        elif name == "mmlu":
            items.append(mmlu_item(where, row["subject"], row["question"], row["choices"], int(row["answer"]),
                                   f"{row['subject']}/{n}", mmlu_description))
        elif name == "blimp":
            items.append(blimp_item(where, row))
        else:
            record = ai2_record(row["id"], row["question_stem"] if name == "obqa" else row["question"],
                                row["choices"]["label"], row["choices"]["text"], row["answerKey"])
            items.append(qa_item(where, record, str(n)))
    return items


def hf_rows(name):
    try:
        import datasets
    except ImportError:
        raise ValueError("--source hf needs the datasets package (pip install datasets); "
                         "or use the release files with --data_dir") from None
    path, config, split = TASKS[name].hf
    try:
        configs = datasets.get_dataset_config_names(path) if name == "blimp" else [config]
        return [row for c in configs for row in datasets.load_dataset(path, c, split=split)]
    except Exception as e:  # offline, renamed dataset, script-based loader refused, ...
        raise ValueError(f"could not load {path} from the Hugging Face hub ({type(e).__name__}); "
                         f"use the release files with --data_dir instead") from None


def read_task(name, path, mmlu_description):
    """The items of a task's file or folder, in any of the layouts it comes in (docs/eval.md)."""
    if name == "blimp":
        paradigms = sorted(glob.glob(os.path.join(path, "*.jsonl")))
        if not paradigms:
            raise FileNotFoundError(f"no <paradigm>.jsonl files in {path}")
        return [blimp_item(where, record) for p in paradigms for where, record in jsonl_records(p)]
    if name == "mmlu":
        return read_mmlu(path, mmlu_description)
    if name == "hellaswag":
        return ([hellaswag_item(where, record, where) for where, record in jsonl_records(path)]
                if path.endswith(".jsonl") else read_hellaswag_text(path))
    if name in FLAT_LAYOUTS:
        return read_flat(name, path)
    return read_obqa_tsv(path) if name == "obqa" and path.endswith(".tsv") else read_qa(path)


def load_task(name, data_dir=DEFAULT_DATA_DIR, limit=None, olmes_subsample=False, mmlu_description=True, path=None,
              source="files"):
    """Items of one task from data_dir, `path` (--task_file) or the hub; OLMES's subsample (spec §1.7), then
    the first `limit` per sub-task. FileNotFoundError when data_dir lacks it; ValueError for a bad file."""
    explicit = path is not None
    if source == "hf":
        items = hf_items(name, hf_rows(name), mmlu_description)
    else:
        if not explicit:
            candidates = [os.path.join(data_dir, c) for c in TASKS[name].files]
            path = next((c for c in candidates if os.path.exists(c)), None)
            if path is None:
                raise FileNotFoundError(" or ".join(candidates))
        elif not os.path.exists(path):
            raise ValueError(f"--task_file {name}={path} does not exist")
        elif os.path.isdir(path) != (name in FOLDER_TASKS):
            kind = "the folder of" if name in FOLDER_TASKS else "one file, not a folder, like"
            raise ValueError(f"--task_file {name}={path} is {'a folder' if os.path.isdir(path) else 'a file'}; "
                             f"{name} reads {kind} {TASKS[name].files[0]}")
        try:
            items = read_task(name, path, mmlu_description)
        except FileNotFoundError as e:
            if not explicit:
                raise
            raise ValueError(f"--task_file {name}={path}: {e}") from None  # not a skipped task: the user named it
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if not items:  # else every score would be the mean of nothing
            raise malformed(path, "holds no items")
    if olmes_subsample and name in OLMES_SUBSAMPLED and len(items) > 1000:
        items = random.Random(1234).sample(items, 1000)
    if limit is None:
        return items
    kept, taken = [], Counter()  # the first `limit` of each sub-task
    for it in items:
        taken[it.subtask] += 1
        if taken[it.subtask] <= limit:
            kept.append(it)
    return kept


# -----------------------------------------------------------------------------
# Tokenisation (spec §1.3-1.4): [<s>] + enc(context + continuation), encoded jointly as in training

def encode_pairs(tokenizer, pairs, bos_id):
    """[(context, continuation)] -> (token arrays, continuation starts, prefix-property flags). Where a
    token straddles the boundary, it is scored as continuation (spec §1.4)."""
    contexts = tokenizer.encode_batch([c for c, _ in pairs])
    wholes = tokenizer.encode_batch([c + x for c, x in pairs])
    ids, starts, prefix_ok = [], [], []
    for (context, continuation), ctx, whole in zip(pairs, contexts, wholes):
        n = len(os.path.commonprefix([ctx, whole]))
        if n == len(whole):
            raise ValueError(f"continuation {continuation!r} after {context[-40:]!r} has no tokens of its own; "
                             f"continuations must be non-empty")
        ids.append(np.array([bos_id] + whole, dtype=np.int64))
        starts.append(1 + n)
        prefix_ok.append(n == len(ctx))
    return ids, starts, prefix_ok


def rolling_windows(ids, start, max_len):
    """[(window ids, start)]: a sequence that is too long has its continuation cut into pieces of
    max_len // 2 tokens, each scored after the tokens before it, <s> first (spec §1.5)."""
    if len(ids) <= max_len:
        return [(ids, start)]
    piece, windows = max(1, max_len // 2), []
    for first in range(start, len(ids), piece):
        end = min(first + piece, len(ids))
        left = max(1, end - max_len + 1)  # the first token after <s> that still fits
        windows.append((np.concatenate([ids[:1], ids[left:end]]), first - left + 1))
    return windows


# -----------------------------------------------------------------------------
# The batched scorer. Every mode reduces to rows: the sequence `seq` of the chunk, its input `length`,
# (R, T) masks of the positions that are <mask> (`masked`) and of those whose hidden state p scores the
# clean token p+1 (`read`, MNTP). Only the read positions go through the LM head.
Rows = namedtuple("Rows", "seq length masked read")


@torch.inference_mode()
def run_rows(model, attention, table, starts, rows, batch_size=64, batch_tokens=None, autocast=False,
             on_progress=None):
    """Sum of log p(clean token p+1) over each row's read positions; `table`: the chunk's clean sequences,
    padded, one column wider than the longest row. on_progress(share of the row tokens done)."""
    cfg, device = model.config, table.device
    # a CPU runs a small model fastest on batches that stay in its caches, a GPU wants large ones
    batch_tokens = batch_tokens or (16384 if device.type == "cuda" else 2048)
    sums, done = np.zeros(len(rows.seq)), 0.0
    order = np.argsort(-rows.length, kind="stable")  # longest first: an out-of-memory shows at once
    first = 0
    while first < len(order):
        T = int(rows.length[order[first]])
        count = max(1, min(batch_size, batch_tokens // T, len(order) - first))
        batch = order[first:first + count]
        first += count
        seq = torch.from_numpy(rows.seq[batch]).to(device)
        clean = table[seq, :T + 1]
        valid = torch.arange(T, device=device) < torch.from_numpy(rows.length[batch]).to(device)[:, None]
        x = torch.where(torch.from_numpy(rows.masked[batch, :T]).to(device), cfg.mask_id, clean[:, :T])
        x = torch.where(valid, x, cfg.pad_id)
        prefix_len = starts[seq] if attention == "prefix" else None
        # pads form their own document: no real token attends to them
        doc_ids = (~valid).int() if attention == "bidirectional" and not bool(valid.all()) else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            h = model.hidden_states(x, mode=attention, prefix_len=prefix_len, doc_ids=doc_ids)
        row, p = torch.from_numpy(rows.read[batch, :T]).to(device).nonzero(as_tuple=True)
        # log softmax(lm_head(h))[target] in fp32 (spec §4.1), a slice at a time to keep the logits small
        logp, step = torch.zeros(len(row), dtype=torch.float64, device=device), max(1, 2 ** 25 // cfg.vocab_size)
        with torch.autocast(device.type, enabled=False):
            for i in range(0, len(row), step):
                r, q = row[i:i + step], p[i:i + step]
                logits = model.lm_head(h[r, q].float())
                logp[i:i + step] = logits.gather(1, clean[r, q + 1][:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        sums[batch] += torch.zeros(count, dtype=torch.float64, device=device).index_add_(0, row, logp).cpu().numpy()
        done += float(rows.length[batch].sum())
        if on_progress is not None:
            on_progress(done / float(rows.length.sum()))
    return sums


def causal_rows(lengths, starts):
    """One row per sequence: input s_0..s_{L-2}, read P-1..L-2 (spec §4.2; prefix mode §4.3 too)."""
    L, P = np.asarray(lengths), np.asarray(starts)
    pos = np.arange(int(L.max()) - 1)
    read = (pos >= P[:, None] - 1) & (pos <= L[:, None] - 2)
    return Rows(np.arange(len(L)), L - 1, np.zeros_like(read), read)


def pll_rows(lengths, starts, k, right_context="visible", tail="append"):
    """One row per continuation position j (spec §4.4): <mask> over j..j+k-1, read z_{j-1}; the tokens after
    the masks stay ("visible", BERTS §2.2) or go; at the end, tail "append" keeps k masks past the end."""
    L, P = np.asarray(lengths), np.asarray(starts)
    seq = np.repeat(np.arange(len(L)), L - P)
    j = np.concatenate([np.arange(p, n) for p, n in zip(P, L)])
    end = j + k if tail == "append" else np.minimum(j + k, L[seq])  # one past the last mask
    length = np.maximum(L[seq], end) if right_context == "visible" else end
    pos = np.arange(int(length.max()))
    return Rows(seq, length, (pos >= j[:, None]) & (pos < end[:, None]), pos == j[:, None] - 1)


def mc_mask_patterns(seed, n_cont, n_samples, masking="count"):
    """(n_samples, n_cont) seeded masks of the MC estimator at t_j = j/N (spec §4.5), and their weights:
    "count" masks ceil(t_j * n_cont) tokens, weight n_cont / count; "bernoulli" (MDLM) weight 1 / t_j."""
    noise = np.random.default_rng(seed).random((n_samples, n_cont))
    t = np.arange(1, n_samples + 1) / n_samples
    if masking == "bernoulli":
        return noise < t[:, None], 1.0 / t
    counts = -(-np.arange(1, n_samples + 1) * n_cont // n_samples)  # integer ceil
    ranks = noise.argsort(axis=1).argsort(axis=1)
    return ranks < counts[:, None], n_cont / counts


def mc_rows(lengths, starts, seeds, n_samples, masking):
    """One row per distinct mask pattern of each sequence; per sequence, each sample's row and weight."""
    L, P = np.asarray(lengths), np.asarray(starts)
    patterns, inverses, weights = [], [], []
    for seed, start, n in zip(seeds, P, L):
        pattern, weight = mc_mask_patterns(seed, int(n - start), n_samples, masking)
        unique, inverse = np.unique(pattern, axis=0, return_inverse=True)
        patterns.append(np.pad(unique, ((0, 0), (start, L.max() - n))))  # over the continuation
        inverses.append(inverse.reshape(-1))
        weights.append(weight)
    seq = np.repeat(np.arange(len(L)), [len(u) for u in patterns])
    masked = np.concatenate(patterns)
    read = np.zeros_like(masked)
    read[:, :-1] = masked[:, 1:]  # the masked token at i is read at z_{i-1} (MNTP)
    return Rows(seq, L[seq], masked, read), inverses, weights


# -----------------------------------------------------------------------------
# The four modes: log-likelihood estimates for a list of sequences (ids, start)

def max_length(mode, block_size, k=1, tail="append"):
    """Longest sequence a mode can score in one row of block_size tokens."""
    if mode in ("causal", "prefix"):
        return block_size + 1  # the last token is a target, never an input
    if mode == "pll" and tail == "append":
        return block_size - k + 1  # a row may carry up to k-1 masks past the end
    return block_size


def scoring_windows(seqs, limit, mode, n_samples=128):
    """Every window the sequences are scored in, with its sequence and number there, and its rows and
    row tokens: the work behind progress and ETA (MC has at most 2^n - 1 distinct patterns)."""
    per_seq = [rolling_windows(ids, start, limit) for ids, start in seqs]
    windows = [window for ws in per_seq for window in ws]
    owner = np.repeat(np.arange(len(seqs)), [len(ws) for ws in per_seq])
    number = np.array([w for ws in per_seq for w in range(len(ws))], dtype=np.int64)
    lengths = np.array([len(ids) for ids, _ in windows])
    cont = lengths - np.array([start for _, start in windows])
    rows = {"pll": cont, "mc": np.minimum(n_samples, 2.0 ** np.minimum(cont, 60) - 1)}.get(mode, np.ones(len(windows)))
    return windows, owner, number, rows, rows * lengths


def sequence_logliks(model, seqs, mode, *, k=1, right_context="visible", tail="append", n_samples=128,
                     mc_masking="count", seeds=None, batch_size=64, batch_tokens=None, autocast=False,
                     on_progress=None, chunk_cells=1 << 23):
    """(ll, MC standard error, truncated) of each continuation in `mode`; seqs: [(ids, start)]. A long
    sequence's windows add up their estimates and variances. Chunks of at most `chunk_cells` row x position
    cells bound the memory; on_progress(share of the work done) follows every forward pass."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    limit = max_length(mode, model.config.block_size, k, tail=tail)
    if limit < 3:  # <s>, one token of context and one to score
        raise ValueError(f"pll_k={k} leaves no room in the model's window of {model.config.block_size} tokens; "
                         f"use a smaller k")
    windows, owner, number, rows_per_window, work = scoring_windows(seqs, limit, mode, n_samples)
    lengths = np.array([len(ids) for ids, _ in windows])
    ll, variance = np.zeros(len(windows)), np.zeros(len(windows))
    attention = mode if mode in ("causal", "prefix") else "bidirectional"
    device = next(model.parameters()).device
    work_total, work_before = max(float(work.sum()), 1.0), 0.0
    order, first = np.argsort(-lengths, kind="stable"), 0
    while first < len(order):
        width = int(lengths[order[first]]) + k + 1
        last, cells = first, 0
        while last < len(order) and (last == first or cells + rows_per_window[order[last]] * width <= chunk_cells):
            cells += rows_per_window[order[last]] * width
            last += 1
        chunk, first = order[first:last], last
        L, P = lengths[chunk], np.array([windows[i][1] for i in chunk])
        table = np.full((len(chunk), width), model.config.pad_id, dtype=np.int64)
        for r, i in enumerate(chunk):
            table[r, :L[r]] = windows[i][0]
        if mode == "pll":
            rows = pll_rows(L, P, k, right_context, tail)
        elif mode == "mc":
            # the first window keeps the sequence's seed; later ones get their own stream from it
            window_seeds = [seeds[owner[i]] if number[i] == 0 else [seeds[owner[i]], int(number[i])] for i in chunk]
            rows, inverses, weights = mc_rows(L, P, window_seeds, n_samples, mc_masking)
        else:
            rows = causal_rows(L, P)
        chunk_work = float(work[chunk].sum())
        progress = on_progress and (lambda f: on_progress(min(1.0, (work_before + chunk_work * f) / work_total)))
        sums = run_rows(model, attention, torch.from_numpy(table).to(device), torch.from_numpy(P).to(device), rows,
                        batch_size, batch_tokens, autocast, progress)
        work_before += chunk_work
        bounds = np.concatenate([[0], np.cumsum(np.bincount(rows.seq, minlength=len(chunk)))])
        for r, i in enumerate(chunk):
            row_sums = sums[bounds[r]:bounds[r + 1]]
            if mode == "mc":  # sample j: its weight times log p summed over its masked tokens (spec §4.5)
                values = weights[r] * row_sums[inverses[r]]
                ll[i], variance[i] = values.mean(), values.var(ddof=1) / n_samples
            else:
                ll[i] = row_sums.sum()
    # a sequence's estimate is the sum over its windows; independent MC estimates add their variances
    return (np.bincount(owner, ll, minlength=len(seqs)), np.sqrt(np.bincount(owner, variance, minlength=len(seqs))),
            np.array([len(ids) > limit for ids, _ in seqs], dtype=bool))


# -----------------------------------------------------------------------------
# Task scores (spec §3, §1.6)

def n_chars(continuation, count_space=True):
    """Per-char normalisation's divisor: the space counted as OLMES does (spec §3), or not (LMH acc_norm)."""
    return len(continuation) if count_space or not continuation.startswith(" ") else len(continuation) - 1


def choice_score(normalisation, ll, ll_uncond=None, chars=None):
    if normalisation == "per_char":
        return ll / chars
    if normalisation == "pmi":
        return ll - ll_uncond  # log P(c|x) - log P(c|"Answer:"): a ratio of probabilities (spec §3)
    return ll


def normalized_score(accuracy, baseline):
    """Paper §4: random baseline -> 0, perfect -> 100."""
    return 100.0 * (accuracy - baseline) / (100.0 - baseline)


def task_accuracy(items, correct):
    """Accuracy in %, macro-averaged over sub-tasks where the task has them (BLiMP, MMLU)."""
    by_subtask = {}
    for item, ok in zip(items, correct):
        by_subtask.setdefault(item.subtask, []).append(ok)
    subtasks = {name: 100.0 * float(np.mean(oks)) for name, oks in by_subtask.items()}
    return float(np.mean(list(subtasks.values()))), (subtasks if len(subtasks) > 1 or "" not in subtasks else None)


# -----------------------------------------------------------------------------
# evaluate(): tasks x modes -> results

# the options with a fixed set of values, the default first (the alternatives: spec §8, docs/eval.md)
CHOICES = {"pll_right_context": ("visible", "dropped"), "pll_tail": ("append", "truncate"),
           "mc_masking": ("count", "bernoulli"), "random_baseline": ("task", "items"), "source": ("files", "hf")}


@dataclass
class Settings:
    """Every option of an evaluation (`settings` in the results JSON; `eval.py --help` says what each does)."""
    limit: int = None
    batch_size: int = 64
    batch_tokens: int = None         # None: 2048 on CPU, 16384 on CUDA
    pll_k: tuple = (1, 6)
    pll_right_context: str = "visible"
    pll_tail: str = "append"
    mc_samples: int = 128
    mc_masking: str = "count"
    random_baseline: str = "task"
    seed: int = 0
    per_char_space: bool = True
    mmlu_description: bool = True
    olmes_subsample: bool = False
    source: str = "files"
    task_files: dict = field(default_factory=dict)  # task -> file overriding the data_dir lookup

    def __post_init__(self):
        self.pll_k = tuple(self.pll_k)
        if not self.pll_k or not all(isinstance(k, int) and k >= 1 for k in self.pll_k):
            raise ValueError(f"pll_k={list(self.pll_k)}: every k counts masks and must be an integer >= 1")
        if self.mc_samples < 2:
            raise ValueError("mc_samples must be >= 2 (a standard error needs two samples)")
        if not set(self.task_files) <= set(TASKS):
            raise ValueError(f"task_files names unknown tasks; valid tasks: {', '.join(TASKS)}")
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be {' or '.join(map(repr, valid))}")


# the settings that change a score (the others say what to run, or how to batch it)
SCORING = ("device", "autocast_bf16", "pll_k", "pll_right_context", "pll_tail", "mc_samples", "mc_masking",
           "random_baseline", "seed", "per_char_space")


def parse_names(value, valid, what):
    names = value.split(",") if isinstance(value, str) else value
    names = list(valid) if value == "all" else [v.strip() for v in names]
    unknown = [v for v in names if v not in valid]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"valid {what}s: {', '.join(valid)}{' or all' if what == 'task' else ''}")
    return list(dict.fromkeys(names))  # a name given twice runs once


def build_requests(tokenizer, task, items, seed, bos_id):
    """Every sequence a task scores: one per (item, choice), and for PMI one per distinct continuation
    after "Answer:" (spec §5)."""
    pairs = [(it.context, c) for it in items for c in it.continuations]
    keys = [f"{seed}|{task}|{it.id}|{ci}" for it in items for ci in range(len(it.continuations))]
    uncond = {}
    if TASKS[task].normalisation == "pmi":
        uncond = {c: len(pairs) + n for n, c in enumerate(dict.fromkeys(c for _, c in pairs))}
        pairs += [(UNCONDITIONAL_CONTEXT, c) for c in uncond]
        keys += [f"{seed}|{task}|uncond|{c}" for c in uncond]
    ids, starts, prefix_ok = encode_pairs(tokenizer, pairs, bos_id)
    return dict(seqs=list(zip(ids, starts)), seeds=[zlib.crc32(key.encode("utf-8")) for key in keys], uncond=uncond,
                prefix_mismatches=int(len(prefix_ok) - sum(prefix_ok)))


def score_task(task, items, req, mode, ll, stderr, truncated, settings, dump, k=None):
    """Accuracy etc. of one task under one log-likelihood estimate; hands the --dump lines to `dump`."""
    normalisation, baseline = TASKS[task][:2]
    if settings.random_baseline == "items":  # differs from 100/k only where items have other counts (ARC)
        baseline = float(np.mean([100.0 / len(it.continuations) for it in items]))
    correct, lines, seq = [], [], 0
    for it in items:
        scores = []
        for ci, cont in enumerate(it.continuations):
            u, chars = req["uncond"].get(cont), n_chars(cont, settings.per_char_space)
            scores.append(choice_score(normalisation, ll[seq], None if u is None else ll[u], chars))
            if dump is not None:
                ids, start = req["seqs"][seq]
                lines.append({"task": task, "mode": mode, "k": k, "item": it.id, "subtask": it.subtask or None,
                              "choice": ci, "gold": it.gold, "context": it.context, "continuation": cont,
                              "n_tokens": int(len(ids) - start), "n_chars": chars, "ll": float(ll[seq]),
                              "ll_uncond": None if u is None else float(ll[u]), "normalizer": normalisation,
                              "score": float(scores[-1]), "truncated": bool(truncated[seq])})
                if mode == "mc":
                    lines[-1].update(seed=req["seeds"][seq], samples=settings.mc_samples,
                                     masking=settings.mc_masking, stderr=float(stderr[seq]))
            seq += 1
        correct.append(int(np.argmax(scores)) == it.gold)  # first maximum wins (spec §1.1)
    if dump is not None:
        dump(lines)
    accuracy, subtasks = task_accuracy(items, correct)
    out = {"accuracy": accuracy, "normalized": normalized_score(accuracy, baseline), "random_baseline": baseline}
    return dict(out, subtasks=subtasks) if subtasks else out


def evaluate_mode(model, task, items, req, mode, settings, autocast, dump, run=None):
    """One (task, mode) pair: its results entry. `run`: the whole run's progress, None for silence."""
    per_k = {}
    for k in settings.pll_k if mode == "pll" else (1,):
        key, start = (task, mode, k), time.time()
        bar = run and Progress(len(items), desc=f"{task} {mode}" + (f" k={k}" if mode == "pll" else ""),
                               unit="items", suffix=run.line)

        def advance(fraction):  # items' worth of the work done, so items/s and ETA hold throughout
            run.advance(key, fraction)
            bar.update(int(fraction * len(items)) - bar.count)

        ll, stderr, truncated = sequence_logliks(
            model, req["seqs"], mode, k=k, right_context=settings.pll_right_context, tail=settings.pll_tail,
            n_samples=settings.mc_samples, mc_masking=settings.mc_masking, seeds=req["seeds"],
            batch_size=settings.batch_size, batch_tokens=settings.batch_tokens, autocast=autocast,
            on_progress=bar and advance)
        if bar:
            advance(1.0)
            bar.close()
        per_k[k] = score_task(task, items, req, mode, ll, stderr, truncated, settings, dump,
                              k if mode == "pll" else None)
        per_k[k]["seconds"] = time.time() - start
    best = max(per_k, key=lambda k: per_k[k]["normalized"])  # per-task max over k (spec §4.4)
    entry = {**per_k[best], "n_items": len(items), "prefix_mismatches": req["prefix_mismatches"],
             "truncated": int(truncated.sum()), "seconds": sum(r["seconds"] for r in per_k.values())}
    if mode == "pll":
        entry["best_k"] = best
        entry["k"] = {str(k): {"accuracy": r["accuracy"], "normalized": r["normalized"]} for k, r in per_k.items()}
    if mode == "mc":
        entry["stderr"] = {"samples": settings.mc_samples, "mean": float(stderr.mean()),
                           "median": float(np.median(stderr)), "max": float(stderr.max())}
    return entry


# -----------------------------------------------------------------------------
# Held-out text (docs/eval.md: Held-out loss): the paper judges bidirectional use by PLL (§4), so a
# dataset's validation windows are scored by PLL beside the causal likelihood, on the same tokens.

def heldout_sequences(data_dir, block_size, n_windows, bos_id):
    """train.py's validation windows (data.val_windows), one token shorter so that PLL's last <mask> still
    fits the model's window, cut at document starts so that no token sees another document: [(piece, 1)]."""
    import data
    x, y, _ = data.val_windows(data_dir, block_size - 1, n_windows)
    seqs = []
    for w in torch.cat([x, y[:, -1:]], dim=1).numpy():
        cuts = sorted({0, len(w), *np.flatnonzero(w == bos_id).tolist()})
        seqs += [(w[a:b], 1) for a, b in zip(cuts, cuts[1:]) if b - a >= 2]
    return seqs, len(x)


def heldout_losses(model, tokenizer, data_dir, n_windows, autocast=False, batch_size=64, batch_tokens=None,
                   progress=True):
    """Held-out loss in nats per token, causal and PLL (k = 1: one <mask> per token). Each piece is scored
    from its second token, the tokens train.py's AR validation loss scores: causal mode is that loss on
    these windows, and pll its bidirectional counterpart."""
    import data
    if not data.same_tokenizer(tokenizer.to_spec(), data.Tokenizer.load(data_dir).to_spec()):
        raise ValueError(f"--heldout_data {data_dir} has another tokenizer than the checkpoint; give the folder "
                         f"of the dataset the model was trained on")
    seqs, n_windows = heldout_sequences(data_dir, model.config.block_size, n_windows, model.config.bos_id)
    tokens, start = sum(len(ids) - 1 for ids, _ in seqs), time.time()
    entry = {"data_dir": os.path.abspath(data_dir), "windows": n_windows, "tokens": tokens}
    for mode in ("causal", "pll"):
        bar = Progress(100, desc=f"held-out {mode}", unit="%") if progress else None
        ll, _, truncated = sequence_logliks(model, seqs, mode, k=1, batch_size=batch_size, batch_tokens=batch_tokens,
                                            autocast=autocast,
                                            on_progress=bar and (lambda f: bar.update(int(100 * f) - bar.count)))
        assert not truncated.any(), "a held-out piece longer than the model's window"
        entry[f"{mode}_loss"] = float(-ll.sum() / tokens)
        if bar:
            bar.close()
    entry["seconds"] = time.time() - start
    if progress:
        print(f"eval.py: held-out ({n_windows} windows, {tokens:,} tokens of {data_dir}): causal loss "
              f"{entry['causal_loss']:.4f}, PLL loss {entry['pll_loss']:.4f}, {entry['seconds']:.1f}s", flush=True)
    return entry


def evaluate(model, tokenizer, tasks="all", modes=("causal",), data_dir=DEFAULT_DATA_DIR, dump=None,
             checkpoint=None, progress=True, autocast=None, out=None, heldout=None, **options):
    """The results dict (docs/eval.md) of `tasks` ("all", "none", names or {name: [Item]}) in `modes`; `options`:
    the fields of Settings. `out` is written after every (task, mode) pair, and what it holds is kept.
    heldout: (dataset folder, number of validation windows) to score as heldout_losses does."""
    settings = Settings(**options)
    modes = parse_names(modes, MODES, "mode")
    given = {} if tasks == "none" else {name: tasks[name] if isinstance(tasks, dict) else None
                                        for name in parse_names(tasks, TASKS, "task")}
    device, cfg = next(model.parameters()).device, model.config
    autocast = device.type == "cuda" if autocast is None else autocast
    if (tokenizer.bos_id, tokenizer.mask_id, tokenizer.pad_id) != (cfg.bos_id, cfg.mask_id, cfg.pad_id):
        raise ValueError("the tokenizer's <s>/<mask>/<pad> ids differ from the model's; "
                         "use the checkpoint's own tokenizer")
    results = {"checkpoint": checkpoint, "fingerprint": fingerprint(model, tokenizer), "run": run_info(model),
               "settings": {"tasks": list(given), "modes": modes, "data_dir": data_dir, "device": str(device),
                            "autocast_bf16": autocast, **asdict(settings)},
               "complete": False, "tasks": {}, "average": {}, "skipped": {}, "items_sha256": {}}
    loaded = {}  # every task read first, so that a malformed file fails before any model time is spent
    for name, items in given.items():
        try:
            items = items if items is not None else load_task(
                name, data_dir, settings.limit, settings.olmes_subsample, settings.mmlu_description,
                settings.task_files.get(name), settings.source)
        except FileNotFoundError as e:
            results["skipped"][name] = str(e)
            print(f"eval.py: skipping {name}: not found ({e})", flush=True)
            continue
        if not items:
            raise ValueError(f"task {name} has no items to evaluate")
        loaded[name] = items
        # the items as scored: changes with the task file's content, --limit, the subsample...
        results["items_sha256"][name] = hashlib.sha256(json.dumps([vars(it) for it in items]).encode()).hexdigest()
    keep_results(out, results, modes, dump)
    todo = [(name, mode) for name in loaded for mode in modes if mode not in results["tasks"].get(name, {})]
    requests = {name: build_requests(tokenizer, name, loaded[name], settings.seed, cfg.bos_id)
                for name in dict.fromkeys(name for name, _ in todo)}
    for name, req in requests.items():
        if req["prefix_mismatches"]:
            print(f"eval.py: {name}: {req['prefix_mismatches']} of {len(req['seqs'])} sequences break the "
                  f"tokenisation prefix property; their boundary token is scored as continuation", flush=True)
    # the whole run's work: the row tokens of every (task, mode, k) pass
    run = RunProgress({(name, mode, k): float(scoring_windows(
        requests[name]["seqs"], max_length(mode, cfg.block_size, k, tail=settings.pll_tail), mode,
        settings.mc_samples)[4].sum()) for name, mode in todo for k in (settings.pll_k if mode == "pll" else (1,))})
    dump_file = open(dump, "w", encoding="utf-8") if dump else None

    def write_dump(lines):
        try:
            dump_file.writelines(json.dumps(line) + "\n" for line in lines)
            dump_file.flush()
        except OSError as e:
            raise OSError(f"cannot write --dump {dump} ({e.strerror}); free some space or give another --dump") \
                from None

    def save():
        scores = {mode: [e[mode]["normalized"] for e in results["tasks"].values() if mode in e] for mode in MODES}
        results["average"] = {mode: float(np.mean(values)) for mode, values in scores.items() if values}
        if out and (results["tasks"] or results.get("heldout")):
            write_atomically("--out", out, lambda f: json.dump(results, f, indent=2))

    try:
        if heldout:
            results["heldout"] = heldout_losses(model, tokenizer, *heldout, autocast=autocast,
                                                batch_size=settings.batch_size, batch_tokens=settings.batch_tokens,
                                                progress=progress)
            save()
        for name, mode in todo:
            entry = evaluate_mode(model, name, loaded[name], requests[name], mode, settings, autocast,
                                  write_dump if dump_file else None, run if progress else None)
            if progress:
                best_k = f", best k={entry['best_k']}" if "best_k" in entry else ""
                print(f"eval.py: {name} {mode}: accuracy {entry['accuracy']:.1f}% (normalised "
                      f"{entry['normalized']:.1f}){best_k}, {entry['seconds']:.1f}s; {run.line()}", flush=True)
            results["tasks"].setdefault(name, {})[mode] = entry
            save()
    finally:
        if dump_file:
            with contextlib.suppress(OSError):  # only after a failed write, whose error is the one to report
                dump_file.close()
    results["complete"] = True
    save()
    return results


def fingerprint(model, tokenizer):
    """sha256 of the weights and the tokenizer: a checkpoint's identity, whatever its path or file time."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(tokenizer.to_spec(), sort_keys=True).encode())
    return digest.hexdigest()


def run_info(model):
    """What gp_fit.py and the sweep need to place this checkpoint: lambda, repetitions, tokens seen."""
    meta = getattr(model, "meta", None) or {}
    config, segments = meta.get("config") or {}, meta.get("segments") or []
    # `config` holds the last segment's settings: a lam or repetitions changed by a resume is not the run's
    varied = set().union(*(s.get("settings", {}) for s in segments))
    return {"lam": None if "lam" in varied else config.get("lam"),
            "repetitions": None if "repetitions" in varied else config.get("repetitions"),
            "tokens_seen": meta.get("tokens_seen"), "iter_num": meta.get("iter_num"),
            "n_params": model.num_params(), "n_params_non_embedding": model.num_params(non_embedding=True),
            "model_config": asdict(model.config), "segments": segments,
            "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, type(None)))}}


# -----------------------------------------------------------------------------
# Kept results: what --out holds is merged into a rerun when it still stands (docs/eval.md: Kept results)

def results_problem(r):
    """What makes `r` (a parsed results file) unfit to merge into, or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    for key, kind in (("fingerprint", str), ("settings", dict), ("tasks", dict), ("items_sha256", dict), ("run", dict),
                      ("heldout", dict)):
        if not isinstance(r.get(key, {} if key in ("items_sha256", "run", "heldout") else None), kind):
            return f"{key!r} is missing or not a {'string' if kind is str else 'JSON object'}"
    for task, entries in r["tasks"].items():
        if task not in TASKS or not isinstance(entries, dict):
            return f"tasks.{task} is not the entries of a task"
        for mode, entry in entries.items():
            numbers = [entry.get(key) for key in ("accuracy", "normalized")] if isinstance(entry, dict) else [None]
            if mode not in MODES or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                return f"tasks.{task}.{mode} is not a result with a numeric accuracy and normalized score"
    return None


def read_results(path):
    """The results file at `path`, None where there is none; ValueError for one that is not (never overwritten)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        problem = results_problem(previous)
    except (OSError, ValueError) as e:  # ValueError: not JSON, not UTF-8
        previous, problem = None, getattr(e, "strerror", None) or "not JSON"
    if problem:
        raise ValueError(f"--out {path} is not a valid eval.py results file ({problem}); "
                         f"start afresh with another --out")
    return previous


def pair_list(entries):
    return ", ".join(f"{task} {mode}" for task, modes in entries.items() for mode in modes)


def keep_results(out, results, modes, dump=None):
    """Put into results["tasks"] what `out` holds from the same model and SCORING settings, except the tasks
    run now on other items; says in one line each what it reuses, keeps besides and replaces."""
    previous = read_results(out)
    if previous is None:
        return
    running, old_digests = dict(results["items_sha256"]), previous.get("items_sha256", {})
    # the model config with the weights: its window (block_size) decides where long sequences are cut
    old, new = (json.loads(json.dumps({"checkpoint weights": r["fingerprint"], "model config": r.get("run", {}).get(
        "model_config"), **{k: r["settings"].get(k) for k in SCORING}})) for r in (previous, results))
    differ = [key for key in new if old[key] != new[key]]
    if differ:
        if previous["tasks"]:
            print(f"eval.py: {out} holds results of another evaluation (differs in: {', '.join(differ)}); "
                  f"replacing {pair_list(previous['tasks'])}", flush=True)
        return
    if previous.get("heldout"):  # replaced when this run scores held-out text
        results["heldout"] = previous["heldout"]
    stale = {t: e for t, e in previous["tasks"].items() if t in running and old_digests.get(t) != running[t]}
    if stale:
        print(f"eval.py: {out} scored {', '.join(stale)} on other items (another task file, --limit, ...); "
              f"replacing {pair_list(stale)}", flush=True)
    for task, entries in previous["tasks"].items():
        if task not in stale and entries:
            results["tasks"][task] = dict(entries)
            if old_digests.get(task):
                results["items_sha256"].setdefault(task, old_digests[task])
    reused = {t: [m for m in modes if m in results["tasks"].get(t, {})] for t in running}
    others = {t: [m for m in e if t not in running or m not in modes] for t, e in results["tasks"].items()}
    if any(reused.values()):
        note = "; --dump gets only the pairs scored now" if dump else ""
        print(f"eval.py: reusing from {out} (same checkpoint and settings): {pair_list(reused)}{note}", flush=True)
    if any(others.values()):
        print(f"eval.py: keeping in {out} (same checkpoint and settings): {pair_list(others)}", flush=True)


# -----------------------------------------------------------------------------
# Command line

positive_int = arg_type(lambda t: int(t) if t.strip().isdigit() and int(t) >= 1 else None, "is not a positive integer")
seed_int = arg_type(lambda t: int(t) if -2 ** 63 <= int(t) < 2 ** 63 else None,
                    "is not an integer of 64 bits (-2**63 to 2**63-1)")
k_list = arg_type(lambda t: tuple(dict.fromkeys(map(int, t.split(",")))) if min(map(int, t.split(","))) >= 1 else None,
                  "is not a comma-separated list of mask counts: every k counts masks and must be >= 1")
on_off = arg_type({"on": True, "off": False}.get, "should be on or off")
task_file = arg_type(lambda t: t.split("=", 1) if "=" in t and t.split("=", 1)[0] in TASKS else None,
                     f"should be TASK=PATH with TASK one of {', '.join(TASKS)}")


def parse_args(argv):
    p = ArgumentParser(prog="eval.py", allow_abbrev=False, description="Zero-shot evaluation of a nanodual "
                       "checkpoint: nine tasks, four scoring modes (EVAL_SPEC.md; docs/eval.md).")
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--tasks", default="all", help=f"'all', 'none' or a comma list of: {', '.join(TASKS)}")
    p.add_argument("--modes", default="causal", help=f"comma list of: {', '.join(MODES)}")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="default: $NANODUAL_EVAL_DATA or eval_data")
    p.add_argument("--task_file", dest="task_files", type=task_file, action="append", default=[], metavar="TASK=PATH",
                   help="read TASK from PATH instead of looking in --data_dir (repeatable)")
    p.add_argument("--source", default="files", choices=CHOICES["source"], help="hf: the Hugging Face hub (datasets)")
    p.add_argument("--limit", type=positive_int, help="first N items per task (per sub-task for BLiMP/MMLU)")
    p.add_argument("--batch_size", type=positive_int, default=64, help="rows per forward pass at most")
    p.add_argument("--batch_tokens", type=positive_int,
                   help="padded tokens per forward pass at most (default: 2048 on CPU, 16384 on CUDA)")
    p.add_argument("--pll_k", type=k_list, default=(1, 6), help="mask counts for pll, e.g. 1,6")
    p.add_argument("--pll_right_context", default="visible", choices=CHOICES["pll_right_context"])
    p.add_argument("--pll_tail", default="append", choices=CHOICES["pll_tail"])
    p.add_argument("--mc_samples", type=positive_int, default=128, help="N, the number of mask ratios t_j = j/N")
    p.add_argument("--mc_masking", default="count", choices=CHOICES["mc_masking"],
                   help="count: ceil(t_j*n) tokens, weight n/count; bernoulli: probability t_j, weight 1/t_j")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the MC mask subsets")
    p.add_argument("--random_baseline", default="task", choices=CHOICES["random_baseline"],
                   help="r of the normalised score: 100/choices of the task, or its mean over the items")
    p.add_argument("--per_char_space", type=on_off, default=True, metavar="on|off",
                   help="count the continuation's leading space in per-char normalisation (OLMES: on)")
    p.add_argument("--mmlu_description", type=on_off, default=True, metavar="on|off", help="MMLU's subject line")
    p.add_argument("--olmes_subsample", action="store_true", help="OLMES's 1000 items of ARC-E, HellaSwag, PIQA, SIQA")
    p.add_argument("--heldout", type=positive_int, metavar="N",
                   help="also score N validation windows of the dataset causally and by PLL (loss per token)")
    p.add_argument("--heldout_data", metavar="DIR", help="that dataset's folder (default: the checkpoint's data_dir)")
    p.add_argument("--out", help="the results JSON; a rerun reuses its pairs (same checkpoint and settings)")
    p.add_argument("--dump", help="one JSON line per (item, choice, mode)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="on CUDA; CPU runs float32")
    args = p.parse_args(argv)
    args.task_files = dict(args.task_files)
    return args


def format_table(results):
    heldout = results.get("heldout")
    held = heldout and (f"held-out loss per token ({heldout['windows']} windows): causal {heldout['causal_loss']:.4f}, "
                        f"PLL {heldout['pll_loss']:.4f}")
    if not results["tasks"]:
        return held
    modes = list(results["average"])  # every mode that has a result, in MODES order
    lines = [f"{'task':<14}" + "".join(f"{m + ' acc (norm)':>22}" for m in modes)]
    lines += [f"{task:<14}" + "".join(f"{e[m]['accuracy']:>13.1f} ({e[m]['normalized']:5.1f})" if m in e else " " * 22
                                      for m in modes) for task, e in results["tasks"].items()]
    lines.append(f"{'average':<14}" + "".join(f"{'':>13} ({results['average'][m]:5.1f})" for m in modes))
    return "\n".join(lines + ([held] if held else []))


def main(argv=None):
    args = parse_args(argv)
    try:
        tasks = "none" if args.tasks == "none" else parse_names(args.tasks, TASKS, "task")
        if tasks == "none" and not args.heldout:
            raise ValueError("--tasks none evaluates nothing without --heldout N; give tasks, or --heldout 256")
        modes = parse_names(args.modes, MODES, "mode")
        from model import load_checkpoint, parse_device
        device = parse_device(args.device)
        # fail now, not after the evaluation, and never write over an input or a file of another kind
        for flag, path, example in (("--out", args.out, "results.json"), ("--dump", args.dump, "dump.jsonl")):
            if path:
                check_output_file(flag, path, example)
        check_distinct_paths([("--out", args.out), ("--dump", args.dump)],
                             [("--ckpt", args.ckpt)] + [(f"--task_file {t}", p) for t, p in args.task_files.items()])
        read_results(args.out)
        if args.dump and os.path.isfile(args.dump) and os.path.getsize(args.dump):  # overwrite an earlier dump only
            record = None
            with open(args.dump, "rb") as f, contextlib.suppress(ValueError):
                record = json.loads(f.readline(1 << 20))
            if not (isinstance(record, dict) and {"task", "mode", "item", "choice", "ll"} <= set(record)):
                raise ValueError(f"--dump {args.dump} exists and is not an eval.py dump; give another --dump")
        import data  # the tokenizer lives with the dataset code
        model = load_checkpoint(args.ckpt, device=device)
        if "tokenizer" not in model.meta:
            raise ValueError(f"checkpoint {args.ckpt} has no tokenizer spec; pass a checkpoint written by train.py")
        tokenizer = data.Tokenizer.from_spec(model.meta["tokenizer"])
        heldout_data = args.heldout_data or model.meta.get("data", {}).get("data_dir")
        if args.heldout and not heldout_data:
            raise ValueError(f"checkpoint {args.ckpt} records no dataset; give --heldout_data DIR")
        results = evaluate(model, tokenizer, tasks, modes, data_dir=args.data_dir, dump=args.dump,
                           heldout=args.heldout and (heldout_data, args.heldout),
                           checkpoint=os.path.abspath(args.ckpt), out=args.out,
                           autocast=device.type == "cuda" and args.dtype == "bfloat16",
                           **{f.name: getattr(args, f.name) for f in fields(Settings)})
        if not results["tasks"] and not results.get("heldout"):
            raise FileNotFoundError(f"none of the tasks were found under {args.data_dir} (looked for "
                                    f"{'; '.join(results['skipped'].values())}); see README: Evaluation data")
        print(format_table(results))
        return results
    except KeyboardInterrupt:
        kept = (f"{args.out} keeps every (task, mode) result finished so far; the same command goes on from there"
                if args.out and os.path.exists(args.out) else "no results were written")
        sys.exit(f"eval.py: interrupted (Ctrl-C); {kept}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # OSError: files that cannot be read or written
        sys.exit(f"eval.py: error: {e}")
