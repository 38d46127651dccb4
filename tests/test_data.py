"""
Tests of data.py: tokenizers round-trip any text, preparation is deterministic and independent of the
worker count, the split is by document, meta.json describes the .bin files, and the loader trains on
a random subset of whole documents, every token of it once per epoch, re-packed every epoch. Real text throughout
(small slices of Tiny Shakespeare and of the English novels), and each bad input as a one-line error.
"""
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tokenizers
import torch

import data

REPO = Path(__file__).resolve().parents[1]
NOVELS = ["Ford_Soldier_1915.txt", "Hardy_Tess_1891.txt", "Doyle_Hound_1902.txt", "Woolf_Night_1919.txt"]
HANDMADE = [
    "", "a", "Hello, world!", "<s>", "<mask>", "<unk>", "</s><pad>", "x<s>y<mask>z", "<|endoftext|>",
    "line one\r\nline two\r\n", "page\x0cbreak", "tabs\tand  spaces   \n\n\n", "emoji 😀🎉👩‍👩‍👧 done",
    "Café naïve 你好 Привет مرحبا", "\x00\x01\x7f", "no\u00a0break\u3000space", " leading space", "trailing \n",
]


def random_texts(n, seed=0):
    """Random strings over everything that tends to break tokenizers: every kind of whitespace, literal
    special tokens, emoji, any code point of the BMP and beyond (except surrogates, which UTF-8 cannot hold)."""
    rng = random.Random(seed)
    atoms = [" ", "\n", "\r\n", "\r", "\t", "\x0c", "\xa0", "\u3000", "\x1c", "<s>", "<mask>", "<unk>", "</s>",
             "'s", "a", "Z", "7", ".", "😀", "é", "ß"]
    texts = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.6:
                pieces.append(rng.choice(atoms))
            else:
                c = rng.randint(0, 0x10FFFF)
                pieces.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "?")
        texts.append("".join(pieces))
    return texts


def read_reference_documents(path, doc_split):
    """An independent reading of the document rule: decode, drop a BOM, normalise line endings, split
    at blank lines (regex), trim trailing whitespace and leading blank lines, drop empties."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8")
    text = text[1:] if text.startswith("\ufeff") else text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        docs = [json.loads(line)["text"].replace("\r\n", "\n").replace("\r", "\n")
                for line in text.split("\n") if line.strip()]
    elif doc_split == "file":
        docs = [text]
    else:
        docs = re.split(r"\n(?:[^\S\n]*\n)+", text)
    docs = [re.sub(r"\A(?:[^\S\n]*\n)+", "", d.rstrip()) for d in docs]
    return [d for d in docs if d]


def split_documents(tokens, bos_id):
    """Cut a token stream into documents at <s>; the stream must start with <s>."""
    assert len(tokens) == 0 or tokens[0] == bos_id, "every document starts with <s>"
    starts = np.flatnonzero(tokens == bos_id)
    return [tokens[a + 1:b] for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def reference_hash(text, seed):
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=seed.to_bytes(16, "little")).digest()
    return int.from_bytes(digest, "little")


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "data.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def cli_error(*args):
    """data.main(args) in-process (a subprocess costs about half a second more): the message it exits with."""
    with pytest.raises(SystemExit) as exit:
        data.main([str(a) for a in args])
    return exit.value.code


def assert_one_line_error(result, *fragments):
    """result: a finished `python data.py` (a CompletedProcess), or the message cli_error returns."""
    if isinstance(result, subprocess.CompletedProcess):
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        result = result.stderr.strip()
    lines = str(result).splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("data.py: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def cut_at_line(raw, n_bytes):
    """The first ~n_bytes of a file, ending at a line break (never inside a character or a CRLF)."""
    return raw[:raw.rindex(b"\n", 0, n_bytes) + 1]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """A small mixed corpus folder built from real text: novel slices (UTF-8 with BOM and CRLF, one with
    form feeds) as .txt and .txt.gz, Tiny Shakespeare paragraphs as .jsonl and .jsonl.gz, in sub-folders,
    plus files that must be ignored."""
    root = tmp_path_factory.mktemp("corpus")
    novels = shared_data / "corpus" / "english_novels"
    (root / "novels").mkdir()
    for i, name in enumerate(NOVELS):
        raw = cut_at_line((novels / name).read_bytes(), 50_000)
        assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
        if i % 2:
            (root / "novels" / (name + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
        else:
            (root / "novels" / name).write_bytes(raw)
    shakespeare = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in shakespeare[:200_000].split("\n\n") if p.strip()]
    lines = [json.dumps({"text": p, "id": i}) for i, p in enumerate(paragraphs)]
    (root / "plays").mkdir()
    (root / "plays" / "a.jsonl").write_text("\n".join(lines[:400]) + "\n\n", encoding="utf-8")
    (root / "plays" / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[400:]) + "\n").encode(), mtime=0))
    (root / "README.md").write_text("not part of the corpus")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("not part of the corpus either")
    return root


@pytest.fixture(scope="module")
def corpus_files(corpus):
    return [corpus / "novels" / "Doyle_Hound_1902.txt", corpus / "novels" / "Ford_Soldier_1915.txt",
            corpus / "novels" / "Hardy_Tess_1891.txt.gz", corpus / "novels" / "Woolf_Night_1919.txt.gz",
            corpus / "plays" / "a.jsonl", corpus / "plays" / "b.jsonl.gz"]


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    data.prepare([corpus], out, vocab_size=1000, val_fraction=0.05, doc_split="blank_line", workers=1,
                 seed=3, chunk_chars=20_000)
    return out


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    text = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
    return data.train_bpe([text], vocab_size=600)

# -----------------------------------------------------------------------------
# tokenizers


def test_trained_bpe_round_trips_any_text(tokenizer):
    assert [tokenizer.special_ids[t] for t in data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id) == (0, 1, 2, 3, 4)
    assert tokenizer.vocab_size == 600
    texts = HANDMADE + random_texts(300)
    ids = tokenizer.encode_batch(texts)
    for text, encoded in zip(texts, ids):
        assert encoded == tokenizer.encode(text)
        assert tokenizer.decode(encoded) == text
        assert all(0 <= i < tokenizer.vocab_size for i in encoded)
    # literal special-token text is ordinary text, never the special id
    for literal in ["<s>", "<mask>", "<unk>", "</s>", "<pad>", "a <s> b"]:
        assert not set(tokenizer.encode(literal)) & set(range(5)), literal
    # special ids decode to their literal text
    assert tokenizer.decode([tokenizer.bos_id] + tokenizer.encode("hi") + [tokenizer.mask_id]) == "<s>hi<mask>"


def test_tokenizer_spec_and_load_reproduce_the_encoding(tokenizer, prepared):
    again = data.Tokenizer.from_spec(json.loads(json.dumps(tokenizer.to_spec())))
    texts = HANDMADE + random_texts(50, seed=1)
    assert again.encode_batch(texts) == tokenizer.encode_batch(texts)
    from_folder, from_file = data.Tokenizer.load(prepared), data.Tokenizer.load(prepared / "tokenizer.json")
    assert from_folder.to_spec() == from_file.to_spec() and from_folder.vocab_size == 1000


def test_encoding_long_texts_in_pieces_is_exact(tokenizer, shared_data):
    # real prose (hard-wrapped, CRLF turned into LF) and random text, cut into tiny pieces
    novel = (shared_data / "corpus" / "english_novels" / "Ford_Soldier_1915.txt").read_text(encoding="utf-8-sig")
    texts = [novel[:20_000].replace("\r\n", "\n")] + random_texts(300, seed=2)
    texts += ["".join(random.Random(i).choices(["\n", " ", "\t", "a", ".", "\x1c", "\xa0"], k=60)) for i in range(300)]
    # the cuts inside a line: before a space or tab after a non-space, and between an ASCII letter or digit and
    # another ASCII character; next to every kind of character that could make one of them inexact
    single_line = [" ", " ", "  ", "\t", "a", "Z", "7", "0", "'", "'s", "'ll", "'re", ".", ",", "_", "-", "\x1c", "\x1f",
                   "\x85", "\xa0", "\u3000", "\u2028", "\u200b", "é", "e\u0301", "²", "½", "Ⅻ", "一", "中", "，", "。",
                   "😀", "\u200d", "\x00", "\x7f", "ß", "Ω", "٣", "\r"]
    texts += ["".join(random.Random(i).choices(single_line, k=80)) for i in range(600)]
    texts += [novel[:20_000].replace("\r\n", " ").replace("\n", " ")]  # prose without line breaks
    pre_tokenize = tokenizer.bpe.pre_tokenizer.pre_tokenize_str
    for text in texts:
        pieces = list(data.split_into_pieces(text, piece_chars=1))  # a cut at every safe position
        assert "".join(pieces) == text
        # the claim itself: cutting never moves a pre-token boundary (so BPE, within pre-tokens, agrees)
        assert [t for p in pieces for t, _ in pre_tokenize(p)] == [t for t, _ in pre_tokenize(text)]
        whole = tokenizer.bpe.encode(text, add_special_tokens=False).ids
        assert sum((tokenizer.bpe.encode(p, add_special_tokens=False).ids for p in pieces), []) == whole
    assert len(list(data.split_into_pieces(texts[0], piece_chars=1000))) > 15
    assert len(list(data.split_into_pieces(texts[-1], piece_chars=1000))) == 20  # a single line is cut too
    assert len(list(data.split_into_pieces("x=12;" * 1000, piece_chars=100))) == 50  # ASCII letters, digits, symbols
    assert list(data.split_into_pieces("中文" * 1000, piece_chars=10)) == ["中文" * 1000]  # no safe cut: one piece


def test_encode_batch_in_pieces_equals_whole_texts(tokenizer, shared_data, monkeypatch):
    novel = (shared_data / "corpus" / "english_novels" / "Hardy_Tess_1891.txt").read_text(encoding="utf-8-sig")
    texts = [novel[:30_000].replace("\r\n", "\n"), "short", novel[30_000:50_000]] + random_texts(20, seed=5)
    monkeypatch.setattr(data, "PIECE_CHARS", 500)
    monkeypatch.setattr(data, "BATCH_CHARS", 2000)
    assert tokenizer.encode_in_pieces
    assert tokenizer.encode_batch(texts) == [tokenizer.bpe.encode(t, add_special_tokens=False).ids for t in texts]


def tiny_tiktoken():
    """A tiktoken encoding with GPT-2's split pattern and only byte tokens, to test our wrapper offline."""
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(name="bytes", pat_str=pattern, mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})


def test_tiktoken_wrapper_adds_special_ids_after_its_vocabulary():
    tok = data.Tokenizer(tiktoken_encoding=tiny_tiktoken())
    assert [tok.special_ids[t] for t in data.SPECIAL_TOKENS] == [257, 258, 259, 260, 261]
    assert tok.bos_id == 258 and tok.mask_id == 261 and tok.vocab_size == 320  # 262 rounded up to 64
    for text in HANDMADE + random_texts(100, seed=3):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and all(i < 257 for i in ids)
    assert tok.decode([tok.bos_id] + tok.encode("hé") + [tok.pad_id, 300]) == "<s>hé<pad>"  # 300: unused, ""


def test_gpt2_through_tiktoken_or_a_clear_error(tmp_path):
    try:
        tiktoken.get_encoding("gpt2")
    except Exception:  # offline without a cached file: the CLI must say how to provide it
        (tmp_path / "a.txt").write_text("one\n\ntwo\n")
        result = cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--tokenizer", "gpt2")
        assert_one_line_error(result, "gpt2", "TIKTOKEN_CACHE_DIR", "--tokenizer bpe")
        return
    tok = data.Tokenizer.from_spec({"kind": "tiktoken", "name": "gpt2"})
    assert tok.vocab_size == 50304 and tok.bos_id == 50258 and tok.unk_id == 50257
    for text in HANDMADE + random_texts(100, seed=4):
        assert tok.decode(tok.encode(text)) == text
    assert data.Tokenizer.from_spec(tok.to_spec()).encode("Hello world") == tok.encode("Hello world")


def test_dtype_rule():
    assert data.token_dtype(50304) == np.uint16 and data.token_dtype(65536) == np.uint16
    assert data.token_dtype(65537) == np.uint32 and data.token_dtype(51200) == np.uint16


def big_vocab_tokenizer_file(path, size=70_000):
    """A byte-level BPE file whose vocabulary does not fit in uint16 (filler tokens never produced)."""
    vocab = {t: i for i, t in enumerate(data.SPECIAL_TOKENS)}
    for char in tokenizers.pre_tokenizers.ByteLevel.alphabet():
        vocab[char] = len(vocab)
    while len(vocab) < size:
        vocab[f"filler{len(vocab)}"] = len(vocab)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.add_special_tokens(data.SPECIAL_TOKENS)
    bpe.save(str(path))
    return path


def test_large_vocabulary_is_stored_as_uint32(tmp_path, corpus_files):
    tokenizer_file = big_vocab_tokenizer_file(tmp_path / "big.json")
    meta = data.prepare(corpus_files[:2], tmp_path / "out", tokenizer=str(tokenizer_file), val_fraction=0.2,
                        doc_split="blank_line")
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * meta["train_tokens"]
    tok = data.Tokenizer.load(tmp_path / "out")
    tokens = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint32)
    docs = [tok.decode(d) for d in split_documents(tokens, tok.bos_id)]
    expected = sum((read_reference_documents(f, "blank_line") for f in corpus_files[:2]), [])
    assert docs and all(d in expected for d in docs)

# -----------------------------------------------------------------------------
# reading and preparing


def test_reading_drops_bom_and_normalises_line_endings(corpus):
    path = corpus / "novels" / "Ford_Soldier_1915.txt"
    (text,) = list(data.read_documents(path, "file"))
    assert not text.startswith("\ufeff") and "\r" not in text and "\x0c" in text
    assert text == path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n").rstrip()  # trimmed
    gz = corpus / "novels" / "Hardy_Tess_1891.txt.gz"
    assert list(data.iter_documents([gz], "blank_line")) == read_reference_documents(gz, "blank_line")
    assert list(data.iter_documents([path], "blank_line")) == read_reference_documents(path, "blank_line")


def test_folder_inputs_are_found_recursively_and_sorted(corpus, corpus_files):
    assert data.list_input_files([corpus]) == corpus_files
    assert data.list_input_files([corpus_files[3], corpus]) == [corpus_files[3]] + corpus_files


def test_prepared_folder_holds_every_document_once_split_by_hash(prepared, corpus_files):
    meta = json.loads((prepared / "meta.json").read_text())
    tok = data.Tokenizer.load(prepared)
    documents = sum((read_reference_documents(f, "blank_line") for f in corpus_files), [])
    found = {}
    for split in ("train", "val"):
        tokens = np.fromfile(prepared / f"{split}.bin", dtype=meta["dtype"])
        found[split] = [tok.decode(d) for d in split_documents(tokens, meta["bos_id"])]
        expected = [d for d in documents if (reference_hash(d, 3) < meta["val_hash_threshold"]) == (split == "val")]
        assert found[split] == expected  # same documents, same order, each starting with <s>
        assert meta[f"{split}_documents"] == len(expected) and meta[f"{split}_tokens"] == len(tokens)
        if split == "train":  # train.idx: where each document starts
            starts = np.fromfile(prepared / "train.idx", dtype="<u8")
            assert starts.tolist() == np.flatnonzero(tokens == meta["bos_id"]).tolist()
    assert not set(found["train"]) & set(found["val"])
    assert meta["val_hash_threshold"] == int(0.05 * 2**64)
    assert 0.02 < meta["val_documents"] / len(documents) < 0.1


def test_meta_json_describes_the_files(prepared, corpus):
    meta = data.load_meta(prepared)
    assert meta["vocab_size"] == 1000 and meta["dtype"] == "uint16"
    assert meta["special_tokens"] == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<mask>": 4}
    assert (meta["bos_id"], meta["pad_id"], meta["mask_id"], meta["unk_id"], meta["eos_id"]) == (1, 3, 4, 0, 2)
    assert meta["sources"] == [str(corpus.resolve())] and meta["input_files"] == 6
    for key in ("split_rule", "document_rule", "tokenizer"):
        assert isinstance(meta[key], str) and len(meta[key]) > 40
    for split in ("train", "val"):
        assert (prepared / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"]
    assert not list(prepared.glob("*.tmp"))


def test_output_is_deterministic_and_independent_of_workers(corpus, prepared, tmp_path):
    data.prepare([corpus], tmp_path / "w2", vocab_size=1000, val_fraction=0.05, doc_split="blank_line",
                 workers=2, seed=3, chunk_chars=20_000)
    for name in ("train.bin", "train.idx", "val.bin", "tokenizer.json", "meta.json"):
        assert (tmp_path / "w2" / name).read_bytes() == (prepared / name).read_bytes(), name


def test_at_least_one_validation_document_and_one_training_document(corpus_files, tmp_path):
    files = corpus_files[:4]  # four novel slices, one document each
    meta = data.prepare(files, tmp_path / "a", vocab_size=400, val_fraction=1e-12)
    hashes = sorted(reference_hash(d, 0) for f in files for d in read_reference_documents(f, "file"))
    assert meta["val_documents"] == 1 and meta["val_hash_threshold"] == hashes[0] + 1
    meta = data.prepare(files, tmp_path / "b", vocab_size=400, val_fraction=1 - 1e-12)
    assert meta["train_documents"] == 1 and meta["val_hash_threshold"] == hashes[-1]


def test_reusing_a_tokenizer_shares_the_vocabulary(prepared, corpus_files, tmp_path):
    meta = data.prepare(corpus_files[2:4], tmp_path / "reuse", tokenizer=str(prepared), doc_split="blank_line",
                        val_fraction=0.1)
    assert (tmp_path / "reuse" / "tokenizer.json").read_bytes() == (prepared / "tokenizer.json").read_bytes()
    tok = data.Tokenizer.load(prepared)
    tokens = np.fromfile(tmp_path / "reuse" / "train.bin", dtype=np.uint16)
    first = split_documents(tokens, 1)[0]
    assert first.tolist() == tok.encode(tok.decode(first)) and meta["vocab_size"] == 1000


def test_same_tokenizer_compares_vocabularies_not_file_formatting(prepared, tokenizer):
    spec = data.Tokenizer.load(prepared).to_spec()
    pretty = {"kind": "bpe", "json": (prepared / "tokenizer.json").read_text(encoding="utf-8")}
    assert spec["json"] != pretty["json"] and data.same_tokenizer(spec, pretty)
    assert not data.same_tokenizer(spec, tokenizer.to_spec())  # another corpus, another BPE
    assert not data.same_tokenizer(spec, {"kind": "tiktoken", "name": "gpt2"})


def test_encoding_holds_a_bounded_number_of_chunks_in_memory(corpus_files, prepared, tmp_path, monkeypatch):
    """The parent reads a chunk only when one is free of CHUNKS_IN_FLIGHT_PER_WORKER x workers slots: chunks
    read but not yet written stay bounded even when writing is far slower than encoding (a slow disk)."""
    lines = corpus_files[4].read_text(encoding="utf-8").splitlines()[:60]
    (tmp_path / "small.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    real_iter_documents, real_progress = data.iter_documents, data.Progress
    counts = {"read": 0, "written": 0, "worst": 0}

    def counting_iter_documents(*args):
        for text in real_iter_documents(*args):
            counts["read"] += 1
            counts["worst"] = max(counts["worst"], counts["read"] - counts["written"])
            yield text

    class SlowWriteProgress(real_progress):
        def update(self, n=1):
            if self.desc == "encode":  # once per chunk written
                time.sleep(0.01)
                counts["written"] += 1
            super().update(n)

    monkeypatch.setattr(data, "iter_documents", counting_iter_documents)
    monkeypatch.setattr(data, "Progress", SlowWriteProgress)
    worst = {}
    for limit in (2, 10**6):  # the shipped limit, and in effect none (the check that the test can fail)
        monkeypatch.setattr(data, "CHUNKS_IN_FLIGHT_PER_WORKER", limit)
        counts.update(read=0, written=0, worst=0)
        # chunk_chars=1: every document is a chunk of its own
        data.prepare([tmp_path / "small.jsonl"], tmp_path / f"out{limit}", tokenizer=str(prepared), workers=2,
                     chunk_chars=1)
        assert counts["read"] == counts["written"] == 60
        worst[limit] = counts["worst"]
    # 2 x 2 slots, plus the one document that batches() reads ahead to close a chunk
    assert worst[2] <= 2 * 2 + 1 and worst[10**6] > 20, worst
    assert (tmp_path / "out2" / "train.bin").read_bytes() == (tmp_path / f"out{10**6}" / "train.bin").read_bytes()


def test_tokenizer_trained_on_a_sample(corpus, tmp_path):
    meta = data.prepare([corpus], tmp_path / "s", vocab_size=500, doc_split="blank_line",
                        tokenizer_train_bytes=60_000)
    sampled = int(re.search(r"on (\d+) training documents \((\d+) bytes, a sample", meta["tokenizer"]).group(2))
    assert 20_000 < sampled < 100_000  # about the budget
    tokens = np.fromfile(tmp_path / "s" / "train.bin", dtype=np.uint16)
    assert tokens[0] == 1 and len(tokens) == meta["train_tokens"]


def test_a_failed_rerun_keeps_the_previous_dataset(corpus_files, tmp_path, monkeypatch):
    data.prepare(corpus_files[:3], tmp_path / "out", vocab_size=400)
    before = {name: (tmp_path / "out" / name).read_bytes() for name in data.OUTPUTS}
    calls = []

    def failing_encode_chunk(texts):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return real_encode_chunk(texts)

    real_encode_chunk = data.encode_chunk
    monkeypatch.setattr(data, "encode_chunk", failing_encode_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        data.prepare(corpus_files[:3], tmp_path / "out", vocab_size=300, chunk_chars=10)
    data.load_meta(tmp_path / "out")
    assert {name: (tmp_path / "out" / name).read_bytes() for name in data.OUTPUTS} == before
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_no_input_downloads_the_default_corpus(shared_data, tmp_path, monkeypatch, capsys):
    # `python data.py` without --input, its default URL pointed at a local copy through file://
    source = tmp_path / "src" / "input.txt"
    source.parent.mkdir()
    source.write_bytes(cut_at_line((shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_bytes(), 200_000))
    url = source.as_uri()
    monkeypatch.setattr(data, "DEFAULT_URL", url)
    monkeypatch.chdir(tmp_path)
    data.main(["--vocab_size", "500", "--workers", "1"])
    meta = data.load_meta(tmp_path / "data_shakespeare")
    assert meta["sources"] == [url] and meta["doc_split"] == "blank_line"
    assert (tmp_path / "data_shakespeare" / "input.txt").read_bytes() == source.read_bytes()
    assert meta["train_documents"] + meta["val_documents"] == len(read_reference_documents(source, "blank_line"))
    printed = capsys.readouterr().out  # each long pass shows progress with a rate and an ETA
    for stage in ("scan:", "tokenizer: read:", "encode:"):
        assert re.search(stage + r" .*/s, elapsed .*ETA", printed), stage
    source.unlink()  # a second run reuses the download
    data.main(["--vocab_size", "500", "--workers", "1"])
    assert "downloaded before" in capsys.readouterr().out


def test_download_failure_says_how_to_use_a_local_file(tmp_path):
    result = run_cli("--url", (tmp_path / "nowhere" / "input.txt").as_uri(), "--out_dir", tmp_path / "ds")  # the CLI path
    assert_one_line_error(result, "cannot download", "--input path/to/text.txt")
    assert not (tmp_path / "ds").exists()  # not even an empty folder

# -----------------------------------------------------------------------------
# bad inputs to the CLI: one line, non-zero exit, no traceback


def test_cli_empty_corpus(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    (tmp_path / "blank.jsonl").write_text('{"text": "   "}\n\n{"text": ""}\n')
    assert_one_line_error(cli_error("--input", tmp_path / "blank.txt", tmp_path / "blank.jsonl", "--out_dir",
                                  tmp_path / "out"), "empty input corpus")
    assert not (tmp_path / "out").exists()


def test_cli_missing_input(tmp_path):
    assert_one_line_error(cli_error("--input", tmp_path / "nope.txt", "--out_dir", tmp_path / "out"),
                          "nope.txt", "does not exist")


def test_cli_bad_jsonl_lines(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    assert_one_line_error(cli_error("--input", tmp_path / "bad.jsonl", "--out_dir", tmp_path / "out"),
                          "bad.jsonl, line 2", "not valid JSON")
    (tmp_path / "field.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"body": "no text"}\n')
    assert_one_line_error(cli_error("--input", tmp_path / "field.jsonl", "--out_dir", tmp_path / "out"),
                          "field.jsonl, line 3", '"text"')


def test_cli_text_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\n\nna\u00efve\n".encode("latin-1"))
    assert_one_line_error(cli_error("--input", tmp_path / "latin1.txt", "--out_dir", tmp_path / "out"),
                          "latin1.txt is not valid UTF-8")


def test_cli_tokenizer_without_special_tokens(tmp_path):
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["some text to train on"] * 10, trainer)
    bpe.save(str(tmp_path / "plain.json"))
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    result = cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--tokenizer", tmp_path / "plain.json")
    assert_one_line_error(result, "plain.json", "<unk>", "<mask>")


def test_cli_one_text_file_without_flags_is_split_at_blank_lines(tmp_path, capsys):
    """nanoGPT's usual input, one plain-text file, works with no flags: a single document would leave
    nothing for validation, so it is split at blank lines, in one log line."""
    (tmp_path / "one.txt").write_text("ROMEO:\nBut soft!\n\nJULIET:\nAy me!\n\n\nROMEO:\nShe speaks.\n")
    data.main(["--input", str(tmp_path / "one.txt"), "--out_dir", str(tmp_path / "out"), "--vocab_size", "300"])
    said = [line for line in capsys.readouterr().out.splitlines() if "split into documents at blank lines" in line]
    assert said == ["the input is a single document, so it is split into documents at blank lines: 3 documents "
                    "(--doc_split file keeps one document per file)"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["doc_split"] == "blank_line" and meta["train_documents"] + meta["val_documents"] == 3


def test_cli_single_document_cannot_be_split(tmp_path):
    (tmp_path / "one.txt").write_text("one paragraph\nwith no blank line\n")
    assert_one_line_error(cli_error("--input", tmp_path / "one.txt", "--out_dir", tmp_path / "out"),
                          "single distinct document even when split at blank lines")
    (tmp_path / "two.txt").write_text("one\n\ntwo\n")  # asked for one document per file: no automatic split
    assert_one_line_error(cli_error("--input", tmp_path / "two.txt", "--out_dir", tmp_path / "out", "--doc_split", "file"),
                          "single distinct document", "--doc_split blank_line")

def test_cli_out_dir_that_is_a_file_fails_before_any_work(tmp_path, corpus_files, monkeypatch):
    (tmp_path / "taken").write_text("a file")
    # before reading the corpus, let alone training the tokenizer
    monkeypatch.setattr(data, "scan_corpus", lambda *a: pytest.fail("scanned the corpus"))
    for out_dir in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        assert_one_line_error(cli_error("--input", *corpus_files[:2], "--out_dir", out_dir),
                              f"--out_dir {out_dir}: {tmp_path / 'taken'} is a file, not a folder")
    # and before downloading into it
    monkeypatch.setattr(data, "download", lambda *a: pytest.fail("downloaded"))
    assert "is a file" in cli_error("--out_dir", tmp_path / "taken")


def test_cli_vocab_size_is_bounded_and_a_huge_one_allocates_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("one fish two fish\n\nred fish blue fish\n\nold fish new fish\n")
    assert_one_line_error(cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--vocab_size",
                                  5_000_000_000, "--doc_split", "blank_line"),
                          "at most 2^32 = 4294967296", "got 5000000000")
    assert not (tmp_path / "out").exists()
    # 2^32 itself is allowed: the trainer is asked for no more tokens than the text can yield (asked for all
    # 2^32, it aborts the process allocating them), and the tokenizer is the one a modest size gives
    for vocab_size, out in ((2**32, "huge"), (1000, "modest")):
        data.main(["--input", str(tmp_path / "a.txt"), "--out_dir", str(tmp_path / out), "--vocab_size",
                   str(vocab_size), "--doc_split", "blank_line"])
    assert (tmp_path / "huge" / "tokenizer.json").read_text() == (tmp_path / "modest" / "tokenizer.json").read_text()

def test_cli_options_are_never_abbreviated(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--vocab", "300") == 2
    assert "unrecognized arguments: --vocab" in capsys.readouterr().err

# -----------------------------------------------------------------------------
# parquet input, folders, and a rerun that fails, is interrupted or runs beside another


def write_parquet(path, texts, row_group_size, column="text", **extra_columns):
    pa = pytest.importorskip("pyarrow")  # optional (requirements-dev.txt has it, so CI runs these tests)
    import pyarrow.parquet as pq
    pq.write_table(pa.table({column: texts, **extra_columns}), path, row_group_size=row_group_size)


def test_parquet_gives_the_tokens_of_the_same_documents_as_json_lines(corpus, prepared, tmp_path):
    """A folder of parquet shards (several row groups each, one upper-case name, a null-free "text" column
    beside others) gives train.bin, train.idx and val.bin identical to the same documents as JSON lines."""
    texts = [json.loads(line)["text"] for line in (corpus / "plays" / "a.jsonl").read_text().splitlines() if line]
    texts += ["a CRLF\r\nline", "  \n\n  indented after blank lines  \n", "   "]  # trimmed, normalised, skipped
    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "part-0.parquet", texts[:250], 64, id=list(range(250)))
    write_parquet(tmp_path / "pq" / "part-1.PARQUET", texts[250:], 40, id=list(range(250, len(texts))))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    settings = dict(tokenizer=str(prepared), val_fraction=0.1, workers=2, chunk_chars=5_000)
    meta_pq = data.prepare([tmp_path / "pq"], tmp_path / "from_parquet", **settings)
    meta_jsonl = data.prepare([tmp_path / "docs.jsonl"], tmp_path / "from_jsonl", **settings)
    for name in ("train.bin", "train.idx", "val.bin"):
        assert (tmp_path / "from_parquet" / name).read_bytes() == (tmp_path / "from_jsonl" / name).read_bytes(), name
    assert meta_pq["val_documents"] > 0 and meta_pq["train_documents"] + meta_pq["val_documents"] == len(texts) - 1
    assert meta_pq["empty_documents_skipped"] == meta_jsonl["empty_documents_skipped"] == 1
    # another column by --text_field, JSON lines and parquet alike
    write_parquet(tmp_path / "body.parquet", texts[:50], 16, column="body")
    (tmp_path / "body.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[:50]))
    for source in ("body.parquet", "body.jsonl"):
        data.prepare([tmp_path / source], tmp_path / source.replace(".", "_"), text_field="body", **settings)
    assert ((tmp_path / "body_parquet" / "train.bin").read_bytes() == (tmp_path / "body_jsonl" / "train.bin").read_bytes())


def test_parquet_is_read_in_a_child_process_so_data_py_never_loads_pyarrow(tmp_path):
    """Flat memory (issue 23): pyarrow's libraries and read buffers stay out of data.py's process and its
    encoding workers (forked from it), through all three passes; the documents come back whole and in order."""
    texts = [f"document {i}\r\n" + "words and more words " * (i % 7 * 200) for i in range(60)]
    write_parquet(tmp_path / "docs.parquet", texts, 16)
    code = ("import json, pathlib, sys, data; data.prepare([sys.argv[1]], sys.argv[2], vocab_size=300, workers=2, "
            "chunk_chars=20_000); print(json.dumps([sorted(m for m in sys.modules if m.startswith('pyarrow')), "
            "list(data.iter_documents([pathlib.Path(sys.argv[1])], 'file'))]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "docs.parquet"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    modules, documents = json.loads(result.stdout.splitlines()[-1])
    assert modules == [] and documents == [t.replace("\r\n", "\n").rstrip() for t in texts]


def test_cli_bad_parquet_inputs_name_the_file_and_row_group(tmp_path):
    texts = [f"document {i} " * 50 for i in range(40)]
    write_parquet(tmp_path / "ok.parquet", texts, 10, count=list(range(40)))
    out = ["--out_dir", tmp_path / "out"]
    assert_one_line_error(cli_error("--input", tmp_path / "ok.parquet", "--text_field", "body", *out),
                          "ok.parquet has no column \"body\" (its columns: text, count)", "--text_field")
    assert_one_line_error(cli_error("--input", tmp_path / "ok.parquet", "--text_field", "count", *out),
                          "ok.parquet: column \"count\" holds int64, not strings")
    write_parquet(tmp_path / "null.parquet", texts[:15] + [None], 10)
    assert_one_line_error(cli_error("--input", tmp_path / "null.parquet", *out),
                          "null.parquet, row group 1 (counting from 0): no \"text\" string (found NoneType)")
    raw = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[:len(raw) // 2])
    assert_one_line_error(cli_error("--input", tmp_path / "cut.parquet", *out), "cut.parquet is not a readable parquet")
    # garbage in the middle of row group 2's data pages (the footer is whole)
    import pyarrow.parquet as pq
    column = pq.ParquetFile(tmp_path / "ok.parquet").metadata.row_group(2).column(0)
    start = column.data_page_offset
    damaged = bytearray(raw)
    damaged[start:start + 200] = bytes(range(200))
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    assert_one_line_error(cli_error("--input", tmp_path / "damaged.parquet", *out),
                          "damaged.parquet, row group 2 (counting from 0) cannot be read", "damaged file")
    assert not (tmp_path / "out").exists()
    # without pyarrow: the pip command, before any work
    code = ("import sys; sys.modules['pyarrow'] = None; sys.argv = ['data.py'] + sys.argv[1:]; import runpy; "
            f"runpy.run_path({str(REPO / 'data.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, "--input", str(tmp_path / "ok.parquet"), *map(str, out)],
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "parquet files needs pyarrow: pip install pyarrow")


def test_folder_input_takes_any_case_sniffs_gzip_and_lists_every_skipped_file(tmp_path, capsys):
    (tmp_path / "in" / ".git").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_text("first\n")
    (tmp_path / "in" / "b.TXT").write_text("second\n")
    (tmp_path / "in" / "c.JsonL").write_text('{"text": "third"}\n')
    (tmp_path / "in" / "e.gz").write_bytes(gzip.compress(b"fifth\n"))  # gzip'd text: sniffed, not named
    (tmp_path / "in" / "f.txt.GZ").write_bytes(gzip.compress(b"sixth\n"))
    (tmp_path / "in" / "notes.md").write_text("not text input")
    (tmp_path / "in" / "archive.tar.gz").write_bytes(gzip.compress(b"not a corpus"))
    (tmp_path / "in" / ".hidden.txt").write_text("hidden")
    (tmp_path / "in" / ".git" / "x.txt").write_text("hidden")
    files = data.list_input_files([tmp_path / "in"])
    assert [f.name for f in files] == ["a.txt", "b.TXT", "c.JsonL", "e.gz", "f.txt.GZ"]
    assert list(data.iter_documents(files, "file")) == ["first", "second", "third", "fifth", "sixth"]
    skipped = capsys.readouterr().out.splitlines()
    assert skipped == [f"skipping {tmp_path / 'in' / '.git'}: a hidden folder",
                       f"skipping {tmp_path / 'in' / '.hidden.txt'}: a hidden file",
                       f"skipping {tmp_path / 'in' / 'archive.tar.gz'}: not .txt, .jsonl, .parquet or gzip (by name, any case)",
                       f"skipping {tmp_path / 'in' / 'notes.md'}: not .txt, .jsonl, .parquet or gzip (by name, any case)"]


def test_cli_utf16_text_names_its_encoding(tmp_path):
    (tmp_path / "wide.txt").write_bytes("caf\u00e9\n\nna\u00efve\n".encode("utf-16"))
    assert_one_line_error(cli_error("--input", tmp_path / "wide.txt", "--out_dir", tmp_path / "out"),
                          "wide.txt is UTF-16LE text", "iconv -f UTF-16LE -t UTF-8")


def test_cli_tokenizer_that_is_a_checkpoint_names_the_file(tmp_path, tiny_checkpoint):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert_one_line_error(cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--tokenizer",
                                  tiny_checkpoint), f"{tiny_checkpoint} is not a tokenizer file")


def test_validation_share_far_from_val_fraction_is_warned(prepared, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "long.txt").write_text("word " * 100_000)  # one long one-line document
    (tmp_path / "in" / "short.txt").write_text("a short document " * 100)
    data.prepare([tmp_path / "in"], tmp_path / "out", tokenizer=str(prepared), val_fraction=0.02)
    warning = capsys.readouterr().out.splitlines()[-1]
    assert warning.startswith("warning: val.bin holds ") and "far from --val_fraction 0.02" in warning, warning


def test_a_long_document_is_encoded_without_a_list_of_its_ids(tokenizer, shared_data):
    """A long document's ids are gathered as arrays, piece by piece: a Python list of them would take
    ~36 bytes a token (884 MB peak for a 50 MB one-line document)."""
    import tracemalloc
    text = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:1_000_000]
    data.init_worker(tokenizer.to_spec(), 0, 0, "uint16")
    tracemalloc.start()
    out, _ = data.encode_chunk([text])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert list(out["train"][0][1:]) == tokenizer.encode(text)
    assert peak < 5 * len(text), peak  # measured 3.2 bytes a character; a list of the ids takes about 14


def test_cli_a_second_data_py_on_the_same_out_dir_is_refused(tmp_path):
    import fcntl
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / "data.lock", "w") as lock:
        lock.write("4242\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_line_error(cli_error("--input", tmp_path / "a.txt", "--out_dir", tmp_path / "out"),
                              "is in use by another data.py (PID 4242)", "wait for it to finish")
    data.main(["--input", str(tmp_path / "a.txt"), "--out_dir", str(tmp_path / "out"), "--vocab_size", "300"])


def run_prepare_cli(code, *args, **kwargs):
    """data.py's CLI after `code` (a patch) in a fresh interpreter of its own session."""
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import data; {code}\n"
              f"try:\n    data.main(sys.argv[1:])\nexcept (ValueError, OSError) as e:\n"
              f"    sys.exit(f'data.py: error: {{e}}')")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120, start_new_session=True, **kwargs)


def test_cli_ctrl_c_says_what_was_kept(corpus_files, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, workers included) mid-encoding: one line, the previous
    dataset kept whole, no temporary files; on a fresh folder, no folder left."""
    args = ["--input", *corpus_files[:3], "--vocab_size", 300, "--workers", 2]
    data.main([*map(str, args), "--out_dir", str(tmp_path / "out")])
    before = {name: (tmp_path / "out" / name).read_bytes() for name in data.OUTPUTS}
    patch = ("import os, signal, time; real = data.encode_chunk\n"
             "def encode_chunk(texts):\n    os.killpg(os.getpgrp(), signal.SIGINT); time.sleep(2); return real(texts)\n"
             "data.encode_chunk = encode_chunk")
    for out_dir, kept in ((tmp_path / "out", "is the one that was there before, unchanged"),
                          (tmp_path / "new", "no dataset was written")):
        result = run_prepare_cli(patch, *args, "--tokenizer", tmp_path / "out", "--out_dir", out_dir)
        assert result.returncode == 1 and result.stderr == f"data.py: interrupted; the dataset in {out_dir} {kept}\n" \
            if "unchanged" in kept else result.stderr == f"data.py: interrupted; {kept} to {out_dir}\n", result.stderr
    assert {name: (tmp_path / "out" / name).read_bytes() for name in data.OUTPUTS} == before
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "new").exists()
    # parquet, whose reading process (which ignores SIGINT) is stopped without a word of its own
    write_parquet(tmp_path / "docs.parquet", [f"document {i} " * 3000 for i in range(200)], 20)
    result = run_prepare_cli(patch, "--input", tmp_path / "docs.parquet", "--tokenizer", tmp_path / "out",
                             "--workers", 2, "--out_dir", tmp_path / "pq")
    assert result.returncode == 1 and result.stderr == f"data.py: interrupted; no dataset was written to " \
        f"{tmp_path / 'pq'}\n", result.stderr


def test_cli_full_disk_names_the_file_and_leaves_no_temporary_files(corpus_files, prepared, tmp_path):
    """A write that fails (here the file-size limit, EFBIG; a full disk is ENOSPC) names the file and how
    far it got; the temporary files go."""
    import resource

    def small_file_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = run_prepare_cli("", "--input", *corpus_files, "--tokenizer", prepared, "--doc_split", "blank_line",
                             "--out_dir", tmp_path / "out", preexec_fn=small_file_limit)
    assert_one_line_error(result, f"cannot write {tmp_path / 'out' / 'train.bin.tmp'} (File too large) in the "
                          "corpus's first chunk; free space there or choose another --out_dir")
    assert not list((tmp_path / "out").glob("*.tmp"))
    small_chunks = "real = data.prepare; data.prepare = lambda *a, **k: real(*a, chunk_chars=20_000, **k)"
    result = run_prepare_cli(small_chunks, "--input", *corpus_files, "--tokenizer", prepared, "--doc_split",
                             "blank_line", "--out_dir", tmp_path / "out", preexec_fn=small_file_limit)
    assert_one_line_error(result, "(File too large) after 0.1 MB of token files for ", "% of the corpus (about ",
                          "MB in all); free space there")
    assert not list((tmp_path / "out").glob("*.tmp"))

# -----------------------------------------------------------------------------
# the loader


def fake_dataset(folder, train_tokens, val_tokens, bos_id=1, dtype="uint32", doc_starts=None):
    """A prepared folder whose token values are their positions, so every value says where it came from.
    Documents start at doc_starts (default: every 10 tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(train_tokens, dtype=dtype).tofile(folder / "train.bin")
    np.asarray(val_tokens, dtype=dtype).tofile(folder / "val.bin")
    doc_starts = np.arange(0, len(train_tokens), 10) if doc_starts is None else np.asarray(doc_starts)
    doc_starts.astype("<u8").tofile(folder / "train.idx")
    meta = {"vocab_size": 2**20, "dtype": dtype, "train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
            "train_documents": len(doc_starts), "train_index": "train.idx", "bos_id": bos_id, "pad_id": 3,
            "mask_id": 4}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def random_documents(n_tokens, rng, low=3, high=40):
    """Document starts over n_tokens tokens, lengths uniform in [low, high)."""
    starts = np.cumsum([0] + list(rng.integers(low, high, n_tokens // low)))
    return starts[starts < n_tokens]


def test_each_subset_token_once_per_epoch_repacked_every_epoch(tmp_path):
    rng = np.random.default_rng(0)
    starts = random_documents(1000, rng)
    folder = fake_dataset(tmp_path / "d", np.arange(1000), np.arange(100), doc_starts=starts)
    block, unique, repetitions, batch, ranks = 8, 203, 3, 5, 3
    windows = data.TrainWindows(folder, block, unique_tokens=unique, seed=7, subset_seed=11)
    assert windows.n_windows == 25 and windows.unique_tokens == 200
    # the subset: whole documents in a seeded order, the last one cut, 201 tokens in all
    ends = dict(zip(starts.tolist(), np.append(starts[1:], 1000).tolist()))
    subset = [list(range(a, a + n)) for a, n in zip(windows.doc_starts.tolist(), windows.doc_lengths.tolist())]
    assert all(doc[0] in ends and doc[-1] < ends[doc[0]] for doc in subset)
    assert all(doc[-1] + 1 == ends[doc[0]] for doc in subset[:-1])  # whole documents but the last
    subset_tokens = sorted(v for doc in subset for v in doc)
    assert len(subset_tokens) == 201 == len(set(subset_tokens))
    assert subset_tokens != list(range(201))  # a random sample, not the head of train.bin
    # "ranks" take disjoint global window counters k, batch by batch, for r epochs
    seen = []
    for step in range(repetitions * windows.n_windows // (batch * ranks)):
        for rank in range(ranks):
            x, y, _ = windows.batch((step * ranks + rank) * batch, batch)
            assert torch.equal(y[:, :-1], x[:, 1:])
            seen += [(x[b].tolist(), y[b].tolist()) for b in range(batch)]
    assert len(seen) == repetitions * windows.n_windows
    window_starts = []
    for epoch in range(repetitions):
        inputs = [v for xs, _ in seen[epoch * 25:(epoch + 1) * 25] for v in xs]
        last_target = seen[(epoch + 1) * 25 - 1][1][-1]
        assert sorted(inputs + [last_target]) == subset_tokens  # each subset token once per epoch
        # the epoch's stream is the subset's documents, whole and back to back, in a shuffled order
        stream = inputs + [last_target]
        pieces = np.split(stream, np.flatnonzero(np.diff(stream) != 1) + 1)
        assert sorted(p.tolist() for p in pieces) == sorted(subset)
        window_starts.append({xs[0] for xs, _ in seen[epoch * 25:(epoch + 1) * 25]})
    # windows are cut afresh every epoch: their boundaries move
    assert window_starts[0] != window_starts[1] != window_starts[2]
    assert sum(len(xs) for xs, _ in seen) == repetitions * windows.unique_tokens


def test_subsets_nest_across_repetitions_and_ignore_lam_and_seed(tmp_path):
    rng = np.random.default_rng(1)
    folder = fake_dataset(tmp_path / "d", np.arange(5000), np.arange(100), doc_starts=random_documents(5000, rng))
    subsets = {r: data.TrainWindows(folder, 8, unique_tokens=4096 // r, seed=r, subset_seed=3) for r in (1, 4, 16)}
    for small, large in ((16, 4), (4, 1)):
        a, b = subsets[small], subsets[large]
        n = len(a.doc_starts)
        assert a.doc_starts.tolist() == b.doc_starts[:n].tolist()  # a prefix of one document order
        assert a.doc_lengths[:-1].tolist() == b.doc_lengths[:n - 1].tolist()
        assert a.doc_lengths[-1] <= b.doc_lengths[n - 1]
    other = data.TrainWindows(folder, 8, unique_tokens=256, seed=99, subset_seed=3)  # another seed: same tokens
    assert other.doc_starts.tolist() == subsets[16].doc_starts.tolist()
    assert data.TrainWindows(folder, 8, unique_tokens=256, subset_seed=4).doc_starts.tolist() != \
        other.doc_starts.tolist()


def test_subset_samples_a_corpus_sorted_by_source(shared_data, tmp_path):
    # 16 small "books" sorted by name, each split into paragraphs: the subset at r = 8 must not be the
    # opening of the first book (the old loader's flaw) but draw from most of them
    novels = sorted((shared_data / "corpus" / "english_novels").glob("*.txt"))[:16]
    books = tmp_path / "books"
    books.mkdir()
    for i, path in enumerate(novels):
        (books / f"{i:02d}.txt").write_bytes(cut_at_line(path.read_bytes(), 20_000))
    out = tmp_path / "prepared"
    data.prepare([books], out, vocab_size=400, val_fraction=0.02, doc_split="blank_line", workers=1)
    meta = data.load_meta(out)
    starts = np.fromfile(out / "train.idx", dtype="<u8").tolist()
    tokens = np.fromfile(out / "train.bin", dtype=meta["dtype"])
    tok = data.Tokenizer.load(out)
    texts = {books / f"{i:02d}.txt": (books / f"{i:02d}.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
             for i in range(16)}
    windows = data.TrainWindows(out, 32, unique_tokens=meta["train_tokens"] // 8)
    drawn = set()
    for start in windows.doc_starts.tolist():
        end = starts[starts.index(start) + 1] if start != starts[-1] else len(tokens)
        text = tok.decode(tokens[start + 1:end].tolist())
        books_holding = [i for i, body in enumerate(texts.values()) if text[:60] in body]
        if len(text) >= 40 and len(books_holding) == 1:  # skip short lines such as "CHAPTER I"
            drawn |= set(books_holding)
    assert len(drawn) >= 8, drawn


def test_windows_are_a_pure_function_of_seed_and_counter(tmp_path):
    folder = fake_dataset(tmp_path / "d", np.arange(500), np.arange(100))
    run = data.TrainWindows(folder, 16, seed=1)
    assert run.n_windows == 31 and run.unique_tokens == 496
    stream = torch.cat([run.batch(k, 4)[0] for k in range(0, 40, 4)])
    resumed = data.TrainWindows(folder, 16, seed=1)  # e.g. after a restart at window 13, across the epoch boundary
    assert torch.equal(resumed.batch(13, 27)[0], stream[13:40])
    assert [run.epoch_of(k) for k in (0, 30, 31, 62)] == [0, 0, 1, 2]
    assert not torch.equal(data.TrainWindows(folder, 16, seed=2).batch(0, 31)[0], stream[:31])


def test_a_folder_from_an_older_data_py_is_refused(tmp_path):
    folder = fake_dataset(tmp_path / "d", np.arange(500), np.arange(100))
    (folder / "train.idx").unlink()
    with pytest.raises(ValueError) as error:
        data.TrainWindows(folder, 16)
    assert "older data.py" in one_line(error) and "re-run data.py" in str(error.value)
    folder = fake_dataset(tmp_path / "e", np.arange(500), np.arange(100))
    (folder / "train.idx").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError) as error:
        data.TrainWindows(folder, 16)
    assert "damaged" in one_line(error)


def test_document_ids_match_a_slow_reference(prepared):
    windows = data.TrainWindows(prepared, 64, seed=0)
    x, y, doc_ids = windows.batch(5, 16)
    assert x.dtype == y.dtype == torch.int64 and doc_ids.dtype == torch.int32 and x.shape == (16, 64)
    assert (x == 1).any()  # the sample crosses document boundaries
    for b in range(16):
        count = 0
        for i in range(64):
            count += int(x[b, i] == 1)
            assert doc_ids[b, i] == count


def test_val_windows_are_fixed_evenly_spaced_and_never_overlap(tmp_path):
    folder = fake_dataset(tmp_path / "d", np.arange(500), np.arange(100))
    x, y, doc_ids = data.val_windows(folder, 8, 5)
    assert x[:, 0].tolist() == [0, 22, 45, 68, 91] and y[-1, -1] == 99
    x_all, _, _ = data.val_windows(folder, 8, 1000)  # asks for more than fit: as many as fit
    assert len(x_all) == (100 - 1) // 8
    starts = x_all[:, 0].tolist()
    assert starts[0] == 0 and starts[-1] == 91 and all(b - a >= 8 for a, b in zip(starts, starts[1:]))
    assert torch.equal(data.val_windows(folder, 8, 5)[0], x)
    assert data.val_windows(folder, 99, 3)[0].shape == (1, 99)

# -----------------------------------------------------------------------------
# loader errors: one-line messages that name the fix (train.py turns them into its CLI errors)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.load_meta(tmp_path / "nothing")
    assert "does not exist" in one_line(error) and "python data.py --input" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        data.TrainWindows(tmp_path / "empty", 8)
    assert "no meta.json" in one_line(error)
    folder = fake_dataset(tmp_path / "zero", [], np.arange(10))
    with pytest.raises(FileNotFoundError) as error:
        data.TrainWindows(folder, 8)
    assert "train.bin is missing or empty" in one_line(error)
    folder = fake_dataset(tmp_path / "short", np.arange(50), np.arange(10))
    (folder / "train.bin").write_bytes(b"\0" * 12)
    with pytest.raises(ValueError) as error:
        data.load_meta(folder)
    assert "holds 12 bytes" in one_line(error)


def test_a_meta_json_of_random_bytes_or_unreadable_names_the_file(tmp_path):
    folder = fake_dataset(tmp_path / "d", np.arange(50), np.arange(10))
    (folder / "meta.json").write_bytes(bytes(random.Random(0).randrange(128, 256) for _ in range(64)))
    with pytest.raises(ValueError) as error:
        data.load_meta(folder)
    assert one_line(error).startswith(f"{folder / 'meta.json'} is not UTF-8 text (a damaged file); prepare it with")
    (folder / "meta.json").write_text("{}")
    (folder / "meta.json").chmod(0)
    try:
        if os.access(folder / "meta.json", os.R_OK):
            pytest.skip("running as a user who reads any file (root)")
        with pytest.raises(ValueError) as error:
            data.load_meta(folder)
        assert one_line(error) == f"{folder / 'meta.json'} cannot be read (Permission denied); fix its permissions"
    finally:
        (folder / "meta.json").chmod(0o644)


def test_block_size_or_token_budget_too_large_for_the_data(tmp_path):
    folder = fake_dataset(tmp_path / "d", np.arange(50), np.arange(10))
    with pytest.raises(ValueError) as error:
        data.TrainWindows(folder, 64)
    assert "block_size 64 is larger than the data supports" in one_line(error)
    with pytest.raises(ValueError) as error:
        data.TrainWindows(folder, 8, unique_tokens=50)
    assert "holds 50 tokens" in one_line(error) and "repetitions" in str(error.value)
    assert data.TrainWindows(folder, 8, unique_tokens=49).n_windows == 6
    with pytest.raises(ValueError) as error:
        data.val_windows(folder, 10, 4)
    assert "val.bin" in one_line(error) and "block_size" in str(error.value)


# -----------------------------------------------------------------------------
# --max_doc_bytes: a book with no blank lines is cut into documents at line breaks (issue 21 §3)


@pytest.fixture(scope="module")
def unbroken_book(shared_data, tmp_path_factory):
    """A novel slice with its blank lines removed, as Great Expectations is: one document at blank lines."""
    raw = (shared_data / "corpus" / "english_novels" / "Hardy_Tess_1891.txt").read_bytes()
    text = cut_at_line(raw, 60_000).decode("utf-8-sig").replace("\r\n", "\n")
    text = "\n".join(line for line in text.split("\n") if line.strip())
    text += "\n" + " ".join(["a-single-line-longer-than-the-cap"] * 100)  # 3,399 bytes: kept whole, not cut
    path = tmp_path_factory.mktemp("book") / "book.txt"
    path.write_text(text + "\n", encoding="utf-8")
    return path, text


def test_a_long_document_is_cut_at_line_breaks_under_the_cap(unbroken_book):
    path, text = unbroken_book
    assert list(data.read_documents(path, "blank_line")) == [text]  # no cap: one document
    pieces = list(data.read_documents(path, "blank_line", max_doc_bytes=2000))
    assert len(pieces) > 25 and "\n".join(pieces) == text  # whole lines, in order, nothing lost
    sizes = [len(p.encode()) for p in pieces]
    assert all(s <= 2000 for s in sizes[:-1]) and sizes[-1] == 3399  # the over-long line alone, whole
    assert sum(sizes[:-1]) / len(sizes[:-1]) > 1500  # filled near the cap, not line by line
    # the same pieces from every input format
    (path.parent / "book.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    assert list(data.read_documents(path.parent / "book.jsonl", "blank_line", max_doc_bytes=2000)) == pieces
    write_parquet(path.parent / "book.parquet", [text], 1)
    assert list(data.read_documents(path.parent / "book.parquet", "blank_line", max_doc_bytes=2000)) == pieces
    # documents under the cap are untouched
    assert list(data.read_documents(path, "blank_line", max_doc_bytes=len(text.encode()))) == [text]
    # one text file without --doc_split is split at blank lines as before: a cap does not make it "file"
    doc_split, scan = data.choose_doc_split([path], None, "text", 0, 2000)
    assert doc_split == "blank_line" and scan.documents == len(pieces)


def test_the_pieces_of_a_book_are_split_into_train_and_val_independently(unbroken_book, tmp_path, capsys):
    path, text = unbroken_book
    data.main([str(a) for a in ("--input", path, "--out_dir", tmp_path / "capped", "--doc_split", "blank_line",
                                "--vocab_size", 400, "--val_fraction", 0.2, "--max_doc_bytes", 2000, "--workers", 1)])
    meta = data.load_meta(tmp_path / "capped")
    assert meta["max_doc_bytes"] == 2000 and "max_doc_bytes 2000" in meta["document_rule"]
    tok, pieces = data.Tokenizer.load(tmp_path / "capped"), list(data.read_documents(path, "blank_line", "text", 2000))
    for split in ("train", "val"):
        tokens = np.fromfile(tmp_path / "capped" / f"{split}.bin", dtype=meta["dtype"])
        found = [tok.decode(d) for d in split_documents(tokens, meta["bos_id"])]
        assert found == [p for p in pieces if (reference_hash(p, 0) < meta["val_hash_threshold"]) == (split == "val")]
        assert len(found) >= 3  # the one book spreads across both splits
    # without the cap the book is one document: a single one cannot be split
    assert "single distinct document" in cli_error("--input", path, "--out_dir", tmp_path / "whole",
                                                   "--doc_split", "blank_line", "--vocab_size", "400")


def test_default_is_no_cap_and_a_bad_cap_is_a_one_line_error(prepared, corpus_files, tmp_path):
    assert data.load_meta(prepared)["max_doc_bytes"] is None
    for bad in ("0", "-5"):
        message = cli_error("--input", *corpus_files, "--out_dir", tmp_path / "out", "--max_doc_bytes", bad)
        assert_one_line_error(message, f"--max_doc_bytes must be a positive number of bytes, got {bad}")
    assert not (tmp_path / "out").exists()
