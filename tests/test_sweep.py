"""sweep.py on a 2x2 grid of 3-step runs: it trains, evaluates, resumes a half-done sweep, writes
the CSVs and draws the figures; it refuses to reuse cells of other settings, and stops its children.
sweep.main runs in this process (no python and torch start-up per call; the cells' train.py and
eval.py are subprocesses as ever); three tests run `python sweep.py` itself."""
import csv
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import sweep
from conftest import REPO, run_main

TINY_MODEL = ["--max_iters=3", "--eval_interval=1", "--eval_iters=1", "--batch_size=2", "--block_size=32",
              "--n_layer=1", "--n_embd=32", "--n_head=2", "--intermediate_size=64", "--log_interval=1",
              "--gradient_accumulation_steps=4"]


def run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, **kw)


def sweep_main(*args):
    return run_main(sweep.main, *args)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory, tiny_dataset, shared_data):
    root = tmp_path_factory.mktemp("sweep")
    runs, results = root / "runs", root / "results"
    settings = ["--eval_limit", "1", "--eval_data_dir", str(shared_data), "--threads", "1",
                f"--data_dir={tiny_dataset}", *TINY_MODEL]
    common = ["config/sweep_cpu.py", "--runs_dir", runs, "--results_dir", results, *settings]

    # a half-done sweep: the r=1 column finished, and cell (4, 0) stopped after 2 of its 3 steps (trained
    # beside the r=1 column: another cell)
    half = runs / "r4_lam0"
    stopping = subprocess.Popen([sys.executable, "train.py", "config/sweep_cpu.py", "--lam=0.0", "--repetitions=4.0",
                                 f"--out_dir={half}", f"--data_dir={tiny_dataset}", *TINY_MODEL[1:], "--max_iters=2"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = sweep_main(*common, "--repetitions", "1", "--lams", "0,1", "--jobs", "2")
    assert stopping.wait() == 0, stopping.stderr.read()
    assert first.returncode == 0, first.stderr
    import torch
    ckpt = torch.load(half / "ckpt.pt", weights_only=True)
    ckpt["config"]["max_iters"] = 3  # as a 3-step run stopped after step 2 records it (the sweep checks settings)
    torch.save(ckpt, half / "ckpt.pt")
    finished = {p: os.path.getmtime(p) for p in (runs / "r1_lam0" / "ckpt.pt", runs / "r1_lam1" / "eval.json")}

    second = sweep_main(*common, "--repetitions", "1,4", "--lams", "0,1", "--jobs", "2")
    assert second.returncode == 0, second.stderr
    return runs, results, finished, second.stdout, settings


def test_sweep_resumes_and_writes_one_row_per_cell(sweep_dirs):
    runs, results, finished, stdout, _ = sweep_dirs
    # finished cells are neither retrained nor re-evaluated
    assert all(os.path.getmtime(p) == t for p, t in finished.items())
    assert "r1_lam0: already done" in stdout and "r1_lam1: already done" in stdout
    # the half-trained cell continued from its checkpoint instead of starting over
    log = (runs / "r4_lam0" / "train.log").read_text()
    assert "resumed from" in log and "at step 2" in log
    steps = [json.loads(line)["iter"] for line in (runs / "r4_lam0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]

    rows = read_rows(results / "results.csv")
    assert [(float(r["repetitions"]), float(r["lambda"])) for r in rows] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for row in rows:
        assert float(row["tokens"]) == 3 * 4 * 2 * 32  # max_iters x G x batch x block: the same T everywhere
        assert float(row["unique_tokens"]) == float(row["tokens"]) / float(row["repetitions"])
        assert 0 <= float(row["blimp_causal"]) <= 100 and 0 <= float(row["blimp_pll"]) <= 100
        assert float(row["heldout_pll_loss"]) > 0 and float(row["heldout_causal_loss"]) > 0  # eval.py --heldout
        assert float(row["min_val_ar_loss"]) <= float(row["final_val_ar_loss"])
        assert row["train_commit"] and row["eval_commit"]
    # λ = 0 never trains AR, λ = 1 never trains MD: their train losses are absent, not zero
    by_lam = {float(r["lambda"]): r for r in rows if float(r["repetitions"]) == 4}
    assert by_lam[0.0]["final_train_ar_loss"] == "" and by_lam[0.0]["final_train_md_loss"] != ""
    assert by_lam[1.0]["final_train_md_loss"] == "" and by_lam[1.0]["final_train_ar_loss"] != ""
    curves = read_rows(results / "curves.csv")
    assert len(curves) == 4 * 4  # evaluations at steps 0..3 of each run


def test_figures_from_the_csvs(sweep_dirs):
    _, results, _, _, _ = sweep_dirs
    out = run(["sweep.py", "--figures", str(results)])  # the shell, with one BLAS thread: 3x faster here
    assert out.returncode == 0, out.stderr
    for name in ("fig1_loss_curves.png", "fig2_score_vs_lambda.png", "gp/gp_fit.png", "gp/fit.json",
                 "gp_min/fit.json", "gp_pll/fit.json", "gp_blimp_causal/fit.json",
                 "gp_blimp_pll/fit.json", "summary.md"):
        assert (results / name).stat().st_size > 0
    assert "final validation AR loss at r=4" in out.stdout and "lowest validation AR loss at r=4" in out.stdout
    summary = (results / "summary.md").read_text()
    assert len(re.findall(r"^\| 4 \| [0-9.]+ \|", summary, re.M)) == 2  # one table row per (4, λ) cell
    # the table of the paper's claims: a grid of λ in {0, 1} and r in {1, 4} has not the cells of claims 1, 2, 3, 5
    assert "| 5 | a mix beats both pure objectives at every r, causally and bidirectionally | AR loss and PLL loss | " \
        "inconclusive (the grid has no mixed λ) |" in summary and "| held-out PLL |" in summary
    assert "| 5 | a mix beats both pure objectives at every r, causally and bidirectionally | BLiMP causal and BLiMP " \
        "PLL | inconclusive (the grid has no mixed λ) |" in summary  # the claims again, on task scores
    assert "| 3 | λ* is lower at r ≥ 32 than at r ≤ 16" in summary and "inconclusive (the grid has no r ≥ 32)" in summary


def test_a_rerun_with_other_settings_is_refused(sweep_dirs):
    """The seed-replicate recipe with --runs_dir forgotten: no cell of the old sweep counts as done."""
    runs, results, _, _, settings = sweep_dirs
    before = (results / "results.csv").read_bytes()
    for extra, differ in ((["--seed=1", "--max_iters=4"], "max_iters 3 -> 4, seed 1337 -> 1"),
                          (["--eval_limit", "2"], "eval_limit 1 -> 2")):
        out = sweep_main(*["config/sweep_cpu.py", "--runs_dir", str(runs), "--results_dir", str(results),
                   *settings, "--repetitions", "1,4", "--lams", "0,1", *extra])
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"r1_lam0 and 3 more cell(s) in {runs} ran with other settings ({differ}); give this sweep another " \
               "--runs_dir (and --results_dir), or pass --overwrite" in out.stderr
    assert (results / "results.csv").read_bytes() == before


def test_overwrite_runs_again_only_the_cells_of_other_settings(sweep_dirs, tmp_path):
    import torch
    runs, _, _, _, settings = sweep_dirs
    for name in ("r1_lam0", "r1_lam1"):
        shutil.copytree(runs / name, tmp_path / name)
    ckpt = torch.load(tmp_path / "r1_lam1" / "ckpt.pt", weights_only=True)
    ckpt["config"]["seed"] = 7  # as if trained by a sweep with --seed=7
    torch.save(ckpt, tmp_path / "r1_lam1" / "ckpt.pt")
    kept = os.path.getmtime(tmp_path / "r1_lam0" / "ckpt.pt")
    args = ["config/sweep_cpu.py", "--runs_dir", str(tmp_path), "--results_dir", str(tmp_path / "results"),
            *settings, "--repetitions", "1", "--lams", "0,1"]
    refused = sweep_main(*args)
    assert refused.returncode != 0 and "r1_lam1 in" in refused.stderr and "(seed 7 -> 1337)" in refused.stderr
    out = sweep_main(*args, "--overwrite")
    assert out.returncode == 0, out.stderr
    assert "--overwrite: 1 cell(s) ran with other settings and are run again: r1_lam1" in out.stdout
    assert "r1_lam0: already done" in out.stdout and "r1_lam1: trained again (--overwrite) and evaluated" in out.stdout
    assert os.path.getmtime(tmp_path / "r1_lam0" / "ckpt.pt") == kept
    assert torch.load(tmp_path / "r1_lam1" / "ckpt.pt", weights_only=True)["config"]["seed"] == 1337
    again = sweep_main(*args)
    assert again.returncode == 0 and "r1_lam1: already done" in again.stdout, again.stderr


def test_sigterm_stops_the_running_train_py(tiny_dataset, tmp_path):
    cell = tmp_path / "runs" / "r4096_lam1"  # r = 4096: 100,000 steps need only 6,250 unique tokens
    sweep = subprocess.Popen([sys.executable, "sweep.py", "config/sweep_cpu.py", "--repetitions", "4096", "--lams", "1",
                              "--eval_tasks", "none", "--runs_dir", str(tmp_path / "runs"), "--results_dir",
                              str(tmp_path / "results"), f"--data_dir={tiny_dataset}", *TINY_MODEL[1:],
                              "--max_iters=100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    pid = None
    try:
        deadline = time.time() + 120
        log = cell / "train.log"
        while time.time() < deadline and sweep.poll() is None and not (log.exists() and "\niter " in log.read_text()):
            time.sleep(0.2)  # until train.py is training
        pid = int((cell / "train.lock").read_text())
        sweep.send_signal(signal.SIGTERM)
        _, stderr = sweep.communicate(timeout=60)
        assert sweep.returncode != 0 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("sweep.py: stopped by SIGTERM: the running cells' train.py")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # train.py ended with the sweep (the sweep waited for it: no zombie either)
        with open(cell / "train.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: a rerun can resume the cell
    finally:
        sweep.kill()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_figures_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    for name in ("results.csv", "curves.csv"):
        shutil.copy(REPO / "results" / "sweep_cpu" / name, tmp_path / name)
    out = sweep_main("--figures", tmp_path)
    assert out.returncode != 0 and out.stderr.strip() == \
        "sweep.py: error: --figures draws with matplotlib, which is not installed here; pip install matplotlib"


@pytest.mark.parametrize("flag", ["--runs_dir", "--results_dir"])
def test_a_folder_that_is_a_file_is_refused_before_any_work(flag, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    dirs = {"--runs_dir": tmp_path / "runs", "--results_dir": tmp_path / "results", flag: tmp_path / "file"}
    out = sweep_main(*["config/sweep_cpu.py", "--stage", "eval", "--repetitions", "1", "--lams", "1",
               *[str(a) for pair in dirs.items() for a in pair]])
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"sweep.py: error: {flag} {tmp_path / 'file'} is a file, not a folder; give a folder"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()  # nothing started


@pytest.mark.parametrize("args, message", [
    (["config/sweep_cpu.py", "--lams", "0,1.5"], "outside [0, 1]"),
    (["config/sweep_cpu.py", "--repetitions", "0.5"], "below 1"),
    (["config/sweep_cpu.py", "--repetitions", "1,inf"], "--repetitions must be finite numbers, got '1,inf'"),
    (["config/sweep_cpu.py", "--lams", "nan"], "--lams must be finite numbers"),
    (["config/sweep_cpu.py", "--lam=0.5"], "--lam=0.5: the sweep sets lam for each cell; use --lams"),
    (["config/sweep_cpu.py", "--out_dir=x"], "use --runs_dir"),
    (["config/sweep_cpu.py", "--seed=" + "9" * 24], "train.py would refuse cell r1_lam0: seed=" + "9" * 24),
    (["config/sweep_cpu.py", "--lams", "0.3"], "train.py would refuse cell r1_lam0.3: lam=0.3 is not a multiple"),
    (["config/sweep_cpu.py", "--lamm=0.5"], "unknown config key 'lamm'"),
    (["config/missing.py"], "does not exist"),
    (["config/sweep_cpu.py", "stray"], "unrecognised argument"),
    (["config/sweep_cpu.py", "--jobs", "0"], "argument --jobs: '0' must be a whole number of at least 1"),
    (["config/sweep_cpu.py", "--threads", "-1"], "argument --threads: '-1' must be a whole number of at least 0"),
    (["config/sweep_cpu.py", "--eval_limit", "-5"], "argument --eval_limit: '-5' must be a whole number of at least 0"),
    (["--figures", "/nonexistent/results"], "run the sweep first"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    out = sweep_main(*args, "--runs_dir", tmp_path)
    assert out.returncode != 0
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_bad_input_from_the_shell_is_one_line():
    out = run(["sweep.py", "config/sweep_cpu.py", "--lam=0.5"])
    assert out.returncode == 1 and out.stdout == "" and \
        out.stderr == "sweep.py: error: --lam=0.5: the sweep sets lam for each cell; use --lams\n"


DEFAULT_EVAL = {"eval_tasks": "blimp", "eval_modes": "causal,pll", "pll_k": "1", "eval_limit": 20, "eval_data_dir": None,
                "heldout": 256}


def fake_cell(runs, name, record=json.dumps({"train_done": True, "eval": DEFAULT_EVAL}), config=None):
    """A cell folder as a finished run leaves it (evaluated with sweep.py's default eval settings),
    without training anything; config: the train.py settings its checkpoint records (no checkpoint if None)."""
    cell = runs / name
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(record)
    (cell / "metrics.jsonl").write_text(json.dumps({"iter": 3, "tokens": 768, "epoch": 1.0, "val_ar_loss": 5.0,
                                                    "val_md_loss": 6.0}) + "\n")
    (cell / "eval.json").write_text(json.dumps({"tasks": {}}))
    if config is not None:
        import torch
        torch.save({"config": config, "data": {}}, cell / "ckpt.pt")
    return cell


def test_duplicate_grid_values_are_one_cell(tmp_path):
    args = ["config/sweep_cpu.py", "--stage", "eval", "--runs_dir", str(tmp_path / "runs"),
            "--results_dir", str(tmp_path / "results")]
    out = sweep_main(*args, "--repetitions", "1,1.0,4", "--lams", "0.5,0.50,-0,0")
    assert out.returncode == 0, out.stderr
    assert "note: --lams lists a value more than once; each distinct value is one cell: 0.5,0" in out.stdout
    assert "note: --repetitions lists a value more than once; each distinct value is one cell: 1,4" in out.stdout
    assert "2 repetitions x 2 lambdas = 4 cells" in out.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r1_lam0", "r1_lam0.5", "r4_lam0", "r4_lam0.5"]
    # distinct values whose folders would be one: two jobs in one out_dir, refused
    out = sweep_main(*args, "--lams", "0.5,0.5000001")
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "--lams values 0.5 and 0.5000001 would share one cell folder (0.5)" in out.stderr


def test_a_cell_of_another_lam_is_a_one_line_error(tmp_path):
    fake_cell(tmp_path / "runs", "r1_lam0.5", config={"lam": 0.25, "repetitions": 1.0})
    out = sweep_main(*["config/sweep_cpu.py", "--stage", "eval", "--repetitions", "1", "--lams", "0.5",
               "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")])
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "r1_lam0.5 in " in out.stderr and "ran with other settings (lam 0.25 -> 0.5)" in out.stderr


def test_an_unreadable_cell_json_fails_that_cell_in_one_line(tmp_path):
    fake_cell(tmp_path / "runs", "r1_lam0.5", record="")  # as a crash mid-write of an older sweep.py left it
    fake_cell(tmp_path / "runs", "r1_lam1")
    out = sweep_main(*["config/sweep_cpu.py", "--stage", "eval", "--repetitions", "1", "--lams", "0.5,1",
               "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")])
    assert out.returncode != 0 and "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if not line.startswith("sweep: ")]  # not the progress lines
    assert len(error) == 1 and error[0].startswith("sweep.py: error: 1 cell(s) failed")
    assert "r1_lam0.5/cell.json is not valid JSON" in error[0] and "delete it and rerun" in error[0]
    assert "r1_lam1: already done" in out.stdout
    assert [row["lambda"] for row in read_rows(tmp_path / "results" / "results.csv")] == ["1"]  # the good cell


def test_cell_json_is_written_atomically(tmp_path, monkeypatch):
    import argparse

    import cli
    cell = fake_cell(tmp_path / "runs", "r1_lam0.5", record='{"train_done": true, "train_seconds": 7}')
    (cell / "eval.json").unlink()
    monkeypatch.setattr(sweep, "run_logged", lambda cmd, log, threads: open(cell / "eval.json.tmp", "w").close())

    def disk_full(path, mode="r", **kw):  # a file written to gets half the text, then the disk is full
        f = open(path, mode, **kw)
        if "w" in mode:
            write = f.write

            def half(text):
                write(text[:len(text) // 2])
                raise OSError(28, "No space left on device")
            f.write = half
        return f
    monkeypatch.setattr(cli, "open", disk_full, raising=False)
    args = argparse.Namespace(stage="eval", eval_tasks="blimp", eval_modes="causal", pll_k="1", eval_limit=1,
                              eval_data_dir=None, heldout=0)
    with pytest.raises(OSError, match=f"cannot write --runs_dir {cell / 'cell.json'} \\(No space left on device\\)"):
        sweep.run_cell(cell, "config/sweep_cpu.py", 1.0, 0.5, args, [], 1)
    assert json.loads((cell / "cell.json").read_text()) == {"train_done": True, "train_seconds": 7}  # intact
    assert sorted(p.name for p in cell.iterdir()) == ["cell.json", "eval.json", "metrics.jsonl"]  # no temporary


def test_the_documented_commands_are_the_configs_own():
    """sweep.py's docstring and docs/sweep.md prepare the data and run the grid as config/sweep_cpu.py says."""
    def flat(text):  # continuation lines joined, comment marks and runs of blanks dropped
        return " ".join(re.sub(r"\\\n", " ", text).replace("#", " ").split())
    config = flat((REPO / "config" / "sweep_cpu.py").read_text())
    commands = re.findall(r"python (?:data|sweep)\.py .*?(?= python |data_dir =)", config)
    assert [c.split()[1] for c in commands] == ["data.py", "sweep.py"] and "data_novels_capped" in commands[0]
    for doc in (sweep.__doc__, (REPO / "docs" / "sweep.md").read_text()):
        assert all(command.strip() in flat(doc) for command in commands), commands


# sweep.claims on fake cells (no training): each verdict needs its cells, and tests the claim whole
def fake_cells(losses, md=None, pll=None):
    """results.csv rows from {(r, λ): final val AR loss} (and {(r, λ): final val MD loss}, {(r, λ): held-out PLL
    loss}); no overfitting."""
    md = md or {}
    return [{"repetitions": float(r), "lambda": float(lam), "final_val_ar_loss": ar, "min_val_ar_loss": ar,
             "final_val_md_loss": md.get((r, lam), 4.0), "heldout_pll_loss": (pll or {}).get((r, lam))}
            for (r, lam), ar in losses.items()]


def fake_fits(optimal, noise=0.01):
    """A GP fit of the final val AR loss: its noise sd and E[λ*] per r."""
    return {"final_val_ar_loss": {"kernel": {"noise_level": noise ** 2}, "optimal_lambda": [
        {"repetitions": float(r), "mean": m} for r, m in optimal.items()]}}


def verdicts(rows, fits, replicates=(), measure="AR loss", **scores):
    """{claim number: verdict} of the table's rows that judge `measure` (claims 4 and 5 judge two)."""
    cells = [line.split("|") for line in sweep.claims(rows, fits, list(replicates), **scores)
             if re.match(r"\| \d \|", line)]
    return {int(c[1]): c[4].strip() for c in cells if measure in c[3]}


def test_claims_without_their_cells_are_inconclusive():
    rows = fake_cells({(1, 0): 5.0, (1, 1): 3.6, (4, 0): 5.1, (4, 1): 3.7})
    got = verdicts(rows, fake_fits({1: 0.9, 4: 0.9}))
    assert got == {1: "inconclusive (the grid has no mixed λ)", 2: "inconclusive (the grid has no r ≥ 32)",
                   3: "inconclusive (the grid has no r ≥ 32)",
                   4: "inconclusive (the grid has no PLL loss score)",
                   5: "inconclusive (the grid has no mixed λ)"}
    high = fake_cells({(64, 0): 5.0, (64, 0.5): 4.5, (128, 0): 5.5, (128, 0.5): 5.0})  # no r <= 16, no λ = 1
    got = verdicts(high, fake_fits({64: 0.3, 128: 0.2}))
    assert got[1] == "inconclusive (the grid has no r ≤ 16)"
    assert got[2] == "inconclusive (the grid has no λ = 1 at r = 128)"
    assert got[5] == "inconclusive (the grid has no λ = 1)"
    assert sweep.claims(rows, {}, []) == ["(no seed replicates and no GP fit of AR loss: no noise level, no claims table)"]


def test_claim_1_fails_when_pure_ar_beats_the_best_mix():
    losses = {(1, 0): 5.0, (1, 0.5): 4.0, (1, 0.75): 3.8, (1, 1): 3.6}  # more AR is better, and λ = 1 is best
    fits = fake_fits({1: 0.9})
    assert verdicts(fake_cells(losses), fits)[1] == "fails"
    losses[(1, 1)] = 3.81  # pure AR level with the best mix, within the noise: no improvement
    assert verdicts(fake_cells(losses), fits)[1] == "holds"
    losses[(1, 0.75)] = losses[(1, 1)] = 4.0  # more AR weight no better than λ = 0.5
    assert verdicts(fake_cells(losses), fits)[1] == "inconclusive"
    coarse = {(1, 0): 5.0, (1, 0.125): 4.5, (1, 0.5): 4.0, (1, 1): 4.01}  # no λ above 1/2: λ = 1/2 is the heaviest
    assert verdicts(fake_cells(coarse), fits)[1] == "holds"
    coarse[(1, 0.125)] = 3.9  # less AR weight is better
    assert verdicts(fake_cells(coarse), fits)[1] == "fails"


def test_claim_5_needs_a_mix_to_beat_both_pure_objectives_causally_and_by_pll():
    losses = {(1, 0): 5.0, (1, 0.5): 3.8, (1, 1): 3.6}
    fits = fake_fits({1: 0.9})
    assert verdicts(fake_cells(losses), fits)[5] == "fails"  # the mix beats λ = 0, not λ = 1, on the AR loss
    losses[(1, 1)] = 4.0
    assert verdicts(fake_cells(losses), fits)[5] == "inconclusive (the grid has no PLL loss score)"  # AR loss alone
    md = {(1, 0): 4.2, (1, 0.5): 4.4, (1, 1): 6.0}  # on the ELBO λ = 0 beats the mix: reported, not judged
    pll = {(1, 0): 3.0, (1, 0.5): 3.1, (1, 1): 5.0}  # on the PLL loss λ = 0 beats the mix
    replicates = [{"repetitions": 1.0, "lambda": 0.0, "final_val_ar_loss": 5.01, "final_val_md_loss": 4.21,
                   "heldout_pll_loss": 3.01}]
    assert verdicts(fake_cells(losses, md, pll), fits, replicates)[5] == "fails"
    pll[(1, 0.5)] = 2.9
    lines = sweep.claims(fake_cells(losses, md, pll), fits, replicates)
    assert verdicts(fake_cells(losses, md, pll), fits, replicates)[5] == "holds"
    assert "AR loss holds" in lines[-1] and "PLL loss holds" in lines[-1]
    assert "MD loss (ELBO) fails (not judged)" in lines[-1]
    assert "for the PLL loss 2 x 0.0071, the sd of 2 seeds at r=1, λ=0" in lines[0]  # its own seed spread


def test_claim_4_compares_the_optimal_lambda_of_the_ar_and_pll_losses():
    losses = {(1, 0): 5.0, (1, 0.5): 3.8, (1, 1): 3.6, (64, 0): 5.0, (64, 0.5): 4.5, (64, 1): 6.0}
    rows = fake_cells(losses, pll={cell: loss - 1 for cell, loss in losses.items()})

    def fit(optimal):  # E[λ*] and its 90% interval per r
        return {"kernel": {"noise_level": 1e-4}, "optimal_lambda": [
            {"repetitions": float(r), "mean": m, "interval": (lo, hi)} for r, (m, lo, hi) in optimal.items()]}
    fits = {"final_val_ar_loss": fit({1: (0.9, 0.6, 1.0), 64: (0.3, 0.2, 0.4)}),
            "heldout_pll_loss": fit({1: (0.7, 0.4, 0.9), 64: (0.35, 0.25, 0.45)})}
    assert verdicts(rows, fits)[4] == "holds"  # the intervals overlap at every r
    fits["heldout_pll_loss"] = fit({1: (0.7, 0.4, 0.9), 64: (0.1, 0.0, 0.15)})
    lines = sweep.claims(rows, fits, [])
    assert verdicts(rows, fits)[4] == "fails"  # disjoint at r = 64
    assert "r=64: 0.30 (0.20-0.40) vs 0.10 (0.00-0.15)" in next(line for line in lines if line.startswith("| 4 |"))
    del fits["heldout_pll_loss"]
    assert verdicts(rows, fits)[4] == "inconclusive (the grid has no GP fit of both)"


def test_claims_on_task_scores_count_higher_as_better_beyond_the_binomial_interval():
    rows = fake_cells({(1, 0): 5.0, (1, 0.5): 4.0, (1, 1): 3.9})
    for row, causal, pll in zip(rows, (55.0, 60.0, 58.0), (57.0, 61.0, 52.0)):  # λ = 0, 1/2, 1: the mix is best
        row.update(blimp_causal=causal, blimp_pll=pll, blimp_pairs=6700)
    fits = {**fake_fits({1: 0.9}), "blimp_causal": fake_fits({1: 0.5}, noise=0.1)["final_val_ar_loss"]}
    replicates = [{"repetitions": 1.0, "lambda": 0.5, "final_val_ar_loss": 4.0, "blimp_causal": 60.2,
                   "blimp_pll": 60.8}]
    scores = dict(causal="blimp_causal", bidirectional="blimp_pll", beside=None)
    lines = sweep.claims(rows, fits, replicates, **scores)
    assert "BLiMP causal 2 x 0.1414, the sd of 2 seeds at r=1, λ=0.5; 95% binomial interval ±1.19" in lines[0] and "higher is better" in lines[0]
    assert verdicts(rows, fits, replicates, "BLiMP causal", **scores)[5] == "holds"  # 60 beats 58 by > 1.19
    assert "r=1: 60.0 (λ=0.5) vs λ=1 58.0, λ=0 55.0: holds" in lines[-1]
    for row in rows:
        row["blimp_pairs"] = 670  # ten times fewer pairs: ±3.8 points, and 2 points no longer count
    assert verdicts(rows, fits, replicates, "BLiMP causal", **scores)[5] == "inconclusive"
