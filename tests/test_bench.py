"""bench.py's loader benchmark runs end to end on a prepared folder (the speed figures themselves are
measured by hand and quoted in docs/bench.md, never asserted)."""
import os
import subprocess
import sys

from conftest import REPO


def test_data_benchmark_runs_both_loaders(tiny_dataset):
    run = subprocess.run([sys.executable, "bench.py", "data", "--data_dir", str(tiny_dataset), "--rounds", "1",
                          "--batches", "3"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("documents / fixed:") == 2 and "fixed" in run.stdout
