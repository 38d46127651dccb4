"""
Small command-line helpers shared by the scripts: progress lines, checks of output paths, argument
parsing whose errors are one line, and atomic writes.

A tiny progress line for long loops: count, rate and ETA, printed to stderr at most every
`every` seconds (and once at the end). No dependency on tqdm, so it works everywhere,
including in CI logs where a carriage-return bar would be noise.

    p = Progress(total=len(items), desc="encode", unit="docs")
    for item in items:
        ...
        p.update(1)
    p.close()
"""
import argparse
import os
import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """suffix: a function whose text ends each line, e.g. a RunProgress's line for the whole run."""

    def __init__(self, total=None, desc="", unit="it", every=2.0, stream=None, suffix=None):
        self.total, self.desc, self.unit, self.every, self.suffix = total, desc, unit, every, suffix
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = self.last_print = time.time()

    def line(self):
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.count / elapsed
        text = f"{self.desc}: {self.count:,}" + (f"/{self.total:,}" if self.total else "")
        text += f" {self.unit} ({rate:,.1f} {self.unit}/s, elapsed {format_seconds(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {format_seconds((self.total - self.count) / rate)}"
        return text + ")" + (f"; {self.suffix()}" if self.suffix else "")

    def update(self, n=1):
        self.count += n
        now = time.time()
        if now - self.last_print >= self.every:
            self.last_print = now
            print(self.line(), file=self.stream, flush=True)

    def close(self):
        print(self.line(), file=self.stream, flush=True)


class RunProgress:
    """A whole run's share of work done, elapsed time and ETA, over parts of known size (eval.py: its
    (task, mode, k) passes, each sized by the row tokens it runs), each counted as it goes."""

    def __init__(self, work):
        self.work, self.done = work, {}
        self.start = time.time()

    def advance(self, key, fraction):
        self.done[key] = fraction * self.work[key]

    def line(self):
        total = max(sum(self.work.values()), 1.0)
        done, elapsed = sum(self.done.values()), time.time() - self.start
        text = f"whole run {100 * done / total:.0f}% of the work, elapsed {format_seconds(elapsed)}"
        return text + (f", ETA {format_seconds(elapsed * (total - done) / done)}" if 0 < done < total else "")


def check_output_file(flag, path, example):
    """One line, before any work, for an output file path that the work could not be written to."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give the path of a file in it, "
                         f"e.g. {os.path.join(path, example)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist or is not writable; create it first")


def same_file(a, b):
    """Whether two paths name one file, through symlinks, '..' and hard links; a path that does not
    exist yet is compared by its resolved name."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_distinct_paths(outputs, inputs):
    """One line, before any work, for an output that would overwrite an input or another output.
    outputs and inputs are lists of (flag, path); a path of None is skipped."""
    outputs = [(flag, path) for flag, path in outputs if path]
    for i, (flag, path) in enumerate(outputs):
        for in_flag, in_path in inputs:
            if in_path and same_file(path, in_path):
                raise ValueError(f"{flag} {path} is the {in_flag} input: writing it would destroy that file; "
                                 f"give {flag} another path")
        for other_flag, other_path in outputs[i + 1:]:
            if same_file(path, other_path):
                raise ValueError(f"{flag} and {other_flag} are both {path}: one would overwrite the other; "
                                 f"give each its own path")


class ArgumentParser(argparse.ArgumentParser):
    """A bad command line is a ValueError, which the script prints as its other one-line errors (not
    usage text plus a message)."""

    def error(self, message):
        raise ValueError(message)


def arg_type(convert, problem):
    """An argparse type: convert(text), or `problem` (said of the text) when it raises or gives None."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return value
    return parse


def write_atomically(flag, path, write):
    """write(f) into a temporary file beside `path`, then rename it onto `path`, so that a file that
    exists is whole. A failed write (a full disk) leaves no temporary file behind and is one OSError
    that names the flag and the path."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"cannot write {flag} {path} ({e.strerror}); free some space or give another {flag}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
