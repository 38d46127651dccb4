import ast
import io
import os
from pathlib import Path

import pytest

import cli

REPO = Path(__file__).resolve().parents[1]

# Imports point one way, down this list: a module may import only modules of a lower layer.
LAYERS = [{"cli", "configurator", "muon"}, {"data"}, {"model"},
          {"train", "eval", "sample", "gp_fit"}, {"sweep"}, {"bench"}]


def project_imports(path, modules):
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            deps.add(node.module.split(".")[0])
    return deps & modules


def test_imports_point_down_the_layers_so_there_is_no_circle():
    modules = {p.stem for p in REPO.glob("*.py")}
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    assert modules == set(layer), f"place every top-level module in a layer: {sorted(modules ^ set(layer))}"
    # an import within one layer counts too: the scripts of a layer stay independent of each other
    not_down = [(m, d) for m in modules for d in project_imports(REPO / f"{m}.py", modules - {m})
                if layer[d] >= layer[m]]
    assert not_down == []


def test_progress_line_counts_rate_and_eta():
    stream = io.StringIO()
    p = cli.Progress(total=10, desc="encode", unit="docs", every=1e9, stream=stream)
    p.start -= 2.0  # two seconds have passed
    p.update(4)
    assert stream.getvalue() == ""  # not yet time for a line
    p.close()
    line = stream.getvalue().strip()
    assert line.startswith("encode: 4/10 docs (2.0 docs/s, elapsed 2s, ETA 3s)"), line


def test_format_seconds():
    assert [cli.format_seconds(s) for s in (0, 59, 61, 3600 + 62)] == ["0s", "59s", "1m01s", "1h01m02s"]


def test_check_output_file_refuses_a_folder_and_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        cli.check_output_file("--out", str(tmp_path), "e.json")
    with pytest.raises(ValueError, match="does not exist"):
        cli.check_output_file("--out", str(tmp_path / "no" / "e.json"), "e.json")
    cli.check_output_file("--out", str(tmp_path / "e.json"), "e.json")


def test_check_distinct_paths_refuses_an_output_that_is_an_input_or_the_other_output(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    os.symlink(ckpt, tmp_path / "link.pt")
    (tmp_path / "sub").mkdir()
    for out in (ckpt, tmp_path / "link.pt", tmp_path / "sub" / ".." / "ckpt.pt"):
        with pytest.raises(ValueError, match=r"--out .* is the --ckpt input"):
            cli.check_distinct_paths([("--out", str(out))], [("--ckpt", str(ckpt))])
    with pytest.raises(ValueError, match="--out and --dump are both"):
        cli.check_distinct_paths([("--out", str(tmp_path / "x")), ("--dump", str(tmp_path / "sub/../x"))], [])
    cli.check_distinct_paths([("--out", str(tmp_path / "e.json")), ("--dump", None)], [("--ckpt", str(ckpt))])
    assert ckpt.read_bytes() == b"weights"


def test_argument_errors_are_one_value_error_naming_the_text():
    parser = cli.ArgumentParser(prog="x", allow_abbrev=False)
    parser.add_argument("--n", type=cli.arg_type(lambda t: int(t) if int(t) > 0 else None, "is not a positive integer"))
    assert parser.parse_args(["--n", "3"]).n == 3
    for argv, expected in ((["--n", "0"], "'0' is not a positive integer"), (["--n", "x"], "'x' is not a positive"),
                           (["--m", "1"], "unrecognized arguments: --m 1")):
        with pytest.raises(ValueError, match=expected):
            parser.parse_args(argv)


def test_write_atomically_leaves_the_old_file_whole_and_no_temporary_on_a_failed_write(tmp_path):
    path = tmp_path / "e.json"
    cli.write_atomically("--out", str(path), lambda f: f.write("old"))
    assert path.read_text() == "old"

    def full_disk(f):
        f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write --out {path} .No space left on device.; free some space"):
        cli.write_atomically("--out", str(path), full_disk)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["e.json"]
