"""configurator.py: config files, include(), --key=value parsing and the one-line errors."""
import pytest

from configurator import configure, help_text, settings


def namespace():
    import math  # modules and functions in the namespace are not settings
    return {"lam": 0.5, "max_iters": 100, "device": "auto", "compile": None, "resume": False,
            "out_dir": "out", "math": math, "_private": 1}


def test_settings_are_the_plain_values():
    assert settings(namespace()) == {"lam", "max_iters", "device", "compile", "resume", "out_dir"}


def test_overrides_are_parsed_as_literals_and_bare_words_are_strings():
    ns = namespace()
    changed = configure(ns, ["--lam=0.25", "--max_iters=7", "--device=cuda:1", "--resume=True", "--compile=False",
                             "--out_dir='my out'"])
    assert (ns["lam"], ns["max_iters"], ns["device"], ns["resume"], ns["compile"], ns["out_dir"]) == \
           (0.25, 7, "cuda:1", True, False, "my out")
    assert changed == ["lam", "max_iters", "device", "resume", "compile", "out_dir"]


def test_int_is_accepted_for_a_float_and_becomes_one():
    ns = namespace()
    configure(ns, ["--lam=1"])
    assert ns["lam"] == 1.0 and type(ns["lam"]) is float


def test_literal_eval_never_runs_code(tmp_path):
    ns = namespace()
    marker = tmp_path / "ran"
    configure(ns, [f"--out_dir=__import__('pathlib').Path('{marker}').touch()"])
    assert not marker.exists() and ns["out_dir"].startswith("__import__")  # kept as a plain string


def test_config_file_and_include_and_later_overrides_win(tmp_path):
    (tmp_path / "recipe.py").write_text("max_iters = 500\nlam = 0.75\n")
    (tmp_path / "run.py").write_text('include("recipe.py")\nimport os\nlam = 0.25\n')
    ns = namespace()
    configure(ns, [str(tmp_path / "run.py"), "--max_iters=9"])
    assert ns["max_iters"] == 9 and ns["lam"] == 0.25
    assert "include" not in ns  # the helper does not leak into the settings


@pytest.mark.parametrize("argv, message", [
    (["--max_iter=5"], "unknown config key 'max_iter'; did you mean 'max_iters'?"),
    (["--lam=high"], "config key 'lam' expects float (default 0.5), got str 'high'"),
    (["--max_iters=1.5"], "config key 'max_iters' expects int"),
    (["--lam"], "override '--lam' has no value; write --lam=VALUE"),
    (["config/nowhere.py"], "config file config/nowhere.py does not exist"),
    # numbers that are not finite, named by key
    (["--lam=1e999"], "config key 'lam' is inf; it must be a finite number"),
    (["--lam=-1e999"], "config key 'lam' is -inf; it must be a finite number"),
    (["--lam=" + "9" * 400], "config key 'lam' is inf; it must be a finite number"),  # an int too big for a float
    (["--compile=1e999"], "config key 'compile' is inf"),  # a setting whose default is None
])
def test_bad_overrides_name_the_problem(argv, message):
    with pytest.raises(ValueError) as e:
        configure(namespace(), argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_file_with_an_unknown_key_fails(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("learning_rat = 0.1\n")
    with pytest.raises(ValueError, match="unknown config key 'learning_rat'"):
        configure(namespace(), [str(path)])


def test_config_file_with_a_wrongly_typed_value_fails(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("max_iters = '100'\n")
    with pytest.raises(ValueError, match="'max_iters' expects int"):
        configure(namespace(), [str(path)])


def test_missing_include_fails(tmp_path):
    path = tmp_path / "run.py"
    path.write_text('include("absent.py")\n')
    with pytest.raises(ValueError, match="absent.py does not exist"):
        configure(namespace(), [str(path)])


def test_every_shipped_config_applies_to_train_py():
    import glob
    import train
    from conftest import REPO
    for path in sorted(glob.glob(str(REPO / "config" / "*.py"))):
        ns = {k: getattr(train, k) for k in dir(train)}
        configure(ns, [path])  # raises on unknown keys or wrong types


def test_help_lists_the_settings_in_script_order_with_comments_and_sections(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text('import math\n# -----\n# Settings\n# I/O\nout_dir = "out"  # where it goes\nresume = False\n'
                      '\n# schedule\nmax_iters = 100    # steps\nlam = 0.5\nPEAK = {"x": 1}  # not a setting\n'
                      'device = "auto"\n')
    ns = dict(namespace(), __file__=str(script))
    text = help_text(ns)
    assert text.splitlines()[0] == "usage: python script.py [CONFIG_FILE ...] [--key=value ...]"
    body = text.split("settings (defaults):\n")[1].splitlines()
    assert body == ["  I/O", "    out_dir = 'out'  where it goes", "    resume = False",
                    "  schedule", "    max_iters = 100  steps", "    lam = 0.5", "    device = 'auto'",
                    "    compile = None"]  # a setting the script's lines do not show comes last
    with pytest.raises(SystemExit) as e:
        configure(ns, ["--lam=0.25", "-h", "--unknown=1"])  # --help wins over what follows it
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "    lam = 0.25" in out and "(with the arguments before --help applied)" in out


@pytest.mark.parametrize("text, line, message", [
    ("lam = 0.5\nmax_iters = 10 *\n", 2, "syntax error: invalid syntax"),
    ("lam = 0.5\n\nmax_iters = steps * 2\n", 3, "NameError: name 'steps' is not defined"),
    ("max_iters = 1 // 0\n", 1, "ZeroDivisionError: integer division or modulo by zero"),
])
def test_an_error_inside_a_config_file_names_its_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        configure(namespace(), [str(path)])
    assert str(e.value) == f"config file {path}:{line}: {message}"


def test_an_error_in_an_included_file_names_the_included_file(tmp_path):
    (tmp_path / "base.py").write_text("lam = 0.25\nmax_iters = undefined\n")
    (tmp_path / "run.py").write_text("# a recipe\ninclude('base.py')\n")
    with pytest.raises(ValueError) as e:
        configure(namespace(), [str(tmp_path / "run.py")])
    assert str(e.value) == f"config file {tmp_path / 'base.py'}:2: NameError: name 'undefined' is not defined"
    ns = namespace()
    (tmp_path / "run.py").write_text("\ninclude('absent.py')\n")
    with pytest.raises(ValueError) as e:
        configure(ns, [str(tmp_path / "run.py")])
    assert str(e.value) == f"config file {tmp_path / 'run.py'}:2: included config file {tmp_path / 'absent.py'} " \
                           f"does not exist"
    assert "include" not in ns  # the helper does not leak into the settings, even after an error


def test_a_config_file_that_is_not_utf8_text_fails_in_one_line(tmp_path):
    path = tmp_path / "binary.py"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"config file {path} cannot be read .*; a config file is Python source"):
        configure(namespace(), [str(path)])


def test_a_config_file_cannot_set_a_non_finite_number(tmp_path):
    path = tmp_path / "nan.py"
    path.write_text("lam = float('nan')\n")
    with pytest.raises(ValueError, match="^config key 'lam' is nan; it must be a finite number$"):
        configure(namespace(), [str(path)])


@pytest.mark.parametrize("text, line", [
    ("import sys\nlam = 0.25\nsys.exit(0)\n", 3),
    ("raise SystemExit\n", 1),
    ("include('exits.py')\n", 1),  # in an included file: that file and its line
])
def test_a_config_file_that_exits_is_an_error_that_names_the_file(tmp_path, text, line):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit()\n")
    path = tmp_path / "run.py"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        configure(namespace(), [str(path)])
    where = f"{tmp_path / 'exits.py'}:2" if "include" in text else f"{path}:{line}"
    assert str(e.value).startswith(f"config file {where}: the file exits (sys.exit or SystemExit)")


def test_a_config_file_that_deletes_a_setting_fails_in_one_line(tmp_path):
    path = tmp_path / "del.py"
    path.write_text("del lam\n")
    with pytest.raises(ValueError) as e:
        configure(namespace(), [str(path)])
    assert str(e.value) == (f"config file {path} deletes the setting 'lam'; a config file may only assign "
                            f"settings (the default is 0.5)")
