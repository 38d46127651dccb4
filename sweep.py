"""
The paper's headline experiment at a scale you can run yourself (paper §5, Figures 1 and 4): one dual
model per cell of a grid of data repetitions r x AR shares λ, all with the same token budget; then
the figures and the Gaussian process of gp_fit.py. docs/sweep.md has the details.

    python data.py --input ../shared/data/corpus/english_novels --out_dir data_novels_capped \
        --doc_split blank_line --vocab_size 1024 --max_doc_bytes 2048
    python sweep.py config/sweep_cpu.py --jobs 2 --lams 0,0.125,0.25,0.5,0.75,1 --eval_tasks none
    python sweep.py --figures results/sweep_cpu                                  # figures + GP fit

Each cell runs `python train.py CONFIG --lam=λ --repetitions=r --out_dir=runs/NAME/r{r}_lam{λ}` (and
eval.py on its checkpoint), exactly as a user would type it: a sweep is only a loop.
"""
import concurrent.futures
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cli import ArgumentParser, Progress, arg_type, write_atomically
from configurator import configure, settings

REPO = Path(__file__).resolve().parent
RESULT_COLUMNS = [
    "repetitions", "lambda", "params", "non_embedding_params", "tokens", "unique_tokens", "epochs",
    "tokens_per_param", "unique_tokens_per_param", "steps_per_epoch",
    "final_val_ar_loss", "final_val_md_loss", "min_val_ar_loss", "min_val_md_loss",
    "heldout_causal_loss", "heldout_pll_loss", "heldout_tokens", "final_train_ar_loss", "final_train_md_loss",
    "overfit_ar", "overfit_md", "overfit",
    "blimp_causal", "blimp_pll", "blimp_pairs", "tokens_per_sec", "train_seconds", "eval_seconds",
    "train_commit", "eval_commit",
]
CURVE_COLUMNS = ["repetitions", "lambda", "iter", "tokens", "epoch", "train_ar_loss", "train_md_loss",
                 "val_ar_loss", "val_md_loss"]
# train.py settings the sweep sets for each cell, and what to use instead
PER_CELL = {"lam": "--lams", "repetitions": "--repetitions", "out_dir": "--runs_dir", "overwrite": "--overwrite",
            "resume": "nothing: rerunning a sweep resumes it"}
# train.py settings that say where and how a run reports, not what it trains: a cell is the same without them
NOT_COMPARED = ("out_dir", "resume", "overwrite", "log_interval", "wandb_log", "wandb_project", "wandb_run_name")


def git_commit():
    """The commit the code was run at, with '+dirty' when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def grid_values(text, what, allowed, problem):
    """The distinct values of a comma list, in order (0.5 and 0.50 are one cell); values that would
    share a cell folder (6 significant digits) are refused: two jobs must never share an out_dir."""
    try:
        values = [float(v) + 0.0 for v in text.split(",") if v.strip()]  # + 0.0: -0.0 is 0.0's cell
    except ValueError:
        raise ValueError(f"--{what} must be a comma list of numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{what} is empty; give a comma list such as 1,4,16")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"--{what} must be finite numbers, got {text!r}")
    kept = {}
    for value in values:
        if not allowed(value):
            raise ValueError(f"--{what} value {value} {problem}")
        name = f"{value:g}"
        if name in kept and kept[name] != value:
            raise ValueError(f"--{what} values {kept[name]!r} and {value!r} would share one cell folder ({name}); "
                             f"give values that differ within 6 significant digits")
        kept.setdefault(name, value)
    if len(kept) < len(values):
        print(f"note: --{what} lists a value more than once; each distinct value is one cell: "
              f"{','.join(kept)}", flush=True)
    return list(kept.values())


def cell_name(r, lam):
    return f"r{r:g}_lam{lam:g}"


def train_args(config, r, lam, cell_dir, train_overrides):
    """train.py's arguments for one cell."""
    return [config, f"--lam={lam!r}", f"--repetitions={float(r)!r}", f"--out_dir={cell_dir}", *train_overrides]


def train_config(argv):
    """The settings train.py would run with for argv, checked by train.py's own code before any cell starts."""
    import train  # and torch with it: only a sweep that trains needs them, not --figures
    namespace = vars(train)
    defaults = {k: namespace[k] for k in settings(namespace)}
    try:
        configure(namespace, argv)
        train.check_settings()
        train.ar_micro_batches(train.lam, train.gradient_accumulation_steps)  # λ a multiple of 1/G
        return {k: namespace[k] for k in defaults}
    finally:
        namespace.update(defaults)  # train.py as imported, for the next cell (and any other user of the module)


def eval_settings(args):
    """What a cell's evaluation depends on, by sweep.py option; cell.json records it with eval.json."""
    return {"eval_tasks": args.eval_tasks, "eval_modes": args.eval_modes, "pll_k": args.pll_k,
            "eval_limit": args.eval_limit, "eval_data_dir": args.eval_data_dir, "heldout": args.heldout}


def read_run(cell_dir):
    """A cell's checkpoint, memory-mapped (only its small entries are read); {} if none."""
    import torch
    path = cell_dir / "ckpt.pt"
    if not path.exists():
        return {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated or foreign: torch raises many kinds
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} cannot be read ({reason}); move that cell folder out of the runs folder") from None


def read_record(cell_dir):
    """cell.json, the sweep's notes on what a cell has done ({} before its first stage finished)."""
    path = cell_dir / "cell.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:  # UnicodeDecodeError included
        raise RuntimeError(f"{path} is not valid JSON (cut short by a crash of an older sweep.py?); delete it "
                           "and rerun: the cell resumes from its checkpoint") from None


def differences(recorded, wanted):
    """'key recorded -> wanted' for each setting that differs; a key train.py gained or lost is skipped."""
    return [f"{k} {recorded[k]!r} -> {wanted[k]!r}" for k in sorted(wanted)
            if k in recorded and k not in NOT_COMPARED and recorded[k] != wanted[k]]


def stale_cells(cells, runs_dir, config, train_overrides, args):
    """({cell name: the settings that differ}, names of the cells to train again) for the cells run with
    other train.py settings (from their checkpoint) or eval settings (from cell.json) than this sweep's."""
    stale, retrain = {}, set()
    for r, lam in cells:
        cell_dir = runs_dir / cell_name(r, lam)
        try:
            wanted = train_config(train_args(config, r, lam, cell_dir, train_overrides))
        except ValueError as e:
            raise ValueError(f"train.py would refuse cell {cell_dir.name}: {e}") from None
        if cell_dir.exists() and not cell_dir.is_dir():
            raise ValueError(f"{cell_dir} is a file where the sweep keeps a cell folder; move it away")
        differ = differences(read_run(cell_dir).get("config", {}), wanted)
        if differ:
            retrain.add(cell_dir.name)
        try:
            record = read_record(cell_dir)
        except RuntimeError:
            record = {}  # run_cell fails that cell in one line, and the sweep goes on with the others
        if evaluating(args) and (cell_dir / "eval.json").exists() and "eval" in record:
            differ += differences(record["eval"], eval_settings(args))
        if differ:
            stale[cell_dir.name] = differ
    return stale, retrain


class Stopped(Exception):
    """A signal (Ctrl-C, kill) stopped the sweep."""


class Subprocesses:
    """The running cells' train.py and eval.py, in sessions of their own so that a Ctrl-C reaches them
    once, through stop(), the signal handler, which also keeps new ones from starting. Only worker
    threads start processes, so the handler (in the main thread) never waits on the lock."""

    def __init__(self):
        self.lock, self.running, self.stopped_by = threading.Lock(), set(), None

    def stop(self, signum, frame=None):
        with self.lock:
            self.stopped_by = signal.Signals(signum).name
            for child in self.running:
                child.send_signal(signum)

    def run(self, cmd, **kwargs):
        """Run cmd to its end and return its exit code; raises Stopped once the sweep is stopped."""
        with self.lock:
            if self.stopped_by:
                raise Stopped
            child = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self.running.add(child)
        try:
            code = child.wait()
        finally:
            with self.lock:
                self.running.discard(child)
        if self.stopped_by:
            raise Stopped
        return code


SUBPROCESSES = Subprocesses()


def run_logged(cmd, log_path, threads):
    """Run cmd with its output in log_path; a failure raises with the log's last line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = SUBPROCESSES.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        lines = Path(log_path).read_text().strip().splitlines()
        raise RuntimeError(f"{Path(log_path).parent.name}: `{' '.join(cmd[:3])} ...` failed: "
                           f"{lines[-1] if lines else 'no output'} (full log: {log_path})")


def run_cell(cell_dir, config, r, lam, args, train_overrides, threads, retrain=False):
    """Train (or resume) and evaluate one cell; returns what was done. retrain: --overwrite a stale run."""
    if SUBPROCESSES.stopped_by:
        raise Stopped
    cell_dir.mkdir(parents=True, exist_ok=True)
    record_path = cell_dir / "cell.json"
    if retrain:  # forget the old run first: a failure below must not leave its record beside a new checkpoint
        for name in ("cell.json", "eval.json"):
            (cell_dir / name).unlink(missing_ok=True)
    record = read_record(cell_dir)
    done = []
    if args.stage in ("all", "train") and not record.get("train_done"):
        cmd = [sys.executable, "train.py", *train_args(config, r, lam, cell_dir, train_overrides)]
        if retrain:
            cmd.append("--overwrite=True")
        elif (cell_dir / "ckpt.pt").exists():
            cmd.append("--resume=True")
        t0, commit = time.time(), git_commit()  # the code as the subprocess loads it
        run_logged(cmd, cell_dir / "train.log", threads)
        record.update(train_done=True, train_commit=commit,
                      train_seconds=round(record.get("train_seconds", 0) + time.time() - t0, 1))
        write_atomically("--runs_dir", record_path, lambda f: json.dump(record, f, indent=1))
        done.append("trained again (--overwrite)" if retrain else "trained")
    if args.stage in ("all", "eval") and evaluating(args) and record.get("train_done") and \
            not evaluated(cell_dir, record, args):
        cmd = [sys.executable, "eval.py", "--ckpt", str(cell_dir / "ckpt.pt"), "--tasks", args.eval_tasks,
               "--modes", args.eval_modes, "--pll_k", args.pll_k, "--out", str(cell_dir / "eval.json.tmp")]
        if args.eval_limit:
            cmd += ["--limit", str(args.eval_limit)]
        if args.eval_data_dir:
            cmd += ["--data_dir", args.eval_data_dir]
        if args.heldout:
            cmd += ["--heldout", str(args.heldout)]
        t0, commit = time.time(), git_commit()
        run_logged(cmd, cell_dir / "eval.log", threads)
        os.replace(cell_dir / "eval.json.tmp", cell_dir / "eval.json")  # eval.json exists only when complete
        record.update(eval=eval_settings(args), eval_commit=commit, eval_seconds=round(time.time() - t0, 1))
        write_atomically("--runs_dir", record_path, lambda f: json.dump(record, f, indent=1))
        done.append("evaluated")
    if not done:
        done.append("already done" if finished(cell_dir, args) else
                    "not evaluated yet" if record.get("train_done") else "not trained yet")
    return done


def evaluating(args):
    return args.eval_tasks != "none" or args.heldout > 0


def evaluated(cell_dir, record, args):
    """eval.json exists, made (cell.json says) with this sweep's eval settings."""
    return (cell_dir / "eval.json").exists() and record.get("eval") == eval_settings(args)


def finished(cell_dir, args):
    """Trained, and evaluated unless the sweep skips evaluation (--eval_tasks none)."""
    record = read_record(cell_dir)
    return bool(record.get("train_done")) and (not evaluating(args) or evaluated(cell_dir, record, args))


def result_row(cell_dir, r, lam):
    """One results.csv row from a finished cell's metrics.jsonl, eval.json and cell.json."""
    path = cell_dir / "metrics.jsonl"
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    record = read_record(cell_dir)
    evaluation = json.loads((cell_dir / "eval.json").read_text()) if (cell_dir / "eval.json").exists() else {}
    run = read_run(cell_dir).get("data", {})
    last = history[-1]

    def lowest(key):
        values = [h[key] for h in history if h.get(key) is not None]
        return min(values) if values else None

    speeds = sorted(h["tokens_per_sec"] for h in history if h.get("tokens_per_sec"))
    blimp = evaluation.get("tasks", {}).get("blimp", {})
    heldout = evaluation.get("heldout", {})
    n, unique = run.get("non_embedding_params"), run.get("unique_tokens")
    row = {
        "repetitions": r, "lambda": lam, "tokens": last["tokens"], "epochs": last.get("epoch"),
        **{k: run.get(k) for k in ("params", "non_embedding_params", "unique_tokens")},
        # the paper's regime (§5.1): tokens and unique tokens per non-embedding parameter, steps per epoch
        "tokens_per_param": n and last["tokens"] / n, "unique_tokens_per_param": n and unique and unique / n,
        "steps_per_epoch": unique and last.get("iter") and unique / (last["tokens"] / last["iter"]),
        **{f"final_{k}": last.get(k) for k in ("val_ar_loss", "val_md_loss", "train_ar_loss", "train_md_loss")},
        "min_val_ar_loss": lowest("val_ar_loss"), "min_val_md_loss": lowest("val_md_loss"),
        "heldout_causal_loss": heldout.get("causal_loss"), "heldout_pll_loss": heldout.get("pll_loss"),
        "heldout_tokens": heldout.get("tokens"),
        **{k: any(h.get(k) for h in history) for k in ("overfit_ar", "overfit_md")},
        **{f"blimp_{mode}": blimp.get(mode, {}).get("accuracy") for mode in ("causal", "pll")},
        "blimp_pairs": next((blimp[mode]["n_items"] for mode in blimp), None),
        "tokens_per_sec": speeds[len(speeds) // 2] if speeds else None,
        **{k: record.get(k) for k in ("train_seconds", "eval_seconds", "train_commit", "eval_commit")},
    }
    row["overfit"] = row["overfit_ar"] or row["overfit_md"]
    return row, [{"repetitions": r, "lambda": lam, **{k: h.get(k) for k in CURVE_COLUMNS[2:]}} for h in history]


def write_csv(path, columns, rows):
    def write(f):
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]
                             for k in columns})
    write_atomically("--results_dir", path, write)  # whole or as it was: a crash never leaves half a CSV


def collect(cells, runs_dir, results_dir, args):
    """Rewrite results.csv and curves.csv from every cell that is finished."""
    rows, curves = [], []
    for r, lam in cells:
        cell_dir = runs_dir / cell_name(r, lam)
        try:
            if not finished(cell_dir, args):
                continue
            row, curve = result_row(cell_dir, r, lam)
        except RuntimeError:  # an unreadable cell.json: run_cell reports that cell as failed
            continue
        rows.append(row)
        curves.extend(curve)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_csv(results_dir / "results.csv", RESULT_COLUMNS, rows)
    write_csv(results_dir / "curves.csv", CURVE_COLUMNS, curves)
    return rows


def sweep(args, train_overrides):
    if not os.path.isfile(args.config):
        raise ValueError(f"config file {args.config} does not exist; pass one like config/sweep_cpu.py")
    name = Path(args.config).stem
    runs_dir = Path(args.runs_dir or REPO / "runs" / name).resolve()
    results_dir = Path(args.results_dir or REPO / "results" / name).resolve()
    folders = (("--runs_dir", runs_dir), ("--results_dir", results_dir))
    for flag, folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag} {folder} is a file, not a folder; give a folder")
    reps = grid_values(args.repetitions, "repetitions", lambda r: r >= 1,
                       "is below 1; r is how often each token is seen")
    lams = grid_values(args.lams, "lams", lambda lam: 0 <= lam <= 1, "is outside [0, 1]")
    cells = [(r, lam) for r in reps for lam in lams]
    stale, retrain = stale_cells(cells, runs_dir, args.config, train_overrides, args)
    if stale and not args.overwrite:
        first = next(iter(stale))
        more = f" and {len(stale) - 1} more cell(s)" if len(stale) > 1 else ""
        raise ValueError(f"{first}{more} in {runs_dir} ran with other settings ({', '.join(stale[first])}); give this "
                         f"sweep another --runs_dir (and --results_dir), or pass --overwrite to run them again")
    if retrain and args.stage == "eval":
        raise ValueError(f"--overwrite would train {len(retrain)} cell(s) again, which --stage eval does not do; "
                         f"use --stage all or --stage train")
    for flag, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{flag} {folder} cannot be created ({e.strerror}); give another folder") from None
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"sweep {name}: {len(reps)} repetitions x {len(lams)} lambdas = {len(cells)} cells, {args.jobs} at a "
          f"time with {threads} thread(s) each; runs in {runs_dir}, results in {results_dir}", flush=True)
    if stale:
        print(f"--overwrite: {len(stale)} cell(s) ran with other settings and are run again: {', '.join(stale)}",
              flush=True)
    progress = Progress(total=len(cells), desc="sweep", unit="cells", every=0)
    failures = []
    handlers = {sig: signal.signal(sig, SUBPROCESSES.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on subprocesses
            futures = {pool.submit(run_cell, runs_dir / cell_name(r, lam), args.config, r, lam, args, train_overrides,
                                   threads, cell_name(r, lam) in retrain): (r, lam) for r, lam in cells}
            for future in concurrent.futures.as_completed(futures):
                r, lam = futures[future]
                try:
                    done = future.result()
                    print(f"{cell_name(r, lam)}: {' and '.join(done)}", flush=True)
                except Stopped:
                    continue
                except RuntimeError as e:  # a failed train.py or eval.py, or an unreadable cell.json
                    failures.append(str(e))
                    print(f"FAILED {e}", flush=True)
                collect(cells, runs_dir, results_dir, args)
                progress.update(1)
    finally:  # the pool has waited for every cell's processes
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    rows = collect(cells, runs_dir, results_dir, args)
    if SUBPROCESSES.stopped_by:
        raise Stopped(f"stopped by {SUBPROCESSES.stopped_by}: the running cells' train.py and eval.py were stopped "
                      f"(a stopped training keeps its last checkpoint) and no other cell started; "
                      f"{results_dir / 'results.csv'} has the {len(rows)} finished cell(s); rerun the same command "
                      f"to resume")
    print(f"wrote {results_dir / 'results.csv'} ({len(rows)} of {len(cells)} cells)", flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} cell(s) failed; fix the cause and rerun the same command to "
                           f"resume. First: {failures[0]}")
    return rows


# -----------------------------------------------------------------------------
# Figures and the Gaussian process, from the committed CSVs alone

def read_csv(path):
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the sweep first (python sweep.py CONFIG)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v) if v not in ("", "True", "False") else (None if v == "" else v == "True")
            except ValueError:
                pass  # commits stay strings
    return rows


def best_mixed(rows, r, key="final_val_ar_loss"):
    """The 0 < λ < 1 cell with the lowest `key` (a validation AR loss) at repetitions r."""
    mixed = [row for row in rows if row["repetitions"] == r and 0 < row["lambda"] < 1]
    return min(mixed, key=lambda row: row[key])["lambda"] if mixed else None


def figures(results_dir, nu=2.5, samples=10000, seed=0):
    rows = read_csv(results_dir / "results.csv")
    curves = read_csv(results_dir / "curves.csv")
    if not rows:
        raise ValueError(f"{results_dir / 'results.csv'} has no rows; run the sweep first")
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--figures draws with matplotlib, which is not installed here; pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import gp_fit

    reps = sorted({row["repetitions"] for row in rows})
    r_max = reps[-1]

    def save(fig, axes, name):
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results_dir / name, dpi=120)
        plt.close(fig)

    # Figure 1 (paper Figure 1): validation loss against tokens at the largest r
    shown = [(1.0, "λ=1 (AR)", "tab:red"), (0.0, "λ=0 (MD)", "tab:blue")]
    mixed = best_mixed(rows, r_max)
    if mixed is not None:
        shown.append((mixed, f"λ={mixed:g} (best mix)", "tab:green"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lam, label, color in shown:
        run = [c for c in curves if c["repetitions"] == r_max and c["lambda"] == lam]
        tokens = [c["tokens"] / 1e6 for c in run]
        for ax, key in zip(axes, ("ar", "md")):
            ax.plot(tokens, [c[f"val_{key}_loss"] for c in run], color=color, label=label + " val")
            train = [(t, c[f"train_{key}_loss"]) for t, c in zip(tokens, run) if c[f"train_{key}_loss"] is not None]
            if train:
                ax.plot(*zip(*train), color=color, linestyle=":", alpha=0.7, label=label + " train")
    for ax, key in zip(axes, ("autoregressive", "masked-diffusion (ELBO)")):
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel(f"{key} loss")
        ax.set_title(f"{key} loss, r = {r_max:g} repetitions")
        ax.grid(alpha=0.3)
    save(fig, axes, "fig1_loss_curves.png")

    # Figure 2: final scores against λ, one line per r
    panels = [("final_val_ar_loss", "final validation AR loss"),
              ("min_val_ar_loss", "lowest validation AR loss (early stopping)"),
              ("final_val_md_loss", "final validation MD loss"), ("min_val_md_loss", "lowest validation MD loss"),
              ("heldout_pll_loss", "held-out PLL loss (bidirectional)"), ("heldout_causal_loss", "held-out causal loss"),
              ("blimp_causal", "BLiMP accuracy, causal (%)"), ("blimp_pll", "BLiMP accuracy, PLL (%)")]
    panels = [(key, title) for key, title in panels if any(row.get(key) is not None for row in rows)]
    columns = max(2, math.ceil(len(panels) / 2))
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 8))
    axes = axes.flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    cmap = plt.get_cmap("viridis")
    for ax, (key, title) in zip(axes, panels):
        for i, r in enumerate(reps):
            line = sorted((row["lambda"], row[key]) for row in rows if row["repetitions"] == r and row[key] is not None)
            if line:
                ax.plot(*zip(*line), marker="o", color=cmap(i / max(len(reps) - 1, 1)), label=f"r = {r:g}")
        ax.set_xlabel("λ (share of AR micro-batches)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    save(fig, axes, "fig2_score_vs_lambda.png")

    # Figure 3 (paper Figure 4): the Gaussian process over (r, λ) of each score in GP_SCORES
    fits = {}
    for column, lower_is_better, folder in GP_SCORES:
        if all(row.get(column) is None for row in rows):
            continue
        runs = gp_fit.read_runs(csv_paths=[results_dir / "results.csv"], score=column)
        try:
            fits[column] = gp_fit.analyse(runs, results_dir / folder, nu=nu, samples=samples, seed=seed,
                                          lower_is_better=lower_is_better, score_name=column)
        except ValueError as e:  # too small a grid for a GP (a test sweep): the other figures still stand
            print(f"sweep.py: no GP fit of {column}: {e}")
    replicates = [row for path in sorted(results_dir.glob("seed*/results.csv")) for row in read_csv(path)]
    text = headline(rows, fits, r_max) + [""] + claims(rows, fits, replicates)
    if any(row.get("blimp_causal") is not None for row in rows):  # the same claims on task scores (paper §5.3)
        text += [""] + claims(rows, fits, replicates, "blimp_causal", "blimp_pll", None)
    write_atomically("--figures", results_dir / "summary.md",
                     lambda f: f.write("\n".join(summary_table(rows) + [""] + text) + "\n"))
    print("\n".join(text))
    drawn = ["fig1_loss_curves.png", "fig2_score_vs_lambda.png"] + [f"{folder}/gp_fit.png" for column, _, folder
                                                                     in GP_SCORES if column in fits]
    print(f"figures in {results_dir}: {', '.join(drawn)}; tables in summary.md")
    return fits


# (column, lower is better, folder); the first is primary: the paper compares final checkpoints
GP_SCORES = [("final_val_ar_loss", True, "gp"), ("min_val_ar_loss", True, "gp_min"),
             ("final_val_md_loss", True, "gp_md"), ("min_val_md_loss", True, "gp_min_md"),
             ("heldout_pll_loss", True, "gp_pll"), ("blimp_causal", False, "gp_blimp_causal"),
             ("blimp_pll", False, "gp_blimp_pll")]


def headline(rows, fits, r_max):
    """The numbers worth quoting, as lines of text."""
    at = {row["lambda"]: row for row in rows if row["repetitions"] == r_max}
    lines = []
    for key, what in (("final_val_ar_loss", "final"), ("min_val_ar_loss", "lowest")):
        mixed = best_mixed(rows, r_max, key)
        parts = [f"λ={lam:g}: {at[lam][key]:.4f}" for lam in (1.0, mixed, 0.0) if lam in at]
        lines.append(f"{what} validation AR loss at r={r_max:g}: " + ", ".join(parts))
    for column, fit in fits.items():
        noise = math.sqrt(fit["kernel"]["noise_level"])
        lines.append(f"GP ({column}): LOO R² {fit['r2_loo']:.3f}, fitted noise sd {noise:.4f}"
                     + (f", at bound: {', '.join(fit['at_bound'])}" if fit["at_bound"] else ""))
        for level in fit["optimal_lambda"]:
            lo, hi = level["interval"]
            band = level["rule_of_thumb"]["band"]
            rule = f"λ in [{band[0]:.2f}, {band[1]:.2f}]" if band else "no λ <= 1 (λ·r < 8 even at λ = 1)"
            lines.append(f"  optimal λ at r={level['repetitions']:g}: {level['mean']:.2f} (90% "
                         f"interval {lo:.2f}-{hi:.2f}); the paper's rule 8 <= λ·r <= 32 gives {rule}")
    return lines


# The measures a claims table judges: name, and +1 where lower is better (losses), -1 where higher is (accuracy)
MEASURES = {"final_val_ar_loss": ("AR loss", 1), "heldout_pll_loss": ("PLL loss", 1),
            "final_val_md_loss": ("MD loss (ELBO)", 1), "blimp_causal": ("BLiMP causal", -1),
            "blimp_pll": ("BLiMP PLL", -1)}
# the claims as tested (docs/reproduction.md quotes the paper's words for each)
CLAIMS = {1: "at r ≤ 16 more AR weight is better, yet pure AR (λ=1) is no better than the best mix",
          2: "at r = {r}, pure AR overfits and a mix beats both pure objectives",
          3: "λ* is lower at r ≥ 32 than at r ≤ 16 and falls as r grows there; λ*·r lies in [8, 32] "
             "for r ≥ 32",
          4: "the optimal λ is similar for the causal and the bidirectional measure",
          5: "a mix beats both pure objectives at every r, causally and bidirectionally"}


def noise_margins(rows, replicates, fits, keys):
    """{key: (margin, what it is)}: a difference counts beyond twice the seed-to-seed sd of the replicated
    cell (else the GP's noise sd) and, for an accuracy, beyond the 95% binomial interval of its scores."""
    cell = {(row["repetitions"], row["lambda"]): row for row in rows}
    margins = {}
    for k in keys:
        spread = [row[k] for row in replicates if row.get(k) is not None]
        if spread:
            replicated = (replicates[0]["repetitions"], replicates[0]["lambda"])
            values = spread + ([cell[replicated][k]] if cell.get(replicated, {}).get(k) is not None else [])
            margin = 2 * float(np.std(values, ddof=1))
            what = f"2 x {margin / 2:.4f}, the sd of {len(values)} seeds at r={replicated[0]:g}, λ={replicated[1]:g}"
        elif k in fits:
            margin = 2 * math.sqrt(fits[k]["kernel"]["noise_level"])
            what = f"2 x {margin / 2:.4f}, the GP noise"
        else:
            continue
        if MEASURES[k][1] < 0:  # accuracy in %: the widest 95% interval of a cell, 1.96 sqrt(p(1-p)/n)
            binomial = max(196 * math.sqrt(row[k] / 100 * (1 - row[k] / 100) / row["blimp_pairs"])
                           for row in rows if row.get(k) is not None and row.get("blimp_pairs"))
            margin, what = max(margin, binomial), f"{what}; 95% binomial interval ±{binomial:.2f}"
        margins[k] = (margin, what)
    return margins


def overall(verdicts):
    return "fails" if "fails" in verdicts else "holds" if verdicts and all(v == "holds" for v in verdicts) \
        else "inconclusive"


def missing(needs):
    """'inconclusive (the grid has no ...)' for the first of (present, what) that is absent, else None."""
    gap = next((what for present, what in needs if not present), None)
    return gap and f"inconclusive (the grid has no {gap})"


class Grid:
    """A results.csv grid as the claims read it: every measure as a loss (an accuracy negated, so lower is
    always better), its noise margin, and its GP's optimal λ per r."""

    def __init__(self, rows, fits, margins, keys):
        self.rows = {(row["repetitions"], row["lambda"]): row for row in rows}
        self.fits, self.margins, self.sign = fits, margins, {k: MEASURES[k][1] for k in keys}
        self.cell = {rl: {k: row[k] * self.sign[k] for k in keys if row.get(k) is not None}
                     for rl, row in self.rows.items()}
        self.reps, self.lams = sorted({r for r, _ in self.cell}), sorted({lam for _, lam in self.cell})
        self.mixed = [lam for lam in self.lams if 0 < lam < 1]

    def show(self, k, value):  # with its own sign: 4 decimals for a loss, 1 for an accuracy in %
        return f"{value * self.sign[k]:.{4 if self.sign[k] > 0 else 1}f}"

    def has(self, r, lam, k):
        return k in self.cell.get((r, lam), {})

    def compare(self, a, b, k):
        """a better than b by more than the margin: "holds"; b better than a by more: "fails"."""
        margin = self.margins[k][0]
        return "holds" if a < b - margin else "fails" if b < a - margin else "inconclusive"

    def best(self, r, lams, k):
        """(value, λ) of the best of lams at r, (None, None) if the grid has none of them."""
        return min(((self.cell[(r, lam)][k], lam) for lam in lams if self.has(r, lam, k)), default=(None, None))

    def optima(self, k):
        """{r: (E[λ*], 90% interval low, high)} of k's GP fit ({} without one)."""
        return {lv["repetitions"]: (lv["mean"], *lv.get("interval", (lv["mean"], lv["mean"])))
                for lv in self.fits[k]["optimal_lambda"]} if k in self.fits else {}


def claim_1(g, k):
    """At r <= 16 more AR weight is better: the AR-heaviest mix beats every λ below it; yet pure AR is no
    better than the best mix (paper §5.3)."""
    low = [r for r in g.reps if r <= 16]
    optimal, verdicts, numbers = g.optima(k), [], []
    for r in low:
        heavy_lam = max((lam for lam in g.mixed if g.has(r, lam, k)), default=None)
        if heavy_lam is None or not g.has(r, 1.0, k):
            continue
        (light, light_lam), (mix, mix_lam) = (g.best(r, [lam for lam in g.lams if lam < heavy_lam], k),
                                              g.best(r, g.mixed, k))
        if light is None:
            continue
        heavy, ar = g.cell[(r, heavy_lam)][k], g.cell[(r, 1.0)][k]
        verdicts.append(overall([g.compare(heavy, light, k), "fails" if ar < mix - g.margins[k][0] else "holds"]))
        numbers.append(f"r={r:g}: the AR-heaviest mix {g.show(k, heavy)} (λ={heavy_lam:g}) vs the best λ below it "
                       f"{g.show(k, light)} (λ={light_lam:g}); λ=1 {g.show(k, ar)} vs best mix {g.show(k, mix)} "
                       f"(λ={mix_lam:g})" + (f", GP E[λ*] {optimal[r][0]:.2f}" if r in optimal else ""))
    return missing([(low, "r ≤ 16"), (g.mixed, "mixed λ"), (len(g.lams) > 2, "λ below its AR-heaviest mix"),
                    (1.0 in g.lams, "λ = 1")]) or overall(verdicts), "; ".join(numbers)


def claim_2(g, k):
    """At the largest r (data-constrained), pure AR overfits, its validation AR loss rising above its lowest,
    and a mix beats both pure objectives (paper §1, Figure 1)."""
    r = g.reps[-1]
    mix, mix_lam = g.best(r, g.mixed, k)
    verdict = missing([(r >= 32, "r ≥ 32"), (g.has(r, 1.0, k), f"λ = 1 at r = {r:g}"),
                       (g.has(r, 0.0, k), f"λ = 0 at r = {r:g}"), (mix is not None, f"mixed λ at r = {r:g}")])
    if verdict:
        return verdict, ""
    ar_row, ar, md = g.rows[(r, 1.0)], g.cell[(r, 1.0)][k], g.cell[(r, 0.0)][k]
    rise, ar_margin = ar_row["final_val_ar_loss"] - ar_row["min_val_ar_loss"], g.margins["final_val_ar_loss"][0]
    verdict = g.compare(mix, min(ar, md), k)
    verdict = verdict if rise > ar_margin or verdict == "fails" else "fails" if rise < 0.5 * ar_margin \
        else "inconclusive"
    return verdict, (f"λ=1's AR loss rose {rise:.4f} above its lowest; λ=1 {g.show(k, ar)}, best mix "
                     f"{g.show(k, mix)} (λ={mix_lam:g}), λ=0 {g.show(k, md)}")


def claim_3(g, k):
    """λ* lower at every r >= 32 than at any r <= 16, falling from one r >= 32 to the next, and λ*·r in [8, 32]
    there (paper §5.3: "more than 32 autoregressive repetitions lead to overfitting ...")."""
    optimal = {r: o[0] for r, o in g.optima(k).items()}
    levels = sorted(optimal)
    high = [r for r in levels if r >= 32]
    verdict = missing([(k in g.fits, "GP fit"), (high, "r ≥ 32")])
    if verdict:
        return verdict, ""
    falling = all(optimal[b] < optimal[a] for a, b in zip(high, high[1:])) and \
        all(optimal[h] < optimal[r] for h in high for r in levels if r <= 16)
    verdict = "holds" if falling and all(8 <= optimal[r] * r <= 32 for r in high) else "fails"
    return verdict, (f"rests on {len(high)} level{'s' if len(high) > 1 else ''} of r ≥ 32; E[λ*] "
                     + ", ".join(f"r={r:g}: {optimal[r]:.2f}" for r in levels) + "; λ*·r "
                     + ", ".join(f"r={r:g}: {optimal[r] * r:.1f}" for r in high))


def claim_4(g, causal, bidirectional, beside):
    """The optimal λ is similar for the causal and the bidirectional measure: the GP's 90% intervals of λ*
    overlap at every r ("fails" where they are disjoint: the optima differ beyond the GP's doubt)."""
    a, b, elbo = g.optima(causal), g.optima(bidirectional), g.optima(beside)
    verdict, text = missing([(bidirectional in g.sign, f"{MEASURES[bidirectional][0]} score"),
                             (a and b, "GP fit of both")]), ""
    if verdict is None:
        shared = [r for r in sorted(a) if r in b]
        verdict = "fails" if any(a[r][2] < b[r][1] or b[r][2] < a[r][1] for r in shared) else "holds"
        text = "E[λ*] (90% interval), causal vs bidirectional: " + "; ".join(
            f"r={r:g}: {a[r][0]:.2f} ({a[r][1]:.2f}-{a[r][2]:.2f}) vs {b[r][0]:.2f} ({b[r][1]:.2f}-{b[r][2]:.2f})"
            for r in shared)
    if elbo:
        text += ("; " if text else "") + f"{MEASURES[beside][0]}, not the paper's measure: E[λ*] " + \
            ", ".join(f"r={r:g}: {elbo[r][0]:.2f}" for r in sorted(elbo))
    return verdict, text


def claim_5(g, causal, bidirectional, beside):
    """A mix beats both pure objectives at every r, causally and bidirectionally (abstract); `beside` (the
    ELBO) is reported, not judged."""
    verdicts, numbers = [], []
    for k in (k for k in (causal, bidirectional, beside) if k in g.margins):
        results, parts = [], []
        for r in g.reps:
            mix, mix_lam = g.best(r, g.mixed, k)
            if mix is None or not g.has(r, 0.0, k) or not g.has(r, 1.0, k):
                continue
            ar, md = g.cell[(r, 1.0)][k], g.cell[(r, 0.0)][k]
            results.append(g.compare(mix, min(ar, md), k))
            parts.append(f"r={r:g}: {g.show(k, mix)} (λ={mix_lam:g}) vs λ=1 {g.show(k, ar)}, λ=0 {g.show(k, md)}: "
                         f"{results[-1]}")
        if k != beside:
            verdicts.append(overall(results))
        numbers.append(f"{MEASURES[k][0]} {overall(results)}{' (not judged)' if k == beside else ''}: "
                       + "; ".join(parts))
    no_cells = missing([(g.mixed, "mixed λ"), (0.0 in g.lams, "λ = 0"), (1.0 in g.lams, "λ = 1")])
    verdict = no_cells or ("fails" if "fails" in verdicts else
                           missing([(bidirectional in g.margins, f"{MEASURES[bidirectional][0]} score")])
                           or overall(verdicts))
    return verdict, "" if no_cells else " / ".join(numbers)


def claims(rows, fits, replicates, causal="final_val_ar_loss", bidirectional="heldout_pll_loss",
           beside="final_val_md_loss"):
    """The paper's claims tested whole on the grid, as a markdown table: claims 1-3 on the causal and on the
    bidirectional measure, claims 4-5 on both; `beside` (the ELBO) is reported, not judged. A claim whose
    cells the grid lacks is "inconclusive (the grid has no ...)"."""
    keys = [k for k in (causal, bidirectional, beside) if k and any(row.get(k) is not None for row in rows)]
    margins = noise_margins(rows, replicates, fits, set(keys) | {"final_val_ar_loss"})
    if causal not in margins:
        return [f"(no seed replicates and no GP fit of {MEASURES[causal][0]}: no noise level, no claims table)"]
    g = Grid(rows, fits, margins, keys)
    judged = [k for k in (causal, bidirectional) if k in keys]
    lines = [f"Claims of the paper, tested on the final checkpoints' {' and '.join(MEASURES[k][0] for k in judged)}"
             + (f", with the {MEASURES[beside][0]} beside them" if beside in keys else "")
             + f" ({'lower' if g.sign[causal] > 0 else 'higher'} is better; a difference counts when it exceeds "
             + "; ".join(f"for the {MEASURES[k][0]} {margins[k][1]}" for k in keys if k in margins) + "):", "",
             "| # | claim | measure | verdict | numbers |", "| --- | --- | --- | --- | --- |"]
    table = [(n, CLAIMS[n].format(r=f"{g.reps[-1]:g}"), MEASURES[k][0], *(claim(g, k) if k in margins else
              (f"inconclusive (no noise level of the {MEASURES[k][0]})", "")))
             for n, claim in ((1, claim_1), (2, claim_2), (3, claim_3)) for k in judged]
    both = " and ".join(MEASURES[k][0] for k in (causal, bidirectional))
    table += [(n, CLAIMS[n], both, *claim(g, causal, bidirectional, beside))
              for n, claim in ((4, claim_4), (5, claim_5))]
    return lines + [f"| {n} | {claim} | {measure} | {verdict} | {numbers or '-'} |"
                    for n, claim, measure, verdict, numbers in table]


def summary_table(rows):
    """results.csv as a markdown table, for the README (BLiMP columns only where a cell has them)."""
    columns = [("unique tokens", "unique_tokens", ",.0f"), ("final val AR", "final_val_ar_loss", ".3f"),
               ("min val AR", "min_val_ar_loss", ".3f"), ("final val MD", "final_val_md_loss", ".3f"),
               ("min val MD", "min_val_md_loss", ".3f")]
    if any(row.get("heldout_pll_loss") is not None for row in rows):
        columns += [("held-out PLL", "heldout_pll_loss", ".3f")]
    if any(row.get("blimp_causal") is not None for row in rows):
        columns += [("BLiMP causal", "blimp_causal", ".1f"), ("BLiMP PLL", "blimp_pll", ".1f")]
    lines = ["| r | λ | " + " | ".join(title for title, _, _ in columns) + " | overfit |",
             "|" + " --- |" * (len(columns) + 3)]
    for row in sorted(rows, key=lambda row: (row["repetitions"], row["lambda"])):
        cells = [format(row["repetitions"], "g"), format(row["lambda"], "g"),
                 *("" if row[key] is None else format(row[key], fmt) for _, key, fmt in columns),
                 ", ".join(name for name in ("ar", "md") if row[f"overfit_{name}"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def at_least(least):
    """An argparse type: a whole number >= least, checked before any cell starts (not by a cell's eval.py)."""
    return arg_type(lambda text: int(text) if int(text) >= least else None,
                    f"must be a whole number of at least {least}")


def parse_args(argv):
    """(the sweep's options, the --key=value overrides for every train.py call)."""
    p = ArgumentParser(prog="sweep.py", allow_abbrev=False, description="Train and evaluate a (repetitions x λ) "
                       "grid, or draw its figures. Extra --key=value arguments go to every train.py call.")
    p.add_argument("config", nargs="?", help="train.py config of every cell, e.g. config/sweep_cpu.py")
    p.add_argument("--figures", metavar="RESULTS_DIR", help="draw the figures and fit the GP from RESULTS_DIR")
    p.add_argument("--repetitions", default="1,4,16,64,128", help="comma list of r (default 1,4,16,64,128)")
    p.add_argument("--lams", default="0,0.25,0.5,0.75,1", help="comma list of λ (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--jobs", type=at_least(1), default=1, help="cells trained at the same time (default 1)")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch threads per cell (default 0: cores / jobs)")
    p.add_argument("--stage", default="all", choices=["all", "train", "eval"], help="do only one stage")
    p.add_argument("--runs_dir", help="checkpoints and logs (default runs/<config name>)")
    p.add_argument("--results_dir", help="results.csv and curves.csv (default results/<config name>)")
    p.add_argument("--overwrite", action="store_true", help="run again cells run with other settings")
    p.add_argument("--eval_tasks", default="blimp", help="eval.py --tasks (default blimp; none: no evaluation)")
    p.add_argument("--eval_modes", default="causal,pll", help="eval.py --modes (default causal,pll)")
    p.add_argument("--pll_k", default="1", help="eval.py --pll_k (default 1)")
    p.add_argument("--eval_limit", type=at_least(0), default=20, help="eval.py --limit (default 20; 0 = all)")
    p.add_argument("--eval_data_dir", help="eval.py --data_dir (default: eval.py's default)")
    p.add_argument("--heldout", type=at_least(0), default=256,
                   help="eval.py --heldout: validation windows scored causally and by PLL (default 256; 0 = none)")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        raise ValueError(f"unrecognised argument {bad[0]!r}; train.py overrides are written --key=value")
    for arg in rest:
        key = arg[2:].partition("=")[0]
        if key in PER_CELL:
            raise ValueError(f"{arg}: the sweep sets {key} for each cell; use {PER_CELL[key]}")
    if not (args.config or args.figures):
        raise ValueError("give a config file (e.g. config/sweep_cpu.py) or --figures RESULTS_DIR")
    return args, rest


def main(argv=None):
    """The command line; its errors end the process with one line."""
    try:
        args, train_overrides = parse_args(argv)
        return figures(Path(args.figures)) if args.figures else sweep(args, train_overrides)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a file that cannot be read or written
        sys.exit(f"sweep.py: error: {e}")
    except Stopped as e:
        sys.exit(f"sweep.py: {e}")
    except KeyboardInterrupt:  # --figures, or the checks before any cell starts (then Ctrl-C stops the cells)
        sys.exit("sweep.py: interrupted (Ctrl-C); rerun the same command to finish")


if __name__ == "__main__":
    main()
