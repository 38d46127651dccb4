"""
Text in, token files out; and the loader that train.py reads them with (docs/data.md has the details).

    python data.py --input ../shared/data/corpus/english_novels --out_dir data_novels
    python data.py --input more.jsonl --tokenizer data_novels --out_dir data_more   # share a vocabulary
    python data.py     # no --input: download Tiny Shakespeare (as nanoGPT does) and prepare it

Three streaming passes: (1) scan: count the documents and fix the train/val split, (2) train the BPE on
the training documents, (3) encode in parallel into train.bin, val.bin and train.idx, in input order,
swapped in only when complete. TrainWindows trains on a random subset of whole documents (paper §5.1).
"""
import argparse
import codecs
import collections
import contextlib
import fcntl
import functools
import gzip
import hashlib
import importlib.util
import http.client
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tiktoken
import tokenizers

from cli import Progress

# torch is imported inside the loader only: preparing data never needs it, and the CLI starts fast.

# ids 0..4 of a trained BPE, in this order (as the paper's official code: <s>=1, <pad>=3, <mask>=4)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<mask>"]
DEFAULT_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Encoding and decoding this must give it back; any tokenizer we load is checked with it.
ROUND_TRIP_PROBE = "Hi, <s> and <mask> or <unk>!\n\n\tCafé 你好 😀 \r\n\x0c x\u00a0y"
# tokenizers needs ~100 bytes of memory per character of text it encodes at once, so long texts go
# in pieces of about PIECE_CHARS, and encode_batch sends at most about BATCH_CHARS per call.
PIECE_CHARS, BATCH_CHARS = 1 << 16, 1 << 18
CHUNKS_IN_FLIGHT_PER_WORKER = 2  # chunks read but not yet written, per encoding worker (flat memory)
# Where split_into_pieces may cut: before a space, tab or line break that follows a non-space; before a
# line break followed by a non-space; between an ASCII letter (or digit) and an ASCII non-letter (non-digit).
SAFE_CUT = re.compile(r"(?<=\S)(?=[ \t\n])|\n(?=\S)|(?<=[A-Za-z])(?=[\x00-\x7f])(?![A-Za-z])"
                      r"|(?<=[0-9])(?=[\x00-\x7f])(?![0-9])")
MAX_VOCAB_SIZE = 2**32  # token ids are stored as uint32 at most
# the files of a dataset folder, renamed into place in this order: meta.json last, as it vouches for the rest
OUTPUTS = ("train.bin", "val.bin", "train.idx", "tokenizer.json", "meta.json")

# -----------------------------------------------------------------------------
# Tokenizer: a byte-level BPE from `tokenizers`, or a tiktoken encoding


def split_into_pieces(text, piece_chars):
    r"""Cut text into pieces of at least piece_chars characters (the last may be shorter) at SAFE_CUT
    positions only, where the GPT-2 pre-tokenizer regex of byte-level BPE,
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    always ends a pre-token. The regex looks ahead only after whitespace and BPE merges never cross
    pre-tokens, so encoding the pieces one by one gives exactly the tokens of the whole text. (Python's
    \S is narrower than the tokenizer's, so it never allows a cut that the tokenizer's would not.)
    A run of piece_chars characters with no such position (say, one long word) stays in one piece."""
    start = 0
    while (cut := SAFE_CUT.search(text, start + piece_chars)) is not None:
        yield text[start:cut.start()]
        start = cut.start()
    yield text[start:]


class Tokenizer:
    """One interface over a `tokenizers` BPE and a tiktoken encoding (gpt2). encode() never adds special
    tokens and encodes literal "<s>" as ordinary text, so decode(encode(t)) == t for any string t."""

    def __init__(self, bpe=None, tiktoken_encoding=None):
        assert (bpe is None) != (tiktoken_encoding is None), "give exactly one backend"
        self.bpe, self.tiktoken = bpe, tiktoken_encoding
        if bpe is not None:
            # WikiText writes rare words as "<unk>": that text must not turn into the special id.
            # (This flag is not saved in tokenizer.json, hence set on every load.)
            bpe.encode_special_tokens = True
            bpe.no_padding()
            bpe.no_truncation()
            added = bpe.get_added_tokens_decoder()
            specials = {t.content: i for i, t in added.items() if t.special}
            missing = [t for t in SPECIAL_TOKENS if t not in specials]
            if missing:
                raise ValueError(f"the tokenizer lacks the special tokens {' '.join(missing)} (it needs all of "
                                 f"{' '.join(SPECIAL_TOKENS)}); train one with data.py --tokenizer bpe, or add them "
                                 f"with tokenizers' add_special_tokens")
            self.special_ids = {t: specials[t] for t in SPECIAL_TOKENS}
            self.vocab_size = max(bpe.get_vocab(with_added_tokens=True).values()) + 1
            # Cutting long texts into pieces is exact for the GPT-2 regex only (see split_into_pieces),
            # and only when no non-special added token (matched before pre-tokenizing) could span a cut.
            settings = json.loads(bpe.to_str())
            pre = settings["pre_tokenizer"] or {}
            self.encode_in_pieces = (settings["normalizer"] is None and pre.get("type") == "ByteLevel" and
                                     pre.get("use_regex") and not pre.get("add_prefix_space") and
                                     all(t.special for t in added.values()))
        else:
            # tiktoken's gpt2 uses ids 0..50256; ours follow (<unk> 50257 .. <mask> 50261), and the
            # vocabulary is rounded up to a multiple of 64 as in nanoGPT (50262..50303 never occur).
            first = tiktoken_encoding.n_vocab
            self.special_ids = {t: first + i for i, t in enumerate(SPECIAL_TOKENS)}
            self.vocab_size = -(-(first + len(SPECIAL_TOKENS)) // 64) * 64
            self.special_bytes = {i: t.encode() for t, i in self.special_ids.items()}
        self.unk_id, self.bos_id, self.eos_id, self.pad_id, self.mask_id = (
            self.special_ids[t] for t in SPECIAL_TOKENS)
        if self.decode(self.encode(ROUND_TRIP_PROBE)) != ROUND_TRIP_PROBE:
            raise ValueError("the tokenizer does not give text back unchanged after encoding and decoding "
                             "(not byte-level?); use a byte-level BPE such as the one data.py trains")

    def encode(self, text):
        return self.encode_batch([text])[0]

    def encode_batch(self, texts):
        ids = [[] for _ in texts]
        for i, piece in self.encode_pieces(texts):
            ids[i] += piece
        return ids

    def encode_pieces(self, texts):
        """(index of the text, its next token ids) in text order, at least once per text: long texts come
        in pieces, so a caller that stores ids compactly never holds a long text's ids as a list."""
        if self.tiktoken is not None:  # compact in memory: no need for pieces
            yield from ((i, self.tiktoken.encode_ordinary(t)) for i, t in enumerate(texts))
        elif not self.encode_in_pieces:
            yield from enumerate(e.ids for e in self.bpe.encode_batch_fast(texts, add_special_tokens=False))
        else:
            pieces = ((i, piece) for i, text in enumerate(texts) for piece in split_into_pieces(text, PIECE_CHARS))
            for group in batches(pieces, BATCH_CHARS, size=lambda item: len(item[1])):
                encodings = self.bpe.encode_batch_fast([piece for _, piece in group], add_special_tokens=False)
                yield from ((i, encoding.ids) for (i, _), encoding in zip(group, encodings))

    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if self.bpe is not None:
            return self.bpe.decode(ids, skip_special_tokens=False)
        # tiktoken knows nothing of our added ids: decode runs of its own ids, splice in ours (unused ones: "")
        runs = itertools.groupby(ids, key=lambda i: i >= self.tiktoken.n_vocab)
        pieces = [b"".join(self.special_bytes.get(i, b"") for i in run) if ours else
                  self.tiktoken.decode_bytes(list(run)) for ours, run in runs]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def to_spec(self):
        if self.bpe is not None:
            return {"kind": "bpe", "json": self.bpe.to_str()}
        return {"kind": "tiktoken", "name": self.tiktoken.name}

    @classmethod
    def from_spec(cls, spec):
        if spec.get("kind") == "bpe":
            return cls(bpe=tokenizers.Tokenizer.from_str(spec["json"]))
        if spec.get("kind") != "tiktoken":
            raise ValueError(f"unknown tokenizer spec kind {spec.get('kind')!r}; expected 'bpe' or 'tiktoken'")
        name = spec["name"]
        try:
            return cls(tiktoken_encoding=tiktoken.get_encoding(name))
        except Exception as e:  # no network, an empty cache, a bad name: all mean "cannot load it here"
            cache = os.environ.get("TIKTOKEN_CACHE_DIR", "the default data-gym-cache folder in your temp dir")
            raise ValueError(
                f"cannot load tiktoken's {name} encoding ({type(e).__name__}); tiktoken downloads it once and caches "
                f"it in TIKTOKEN_CACHE_DIR (now: {cache}): run python -c \"import tiktoken; tiktoken.get_encoding("
                f"'{name}')\" with a network and TIKTOKEN_CACHE_DIR set (copy that folder to offline machines), or use "
                f"--tokenizer bpe") from None

    @classmethod
    def load(cls, path):
        """path: a prepared dataset folder, or a tokenizer file (tokenizers' tokenizer.json, or our tiktoken spec)."""
        path = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}; give a prepared data folder or a tokenizer.json file")
        try:
            text = path.read_text(encoding="utf-8")
            content = json.loads(text)
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a tokenizer file (not UTF-8 text: a checkpoint?); give a prepared data "
                             f"folder or its tokenizer.json") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}); give a tokenizers tokenizer.json file") from None
        try:
            is_spec = isinstance(content, dict) and "kind" in content
            return cls.from_spec(content) if is_spec else cls(bpe=tokenizers.Tokenizer.from_str(text))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path} is not a tokenizers file ({str(e).splitlines()[0]})") from None


def same_tokenizer(spec_a, spec_b):
    """Whether two to_spec() values are the same tokenizer (BPE files compared as JSON values, so
    formatting does not matter): a checkpoint can only resume on data of its own vocabulary."""
    a, b = ({**s, "json": json.loads(s["json"])} if s.get("kind") == "bpe" else s for s in (spec_a, spec_b))
    return a == b


def batches(items, max_size, size=len):
    """Group items into lists whose sizes add up to at most max_size (a larger item goes alone)."""
    batch, total = [], 0
    for item in items:
        if batch and total + size(item) > max_size:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size(item)
    if batch:
        yield batch


def train_bpe(texts, vocab_size):
    """The paper's recipe: a byte-level BPE trained on the corpus. The initial alphabet holds all 256
    bytes, so any text can be encoded (no <unk> ever) and decodes back exactly."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=sys.stderr.isatty())
    # In pieces: tokenizers buffers 256 texts at a time, which for whole novels is the whole corpus
    bpe.train_from_iterator((piece for text in texts for piece in split_into_pieces(text, PIECE_CHARS)), trainer)
    return Tokenizer(bpe=bpe)


def token_dtype(vocab_size):
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# -----------------------------------------------------------------------------
# Reading documents: plain text, JSON lines and parquet, gzip'd or not; one reader, one piece per format

BOMS = {codecs.BOM_UTF32_LE: "UTF-32LE", codecs.BOM_UTF32_BE: "UTF-32BE", codecs.BOM_UTF16_LE: "UTF-16LE",
        codecs.BOM_UTF16_BE: "UTF-16BE"}  # UTF-32's before UTF-16's: UTF-32LE's BOM starts with UTF-16LE's


def file_format(path):
    """(format, gzipped): gzip is sniffed by its magic bytes, the format read from the name without
    .gz, case-insensitively (parquet also by its magic bytes); None for a name that is none of them."""
    with open(path, "rb") as f:
        magic = f.read(4)
    gzipped = magic[:2] == b"\x1f\x8b"
    name = path.name.lower().removesuffix(".gz") if gzipped else path.name.lower()
    kind = ("parquet" if magic == b"PAR1" or name.endswith(".parquet") else "jsonl" if name.endswith(".jsonl") else
            "text" if name.endswith(".txt") or (gzipped and "." not in name) else None)
    return kind, gzipped


def list_input_files(inputs):
    """Files in the order given; a folder contributes its files of a known format, recursively, sorted
    by path (never by the file system's order); every other file in it is listed as skipped, with why."""
    files = []
    for given in map(Path, inputs):
        if given.is_file():
            files.append(given)
            continue
        if not given.is_dir():
            raise FileNotFoundError(f"input {given} does not exist; pass text, .jsonl or .parquet files (or .gz of "
                                    f"text or JSON lines) or folders of them with --input")
        found, skipped = [], []
        for root, folders, names in os.walk(given):
            skipped += [(Path(root, d), "a hidden folder") for d in folders if d.startswith(".")]
            folders[:] = [d for d in folders if not d.startswith(".")]
            for path in (Path(root, name) for name in names):
                reason = ("a hidden file" if path.name.startswith(".") else
                          "not a regular file" if not path.is_file() else
                          "not .txt, .jsonl, .parquet or gzip (by name, any case)" if file_format(path)[0] is None
                          else None)
                if reason:
                    skipped.append((path, reason))
                else:
                    found.append(path)
        for path, reason in sorted(skipped):
            print(f"skipping {path}: {reason}")
        if not found:
            raise ValueError(f"input folder {given} holds no .txt, .jsonl, .parquet files (or .gz of text or JSON "
                             f"lines); name the files to use with --input")
        files += sorted(found, key=lambda f: f.relative_to(given).parts)
    if any(file_format(path) == ("parquet", False) for path in files) and importlib.util.find_spec("pyarrow") is None:
        raise ValueError("reading parquet files needs pyarrow: pip install pyarrow")  # now, not after a long scan
    return files


def field_text(text, where, text_field):
    """A JSON or parquet document's text, or a one-line error naming where it came from."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: no \"{text_field}\" string (found {type(text).__name__}); each document needs "
                         f"its text in a string field \"{text_field}\" (another name: --text_field)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def json_text(line, where, text_field):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}); each line of a .jsonl file must be one JSON object "
                         f"with a \"{text_field}\" field") from None
    return field_text(record.get(text_field) if isinstance(record, dict) else None, where, text_field)


# Parquet is read by a child process, a fresh interpreter that imports pyarrow and nothing of data.py, so that
# pyarrow's libraries and buffers add neither to this process nor to the workers forked from it (docs/data.md).
# It sends frames (a tag byte, a little-endian uint64 length, the payload): b"g" a row group starts (its
# number), b"t" a document (UTF-8), b"n" a null, b"e" an error (one line).
PARQUET_READER = r"""
import ctypes, os, signal, struct, sys
import pyarrow as pa, pyarrow.parquet
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops reading, and kills us
path, text_field, out = sys.argv[1], sys.argv[2], sys.stdout.buffer
def send(tag, payload=b""):
    out.write(struct.pack("<cQ", tag, len(payload)) + payload)
# pyarrow's default allocator (mimalloc) keeps what it frees, so use the system's; and glibc, once a large
# buffer is freed, serves the next ones from the heap, where strings pin them: fix the mmap threshold.
pa.set_memory_pool(pa.system_memory_pool())
if hasattr(libc := ctypes.CDLL(None), "mallopt"):  # glibc only
    libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD
def read():
    try:  # row group by row group, 64 rows at a time, page by page (pre_buffer off): flat memory
        parquet = pa.parquet.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        return f"{path} is not a readable parquet file ({e}); download or write it again"
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        return (f"{path} has no column \"{text_field}\" (its columns: {', '.join(schema.names)}); name the text "
                f"column with --text_field")
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        return (f"{path}: column \"{text_field}\" holds {column_type}, not strings; name the text column with "
                f"--text_field")
    for group in range(parquet.num_row_groups):
        send(b"g", str(group).encode())
        try:
            for batch in parquet.iter_batches(64, [group], [text_field], use_threads=False):
                for text in batch.column(0).to_pylist():
                    send(b"t", text.encode()) if isinstance(text, str) else send(b"n")
        except (pa.ArrowException, OSError) as e:
            return (f"{path}, row group {group} (counting from 0) cannot be read ({' '.join(str(e).split())}): a "
                    f"damaged file; download or write it again")
try:
    if (error := read()) is not None:
        send(b"e", error.encode())
    out.flush()
except BrokenPipeError:  # the parent stopped reading: nothing left to say
    os._exit(1)
"""


def parquet_documents(path, text_field):
    """A parquet file's text column, document by document, from a PARQUET_READER child process."""
    reader = subprocess.Popen([sys.executable, "-c", PARQUET_READER, str(path), text_field], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, bufsize=1 << 16)
    where = str(path)
    try:
        while len(header := reader.stdout.read(9)) == 9:
            tag, length = struct.unpack("<cQ", header)
            payload = reader.stdout.read(length)
            if tag == b"e":
                raise ValueError(payload.decode())
            if tag == b"g":
                where = f"{path}, row group {payload.decode()} (counting from 0)"
            else:
                yield field_text(payload.decode() if tag == b"t" else None, where, text_field)
        if header or reader.wait() != 0:
            raise ValueError(f"the process reading {path} failed (exit code {reader.wait()}; its error above)")
    finally:
        reader.kill()
        reader.wait()
        reader.stdout.close()


def read_documents(path, doc_split, text_field="text", max_doc_bytes=None):
    """The documents of one file, trimmed (trailing whitespace and leading blank lines dropped), empty
    ones included, each cut to max_doc_bytes (see capped). Text is UTF-8 (a BOM is dropped) and line endings
    become \\n. Every reader of the corpus comes here, so scan, BPE and encoding see the same documents."""
    kind, gzipped = file_format(path)
    if kind == "parquet":
        yield from capped(parquet_documents(path, text_field), max_doc_bytes)
        return
    try:
        with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8-sig", newline=None) as f:
            if kind == "jsonl":
                documents = (json_text(line, f"{path}, line {number}", text_field)
                             for number, line in enumerate(f, 1) if line.strip())
            elif doc_split == "file":
                documents = [f.read()]
            else:  # blank_line: a document is a run of lines that are not blank
                documents = ("".join(lines) for blank, lines in itertools.groupby(f, key=lambda l: not l.strip())
                             if not blank)
            yield from capped(documents, max_doc_bytes)
    except UnicodeDecodeError:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            start = f.read(4)
        bom = next((name for bom, name in BOMS.items() if start.startswith(bom)), None)
        if bom:
            raise ValueError(f"{path} is {bom} text (it starts with a {bom} byte-order mark), not UTF-8; convert it: "
                             f"iconv -f {bom} -t UTF-8") from None
        raise ValueError(f"{path} is not valid UTF-8; convert it from its encoding, e.g. iconv -f latin1 -t utf-8 "
                         f"for Latin-1") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not a valid gzip file ({e}); decompress or fix it") from None


def trim_document(text):
    text = text.rstrip()
    start = len(text) - len(text.lstrip())
    return text[text.rfind("\n", 0, start) + 1:]  # keeps the first line's indentation


def capped(documents, max_doc_bytes):
    """Trimmed documents; with max_doc_bytes, a longer one is cut at line breaks into trimmed, non-empty
    pieces of as many whole lines as fit in max_doc_bytes (a longer single line is a piece of its own)."""
    for text in map(trim_document, documents):
        if max_doc_bytes is None or len(text.encode("utf-8")) <= max_doc_bytes:
            yield text
            continue
        pieces, size = [[]], -1  # pieces are joined by "\n": n lines of b bytes in all take b + n - 1
        for line in text.split("\n"):
            n = len(line.encode("utf-8")) + 1
            if pieces[-1] and size + n > max_doc_bytes:
                pieces.append([])
                size = -1
            pieces[-1].append(line)
            size += n
        yield from filter(None, (trim_document("\n".join(piece)) for piece in pieces))


def iter_documents(files, doc_split, text_field="text", max_doc_bytes=None):
    """All non-empty documents, lazily, in a fixed order."""
    return (text for path in files for text in read_documents(path, doc_split, text_field, max_doc_bytes) if text)


def document_hash(text, seed):
    """A 64-bit hash of the document's text: the split depends on the text alone, so it is the same
    whatever the file order, and identical documents always land in the same split."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=seed.to_bytes(16, "little")).digest()
    return int.from_bytes(digest, "little")


def scan_corpus(files, doc_split, text_field, seed, max_doc_bytes=None):
    """Pass 1: read everything once (so bad input fails before any long work) and keep O(1) state: the
    non-empty documents, their bytes, the documents empty after trimming, the smallest and largest hash."""
    scan = SimpleNamespace(documents=0, bytes=0, empty_skipped=0, min_hash=2**64, max_hash=-1)
    progress = Progress(total=len(files), desc="scan", unit="files", stream=sys.stdout)
    for path in files:
        for text in read_documents(path, doc_split, text_field, max_doc_bytes):
            if not text:
                scan.empty_skipped += 1
                continue
            h = document_hash(text, seed)
            scan.documents += 1
            scan.bytes += len(text.encode("utf-8"))
            scan.min_hash, scan.max_hash = min(scan.min_hash, h), max(scan.max_hash, h)
        progress.update(1)
    progress.close()
    return scan


def val_threshold(val_fraction, scan):
    """A document goes to val.bin when its hash is below the threshold: val_fraction of the hash range.
    If that leaves no validation document, it rises just enough to take the one with the smallest hash;
    if it leaves no training one, it drops to keep the one with the largest. Returns it and a note."""
    if scan.min_hash == scan.max_hash:
        raise ValueError("the corpus holds a single distinct document, so none can be held out for validation; "
                         "give more files, or split plain text into documents with --doc_split blank_line")
    threshold = int(val_fraction * 2**64)
    if scan.min_hash >= threshold:
        return scan.min_hash + 1, "raised to hold out the document with the smallest hash (none fell below)"
    if scan.max_hash < threshold:
        return scan.max_hash, "lowered to keep the document with the largest hash for training (all fell below)"
    return threshold, None

# -----------------------------------------------------------------------------
# Pass 3: parallel, streaming encoding. Workers encode chunks of documents; the parent appends the
# results to the token files in input order, so the output does not depend on the number of workers.

worker = {}  # each worker process's tokenizer and split settings, set once by init_worker


def init_worker(tokenizer_spec, threshold, seed, dtype, in_pool=False):
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (one line, not one per worker)
    worker.update(tokenizer=Tokenizer.from_spec(tokenizer_spec), threshold=threshold, seed=seed,
                  dtype=np.dtype(dtype))


def encode_chunk(texts):
    """Encode a chunk of documents; returns the train and val token arrays and their document lengths."""
    tok, dtype = worker["tokenizer"], worker["dtype"]
    split_of = ["val" if document_hash(text, worker["seed"]) < worker["threshold"] else "train" for text in texts]
    tokens, lengths = {"train": [], "val": []}, {"train": [], "val": []}
    previous = None
    for i, ids in tok.encode_pieces(texts):  # ids as compact arrays: a long document's ids are never a list
        if i != previous:
            tokens[split_of[i]].append(np.array([tok.bos_id], dtype=dtype))
            lengths[split_of[i]].append(1)
            previous = i
        tokens[split_of[i]].append(np.array(ids, dtype=dtype))
        lengths[split_of[i]][-1] += len(ids)
    out = {split: (np.concatenate(tokens[split] or [np.empty(0, dtype)]), np.array(lengths[split], dtype=np.uint64))
           for split in tokens}
    return out, sum(len(t.encode("utf-8")) for t in texts)


def encode_corpus(documents, tok, threshold, seed, out_dir, workers, chunk_chars, total_bytes):
    """Pass 3 of documents() into train.bin.tmp, val.bin.tmp and train.idx.tmp (prepare removes them if
    it fails); returns the token and document counts."""
    dtype = token_dtype(tok.vocab_size)
    paths = {name: out_dir / f"{name}.tmp" for name in ("train.bin", "val.bin", "train.idx")}
    counts = {"train_tokens": 0, "val_tokens": 0, "train_documents": 0, "val_documents": 0}
    # One core per worker: tokenizers' own threads would only oversubscribe the CPU (set before forking,
    # this also stops tokenizers warning about a fork after its threads ran).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    init_args = (tok.to_spec(), threshold, seed, dtype.str)
    pool = multiprocessing.Pool(workers, init_worker, (*init_args, True)) if workers > 1 else None
    start, progress = time.time(), Progress(total=total_bytes, desc="encode", unit="B", stream=sys.stdout)
    files_out = {}

    def results():  # in input order, whatever the order the workers finish in
        if pool is None:
            init_worker(*init_args)
            yield from map(encode_chunk, batches(documents(), chunk_chars))
            return
        # Memory stays flat: a chunk is read only when fewer than CHUNKS_IN_FLIGHT_PER_WORKER x workers
        # are read but not yet written, however slow the disk is.
        in_flight = collections.deque()
        for chunk in batches(documents(), chunk_chars):
            in_flight.append(pool.apply_async(encode_chunk, (chunk,)))
            if len(in_flight) == CHUNKS_IN_FLIGHT_PER_WORKER * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()

    def write(name, array=None):  # array=None: close the file (which flushes it)
        try:
            files_out[name].write(array.data) if array is not None else files_out[name].close()
        except OSError as e:  # a full disk: say where, and how much room the rest needs
            written = (counts["train_tokens"] + counts["val_tokens"]) * dtype.itemsize + 8 * counts["train_documents"]
            fraction = progress.count / total_bytes
            where = (f"after {written / 1e6:,.1f} MB of token files for {fraction:.0%} of the corpus (about "
                     f"{written / fraction / 1e6:,.0f} MB in all)" if fraction else "in the corpus's first chunk")
            raise OSError(f"cannot write {paths[name]} ({e.strerror or e}) {where}; free space there or choose "
                          f"another --out_dir") from None

    try:
        files_out = {name: open(path, "wb") for name, path in paths.items()}
        for out, n_bytes in results():
            lengths = out["train"][1]
            write("train.idx", (counts["train_tokens"] + np.cumsum(lengths) - lengths).astype("<u8"))
            for split in ("train", "val"):
                tokens, lengths = out[split]
                write(f"{split}.bin", tokens)
                counts[f"{split}_tokens"] += len(tokens)
                counts[f"{split}_documents"] += len(lengths)
            progress.update(n_bytes)
        for name in paths:
            write(name)
    finally:
        for f in files_out.values():
            with contextlib.suppress(OSError):  # a close that failed above, already reported
                f.close()
        if pool is not None:
            pool.terminate()
    progress.close()
    seconds = time.time() - start
    n_tokens = counts["train_tokens"] + counts["val_tokens"]
    print(f"encoded {total_bytes / 1e6:.1f} MB into {n_tokens:,} tokens in {seconds:.1f}s with {workers} worker(s): "
          f"{total_bytes / 1e6 / seconds:.2f} MB/s, {n_tokens / seconds:,.0f} tokens/s")
    return counts

# -----------------------------------------------------------------------------
# The whole preparation


def train_tokenizer(documents, seed, threshold, scan, vocab_size, tokenizer_train_bytes):
    """Pass 2: train the BPE on the training documents only. With a byte budget, on a deterministic
    sample: each training document is in with probability budget / corpus bytes, decided by its hash
    (uniform over [threshold, 2^64) for training documents). Returns the tokenizer and a description."""
    sampled = tokenizer_train_bytes is not None and tokenizer_train_bytes < scan.bytes
    cutoff = threshold + int(tokenizer_train_bytes / scan.bytes * (2**64 - threshold)) if sampled else 2**64
    sample = {"documents": 0, "bytes": 0}

    def training_texts():
        for text in documents():
            n_bytes = len(text.encode("utf-8"))
            if threshold <= document_hash(text, seed) < cutoff:
                sample["documents"] += 1
                sample["bytes"] += n_bytes
                yield text
            progress.update(n_bytes)

    print(f"training a byte-level BPE with vocab_size {vocab_size} ...")
    start = time.time()
    # the progress covers reading and counting the corpus; the merges that follow are quick by comparison
    progress = Progress(total=scan.bytes, desc="tokenizer: read", unit="B", stream=sys.stdout)
    # The trainer allocates memory for vocab_size tokens up front (2^32 of them abort the process), but
    # each merge removes at least one symbol from the training text, so no more than its bytes can be
    # learned: asking for more than that gives the same tokenizer.
    tok = train_bpe(training_texts(), min(vocab_size, 256 + len(SPECIAL_TOKENS) + scan.bytes))
    progress.close()
    if sample["documents"] == 0:
        raise ValueError(f"--tokenizer_train_bytes {tokenizer_train_bytes} sampled no training document "
                         f"(the corpus has {scan.documents} documents, {scan.bytes:,} bytes); raise it")
    print(f"trained the tokenizer in {time.time() - start:.1f}s on {sample['documents']:,} documents "
          f"({sample['bytes'] / 1e6:.1f} MB): {tok.vocab_size} tokens")
    return tok, (f"byte-level BPE trained with tokenizers {tokenizers.__version__} (min_frequency 2, all 256 "
                 f"bytes in the alphabet) on {sample['documents']} training documents ({sample['bytes']} bytes"
                 + (f", a sample chosen by hash for --tokenizer_train_bytes {tokenizer_train_bytes}"
                    if sampled else "") + f"); asked vocab_size {vocab_size}, got {tok.vocab_size}")


def check_out_dir(out_dir):
    """Fail at once, not after hours of work, on an out_dir that cannot become a folder we write in."""
    existing = Path(out_dir).absolute()
    while not existing.exists():  # the folder, or the nearest existing folder above it, which mkdir extends
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out_dir {out_dir}: {existing} is a file, not a folder; choose another --out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out_dir {out_dir}: no permission to write in {existing}; choose another --out_dir")


def lock_out_dir(out_dir):
    """An advisory lock on out_dir/data.lock (as train.py locks its out_dir), so that a second data.py
    cannot write the same dataset; the kernel drops it when the process ends, even on SIGKILL."""
    lock = open(out_dir / "data.lock", "a+")  # "a+": do not erase the holder's PID
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ValueError(f"--out_dir {out_dir} is in use by another data.py (PID {holder}); wait for it to finish "
                         f"or choose another --out_dir") from None
    lock.truncate(0)
    print(os.getpid(), file=lock, flush=True)
    return lock


def choose_doc_split(files, doc_split, text_field, seed, max_doc_bytes=None):
    """Scan the corpus; without a --doc_split, "file", unless that makes the whole corpus a single
    document (one plain-text file, nanoGPT's usual input), which is then split at blank lines. (That
    choice is made on uncut documents: a cap would otherwise hide a single document.)"""
    scan = scan_corpus(files, doc_split or "file", text_field, seed, max_doc_bytes if doc_split else None)
    if scan.documents == 0:
        raise ValueError(f"empty input corpus: no non-empty document in {len(files)} input file(s); give files "
                         f"that contain text")
    if doc_split is None and scan.min_hash == scan.max_hash and any(file_format(f)[0] == "text" for f in files):
        scan = scan_corpus(files, "blank_line", text_field, seed, max_doc_bytes)
        print(f"the input is a single document, so it is split into documents at blank lines: "
              f"{scan.documents:,} documents (--doc_split file keeps one document per file)", flush=True)
        if scan.min_hash == scan.max_hash:
            raise ValueError("the corpus holds a single distinct document even when split at blank lines, so none "
                             "can be held out for validation; give more text, or more files")
        return "blank_line", scan
    if doc_split is None and max_doc_bytes is not None:
        scan = scan_corpus(files, "file", text_field, seed, max_doc_bytes)
    return doc_split or "file", scan


def prepare(inputs, out_dir, vocab_size=8192, val_fraction=0.02, tokenizer="bpe", doc_split=None, text_field="text",
            workers=1, seed=0, tokenizer_train_bytes=None, max_doc_bytes=None, sources=None, chunk_chars=1 << 20):
    """Prepare a dataset folder from input files/folders; returns meta. tokenizer: "bpe" (train one),
    "gpt2" (tiktoken), or a tokenizer file / prepared folder to reuse; doc_split: see choose_doc_split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val_fraction must be in (0, 1), got {val_fraction}; train.py needs a validation split")
    if workers < 1 or seed < 0:
        raise ValueError(f"--workers must be >= 1 and --seed >= 0, got {workers} and {seed}")
    if tokenizer == "bpe" and not 256 + len(SPECIAL_TOKENS) <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"--vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + the special "
                         f"tokens) and at most 2^32 = {MAX_VOCAB_SIZE} (ids are stored as uint32), got {vocab_size}")
    if tokenizer_train_bytes is not None and tokenizer_train_bytes < 1:
        raise ValueError(f"--tokenizer_train_bytes must be positive, got {tokenizer_train_bytes}")
    if max_doc_bytes is not None and max_doc_bytes < 1:
        raise ValueError(f"--max_doc_bytes must be a positive number of bytes, got {max_doc_bytes}; leave it out "
                         f"to keep documents whole")
    check_out_dir(out_dir)
    if tokenizer == "gpt2":  # a tokenizer that cannot load should fail before any long pass
        tok = Tokenizer.from_spec({"kind": "tiktoken", "name": "gpt2"})
        tokenizer_rule = (f"tiktoken gpt2 (ids 0..50256) plus {' '.join(SPECIAL_TOKENS)} as ids 50257..50261; "
                          f"vocab_size rounded up to a multiple of 64: {tok.vocab_size}")
    elif tokenizer != "bpe":
        if not Path(tokenizer).exists():
            raise FileNotFoundError(f"--tokenizer {tokenizer}: no such file or folder; use bpe, gpt2, or the path of "
                                    f"a tokenizer.json or of a prepared data folder")
        tok = Tokenizer.load(tokenizer)
        tokenizer_rule = f"reused from {Path(tokenizer).resolve()} ({tok.vocab_size} ids)"
    files = list_input_files(inputs)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = None
    try:
        lock = lock_out_dir(out_dir)
        doc_split, scan = choose_doc_split(files, doc_split, text_field, seed, max_doc_bytes)
        threshold, threshold_note = val_threshold(val_fraction, scan)
        documents = functools.partial(iter_documents, files, doc_split, text_field, max_doc_bytes)  # read per pass
        if tokenizer == "bpe":
            tok, tokenizer_rule = train_tokenizer(documents, seed, threshold, scan, vocab_size, tokenizer_train_bytes)
        # Everything is written under temporary names beside the old dataset, which stays whole until
        # the new one is complete; then the files are renamed over it, meta.json last.
        counts = encode_corpus(documents, tok, threshold, seed, out_dir, workers, chunk_chars, scan.bytes)
        plain_text = ("each plain-text file is one document" if doc_split == "file" else
                      "plain-text files are split into documents at blank lines (lines holding only whitespace)")
        meta = {
            "vocab_size": tok.vocab_size, "dtype": token_dtype(tok.vocab_size).name, **counts,
            "train_index": "train.idx", "special_tokens": dict(tok.special_ids),  # no train_index: an older data.py
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "mask_id": tok.mask_id,
            "unk_id": tok.unk_id,
            "sources": [str(s) for s in (sources or [Path(i).resolve() for i in inputs])],
            "input_files": len(files), "corpus_bytes": scan.bytes, "empty_documents_skipped": scan.empty_skipped,
            "doc_split": doc_split, "text_field": text_field, "max_doc_bytes": max_doc_bytes,
            "document_rule": (
                f"{plain_text}; each line of a .jsonl file and each row of a .parquet file is one document (its "
                f"\"{text_field}\" field)"
                + (f"; a document over max_doc_bytes {max_doc_bytes} UTF-8 bytes is cut at line breaks into "
                   f"documents of at most that many bytes (a longer single line stays whole)" if max_doc_bytes else "")
                + ". Text is read as UTF-8 without BOM, line endings normalised to \\n, trailing whitespace and leading "
                "blank lines removed; empty documents are skipped. In the .bin files each document is <s> followed by "
                "its tokens (no end-of-document token), documents back to back in input order"),
            "val_fraction": val_fraction, "seed": seed, "val_hash_threshold": threshold,
            "split_rule": (f"by document: a document goes to val.bin when the 64-bit blake2b hash of its UTF-8 text "
                           f"(salt: seed {seed} as 16 little-endian bytes, digest read little-endian) is below "
                           f"val_hash_threshold = val_fraction {val_fraction} x 2^64"
                           + (f", {threshold_note}" if threshold_note else "")),
            "tokenizer": tokenizer_rule,
        }
        (out_dir / "tokenizer.json.tmp").write_text(tok.bpe.to_str(pretty=True) if tok.bpe is not None else
                                                    json.dumps(tok.to_spec()), encoding="utf-8")
        (out_dir / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (out_dir / "meta.json").unlink(missing_ok=True)  # from here to the last rename, no dataset passes as whole
        for name in OUTPUTS:
            os.replace(out_dir / f"{name}.tmp", out_dir / name)
    except BaseException:
        for name in OUTPUTS:
            (out_dir / f"{name}.tmp").unlink(missing_ok=True)
        if created and lock is not None:
            (out_dir / "data.lock").unlink()
            out_dir.rmdir()  # leave no empty dataset folder behind
        raise
    finally:
        if lock is not None:
            lock.close()
    print(f"wrote {out_dir}: train {counts['train_tokens']:,} tokens ({counts['train_documents']:,} documents), "
          f"val {counts['val_tokens']:,} tokens ({counts['val_documents']:,} documents), vocab {tok.vocab_size}")
    val_share = counts["val_tokens"] / (counts["train_tokens"] + counts["val_tokens"])
    if not val_fraction / 4 <= val_share <= min(4 * val_fraction, (1 + val_fraction) / 2):
        print(f"warning: val.bin holds {val_share:.2%} of the tokens, far from --val_fraction {val_fraction} (the "
              f"split is by document, and a few documents hold much of the text); split the text into more "
              f"documents, e.g. --doc_split blank_line")
    return meta


def download(url, out_dir):
    """Fetch url into out_dir (kept, and reused by later runs) and return its path."""
    path = Path(out_dir) / (Path(urllib.parse.urlparse(url).path).name or "input.txt")
    if path.is_file():
        print(f"using {path}, downloaded before")
        return path
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    print(f"downloading {url} to {path}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(temporary, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(temporary, path)
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise ValueError(f"cannot download {url} ({getattr(e, 'reason', e)}); without a network, prepare a local "
                         f"file instead: python data.py --input path/to/text.txt --out_dir {out_dir}") from None
    finally:
        temporary.unlink(missing_ok=True)
        if created and not path.exists():
            path.parent.rmdir()  # leave no empty dataset folder behind
    return path

# -----------------------------------------------------------------------------
# Loading a prepared folder (train.py, eval.py, sample.py)


def load_meta(data_dir):
    data_dir, meta_path = Path(data_dir), Path(data_dir) / "meta.json"
    fix = f"prepare it with: python data.py --input <text files or folders> --out_dir {data_dir}"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist; {fix}")
    if not meta_path.is_file():
        raise FileNotFoundError(f"data folder {data_dir} has no meta.json (never prepared, or its preparation "
                                f"was interrupted); {fix}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); {fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{meta_path} is not UTF-8 text (a damaged file); {fix}") from None
    except OSError as e:
        raise ValueError(f"{meta_path} cannot be read ({e.strerror}); fix its permissions") from None
    needed = ["vocab_size", "dtype", "train_tokens", "val_tokens", "bos_id", "pad_id", "mask_id"]
    if not isinstance(meta, dict) or any(key not in meta for key in needed):
        raise ValueError(f"{meta_path} is not a data.py description (it needs {', '.join(needed)}); {fix}")
    for split in ("train", "val"):
        path, n_tokens = data_dir / f"{split}.bin", meta[f"{split}_tokens"]
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            raise FileNotFoundError(f"{path} is missing or empty; {fix}")
        if size != n_tokens * np.dtype(meta["dtype"]).itemsize:
            raise ValueError(f"{path} holds {size} bytes, but meta.json says {n_tokens} {meta['dtype']} tokens (a "
                             f"damaged folder, or files from two runs); {fix}")
    return meta


def windows_to_batch(windows, bos_id):
    """(B, block_size+1) token windows -> x, y, and document ids: the number of <s> tokens in
    x[b, :i+1], so tokens of one document share an id (for document masking)."""
    import torch
    windows = windows.astype(np.int64)
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    doc_ids = np.cumsum(x == bos_id, axis=1, dtype=np.int32)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(doc_ids)


class TrainWindows:
    """The training stream of paper §5.1 (docs/data.md): a unique subset of T/r tokens, seen r times.
    The subset: the first documents of one seeded order of all training documents (subset_seed), up to
    unique_tokens + 1 tokens (the last one cut), so the subsets of all r nest. Epoch e shuffles its
    documents (seeded by (seed, e)) and cuts n_windows windows of block_size + 1 tokens, overlapping by
    one. Global window k is window k % n_windows of epoch k // n_windows: the data order is a pure
    function of (subset_seed, seed, k), so resume is exact and ranks that take disjoint k never overlap."""

    def __init__(self, data_dir, block_size, unique_tokens=None, seed=0, subset_seed=0):
        import torch
        meta = load_meta(data_dir)
        self.path, self.dtype, self.bos_id = Path(data_dir) / "train.bin", np.dtype(meta["dtype"]), meta["bos_id"]
        self.block_size, self.seed = block_size, seed
        index, n_indexed = Path(data_dir) / "train.idx", meta.get("train_documents")  # where each document starts
        fix = f"re-run data.py on your corpus with --out_dir {data_dir} (this data.py also writes train.idx)"
        if "train_index" not in meta or not index.is_file():
            raise ValueError(f"data folder {data_dir} was prepared by an older data.py: it has no train.idx, the "
                             f"document index that sampling and re-packing whole documents need; {fix}")
        if index.stat().st_size != 8 * (n_indexed or 0):
            raise ValueError(f"{index} holds {index.stat().st_size} bytes, but meta.json says {n_indexed} training "
                             f"documents (8 bytes each): a damaged folder; {fix}")
        starts = np.memmap(index, dtype="<u8", mode="r")
        available = meta["train_tokens"]
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if unique_tokens is None:
            unique_tokens = available - 1  # all of train.bin: one token is only ever a target
        if unique_tokens < 1 or unique_tokens + 1 > available:
            raise ValueError(f"train.bin in {data_dir} holds {available:,} tokens, but this run needs unique_tokens "
                             f"+ 1 = {unique_tokens + 1:,} (the token budget / repetitions); lower max_iters, "
                             f"batch_size or block_size, raise repetitions, or prepare more text")
        self.n_windows = unique_tokens // block_size
        if self.n_windows < 1:
            raise ValueError(f"block_size {block_size} is larger than the data supports: one window needs "
                             f"{block_size + 1} tokens, and this run may use {unique_tokens + 1:,} of train.bin in "
                             f"{data_dir} ({available:,}); lower block_size, or use more tokens (fewer repetitions, "
                             f"more data)")
        self.unique_tokens = self.n_windows * block_size
        # the subset: a prefix of one seeded document order, cut to exactly unique_tokens + 1 tokens
        order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(subset_seed)).numpy()
        lengths = (np.append(starts[1:], available) - starts).astype(np.int64)
        taken = np.cumsum(lengths[order])
        n_docs = int(np.searchsorted(taken, self.unique_tokens + 1)) + 1
        self.doc_starts = starts[order[:n_docs]].astype(np.int64)
        self.doc_lengths = lengths[order[:n_docs]]
        self.doc_lengths[-1] -= taken[n_docs - 1] - (self.unique_tokens + 1)
        self.epochs = {}

    def epoch_of(self, k):
        return k // self.n_windows

    def epoch(self, e):
        """Epoch e's document order: where each document starts in train.bin and where it starts and
        ends in the epoch's stream."""
        if e not in self.epochs:
            import torch
            if len(self.epochs) >= 2:  # a batch touches one or two epochs; keep memory bounded
                self.epochs.clear()
            digest = hashlib.blake2b(f"{self.seed}:{e}".encode(), digest_size=8).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # 63 bits for torch
            order = torch.randperm(len(self.doc_starts), generator=generator).numpy()
            stream_ends = np.cumsum(self.doc_lengths[order])
            self.epochs[e] = (self.doc_starts[order], stream_ends - self.doc_lengths[order], stream_ends)
        return self.epochs[e]

    def batch(self, first_window, batch_size):
        """Windows k = first_window .. first_window + batch_size - 1 (each mapped on its own, so a batch
        may straddle an epoch boundary). Returns x, y (B, block_size) int64 and doc_ids (B, block_size) int32."""
        n, block = self.n_windows, self.block_size
        file_offsets, lengths = [], []  # the pieces of train.bin that make up the batch, in order
        for e in range(first_window // n, (first_window + batch_size - 1) // n + 1):
            file_starts, stream_starts, stream_ends = self.epoch(e)
            # the batch's windows in epoch e: window k is stream tokens [lo, lo + block + 1); it spans
            # documents first..last of the epoch's order, each of which gives one piece of train.bin
            lo = (np.arange(max(first_window, e * n), min(first_window + batch_size, (e + 1) * n)) - e * n) * block
            first = np.searchsorted(stream_ends, lo, side="right")
            pieces = np.searchsorted(stream_ends, lo + block, side="right") - first + 1
            doc = np.repeat(first - np.cumsum(pieces) + pieces, pieces) + np.arange(pieces.sum())
            piece_lo = np.maximum(np.repeat(lo, pieces), stream_starts[doc])
            piece_hi = np.minimum(np.repeat(lo + block + 1, pieces), stream_ends[doc])
            file_offsets += (file_starts[doc] + piece_lo - stream_starts[doc]).tolist()
            lengths += (piece_hi - piece_lo).tolist()
        # Read the pieces with pread: no memory map, so resident memory stays flat however much of
        # train.bin an epoch touches (a long-lived memmap counts every page it touched; a fresh one
        # per batch pays a page fault for each of the scattered pages documents come from).
        size, fd = self.dtype.itemsize, os.open(self.path, os.O_RDONLY)
        try:
            raw = b"".join([os.pread(fd, count * size, start * size) for start, count in zip(file_offsets, lengths)])
        finally:
            os.close(fd)
        if len(raw) != batch_size * (block + 1) * size:
            raise ValueError(f"{self.path} is shorter than its meta.json says (changed since it was prepared?); "
                             f"re-run data.py")
        windows = np.frombuffer(raw, dtype=self.dtype)
        return windows_to_batch(windows.reshape(batch_size, block + 1), self.bos_id)


def val_windows(data_dir, block_size, n_windows):
    """A fixed held-out sample: n_windows windows of block_size+1 tokens, evenly spaced over val.bin from
    its first to its last token, the same for every run. Windows never overlap as inputs, so when val.bin
    holds fewer than n_windows of them, this returns the (val_tokens - 1) // block_size that fit."""
    meta = load_meta(data_dir)
    available = meta["val_tokens"]
    if available < block_size + 1:
        raise ValueError(f"val.bin in {data_dir} holds {available:,} tokens, fewer than one window of block_size + 1 "
                         f"= {block_size + 1}; lower block_size, or prepare again with a larger --val_fraction")
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    n_windows = min(n_windows, (available - 1) // block_size)
    last_start = available - block_size - 1
    # spacing last_start / (n_windows - 1) >= block_size, so the inputs of two windows never overlap
    starts = [i * last_start // (n_windows - 1) for i in range(n_windows)] if n_windows > 1 else [0]
    data = np.memmap(Path(data_dir) / "val.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    return windows_to_batch(np.stack([data[s:s + block_size + 1] for s in starts]), meta["bos_id"])

# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Prepare a nanodual dataset folder (train.bin, "
                                     "val.bin, tokenizer.json, meta.json) from text. Without --input, download Tiny "
                                     "Shakespeare (or --url) and prepare it.")
    add = parser.add_argument
    add("--input", nargs="+", metavar="PATH", help="text, .jsonl (a document a line) or .parquet (a document a row) "
        "files, .gz of text or JSON lines, or folders of them (recursive, sorted; other files listed as skipped)")
    add("--text_field", default="text", help="the field of a JSON line, or the column of a parquet file, that holds "
        "the text (default: %(default)s)")
    add("--out_dir", help="the dataset folder to write (default data_shakespeare when downloading)")
    add("--url", help=f"download this text file instead of the default corpus ({DEFAULT_URL})")
    add("--doc_split", choices=["file", "blank_line"], help="plain text: one document per file (default with --input, "
        "but a single text file is split at blank lines), or documents between blank lines (default for a download)")
    add("--tokenizer", default="bpe", help="'bpe' trains a byte-level BPE on the training documents, 'gpt2' is "
        "tiktoken's (cached), or the path of a tokenizer.json or a prepared folder to share (default: %(default)s)")
    add("--vocab_size", type=int, default=8192,
        help="vocabulary size of the trained BPE (default: %(default)s; the paper: 51200)")
    add("--tokenizer_train_bytes", type=int, help="train the BPE on a deterministic hash-chosen sample of about this "
        "many bytes of the training documents (default: all of them)")
    add("--max_doc_bytes", type=int, help="cut a longer document at line breaks into documents of at most this many "
        "UTF-8 bytes (a longer single line stays whole), so no book is one document (default: no cap)")
    add("--val_fraction", type=float, default=0.02, help="share of documents held out for validation, chosen by a "
        "hash of their text (at least one document; default: %(default)s)")
    add("--workers", type=int, default=min(8, os.cpu_count() or 1),
        help="processes that encode in parallel (default: min(8, CPUs) = %(default)s)")
    add("--seed", type=int, default=0, help="salt of the hash that splits train/val (default: %(default)s)")
    args = parser.parse_args(argv)

    settings = {k: v for k, v in vars(args).items() if k not in ("input", "out_dir", "url", "doc_split")}
    out_dir = args.out_dir or "data_shakespeare"
    try:
        if args.input and (args.url or not args.out_dir):
            raise ValueError("with --input, give --out_dir and no --url (--url replaces --input)")
        if args.input:
            prepare(args.input, out_dir, doc_split=args.doc_split, **settings)
        else:
            check_out_dir(out_dir)  # before downloading into it
            path = download(args.url or DEFAULT_URL, out_dir)
            prepare([path], out_dir, doc_split=args.doc_split or "blank_line", sources=[args.url or DEFAULT_URL],
                    **settings)
    except (ValueError, OSError) as e:  # bad input, a full disk: one line, no traceback
        sys.exit(f"data.py: error: {e}")
    except KeyboardInterrupt:
        kept = (f"the dataset in {out_dir} is the one that was there before, unchanged"
                if (Path(out_dir) / "meta.json").is_file() else f"no dataset was written to {out_dir}")
        sys.exit(f"data.py: interrupted; {kept}")


if __name__ == "__main__":
    main()
