"""bench.py's side-by-side run against nanoGPT works end to end at a tiny size
(the speed figures themselves are measured by hand and quoted in docs/bench.md, never asserted)."""
import os
import re
import subprocess
import sys

import pytest

import bench
from conftest import REPO


def start_bench(*args):
    return subprocess.Popen([sys.executable, "bench.py", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_nanogpt_benchmark_runs_end_to_end(tmp_path, shared_data, monkeypatch, capsys):
    """bench.py nanogpt at a tiny shape (in-process): nanoGPT's unmodified train.py and nanodual's run side
    by side, their log lines are parsed (a changed log format fails here, not silently in a benchmark),
    and the table has the three nanodual settings with per-round ratios. Each trainer runs for real in
    round 1; round 2 reuses round 1's runs (the same commands), which halves the test's time."""
    nanogpt = REPO.parent / "shared" / "anchors" / "nanoGPT"
    if not (nanogpt / "train.py").is_file():
        pytest.skip(f"no nanoGPT checkout at {nanogpt}: bench.py nanogpt not run")
    runs, real_run_trainer = {}, bench.run_trainer

    def run_once(cmd, *args):
        if tuple(cmd) not in runs:
            runs[tuple(cmd)] = real_run_trainer(cmd, *args)
        return runs[tuple(cmd)]

    monkeypatch.setattr(bench, "run_trainer", run_once)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = tmp_path / "input.txt"
    text.write_text((shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000],
                    encoding="utf-8")
    bench.main(["nanogpt", str(nanogpt), "--input", str(text), "--vocab_size", "320", "--n_layer", "1",
                "--n_head", "2", "--n_embd", "48", "--block_size", "32", "--batch_size", "2", "--rounds", "2",
                "--steps", "2", "--warmup", "1"])
    out = capsys.readouterr().out
    assert len(runs) == 4 and out.count("round 2:") == 4 and "intermediate_size 128" in out
    rows = re.findall(r"^(nanoGPT|nanodual, [^\n]*?)\s+[\d,]+\s+[\d.]+\s+([\d.]+)x", out, flags=re.M)
    assert [name for name, _ in rows][0] == "nanoGPT" and len(rows) == 4, out
    assert float(rows[0][1]) == 1.0 and all(float(ratio) > 0 for _, ratio in rows)
    assert "document masking costs" in out and "the AR step's tokens/s" in out


def test_bad_options_are_one_line_errors(capsys):
    """The command line's one-line error (its own process), then the parser in-process."""
    run = start_bench("nanogpt", REPO, "--n_embd", "64", "--n_head", "2")  # REPO passes as a checkout
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("bench.py: error: ") and "must be a multiple of 3" in stderr, stderr
    with pytest.raises(SystemExit):
        bench.main(["nanogpt", "nanoGPT", "--step", "3"])  # would be taken as --steps
    assert "unrecognized arguments: --step 3" in capsys.readouterr().err
