"""README.md stays a guide whose commands run as written: every `python SCRIPT.py ...` (and
`torchrun ... train.py ...`) command in it parses, without running, and every link in README and
docs/ leads somewhere."""
import argparse
import importlib
import os
import re
import shlex
import sys

import pytest

import configurator
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_commands():
    """(script, args) of every command in README's code blocks (not ```python ones) and inline code."""
    lines = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
        if lang != "python":
            lines += body.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", README, flags=re.S | re.M)
    lines += re.findall(r"`([^`\n]*(?:python|torchrun) [^`\n]*)`", prose)
    commands = []
    for line in lines:
        if not re.match(r"(\w+=\S*\s+)*(python|torchrun)\s", line.strip()):
            continue  # output shown in a block, a shell comment
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"\w+=\S*", words[0]):  # OMP_NUM_THREADS=1 python ...
            words.pop(0)
        if words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
            commands.append((words[1], words[2:]))
        elif words[:1] == ["torchrun"]:
            at = next(i for i, w in enumerate(words) if w.endswith(".py"))
            commands.append((words[at], words[at + 1:]))
    return commands


def command_id(command):
    return " ".join([command[0], *command[1]])[:80]


class Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


@pytest.fixture
def parse_only(monkeypatch):
    """argparse parses as usual, then raises Parsed(result) instead of returning to the script."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside = []

    def parse_args_only(self, args=None, namespace=None):
        inside.append(True)  # parse_args calls parse_known_args: let that one return
        try:
            result = parse_args(self, args, namespace)
        finally:
            inside.pop()
        raise Parsed(result)

    def parse_known_args_only(self, args=None, namespace=None):
        result = parse_known_args(self, args, namespace)
        if inside:
            return result
        raise Parsed(result)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args_only)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args_only)


def check_train_args(args):
    """What train.py checks before it touches data: the config files exist, every key is known and
    well typed, and lam is reachable with the micro-batches it is given."""
    import train
    namespace = dict(vars(train))
    try:
        configurator.configure(namespace, args)
    except SystemExit as e:  # --help
        assert e.code == 0
        return
    train.ar_micro_batches(namespace["lam"], namespace["gradient_accumulation_steps"])


def test_readme_has_commands_of_every_script():
    scripts = {script for script, _ in readme_commands()}
    assert scripts >= {"data.py", "train.py", "eval.py", "sample.py", "model.py", "gp_fit.py", "sweep.py",
                       "bench.py"}


@pytest.mark.parametrize("command", [pytest.param(c, id=command_id(c)) for c in readme_commands()])
def test_readme_command_parses(command, parse_only, monkeypatch, capsys):
    script, args = command
    monkeypatch.chdir(REPO)  # README's paths are relative to the checkout
    assert (REPO / script).is_file(), f"README runs {script}, which does not exist"
    if script == "train.py":
        return check_train_args(args)
    module = importlib.import_module(script[:-3])
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises((Parsed, SystemExit)) as e:
        module.main()
    if e.type is SystemExit:  # --help exits 0; a bad flag exits non-zero with the reason on stderr
        assert e.value.code == 0, f"{command_id(command)}: {e.value.code or capsys.readouterr().err}"
    elif script == "sweep.py":  # sweep.py passes the flags it does not know on to train.py
        parsed, rest = e.value.args[0]
        check_train_args(([parsed.config] if parsed.config else []) + rest)


def test_readme_stays_a_short_guide():
    assert len(README.splitlines()) < 300


def github_anchor(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links():
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        anchors = {github_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            ok = (anchor in anchors) if not path else (page.parent / path).exists()
            name = f"{page.relative_to(REPO).as_posix()} -> {target}"
            if name in {p.id for p in found}:
                continue
            found.append(pytest.param(name, ok, id=name))
    return found


@pytest.mark.parametrize("link, ok", links())
def test_links_resolve(link, ok):
    assert ok, f"{link}: no such file or heading"


QUICKSTART_TABLE = REPO / "tests" / "quickstart_losses.json"


def test_quickstart_losses_match_the_committed_table(shared_data, tmp_path):
    """README's quickstart (steps 1 and 2) for a few steps, against quickstart_losses.json. A change
    that moves these losses moves the quickstart's too: re-measure the full run, then update the
    table's `readme` figures and README in the same commit (this test checks README quotes them)."""
    import json
    import subprocess
    table = json.loads(QUICKSTART_TABLE.read_text())
    data_dir, out_dir = tmp_path / "data_shakespeare", tmp_path / "out_tiny"
    subprocess.run([sys.executable, "data.py", "--input", str(shared_data / "corpus/tinyshakespeare/input.txt"),
                    "--out_dir", str(data_dir), "--vocab_size", "2048", "--doc_split", "blank_line"],
                   cwd=REPO, check=True, capture_output=True)
    subprocess.run([sys.executable, "train.py", "config/tiny_cpu.py", f"--data_dir={data_dir}",
                    f"--out_dir={out_dir}", *table["few_steps"]["overrides"]],
                   cwd=REPO, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    measured = [[r["iter"], round(r["val_ar_loss"], 4), round(r["val_md_loss"], 4)] for r in rows]
    expected = table["few_steps"]["val_ar_md"]
    close = len(measured) == len(expected) and all(
        m[0] == e[0] and abs(m[1] - e[1]) <= 2e-3 and abs(m[2] - e[2]) <= 2e-3 for m, e in zip(measured, expected))
    assert close, f"measured {measured}, the table has {expected}: update {QUICKSTART_TABLE.name}"
    for figure in table["readme"].values():
        assert figure in README, f"README no longer quotes {figure!r} ({QUICKSTART_TABLE.name})"
