import contextlib
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project is a flat folder of scripts, not a package

# The real public data the tests read (benchmarks, corpora). CI has it beside the checkout.
SHARED_DATA = Path(os.environ.get("NANODUAL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared data not found at {SHARED_DATA}; set NANODUAL_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, shared_data):
    """A prepared dataset folder (data.py CLI): the first 200 KB of Tiny Shakespeare, blank-line
    separated documents, a byte-level BPE of 512 tokens."""
    import subprocess
    root = tmp_path_factory.mktemp("tiny_dataset")
    text = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    (root / "shakespeare.txt").write_text(text, encoding="utf-8")
    out = root / "data"
    subprocess.run([sys.executable, str(REPO / "data.py"), "--input", str(root / "shakespeare.txt"),
                    "--out_dir", str(out), "--vocab_size", "512", "--doc_split", "blank_line",
                    "--val_fraction", "0.05", "--workers", "1"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_dataset):
    """A checkpoint as train.py writes it, with random weights: 2 layers, width 64, 4 heads,
    block 256, the tiny_dataset tokenizer, run config lam=0.5, repetitions=1."""
    from dataclasses import asdict
    import torch
    import data
    import model
    tok = data.Tokenizer.load(tiny_dataset)
    cfg = model.ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=4, n_embd=64,
                            intermediate_size=172, bos_id=tok.bos_id, pad_id=tok.pad_id, mask_id=tok.mask_id)
    torch.manual_seed(0)
    m = model.DualLM(cfg)
    path = tmp_path_factory.mktemp("tiny_ckpt") / "ckpt.pt"
    model.save_checkpoint(str(path), {
        "model": m.state_dict(), "model_config": asdict(cfg), "tokenizer": tok.to_spec(),
        "config": {"lam": 0.5, "repetitions": 1.0, "data_dir": str(tiny_dataset)},
        "iter_num": 0, "tokens_seen": 0})
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on CPU cores shared with other jobs extra threads
    mostly wait for each other (10x slower here); restored afterwards for the other test files."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(main, *args):
    """main(args) in this process (no new python and torch import), with what the shell would see:
    returncode, stdout and stderr; sys.exit(message) prints the message and exits with 1."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
