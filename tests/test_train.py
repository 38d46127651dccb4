"""train.py end to end on real text: learning, lam scheduling, DDP = gradient accumulation, exact resume
after SIGKILL, atomic checkpoints, NaN handling and one-line errors for bad settings."""
import contextlib
import errno
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import data
import model as M
import train
from conftest import REPO

# a model small enough that a step takes a few milliseconds on CPU
SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--intermediate_size=64", "--block_size=32",
         "--batch_size=4", "--eval_iters=2", "--log_interval=2", "--compile=False", "--device=cpu"]


def aot_eager_train(tmp_path):
    """A script that runs train.py with torch.compile's backend set to aot_eager: dynamo and AOT
    autograd trace, guard, split and recompile as they do for inductor, without inductor's C++ build."""
    script = tmp_path / "train_aot_eager.py"
    script.write_text(f"import functools, sys, torch\nsys.path.insert(0, {str(REPO)!r})\n"
                      "torch.compile = functools.partial(torch.compile, backend='aot_eager')\n"
                      "import train\ntrain.run(sys.argv[1:])\n")
    return script


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


# -----------------------------------------------------------------------------
# lam scheduling (pure functions)

@pytest.mark.parametrize("lam, G", [(0.5, 8), (0.25, 4), (63 / 64, 64), (0.0, 3), (1.0, 5), (0.6, 10)])
def test_exactly_lam_share_of_ar_micro_batches_every_step_and_epoch(lam, G):
    n_ar = train.ar_micro_batches(lam, G)
    assert n_ar == round(lam * G)
    for epoch in range(2 * G):
        assert sum(train.objective_of(g, epoch, G, n_ar) == "ar" for g in range(G)) == n_ar


def test_assignment_rotates_every_epoch():
    G, n_ar = 8, 3
    e0 = [train.objective_of(g, 0, G, n_ar) for g in range(G)]
    e1 = [train.objective_of(g, 1, G, n_ar) for g in range(G)]
    assert e0 == ["ar"] * 3 + ["md"] * 5  # k of N "devices" run AR (paper §3)
    assert e1 == e0[1:] + e0[:1]  # shifted by one micro-batch
    # over G epochs every micro-batch slot runs AR exactly n_ar times: no slot belongs to one objective
    for g in range(G):
        assert sum(train.objective_of(g, e, G, n_ar) == "ar" for e in range(G)) == n_ar


@pytest.mark.parametrize("lam, G, message", [
    (0.3, 8, "nearest valid values are 0.25 and 0.375; for lam=0.3 exactly set gradient_accumulation_steps "
             "to a multiple of 10"),
    (1.5, 8, "outside [0, 1]"),
    (-0.1, 8, "outside [0, 1]"),
])
def test_unachievable_lam_is_rejected(lam, G, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train.ar_micro_batches(lam, G)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10", 125e12),
                                        ("Tesla T4", None)])
def test_mfu_peak_is_the_one_of_the_device_named(monkeypatch, name, peak):
    """The dense bf16 peak that MFU divides by, from torch's device name: the H100 PCIe and NVL
    cards must not take the SXM peak (their names contain "H100" too), nor an A100 the A10's."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert train.peak_flops(torch.device("cuda")) == peak
    assert train.peak_flops(torch.device("cpu")) is None


def test_wsd_schedule(monkeypatch):
    monkeypatch.setattr(train, "max_iters", 8192)
    monkeypatch.setattr(train, "decay_frac", 0.25)
    monkeypatch.setattr(train, "warmup_iters", 0)
    monkeypatch.setattr(train, "lr_schedule", "wsd")
    assert train.lr_factor(0) == 1.0 and train.lr_factor(6143) == 1.0  # stable for 6,144 steps
    assert train.lr_factor(6144) == 1.0 and train.lr_factor(7168) == 0.5  # then 2,048 steps of linear decay
    assert train.lr_factor(8191) == 1 / 2048  # reaching 0 at step 8192


def test_lam_error_names_a_gradient_accumulation_that_also_splits_over_the_world():
    with pytest.raises(ValueError, match=r"multiple of 40 \(a multiple of the world size 8 too\)"):
        train.ar_micro_batches(0.3, 8, world=8)  # 0.3 = 3/10 needs a multiple of 10; 8 ranks: of 40
    assert train.ar_micro_batches(0.3, 40, world=8) == 12


def test_warmup_and_cosine_schedules(monkeypatch):
    for key, value in dict(max_iters=100, warmup_iters=10, lr_schedule="cosine", min_lr_frac=0.1).items():
        monkeypatch.setattr(train, key, value)
    assert [train.lr_factor(i) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warmup to the peak
    assert train.lr_factor(10) == 1.0  # cosine from the peak at the end of warmup ...
    assert train.lr_factor(55) == pytest.approx(0.1 + 0.9 * 0.5)  # ... through the midpoint ...
    assert train.lr_factor(100) == pytest.approx(0.1)  # ... to min_lr_frac at max_iters
    factors = [train.lr_factor(i) for i in range(10, 101)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    monkeypatch.setattr(train, "lr_schedule", "wsd")
    monkeypatch.setattr(train, "decay_frac", 0.2)
    assert [train.lr_factor(i) for i in (0, 9, 10, 79, 80, 90, 99)] == [0.1, 1.0, 1.0, 1.0, 1.0, 0.5, 0.05]


def test_overfitting_flag_needs_val_rising_while_train_falls():
    rows = [{"v": v, "t": t} for v, t in [(3.0, 3.0), (2.9, 2.8), (3.0, 2.6), (3.1, 2.5), (3.2, 2.4)]]
    assert train.overfitting(rows, "v", "t", patience=3)
    assert not train.overfitting(rows[:4], "v", "t", patience=3)  # only two rises so far
    flat_train = [dict(r, t=3.0) for r in rows]
    assert not train.overfitting(flat_train, "v", "t", patience=3)


# -----------------------------------------------------------------------------
# end to end. Most runs are in this process (train_here): a python subprocess costs seconds of start-up
# for milliseconds of tiny training. Subprocesses are kept where the process is the point: signals,
# the out_dir lock, DDP, torch.compile's graph count, and a few command lines that prove the CLI path.

def train_here(args):
    """`python train.py ARGS` in this process, on a fresh copy of the module (its settings are module
    globals, which a run changes). Returns None for a run that finished, else what the command line
    exits with: 0 after --help, or the one line it prints on stderr (and then nothing else was)."""
    spec = importlib.util.spec_from_file_location("train_here", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            module.run([str(a) for a in args])
    except SystemExit as e:
        assert e.code == 0 or stderr.getvalue() == "", stderr.getvalue()
        return e.code
    return None


def assert_one_line(message, *fragments):
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def assert_one_line_error(run, *fragments):
    """The same for a subprocess: a non-zero exit and one line on stderr."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def popen_train(args, script=REPO / "train.py", env=None, **kw):
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_dataset, one_thread):
    """A finished SMALL run (2 steps of 2 micro-batches, lam 0.5, evaluated and checkpointed at steps 0
    and 2) that the tests below copy (copy_run) before they resume or refuse it."""
    out = tmp_path_factory.mktemp("small_run") / "out"
    assert train_here([f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
                       "--max_iters=2", "--eval_interval=2", "--lam=0.5"]) is None
    return out


def copy_run(run, tmp_path):
    shutil.copytree(run, tmp_path / "out", ignore=shutil.ignore_patterns("train.lock"))
    return tmp_path / "out"


def small_args(tiny_dataset, out, *more):
    return [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--eval_interval=2", *more]


def test_tiny_cpu_learns_both_objectives_and_checkpoint_reloads(tiny_dataset, tmp_path, one_thread, capsys):
    out = tmp_path / "out"
    assert train_here([REPO / "config" / "tiny_cpu.py", f"--data_dir={tiny_dataset}", f"--out_dir={out}",
                       "--max_iters=24", "--eval_interval=12", "--lam=0.5"]) is None
    assert "lam=0.5: 1 of 2 micro-batches AR" in capsys.readouterr().out
    rows = read_metrics(out)
    assert [r["iter"] for r in rows] == [0, 12, 24]
    for key in ("iter", "tokens", "train_ar_loss", "train_md_loss", "val_ar_loss", "val_md_loss", "lr",
                "tokens_per_sec", "mfu"):
        assert key in rows[-1]
    assert rows[-1]["mfu"] is None  # not measured on CPU
    assert rows[-1]["train_ar_loss"] < rows[1]["train_ar_loss"] - 0.3  # 4.87 -> 3.84 measured
    assert rows[-1]["train_md_loss"] < rows[1]["train_md_loss"] - 0.3  # 5.11 -> 4.72
    assert rows[-1]["val_ar_loss"] < rows[0]["val_ar_loss"] - 1.0
    assert rows[-1]["val_md_loss"] < rows[0]["val_md_loss"] - 1.0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the picture of the run
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    model = M.load_checkpoint(str(out / "ckpt.pt"))
    assert model.meta["iter_num"] == 24 and model.meta["config"]["lam"] == 0.5
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_repetitions_train_on_the_first_T_over_r_tokens(tiny_dataset, tmp_path, one_thread, capsys):
    out = tmp_path / "out"
    # T = 8 steps x 2 micro-batches x 4 windows x 32 tokens = 2,048 tokens; r = 4 -> 512 unique tokens
    assert train_here([f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--max_iters=8",
                       "--gradient_accumulation_steps=2", "--eval_interval=8", "--repetitions=4"]) is None
    info = torch.load(out / "ckpt.pt", weights_only=True)["data"]
    assert info["total_tokens"] == 2048 and info["n_windows"] == 16
    assert info["unique_tokens"] == 512 and info["epochs"] == 4.0
    assert "512 unique training tokens" in capsys.readouterr().out.replace(",", "")
    assert read_metrics(out)[-1]["epoch"] == 4.0


def test_ddp_on_two_processes_equals_one_process_with_accumulation(tiny_dataset, tmp_path, one_thread):
    """2 gloo ranks give one process's weights, eager and compiled. Compiled DDP is what torchrun runs
    on GPUs: dynamo splits the graph at DDP's gradient buckets. The two torchrun runs go concurrently,
    while the single process trains here."""
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=4", "--eval_interval=4",
              "--gradient_accumulation_steps=4", "--lam=0.5"]
    ddp = {out: subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                  str(script), *common, flag, f"--out_dir={tmp_path / out}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
           for out, script, flag in (("ddp", REPO / "train.py", "--compile=False"),
                                     ("ddp_compiled", aot_eager_train(tmp_path), "--compile=True"))}
    assert train_here(common + [f"--out_dir={tmp_path / 'single'}"]) is None
    for out, proc in ddp.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    assert "graphs compiled" in stdout  # the second run really compiled
    single = weights(tmp_path / "single")
    for out in ("ddp", "ddp_compiled"):
        multi = weights(tmp_path / out)
        for name in single:
            diff = (single[name] - multi[name]).abs().max().item()
            assert diff <= 1e-5, (out, name, diff)
    for out in ("single", "ddp", "ddp_compiled"):  # all did train: equal weights are not equal initialisations
        rows = read_metrics(tmp_path / out)
        assert rows[-1]["val_ar_loss"] < rows[0]["val_ar_loss"] - 0.1


def test_bf16_and_compiled_runs_track_fp32_each_graph_compiles_once_and_validation_uses_every_window(
        tiny_dataset, tmp_path, one_thread):
    """One setting, three runs: fp32, bf16 and bf16 compiled (CUDA's default pair). bf16 autocast is
    train.py's default on CUDA; the CPU runs the same autocast code (the RoPE table and RMSNorm casts,
    fp32 logits for the loss, Muon on bf16-made gradients), so validation losses must agree within 2%
    at every evaluation, and not all be equal (autocast really ran); tests/test_cuda.py repeats this on
    a GPU. The batch is chosen so that validation ends in a partial batch: the compiled run pads it
    instead of compiling a fifth graph (four: AR and MD, with and without autograd, each built once),
    and the fp32 run's validation loss is the mean over every held-out window, checked one by one."""
    available = (data.load_meta(tiny_dataset)["val_tokens"] - 1) // 32  # windows of 32 that val.bin holds
    batch = next(b for b in range(5, 10) if available % b)
    eval_iters = available // batch + 1  # asks for more windows than there are: the last batch is partial
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=12", "--eval_interval=4",
              "--gradient_accumulation_steps=2", "--lam=0.5", f"--batch_size={batch}", f"--eval_iters={eval_iters}"]
    compiled = popen_train(common + ["--dtype=bfloat16", "--compile=True", f"--out_dir={tmp_path / 'bf16_compiled'}"],
                           script=aot_eager_train(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for name in ("fp32", "bf16"):
        assert train_here(common + [f"--dtype={'float32' if name == 'fp32' else 'bfloat16'}",
                                    f"--out_dir={tmp_path / name}"]) is None
    stdout, stderr = compiled.communicate(timeout=600)
    assert compiled.returncode == 0, stderr[-3000:]
    counts = [int(line.split(" graphs compiled")[0].rsplit(" ", 1)[-1]) for line in stdout.splitlines()
              if "graphs compiled" in line]
    assert counts == [2, 4, 4, 4, 4], stdout  # evals at 0 (eval graphs only), 4, 8, 12; the done line
    fp32 = read_metrics(tmp_path / "fp32")
    for name in ("bf16", "bf16_compiled"):
        bf16 = read_metrics(tmp_path / name)
        assert [r["iter"] for r in fp32] == [r["iter"] for r in bf16] == [0, 4, 8, 12]
        pairs = [(a[key], b[key]) for a, b in zip(fp32, bf16) for key in ("val_ar_loss", "val_md_loss")]
        for a, b in pairs:
            assert b == pytest.approx(a, rel=0.02), name
        assert any(a != b for a, b in pairs), name
        assert bf16[-1]["val_ar_loss"] < bf16[0]["val_ar_loss"] - 0.3
    model = M.load_checkpoint(str(tmp_path / "fp32" / "ckpt.pt"))
    x, y, docs = data.val_windows(tiny_dataset, 32, eval_iters * batch)
    assert len(x) == available and available % batch != 0
    with torch.no_grad():  # the mean over every scored target token, one window at a time
        scored = [int(((y[i] >= 0) & (y[i] != model.config.bos_id)).sum()) for i in range(len(x))]
        reference = sum(M.ar_loss(model, x[i:i + 1], y[i:i + 1], docs[i:i + 1])[0].item() * scored[i]
                        for i in range(len(x))) / sum(scored)
    assert min(scored) < max(scored)  # windows hold different numbers of scored targets (<s> is not one)
    assert fp32[-1]["val_ar_loss"] == pytest.approx(reference, abs=1e-5)


def test_sigkill_then_resume_is_bit_exact_and_the_killed_run_left_no_lock(tiny_dataset, tmp_path, one_thread):
    """The whole run and the run to kill go side by side; the resume (here) also shows that the kernel
    dropped the killed run's lock on out_dir with its holder: a SIGKILL leaves no stale lock."""
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=24", "--eval_interval=4",
              "--gradient_accumulation_steps=2", "--lam=0.5"]
    whole = popen_train(common + [f"--out_dir={tmp_path / 'whole'}"], stderr=subprocess.PIPE)
    out = tmp_path / "killed"
    proc = popen_train(common + [f"--out_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once a mid-run checkpoint exists
        try:
            if torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] >= 8:
                break
        except Exception:
            pass
        time.sleep(0.05)
    assert (out / "train.lock").read_text().strip() == str(proc.pid)  # it held the lock
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert 8 <= killed_at < 24, killed_at
    assert train_here(common + [f"--out_dir={out}", "--resume=True"]) is None
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(out)
    strip = lambda rows: [{k: r[k] for k in r if k not in ("tokens_per_sec", "elapsed", "mfu")} for r in rows]
    assert strip(resumed) == strip(whole)  # every logged loss, bit for bit, and no duplicated lines
    w1, w2 = weights(tmp_path / "whole"), weights(out)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    writer = (
        "import sys, torch; sys.path.insert(0, %r); import model\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    model.save_checkpoint(%r, {'model': {'w': torch.full((2_000_000,), float(i))},\n"
        "                                'model_config': {}, 'iter_num': i})\n" % (str(REPO), str(path)))
    rng = random.Random(0)
    last = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", writer])
        while not path.exists():
            time.sleep(0.01)
        time.sleep(0.3 + rng.random() * 0.5)  # somewhere in the middle of a write, most likely
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = M.read_checkpoint(str(path))  # always a complete file...
        assert torch.all(ckpt["model"]["w"] == ckpt["iter_num"])  # ...and a consistent one
        last = ckpt["iter_num"]
    assert last >= 2  # the writer did replace the file while we were killing it


def test_resume_survives_a_torn_metrics_line_notes_changed_settings_and_records_segments(small_run, tiny_dataset,
                                                                                        tmp_path, capsys):
    import eval as evaluation
    out = copy_run(small_run, tmp_path)
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["segments"] == [{"from_iter": 0, "to_iter": 2, "settings": {}}] and ckpt["lam"] == 0.5
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 4, "tokens": 10')  # killed while appending a line
    capsys.readouterr()
    assert train_here(small_args(tiny_dataset, out, "--max_iters=4", "--lam=0.5", "--resume=True")) is None
    assert "note: resuming with changed settings: max_iters 2 -> 4" in capsys.readouterr().out
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4]
    assert train_here(small_args(tiny_dataset, out, "--max_iters=6", "--lam=1.0", "--resume=True")) is None
    assert train_here(small_args(tiny_dataset, out, "--max_iters=10", "--lam=1.0", "--resume=True")) is None
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    moved = {"out_dir": str(out)}  # the copy is a run moved to another out_dir: recorded too
    assert ckpt["segments"] == [
        {"from_iter": 0, "to_iter": 2, "settings": {"lam": 0.5, "max_iters": 2, "out_dir": str(small_run)}},
        {"from_iter": 2, "to_iter": 4, "settings": {"lam": 0.5, "max_iters": 4, **moved}},
        {"from_iter": 4, "to_iter": 6, "settings": {"lam": 1.0, "max_iters": 6, **moved}},
        {"from_iter": 6, "to_iter": 10, "settings": {"lam": 1.0, "max_iters": 10, **moved}}]
    assert ckpt["lam"] is None and ckpt["config"]["lam"] == 1.0  # no single lam, and config is the last segment's
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4, 6, 8, 10]
    # eval.py's run block (eval.run_info) carries the segments and claims no single lam either
    run = evaluation.run_info(M.load_checkpoint(str(out / "ckpt.pt")))
    assert run["segments"] == ckpt["segments"] and run["lam"] is None and run["repetitions"] == 0.0


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small_run, tiny_dataset, tmp_path):
    out = copy_run(small_run, tmp_path)
    good = weights(out)
    message = train_here(small_args(tiny_dataset, out, "--max_iters=40", "--resume=True", "--learning_rate=1e30"))
    assert_one_line(message, "non-finite loss", f"the last good checkpoint {out / 'ckpt.pt'} was kept")
    kept = M.read_checkpoint(str(out / "ckpt.pt"))
    assert kept["iter_num"] == 2 and all(torch.equal(good[k], kept["model"][k]) for k in good)


def test_plot_curves_draws_every_logged_loss_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    history = [{"tokens": 0, "train_ar_loss": None, "train_md_loss": None, "val_ar_loss": 7.6, "val_md_loss": 7.3},
               {"tokens": 4096, "train_ar_loss": 5.0, "train_md_loss": 5.5, "val_ar_loss": 4.7, "val_md_loss": 5.2},
               {"tokens": 8192, "train_ar_loss": 4.2, "train_md_loss": None, "val_ar_loss": 4.1, "val_md_loss": 4.8}]
    path = tmp_path / "curves.png"
    path.write_bytes(b"an older picture")
    train.plot_curves(history, str(path))
    from matplotlib.image import imread
    image = imread(path)
    assert image.shape[:2] == (360, 600)  # small: 6 x 3.6 inches at 100 dpi
    assert image[..., :3].std() > 0.1  # something is drawn
    assert os.listdir(tmp_path) == ["curves.png"]  # replaced in place, no temporary left


def test_log_line_after_an_evaluation_times_only_training_steps(tiny_dataset, tmp_path, one_thread, monkeypatch,
                                                                capsys):
    """tokens/s (and MFU) on a log line measure training: the evaluation and checkpoint before it are
    not counted. Each checkpoint is made to take 0.6 s; every step is far faster than that."""
    save = M.save_checkpoint
    monkeypatch.setattr(M, "save_checkpoint", lambda *a, **k: (time.sleep(0.6), save(*a, **k))[1])
    capsys.readouterr()
    assert train_here([f"--data_dir={tiny_dataset}", f"--out_dir={tmp_path / 'out'}", *SMALL, "--max_iters=6",
                       "--eval_interval=3", "--log_interval=1", "--gradient_accumulation_steps=2"]) is None
    rates = [float(line.split(" tok/s")[0].rsplit("| ", 1)[1].replace(",", ""))
             for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert len(rates) == 6
    seconds = [2 * 4 * 32 / rate for rate in rates]  # 256 tokens per step
    assert max(seconds) < 0.4, seconds  # iter 1 and 4 follow a 0.6 s checkpoint


def wandb_stub(calls):
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: calls.append(["init", kw])
    wandb.log = lambda row, step=None: calls.append(["log", row, step])
    wandb.finish = lambda: calls.append(["finish"])
    return wandb


def test_wandb_logs_the_metrics_rows_and_a_missing_matplotlib_only_skips_the_picture(tiny_dataset, tmp_path,
                                                                                     one_thread, monkeypatch, capsys):
    out, calls = tmp_path / "out", []
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--max_iters=4", "--eval_interval=2",
            "--gradient_accumulation_steps=2", "--wandb_log=True", "--wandb_project=proj", "--wandb_run_name=lam0.5"]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "wandb", wandb_stub(calls))
        patch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
        capsys.readouterr()
        assert train_here(args) is None
    assert [c[0] for c in calls] == ["init", "log", "log", "log", "finish"]
    init = calls[0][1]
    assert init["project"] == "proj" and init["name"] == "lam0.5" and init["config"]["lam"] == 0.5
    assert [c[1] for c in calls[1:4]] == read_metrics(out)  # the same rows as metrics.jsonl
    assert [c[2] for c in calls[1:4]] == [0, 2, 4]
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1 and not (out / "curves.png").exists()
    # off by default: wandb is never imported
    calls.clear()
    monkeypatch.setitem(sys.modules, "wandb", wandb_stub(calls))
    args = [a for a in args if not a.startswith("--wandb")] + ["--resume=True", "--max_iters=6"]
    assert train_here(args) is None
    assert calls == [] and (out / "curves.png").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert_one_line(train_here(["--wandb_log=True"]), "wandb_log=True but the wandb package is not installed",
                    "pip install wandb")


def test_help_lists_every_setting_with_its_default_and_comment(capsys):
    for flag in ("--help", "-h"):
        capsys.readouterr()
        assert train_here([flag]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert lines[0].startswith("usage: python train.py [CONFIG_FILE ...]") and err == ""
        for key in train.settings(vars(train)):
            assert any(line.split() and line.split()[0] == key for line in lines), key
    assert "    lam = 0.5 " in out and "share of AR micro-batches" in out
    assert "    wandb_log = False " in out
    assert "  optimizer\n    optimizer = 'muon'" in out  # under the settings block's section comments
    assert train_here([REPO / "config" / "tiny_cpu.py", "--help"]) == 0  # values after the config file
    out = capsys.readouterr().out
    assert "    out_dir = 'out_tiny'" in out and "arguments before --help applied" in out


# -----------------------------------------------------------------------------
# bad inputs: one line, non-zero exit, no traceback

def test_bad_settings_fail_with_one_line(tiny_dataset, tmp_path, monkeypatch):
    """Each case in this process, and two through `python train.py` to prove the command line: a config
    file that exits, and batch settings inconsistent with the world size (as torchrun would set it)."""
    base = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=2"]
    (tmp_path / "a_file").write_text("")
    (tmp_path / "broken.py").write_text("lam = 0.5\nmax_iters = 10 *\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")  # exited 0 with no word, and trained nothing
    os.makedirs(tmp_path / "empty")
    cli = [popen_train([tmp_path / "exits.py"], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
           popen_train(base + [f"--out_dir={tmp_path / 'o'}", "--gradient_accumulation_steps=3"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"WORLD_SIZE": "2"})]
    cases = [
        (["--learnig_rate=0.1"], ["unknown config key 'learnig_rate'", "did you mean 'learning_rate'"]),
        (["--max_iters=ten"], ["'max_iters' expects int"]),
        (["--lam=1.5"], ["lam=1.5 is outside [0, 1]"]),
        (["--lam=0.3", "--gradient_accumulation_steps=8"], ["nearest valid values are 0.25 and 0.375"]),
        (["--data_dir=" + str(tmp_path / "nowhere")], ["nowhere"]),
        (["--data_dir=" + str(tmp_path / "empty")], ["empty"]),
        (["--block_size=100000"], ["block_size"]),
        (["--resume=True"], ["no checkpoint"]),
        ([str(tmp_path / "missing_config.py")], ["config file", "does not exist"]),
        (["--eval_interval=0"], ["eval_interval=0 must be a positive integer"]),
        (["--repetitions=-2.0"], ["repetitions=-2.0 must be >= 0"]),
        (["--decay_frac=1.5"], ["decay_frac=1.5 must be in [0, 1]"]),
        (["--optimizer=sgd"], ["optimizer='sgd' is not one of"]),
        (["--seed=" + "9" * 24], [f"seed={'9' * 24} must be an integer from 0 to 2**63 - 1"]),
        (["--rope_theta=1e999"], ["config key 'rope_theta' is inf; it must be a finite number"]),
        ([str(tmp_path / "broken.py")], [f"config file {tmp_path / 'broken.py'}:2: syntax error"]),
        # the data folder does not exist either: the out_dir is checked first
        ([f"--out_dir={tmp_path / 'a_file'}", f"--data_dir={tmp_path / 'nowhere'}"],
         [f"out_dir={tmp_path / 'a_file'} is a file, not a folder; choose another out_dir"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device=cuda"], ["CUDA is not available", "--device=cpu"]))
    for i, (args, fragments) in enumerate(cases):
        assert_one_line(train_here(base + [f"--out_dir={tmp_path / str(i)}"] + args), "train.py: error: ", *fragments)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_one_line(train_here(base + [f"--out_dir={tmp_path / 'o'}", "--gradient_accumulation_steps=3"]),
                    "gradient_accumulation_steps=3 must be a positive multiple of the world size 2")
    for proc, fragment in zip(cli, [f"config file {tmp_path / 'exits.py'}:2: the file exits (sys.exit or SystemExit)",
                                    "gradient_accumulation_steps=3 must be a positive multiple of the world size 2"]):
        stdout, stderr = proc.communicate(timeout=300)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), fragment)


def prepare(text, out, *args):
    """A data.py dataset of `text`, prepared in this process."""
    (out.parent / f"{out.name}.txt").write_text(text, encoding="utf-8")
    data.main(["--input", str(out.parent / f"{out.name}.txt"), "--out_dir", str(out), "--doc_split", "blank_line",
               "--workers", "1", *args])
    return out


def test_resume_errors_vocab_mismatch_and_corrupt_checkpoint(small_run, tiny_dataset, tmp_path, shared_data, capsys):
    out = copy_run(small_run, tmp_path)
    resume = [f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2", "--eval_interval=2", "--resume=True",
              "--max_iters=4"]
    text = (shared_data / "corpus" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:100_000]
    other = prepare(text, tmp_path / "other_300", "--vocab_size", "300")
    assert_one_line(train_here(resume + [f"--data_dir={other}"]), "vocabulary size 300",
                    "checkpoint was trained with 512")
    # the same vocabulary size, but a BPE of another text: other tokens behind the same ids
    other = prepare(text, tmp_path / "other_512", "--vocab_size", "512")
    assert data.load_meta(other)["vocab_size"] == 512
    assert_one_line(train_here(resume + [f"--data_dir={other}"]), "tokenizer of data folder",
                    "differs from the one the checkpoint was trained with")
    # a checkpoint that holds a model but not the state of a run (e.g. written by another tool)
    good = (out / "ckpt.pt").read_bytes()
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    M.save_checkpoint(str(out / "ckpt.pt"), {"model": ckpt["model"], "model_config": ckpt["model_config"]})
    assert_one_line(train_here(resume + [f"--data_dir={tiny_dataset}"]), "lacks optimizer", "cannot resume")
    (out / "ckpt.pt").write_bytes(good[: len(good) // 3])
    assert_one_line(train_here(resume + [f"--data_dir={tiny_dataset}"]), "corrupt or truncated")


# -----------------------------------------------------------------------------
# one run per out_dir, failed writes, interruptions, honest checkpoints (issue 14)

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_on_the_same_out_dir_exits_at_once_and_the_first_finishes_intact(tiny_dataset, tmp_path):
    """The first run is a process; the second, here, is refused while the first runs. (That a SIGKILL
    leaves no stale lock is shown by test_sigkill_then_resume_is_bit_exact_and_the_killed_run_left_no_lock.)"""
    out = tmp_path / "out"
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2"]
    first = popen_train(args + ["--max_iters=20", "--eval_interval=10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "train.lock").exists() or (out / "train.lock").read_text().strip() != str(first.pid):
        assert time.time() < deadline and first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    message = train_here(args + ["--max_iters=4", "--lam=1.0"])
    assert first.poll() is None  # refused while the first runs
    assert_one_line(message, f"out_dir={out} is in use by another train.py (PID {first.pid})")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [r["iter"] for r in read_metrics(out)] == [0, 10, 20]
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 20 and ckpt["config"]["lam"] == 0.5


def test_a_full_disk_while_checkpointing_stops_in_one_line_and_keeps_the_previous_checkpoint(tiny_dataset, tmp_path,
                                                                                             one_thread, monkeypatch):
    out = tmp_path / "out"
    args = small_args(tiny_dataset, out, "--max_iters=6", "--lam=1.0")
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the second fsync of a checkpoint fails as on a full disk: the first (step 0) is on disk
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        message = train_here(args)
    assert_one_line(message, f"could not write {out / 'ckpt.pt'} (No space left on device); the previous "
                             f"checkpoint {out / 'ckpt.pt'} was kept")
    assert M.read_checkpoint(str(out / "ckpt.pt"))["iter_num"] == 0
    assert sorted(set(os.listdir(out)) - {"curves.png"}) == ["ckpt.pt", "metrics.jsonl", "train.lock"]  # no temp file
    assert train_here(args + ["--resume=True"]) is None  # and the run continues from it
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_fresh_run_refuses_a_trained_out_dir_unless_told_and_clears_stale_temporaries(small_run, tiny_dataset,
                                                                                        tmp_path, capsys):
    out = copy_run(small_run, tmp_path)
    base = small_args(tiny_dataset, out, "--max_iters=2")
    before = (out / "ckpt.pt").read_bytes()
    assert_one_line(train_here(base + ["--lam=1.0"]),
                    f"out_dir={out} already holds a checkpoint ({out / 'ckpt.pt'}); resume it with "
                    f"--resume=True, or choose another out_dir, or pass --overwrite=True")
    assert (out / "ckpt.pt").read_bytes() == before
    assert_one_line(train_here(base + ["--resume=True", "--overwrite=True"]), "pick one")
    stale, live = out / f".ckpt.pt.tmp{dead_pid()}", out / f".ckpt.pt.tmp{os.getppid()}"
    stale.write_bytes(b"half a checkpoint")  # a run killed mid-write left it
    live.write_bytes(b"being written")  # a process that still runs: not ours to remove
    capsys.readouterr()
    assert train_here(base + ["--lam=1.0", "--overwrite=True"]) is None
    assert f"removed {stale}" in capsys.readouterr().out
    assert not stale.exists() and live.exists()
    assert M.read_checkpoint(str(out / "ckpt.pt"))["config"]["lam"] == 1.0
    assert [r["iter"] for r in read_metrics(out)] == [0, 2]


def test_ctrl_c_and_a_closed_stdout_stop_in_one_line(tiny_dataset, tmp_path):
    """Both runs go side by side."""
    out = tmp_path / "out"
    args = [f"--data_dir={tiny_dataset}", *SMALL, "--gradient_accumulation_steps=2", "--max_iters=100000",
            "--eval_interval=4"]
    # a shell's background job (`pytest ... &`) ignores SIGINT, and so would train.py, which inherits
    # that: give the child the default disposition, as a terminal's foreground job has
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = popen_train(args + [f"--out_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       preexec_fn=restore)
    # `train.py ... | head -3`: the reader goes away after three lines
    piped = popen_train(args + [f"--out_dir={tmp_path / 'piped'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"train.py: interrupted (Ctrl-C); the last checkpoint is {out / 'ckpt.pt'}; continue with " \
           f"--resume=True" in err
    M.read_checkpoint(str(out / "ckpt.pt"))
    for _ in range(3):
        piped.stdout.readline()
    piped.stdout.close()
    err = piped.stderr.read()
    piped.wait(timeout=60)
    assert piped.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "train.py: stopped: its output was closed; " in err


def test_a_dataset_rewritten_under_a_run_stops_it_and_a_resume_refuses_another_dataset(tiny_dataset, tmp_path,
                                                                                        shared_data, one_thread,
                                                                                        monkeypatch, capsys):
    """The folder is rewritten (data.py's files of a longer text, same tokenizer) right after the first
    checkpoint: the run stops at its next evaluation, before it checkpoints steps trained on two datasets."""
    run_data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(tiny_dataset, run_data)
    text = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[200_000:500_000]
    other = prepare(text, tmp_path / "other", "--tokenizer", str(tiny_dataset))
    save, saved = M.save_checkpoint, []

    def save_then_rewrite(*a, **k):
        save(*a, **k)
        saved.append(1)
        if len(saved) == 1:
            for name in ("train.bin", "train.idx", "val.bin", "meta.json"):
                shutil.copy(other / name, run_data / name)
    args = small_args(run_data, out, "--max_iters=6")
    with monkeypatch.context() as patch:
        patch.setattr(M, "save_checkpoint", save_then_rewrite)
        message = train_here(args)
    assert_one_line(message, f"data folder {run_data} changed during training (meta.json's contents, train.bin ",
                    "stopped before step 2 so as not to mix two datasets; the last checkpoint is "
                    f"{out / 'ckpt.pt'}")
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 0 and ckpt["data"]["fingerprint"]["meta"] == data.load_meta(tiny_dataset)
    assert_one_line(train_here(args + ["--resume=True"]), f"data folder {run_data} is not the dataset the "
                    "checkpoint was trained on (meta.json's contents, train.bin ", "resume with the data it used")
    shutil.rmtree(run_data)
    shutil.copytree(tiny_dataset, run_data, copy_function=shutil.copy)  # the same data, written again
    capsys.readouterr()
    assert train_here(args + ["--resume=True"]) is None
    assert f"note: the files of data folder {run_data} were written again since the checkpoint" in capsys.readouterr().out
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_figure_that_cannot_be_written_only_warns_and_the_md_only_eval_line_keeps_its_train_label(
        tiny_dataset, tmp_path, one_thread, monkeypatch, capsys):
    matplotlib = pytest.importorskip("matplotlib.figure")
    out = tmp_path / "out"

    def savefig(self, path, **kw):  # a full disk, half-way through the picture
        open(path, "wb").write(b"half a picture")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(matplotlib.Figure, "savefig", savefig)
    capsys.readouterr()
    assert train_here(small_args(tiny_dataset, out, "--max_iters=4", "--lam=0.0")) is None
    stdout = capsys.readouterr().out
    assert stdout.count(f"warning: could not write {out / 'curves.png'} (No space left on device); "
                        "training goes on") == 3
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl", "train.lock"]  # no half picture left
    evals = [line for line in stdout.splitlines() if line.startswith("eval ")]
    assert len(evals) == 3 and all(" | train md " in line for line in evals[1:]), evals
