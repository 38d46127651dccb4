"""bench.py's loader benchmark and its side-by-side run against nanoGPT work end to end at tiny sizes
(the speed figures themselves are measured by hand and quoted in docs/bench.md, never asserted)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


def test_data_benchmark_runs_both_loaders(tiny_dataset):
    run = subprocess.run([sys.executable, "bench.py", "data", "--data_dir", str(tiny_dataset), "--rounds", "1",
                          "--batches", "3"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("documents / fixed:") == 2 and "fixed" in run.stdout


@pytest.fixture
def nanogpt():
    """The unmodified nanoGPT checkout the benchmark runs beside nanodual."""
    path = REPO.parent / "shared" / "anchors" / "nanoGPT"
    if not (path / "train.py").is_file():
        pytest.skip(f"no nanoGPT checkout at {path}")
    return path


def test_nanogpt_benchmark_runs_both_trainers(nanogpt, tmp_path, shared_data):
    """bench.py nanogpt at a tiny shape: nanoGPT's unmodified train.py and nanodual's run side by side,
    their log lines are parsed (a changed log format fails here, not silently in a benchmark), and
    the table has the three nanodual settings with per-round ratios."""
    text = tmp_path / "input.txt"
    text.write_text((shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000],
                    encoding="utf-8")
    run = subprocess.run([sys.executable, "bench.py", "nanogpt", str(nanogpt), "--input", str(text),
                          "--vocab_size", "320", "--n_layer", "1", "--n_head", "2", "--n_embd", "48",
                          "--block_size", "32", "--batch_size", "2", "--rounds", "2", "--steps", "2",
                          "--warmup", "1"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert out.count("round 2:") == 4 and "intermediate_size 128" in out
    rows = re.findall(r"^(nanoGPT|nanodual, [^\n]*?)\s+[\d,]+\s+[\d.]+\s+([\d.]+)x", out, flags=re.M)
    assert [name for name, _ in rows][0] == "nanoGPT" and len(rows) == 4, out
    assert float(rows[0][1]) == 1.0 and all(float(ratio) > 0 for _, ratio in rows)
    assert "document masking costs" in out and "the AR step's tokens/s" in out


def test_nanogpt_benchmark_rejects_a_width_without_a_matching_swiglu(nanogpt):
    run = subprocess.run([sys.executable, "bench.py", "nanogpt", str(nanogpt), "--n_embd", "64", "--n_head", "2"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and "must be a multiple of 3" in run.stderr and "Traceback" not in run.stderr


def test_options_are_never_abbreviated(capsys):
    import bench
    with pytest.raises(SystemExit):
        bench.main(["nanogpt", "nanoGPT", "--step", "3"])  # would be taken as --steps
    assert "unrecognized arguments: --step 3" in capsys.readouterr().err
