"""train.py end to end on real text: learning, lam scheduling, DDP = gradient accumulation, exact resume
after SIGKILL, atomic checkpoints, NaN handling and one-line errors for bad settings."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import data
import model as M
import train
from conftest import REPO

# a model small enough that a step takes a few milliseconds on CPU
SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--intermediate_size=64", "--block_size=32",
         "--batch_size=4", "--eval_iters=2", "--log_interval=2", "--compile=False", "--device=cpu"]


def run_train(args, cwd=None, env=None, check=True, script=REPO / "train.py"):
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def aot_eager_train(tmp_path):
    """A script that runs train.py with torch.compile's backend set to aot_eager: dynamo and AOT
    autograd trace, guard, split and recompile as they do for inductor, without inductor's C++ build."""
    script = tmp_path / "train_aot_eager.py"
    script.write_text(f"import functools, sys, torch\nsys.path.insert(0, {str(REPO)!r})\n"
                      "torch.compile = functools.partial(torch.compile, backend='aot_eager')\n"
                      "import train\ntrain.main(sys.argv[1:])\n")
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
# end to end

def test_tiny_cpu_learns_both_objectives_and_checkpoint_reloads(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    run = run_train([str(REPO / "config" / "tiny_cpu.py"), f"--data_dir={tiny_dataset}", f"--out_dir={out}",
                     "--max_iters=40", "--eval_interval=20", "--lam=0.5"])
    assert "lam=0.5: 1 of 2 micro-batches AR" in run.stdout
    rows = read_metrics(out)
    assert [r["iter"] for r in rows] == [0, 20, 40]
    for key in ("iter", "tokens", "train_ar_loss", "train_md_loss", "val_ar_loss", "val_md_loss", "lr",
                "tokens_per_sec", "mfu"):
        assert key in rows[-1]
    assert rows[-1]["mfu"] is None  # not measured on CPU
    assert rows[-1]["train_ar_loss"] < rows[1]["train_ar_loss"] - 0.3
    assert rows[-1]["train_md_loss"] < rows[1]["train_md_loss"] - 0.3
    assert rows[-1]["val_ar_loss"] < rows[0]["val_ar_loss"] - 1.0
    assert rows[-1]["val_md_loss"] < rows[0]["val_md_loss"] - 1.0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the picture of the run
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    model = M.load_checkpoint(str(out / "ckpt.pt"))
    assert model.meta["iter_num"] == 40 and model.meta["config"]["lam"] == 0.5
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_repetitions_train_on_the_first_T_over_r_tokens(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    # T = 8 steps x 2 micro-batches x 4 windows x 32 tokens = 2,048 tokens; r = 4 -> 512 unique tokens
    run = run_train([f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--max_iters=8",
                     "--gradient_accumulation_steps=2", "--eval_interval=8", "--repetitions=4"])
    info = torch.load(out / "ckpt.pt", weights_only=True)["data"]
    assert info["total_tokens"] == 2048 and info["n_windows"] == 16
    assert info["unique_tokens"] == 512 and info["epochs"] == 4.0
    assert "512 unique training tokens" in run.stdout.replace(",", "")
    assert read_metrics(out)[-1]["epoch"] == 4.0


def test_ddp_on_two_processes_equals_one_process_with_accumulation(tiny_dataset, tmp_path):
    """2 gloo ranks give one process's weights, eager and compiled. Compiled DDP is what torchrun runs
    on GPUs: dynamo splits the graph at DDP's gradient buckets."""
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=4", "--eval_interval=4",
              "--gradient_accumulation_steps=4", "--lam=0.5"]
    run_train(common + [f"--out_dir={tmp_path / 'single'}"])
    for out, script, flag in (("ddp", REPO / "train.py", "--compile=False"),
                              ("ddp_compiled", aot_eager_train(tmp_path), "--compile=True")):
        ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script), *common, flag, f"--out_dir={tmp_path / out}"],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "graphs compiled" in ddp.stdout  # the second run really compiled
    single = weights(tmp_path / "single")
    for out in ("ddp", "ddp_compiled"):
        multi = weights(tmp_path / out)
        for name in single:
            diff = (single[name] - multi[name]).abs().max().item()
            assert diff <= 1e-5, (out, name, diff)
    for out in ("single", "ddp", "ddp_compiled"):  # all did train: equal weights are not equal initialisations
        rows = read_metrics(tmp_path / out)
        assert rows[-1]["val_ar_loss"] < rows[0]["val_ar_loss"] - 0.1


def test_validation_uses_every_held_out_window_even_in_a_partial_batch(tiny_dataset, tmp_path):
    available = (data.load_meta(tiny_dataset)["val_tokens"] - 1) // 32  # windows of 32 that val.bin holds
    batch = available // 2 + 1  # asks for 2 x batch > available windows: one full batch and one partial one
    out = tmp_path / "out"
    run_train([f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--max_iters=1", "--eval_interval=1",
               "--gradient_accumulation_steps=1", "--lam=1.0", f"--batch_size={batch}"])
    model = M.load_checkpoint(str(out / "ckpt.pt"))
    x, y, docs = data.val_windows(tiny_dataset, 32, 2 * batch)
    assert len(x) == available and available % batch != 0
    with torch.no_grad():  # the mean over every scored target token, one window at a time
        scored = [int(((y[i] >= 0) & (y[i] != model.config.bos_id)).sum()) for i in range(len(x))]
        reference = sum(M.ar_loss(model, x[i:i + 1], y[i:i + 1], docs[i:i + 1])[0].item() * scored[i]
                        for i in range(len(x))) / sum(scored)
    assert min(scored) < max(scored)  # windows hold different numbers of scored targets (<s> is not one)
    assert read_metrics(out)[-1]["val_ar_loss"] == pytest.approx(reference, abs=1e-5)


def test_bf16_autocast_runs_on_the_cpu_and_tracks_fp32(tiny_dataset, tmp_path):
    """bf16 autocast is train.py's default on CUDA. The CPU runs the same autocast code (the RoPE table
    and RMSNorm casts, fp32 logits for the loss, Muon on bf16-made gradients), so the path is checked
    here too: the same run in fp32, in bf16 and in bf16 compiled (CUDA's default pair), validation
    losses within 2% at every evaluation, and not all equal (autocast really ran). tests/test_cuda.py
    repeats this on a GPU over 50 steps."""
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=20", "--eval_interval=10",
              "--gradient_accumulation_steps=2", "--lam=0.5"]
    runs = {"bf16_compiled": (["--dtype=bfloat16", "--compile=True"], aot_eager_train(tmp_path)),  # the longest
            "fp32": (["--dtype=float32"], REPO / "train.py"), "bf16": (["--dtype=bfloat16"], REPO / "train.py")}
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda name: run_train(common + runs[name][0] + [f"--out_dir={tmp_path / name}"],
                                                    script=runs[name][1]).stdout, runs))
    assert "4 graphs compiled" in outs[0]
    fp32 = read_metrics(tmp_path / "fp32")
    for name in ("bf16", "bf16_compiled"):
        bf16 = read_metrics(tmp_path / name)
        assert [r["iter"] for r in fp32] == [r["iter"] for r in bf16] == [0, 10, 20]
        pairs = [(a[key], b[key]) for a, b in zip(fp32, bf16) for key in ("val_ar_loss", "val_md_loss")]
        for a, b in pairs:
            assert b == pytest.approx(a, rel=0.02), name
        assert any(a != b for a, b in pairs), name
        assert bf16[-1]["val_ar_loss"] < bf16[0]["val_ar_loss"] - 0.3


def test_compiled_run_builds_each_graph_once(tiny_dataset, tmp_path):
    """torch.compile needs four graphs (AR and MD, with and without autograd), each built once: a short
    last validation batch is padded instead of compiling a fifth."""
    available = (data.load_meta(tiny_dataset)["val_tokens"] - 1) // 32
    batch = available // 2 + 1  # so the last validation batch is short
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={tmp_path / 'out'}", *SMALL, "--compile=True",
            "--max_iters=12", "--eval_interval=4", "--gradient_accumulation_steps=2", "--lam=0.5",
            f"--batch_size={batch}"]
    run = run_train(args, script=aot_eager_train(tmp_path))
    counts = [int(line.split(" graphs compiled")[0].rsplit(" ", 1)[-1]) for line in run.stdout.splitlines()
              if "graphs compiled" in line]
    assert counts == [2, 4, 4, 4, 4], run.stdout  # evals at 0 (eval graphs only), 4, 8, 12; the done line


def test_sigkill_then_resume_is_bit_exact(tiny_dataset, tmp_path):
    common = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=24", "--eval_interval=4",
              "--gradient_accumulation_steps=2", "--lam=0.5"]
    run_train(common + [f"--out_dir={tmp_path / 'whole'}"])
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, f"--out_dir={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once a mid-run checkpoint exists
        try:
            if torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] >= 8:
                break
        except Exception:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert 8 <= killed_at < 24, killed_at
    run_train(common + [f"--out_dir={out}", "--resume=True"])
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


def test_resume_survives_a_torn_metrics_line_and_notes_changed_settings(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    common = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
              "--eval_interval=2"]
    run_train(common + ["--max_iters=2"])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 4, "tokens": 10')  # killed while appending a line
    run = run_train(common + ["--max_iters=4", "--resume=True"])
    assert "note: resuming with changed settings: max_iters 2 -> 4" in run.stdout
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    common = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
              "--eval_interval=4", "--optimizer=adamw"]
    run_train(common + ["--max_iters=4"])
    good = weights(out)
    run = run_train(common + ["--max_iters=40", "--resume=True", "--learning_rate=1e30"], check=False)
    assert run.returncode != 0
    assert "non-finite loss" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    kept = M.read_checkpoint(str(out / "ckpt.pt"))
    assert kept["iter_num"] == 4 and all(torch.equal(good[k], kept["model"][k]) for k in good)


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


def run_train_with_modules(preamble, args, tmp_path):
    """train.py as `python train.py ARGS` would run it, after `preamble` (which may put stub modules
    into sys.modules); returns the run and the calls the preamble recorded in `calls`."""
    calls_path = tmp_path / "calls.json"
    code = (f"import json, runpy, sys, types\ncalls = []\n{preamble}\n"
            f"try:\n    runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
            f"finally:\n    json.dump(calls, open({str(calls_path)!r}, 'w'), default=repr)")
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run, json.loads(calls_path.read_text())


def test_log_line_after_an_evaluation_times_only_training_steps(tiny_dataset, tmp_path):
    """tokens/s (and MFU) on a log line measure training: the evaluation and checkpoint before it are
    not counted. Each checkpoint is made to take 0.6 s; every step is far faster than that."""
    slow_checkpoint = (f"sys.path.insert(0, {str(REPO)!r})\nimport time, model\nsave = model.save_checkpoint\n"
                       "model.save_checkpoint = lambda *a, **k: (time.sleep(0.6), save(*a, **k))[1]")
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={tmp_path / 'out'}", *SMALL, "--max_iters=6",
            "--eval_interval=3", "--log_interval=1", "--gradient_accumulation_steps=2"]
    run, _ = run_train_with_modules(slow_checkpoint, args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rates = [float(line.split(" tok/s")[0].rsplit("| ", 1)[1].replace(",", ""))
             for line in run.stdout.splitlines() if line.startswith("iter ")]
    assert len(rates) == 6
    seconds = [2 * 4 * 32 / rate for rate in rates]  # 256 tokens per step
    assert max(seconds) < 0.4, seconds  # iter 1 and 4 follow a 0.6 s checkpoint


WANDB_STUB = """
wandb = types.ModuleType("wandb")
wandb.init = lambda **kw: calls.append(["init", kw])
wandb.log = lambda row, step=None: calls.append(["log", row, step])
wandb.finish = lambda: calls.append(["finish"])
sys.modules["wandb"] = wandb
"""


def test_wandb_logs_the_metrics_rows_and_a_missing_matplotlib_only_skips_the_picture(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--max_iters=4", "--eval_interval=2",
            "--gradient_accumulation_steps=2", "--wandb_log=True", "--wandb_project=proj", "--wandb_run_name=lam0.5"]
    no_matplotlib = 'sys.modules["matplotlib"] = None  # import matplotlib raises ImportError'
    run, calls = run_train_with_modules(WANDB_STUB + no_matplotlib, args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [c[0] for c in calls] == ["init", "log", "log", "log", "finish"]
    init = calls[0][1]
    assert init["project"] == "proj" and init["name"] == "lam0.5" and init["config"]["lam"] == 0.5
    assert [c[1] for c in calls[1:4]] == read_metrics(out)  # the same rows as metrics.jsonl
    assert [c[2] for c in calls[1:4]] == [0, 2, 4]
    assert run.stdout.count("matplotlib is not installed") == 1 and not (out / "curves.png").exists()
    # off by default: wandb is never imported
    args = [a for a in args if not a.startswith("--wandb")] + ["--resume=True", "--max_iters=6"]
    run, calls = run_train_with_modules(WANDB_STUB, args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert calls == [] and (out / "curves.png").exists()


def test_wandb_log_without_wandb_installed_is_one_line(tmp_path):
    run, _ = run_train_with_modules('sys.modules["wandb"] = None', ["--wandb_log=True"], tmp_path)
    assert_one_line_error(run, "wandb_log=True but the wandb package is not installed", "pip install wandb")


def test_help_lists_every_setting_with_its_default_and_comment():
    for flag in ("--help", "-h"):
        run = run_train([flag])
        lines = run.stdout.splitlines()
        assert lines[0].startswith("usage: python train.py [CONFIG_FILE ...]") and run.stderr == ""
        for key in train.settings(vars(train)):
            assert any(line.split() and line.split()[0] == key for line in lines), key
    assert "    lam = 0.5 " in run.stdout and "share of AR micro-batches" in run.stdout
    assert "    wandb_log = False " in run.stdout
    assert "  optimizer\n    optimizer = 'muon'" in run.stdout  # under the settings block's section comments
    run = run_train([str(REPO / "config" / "tiny_cpu.py"), "--help"])  # values after the config file
    assert "    out_dir = 'out_tiny'" in run.stdout and "arguments before --help applied" in run.stdout


# -----------------------------------------------------------------------------
# bad inputs: one line, non-zero exit, no traceback

def assert_one_line_error(run, *fragments):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_settings_fail_with_one_line(tiny_dataset, tmp_path):
    base = [f"--data_dir={tiny_dataset}", *SMALL, "--max_iters=2"]
    cases = [
        (["--learnig_rate=0.1"], ["unknown config key 'learnig_rate'", "did you mean 'learning_rate'"]),
        (["--max_iters=ten"], ["'max_iters' expects int"]),
        (["--lam=1.5"], ["lam=1.5 is outside [0, 1]"]),
        (["--lam=0.3", "--gradient_accumulation_steps=8"], ["nearest valid values are 0.25 and 0.375"]),
        (["--data_dir=" + str(tmp_path / "nowhere")], ["nowhere"]),
        (["--block_size=100000"], ["block_size"]),
        (["--resume=True"], ["no checkpoint"]),
        ([str(tmp_path / "missing_config.py")], ["config file", "does not exist"]),
    ]
    cases += [
        (["--eval_interval=0"], ["eval_interval=0 must be a positive integer"]),
        (["--repetitions=-2.0"], ["repetitions=-2.0 must be >= 0"]),
        (["--decay_frac=1.5"], ["decay_frac=1.5 must be in [0, 1]"]),
        (["--optimizer=sgd"], ["optimizer='sgd' is not one of"]),
        (["--seed=" + "9" * 24], [f"seed={'9' * 24} must be an integer from 0 to 2**63 - 1"]),
        (["--rope_theta=1e999"], ["config key 'rope_theta' is inf; it must be a finite number"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device=cuda"], ["CUDA is not available", "--device=cpu"]))
    os.makedirs(tmp_path / "empty")
    cases.append((["--data_dir=" + str(tmp_path / "empty")], ["empty"]))
    # two at a time, each with its own out_dir: the runs are independent and mostly start-up time
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda case: run_train(base + [f"--out_dir={tmp_path / str(case[0])}"] + case[1][0],
                                               check=False), enumerate(cases))
        for run, (_, fragments) in zip(runs, cases):
            assert_one_line_error(run, *fragments)
    # batch settings inconsistent with the world size (as torchrun would set it)
    run = run_train(base + [f"--out_dir={tmp_path / 'o'}", "--gradient_accumulation_steps=3"],
                    env={"WORLD_SIZE": "2"}, check=False)
    assert_one_line_error(run, "gradient_accumulation_steps=3 must be a positive multiple of the world size 2")


def test_resume_errors_vocab_mismatch_and_corrupt_checkpoint(tiny_dataset, tmp_path, shared_data):
    out = tmp_path / "out"
    base = [f"--out_dir={out}", *SMALL, "--max_iters=2", "--eval_interval=2"]
    run_train(base + [f"--data_dir={tiny_dataset}"])
    other = tmp_path / "other_data"
    text = (shared_data / "corpus" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:100_000]
    (tmp_path / "w.txt").write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, str(REPO / "data.py"), "--input", str(tmp_path / "w.txt"), "--out_dir",
                    str(other), "--vocab_size", "300", "--doc_split", "blank_line", "--workers", "1"],
                   check=True, capture_output=True)
    run = run_train(base + [f"--data_dir={other}", "--resume=True", "--max_iters=4"], check=False)
    assert_one_line_error(run, "vocabulary size 300", "checkpoint was trained with 512")
    # the same vocabulary size, but a BPE of another text: other tokens behind the same ids
    subprocess.run([sys.executable, str(REPO / "data.py"), "--input", str(tmp_path / "w.txt"), "--out_dir",
                    str(other), "--vocab_size", "512", "--doc_split", "blank_line", "--workers", "1"],
                   check=True, capture_output=True)
    assert data.load_meta(other)["vocab_size"] == 512
    run = run_train(base + [f"--data_dir={other}", "--resume=True", "--max_iters=4"], check=False)
    assert_one_line_error(run, "tokenizer of data folder", "differs from the one the checkpoint was trained with")
    # a checkpoint that holds a model but not the state of a run (e.g. written by another tool)
    good = (out / "ckpt.pt").read_bytes()
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    M.save_checkpoint(str(out / "ckpt.pt"), {"model": ckpt["model"], "model_config": ckpt["model_config"]})
    run = run_train(base + [f"--data_dir={tiny_dataset}", "--resume=True", "--max_iters=4"], check=False)
    assert_one_line_error(run, "lacks optimizer", "cannot resume")
    (out / "ckpt.pt").write_bytes(good)
    (out / "ckpt.pt").write_bytes(good[: len(good) // 3])
    run = run_train(base + [f"--data_dir={tiny_dataset}", "--resume=True", "--max_iters=4"], check=False)
    assert_one_line_error(run, "corrupt or truncated")


# -----------------------------------------------------------------------------
# one run per out_dir, failed writes, interruptions, honest checkpoints (issue 14)

def train_driver(prelude, args, go=None):
    """`python -c` that imports train.py's dependencies, runs `prelude` (a patch), waits for the file
    `go` if given, and then runs train.py as __main__ with `args`: the slow imports happen before the
    moment that matters."""
    return (f"import os, runpy, sys, time\nsys.path.insert(0, {str(REPO)!r})\nimport torch, data, model\n"
            f"{prelude}\n"
            f"while {str(go)!r} != 'None' and not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
            f"sys.argv = ['train.py', *{[str(a) for a in args]!r}]\n"
            f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n")


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_on_the_same_out_dir_exits_at_once_and_the_first_finishes_intact(tiny_dataset, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    second = subprocess.Popen([sys.executable, "-c", train_driver("", args + ["--max_iters=4", "--lam=1.0"], go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--max_iters=200", "--eval_interval=50"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "train.lock").exists() or (out / "train.lock").read_text().strip() != str(first.pid):
        assert time.time() < deadline and first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    go.touch()
    t0 = time.time()
    _, err = second.communicate(timeout=60)
    assert time.time() - t0 < 10 and first.poll() is None  # refused within seconds, while the first runs
    assert second.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"out_dir={out} is in use by another train.py (PID {first.pid})" in err
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [r["iter"] for r in read_metrics(out)] == [0, 50, 100, 150, 200]
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 200 and ckpt["config"]["lam"] == 0.5
    # the kernel drops the lock with its holder: the out_dir is free again, even after a SIGKILL
    killed = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--max_iters=100000",
                               "--resume=True"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while (out / "train.lock").read_text().strip() != str(killed.pid):
        assert time.time() < deadline and killed.poll() is None
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run_train(args + ["--max_iters=202", "--eval_interval=2", "--resume=True"])


def test_a_full_disk_while_checkpointing_stops_in_one_line_and_keeps_the_previous_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    # the second fsync of a checkpoint fails as on a full disk: the first checkpoint (step 0) is on disk
    prelude = ("import errno\nreal_fsync, calls = os.fsync, []\n"
               "def fsync(fd):\n    calls.append(fd)\n"
               "    if len(calls) > 1:\n        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
               "    real_fsync(fd)\nos.fsync = fsync")
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--max_iters=6", "--eval_interval=2", "--lam=1.0"]
    run = subprocess.run([sys.executable, "-c", train_driver(prelude, args)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(run, f"could not write {out / 'ckpt.pt'} (No space left on device); the previous "
                               f"checkpoint {out / 'ckpt.pt'} was kept")
    assert M.read_checkpoint(str(out / "ckpt.pt"))["iter_num"] == 0
    assert sorted(set(os.listdir(out)) - {"curves.png"}) == ["ckpt.pt", "metrics.jsonl", "train.lock"]  # no temp file
    run_train(args + ["--resume=True"])  # and the run continues from it
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_fresh_run_refuses_a_trained_out_dir_unless_told_and_clears_stale_temporaries(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    base = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--max_iters=2", "--eval_interval=2"]
    run_train(base)
    before = (out / "ckpt.pt").read_bytes()
    assert_one_line_error(run_train(base + ["--lam=1.0"], check=False),
                          f"out_dir={out} already holds a checkpoint ({out / 'ckpt.pt'}); resume it with "
                          f"--resume=True, or choose another out_dir, or pass --overwrite=True")
    assert (out / "ckpt.pt").read_bytes() == before
    assert_one_line_error(run_train(base + ["--resume=True", "--overwrite=True"], check=False), "pick one")
    stale, live = out / f".ckpt.pt.tmp{dead_pid()}", out / f".ckpt.pt.tmp{os.getpid()}"
    stale.write_bytes(b"half a checkpoint")  # a run killed mid-write left it
    live.write_bytes(b"being written")  # a process that still runs: not ours to remove
    run = run_train(base + ["--lam=1.0", "--overwrite=True"])
    assert f"removed {stale}" in run.stdout
    assert not stale.exists() and live.exists()
    assert M.read_checkpoint(str(out / "ckpt.pt"))["config"]["lam"] == 1.0
    assert [r["iter"] for r in read_metrics(out)] == [0, 2]


def test_a_resume_with_a_new_lam_is_recorded_in_segments(tiny_dataset, tmp_path):
    import eval as evaluation
    out = tmp_path / "out"
    base = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--eval_interval=2"]
    run_train(base + ["--max_iters=4", "--lam=0.5"])
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["segments"] == [{"from_iter": 0, "to_iter": 4, "settings": {}}] and ckpt["lam"] == 0.5
    run_train(base + ["--max_iters=6", "--lam=1.0", "--resume=True"])
    run_train(base + ["--max_iters=10", "--lam=1.0", "--resume=True"])
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["segments"] == [
        {"from_iter": 0, "to_iter": 4, "settings": {"lam": 0.5, "max_iters": 4}},
        {"from_iter": 4, "to_iter": 6, "settings": {"lam": 1.0, "max_iters": 6}},
        {"from_iter": 6, "to_iter": 10, "settings": {"lam": 1.0, "max_iters": 10}}]
    assert ckpt["lam"] is None and ckpt["config"]["lam"] == 1.0  # no single lam, and config is the last segment's
    # eval.py's run block (eval.run_info) carries the segments and claims no single lam either
    run = evaluation.run_info(M.load_checkpoint(str(out / "ckpt.pt")))
    assert run["segments"] == ckpt["segments"] and run["lam"] is None and run["repetitions"] == 0.0


def test_ctrl_c_and_a_closed_stdout_stop_in_one_line(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "train.py"), f"--data_dir={tiny_dataset}", *SMALL,
            "--gradient_accumulation_steps=2", "--max_iters=100000", "--eval_interval=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell's background job (`pytest ... &`) ignores SIGINT, and so would train.py, which inherits
    # that: give the child the default disposition, as a terminal's foreground job has
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(args + [f"--out_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=restore)
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
    # `train.py ... | head -3`: the reader goes away after three lines
    proc = subprocess.Popen(args + [f"--out_dir={tmp_path / 'piped'}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for _ in range(3):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "train.py: stopped: its output was closed; " in err


def test_out_dir_that_is_a_file_and_broken_config_files_fail_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    # the data folder does not exist either: the out_dir is checked first
    run = run_train([f"--out_dir={tmp_path / 'a_file'}", f"--data_dir={tmp_path / 'nowhere'}", *SMALL], check=False)
    assert_one_line_error(run, f"out_dir={tmp_path / 'a_file'} is a file, not a folder; choose another out_dir")
    (tmp_path / "broken.py").write_text("lam = 0.5\nmax_iters = 10 *\n")
    assert_one_line_error(run_train([str(tmp_path / "broken.py")], check=False),
                          f"config file {tmp_path / 'broken.py'}:2: syntax error")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")  # exited 0 with no word, and trained nothing
    assert_one_line_error(run_train([str(tmp_path / "exits.py")], check=False),
                          f"config file {tmp_path / 'exits.py'}:2: the file exits (sys.exit or SystemExit)")


def test_a_dataset_rewritten_under_a_run_stops_it_and_a_resume_refuses_another_dataset(tiny_dataset, tmp_path,
                                                                                        shared_data):
    """The folder is rewritten (data.py's files of a longer text, same tokenizer) right after the first
    checkpoint: the run stops at its next evaluation, before it checkpoints steps trained on two datasets."""
    run_data, other, out = tmp_path / "data", tmp_path / "other", tmp_path / "out"
    shutil.copytree(tiny_dataset, run_data)
    text = (shared_data / "corpus" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[200_000:500_000]
    (tmp_path / "more.txt").write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, str(REPO / "data.py"), "--input", str(tmp_path / "more.txt"), "--out_dir",
                    str(other), "--tokenizer", str(tiny_dataset), "--doc_split", "blank_line", "--workers", "1"],
                   check=True, capture_output=True)
    rewrite = ("import shutil\nsave, saved = model.save_checkpoint, []\n"
               "def save_then_rewrite(*a, **k):\n    save(*a, **k)\n    saved.append(1)\n    if len(saved) == 1:\n"
               f"        for name in ('train.bin', 'train.idx', 'val.bin', 'meta.json'):\n"
               f"            shutil.copy({str(other)!r} + '/' + name, {str(run_data)!r} + '/' + name)\n"
               "model.save_checkpoint = save_then_rewrite")
    args = [f"--data_dir={run_data}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--max_iters=6", "--eval_interval=2"]
    run = subprocess.run([sys.executable, "-c", train_driver(rewrite, args)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(run, f"data folder {run_data} changed during training (meta.json's contents, train.bin ",
                          "stopped before step 2 so as not to mix two datasets; the last checkpoint is "
                          f"{out / 'ckpt.pt'}")
    ckpt = M.read_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 0 and ckpt["data"]["fingerprint"]["meta"] == data.load_meta(tiny_dataset)
    run = run_train(args + ["--resume=True"], check=False)
    assert_one_line_error(run, f"data folder {run_data} is not the dataset the checkpoint was trained on "
                               "(meta.json's contents, train.bin ", "resume with the data it used")
    shutil.rmtree(run_data)
    shutil.copytree(tiny_dataset, run_data, copy_function=shutil.copy)  # the same data, written again
    run = run_train(args + ["--resume=True"])
    assert f"note: the files of data folder {run_data} were written again since the checkpoint" in run.stdout
    assert [r["iter"] for r in read_metrics(out)] == [0, 2, 4, 6]


def test_a_figure_that_cannot_be_written_only_warns_and_the_md_only_eval_line_keeps_its_train_label(tiny_dataset,
                                                                                                   tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    full_disk = ("import errno, matplotlib.figure\n"
                 "def savefig(self, path, **kw):\n    open(path, 'wb').write(b'half a picture')\n"
                 "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
                 "matplotlib.figure.Figure.savefig = savefig")
    args = [f"--data_dir={tiny_dataset}", f"--out_dir={out}", *SMALL, "--gradient_accumulation_steps=2",
            "--max_iters=4", "--eval_interval=2", "--lam=0.0"]
    run = subprocess.run([sys.executable, "-c", train_driver(full_disk, args)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"warning: could not write {out / 'curves.png'} (No space left on device); "
                            "training goes on") == 3
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl", "train.lock"]  # no half picture left
    evals = [line for line in run.stdout.splitlines() if line.startswith("eval ")]
    assert len(evals) == 3 and all(" | train md " in line for line in evals[1:]), evals
