"""
nanoGPT's configuration mechanism, with its sharp edges filed off (docs/train.md, "Settings"):
configure(globals(), argv) runs each config file as Python in train.py's globals and applies each
--key=value (ast.literal_eval, never eval); every mistake is one ValueError line.
"""
import ast
import difflib
import math
import os
import re
import sys
import traceback
import types

# Types a setting may have; a setting whose default is None accepts any of them.
SETTING_TYPES = (bool, int, float, str)


def settings(namespace):
    """The configurable names of a module's globals: plain values, not modules or functions."""
    return {k for k, v in namespace.items()
            if not k.startswith("_") and (v is None or isinstance(v, SETTING_TYPES))}


def unknown_key_error(key, known):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; see the settings at the top of train.py"
    return ValueError(f"unknown config key '{key}'{hint}")


def checked_value(key, value, default):
    """`value` if it has the type of `default` (an int may stand for a float) and is not inf or NaN."""
    if isinstance(default, float) and type(value) is int:
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
    elif default is not None and type(value) is not type(default):
        raise ValueError(f"config key '{key}' expects {type(default).__name__} (default {default!r}), "
                         f"got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key '{key}' is {value!r}; it must be a finite number")
    return value


def configure(namespace, argv):
    """Apply argv's config files and --key=value overrides to `namespace`; returns the keys set, in order."""
    known = settings(namespace)
    defaults = {k: namespace[k] for k in known}
    changed = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(namespace, changed))
            sys.exit(0)
        if not arg.startswith("--"):  # a config file
            if not os.path.isfile(arg):
                raise ValueError(f"config file {arg} does not exist; pass a path like config/tiny_cpu.py")
            before = set(namespace)
            scope = {"include": make_include(namespace, os.path.dirname(arg))}
            namespace.update(scope)
            try:
                run_config_file(arg, namespace)
            finally:
                for name in scope:
                    namespace.pop(name, None)
            for name in set(namespace) - before:  # names the file introduced
                if isinstance(namespace[name], (types.ModuleType, types.FunctionType, type)) or name.startswith("_"):
                    continue  # imports and helpers are fine
                raise unknown_key_error(name, known)
            for key in known:
                if key not in namespace:
                    raise ValueError(f"config file {arg} deletes the setting '{key}'; a config file may only "
                                     f"assign settings (the default is {defaults[key]!r})")
                namespace[key] = checked_value(key, namespace[key], defaults[key])
                if namespace[key] != defaults[key] and key not in changed:
                    changed.append(key)
        else:  # --key=value
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise ValueError(f"override '{arg}' has no value; write --{key}=VALUE")
            if key not in known:
                raise unknown_key_error(key, known)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare word is a string: --device=cuda
            namespace[key] = checked_value(key, value, defaults[key])
            if key not in changed:
                changed.append(key)
    return changed


def make_include(namespace, folder):
    """include("paper_470m.py") in a config file runs that file (beside it) in the same globals."""
    def include(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(f"included config file {path} does not exist")
        run_config_file(path, namespace)
    return include


def help_text(namespace, changed=()):
    """Usage, then every setting with its value and the comment on its line of the script, in the
    script's order, under its section comments (a comment line directly above a setting)."""
    script = namespace.get("__file__", "train.py")
    known = settings(namespace)
    rows, section = [], None  # (section, key, comment)
    if os.path.isfile(script):
        with open(script) as f:
            for line in f:
                m = re.match(r"(\w+)\s*=[^=].*?(?:#\s*(.*))?$", line.rstrip())
                if m and m[1] in known and m[1] not in {r[1] for r in rows}:
                    rows.append((section, m[1], m[2] or ""))
                section = line[1:].strip() if line.startswith("# ") and not line.startswith("# ---") else None
    listed = {r[1] for r in rows}
    rows += [(None, key, "") for key in sorted(known - listed)]  # declared without a line of their own
    name = os.path.basename(script)
    out = [f"usage: python {name} [CONFIG_FILE ...] [--key=value ...]",
           "",
           "CONFIG_FILE is Python that assigns these settings (e.g. config/tiny_cpu.py); --key=value sets one,",
           "the value read as a Python literal (a bare word is a string). Later arguments win.",
           "",
           "settings" + (" (with the arguments before --help applied)" if changed else " (defaults)") + ":"]
    width = min(44, max(len(f"{key} = {namespace[key]!r}") for _, key, _ in rows))
    for section, key, comment in rows:
        if section:
            out.append(f"  {section}")
        out.append(f"    {key + ' = ' + repr(namespace[key]):<{width}}  {comment}".rstrip())
    return "\n".join(out)


class ConfigFileError(ValueError):
    """An error inside a config file, already located at its file:line."""


def run_config_file(path, namespace):
    """Run a config file in `namespace`; any error in it becomes one line naming its file:line."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} cannot be read ({getattr(e, 'strerror', None) or e}); "
                         f"a config file is Python source in UTF-8") from None
    try:
        exec(compile(source, path, "exec"), namespace)
    except ConfigFileError:
        raise  # from an included file: it already names its file and line
    except SyntaxError as e:
        raise ConfigFileError(f"config file {e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # SystemExit too: sys.exit() in a config would end train.py silently
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path][-1]
        if isinstance(e, SystemExit):
            message = ("the file exits (sys.exit or SystemExit), so no run would start; "
                       "a config file only assigns settings")
        else:
            message = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise ConfigFileError(f"config file {path}:{line}: {message}") from None
