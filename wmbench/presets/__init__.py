"""Presets: the params.yaml settings that suit one full-size data set and model, as ``dvc exp run -S`` arguments.

A preset is ``<name>.yaml`` in this folder: a flat mapping of dotted
params.yaml keys to plain values (``data.name: fashion_mnist``). Its first
line is a comment with the one-line description ``wmbench preset`` lists;
the comments under it give the source of every value (paper, section,
table). ``wmbench preset NAME`` prints ``-S key=value`` for each key on one
line, for ``dvc exp run $(wmbench preset NAME)``; DVC applies ``-S`` in
order, so any ``-S`` after them wins. Every preset sets the same keys, so one
applied after another (``dvc exp run`` writes them into the workspace's
params.yaml) keeps nothing of the first.

The files ship inside the package (``[tool.setuptools.package-data]`` in
pyproject.toml), so they are found from any folder, in an editable install
and in a normal one, without a repository checkout.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import yaml

Value = bool | int | float | str

FOLDER: Traversable = files(__name__)  # the preset files, wherever the package is installed
SUFFIX = ".yaml"
KEY = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")  # a dotted params.yaml key
# A string DVC's -S (Hydra's override grammar) reads back unquoted, and a shell's $(...) keeps as one word.
PLAIN = re.compile(r"[A-Za-z0-9_./:-]+")


class PresetError(ValueError):
    """An unknown preset name, or a preset file that is not a flat mapping of keys to plain values."""


@dataclass(frozen=True)
class Preset:
    """One preset: its name, its one-line description, and the dotted params.yaml keys it sets, in file order."""

    name: str
    description: str
    settings: dict[str, Value]

    def arguments(self) -> list[str]:
        """``["-S", "key=value", ...]``: what ``dvc exp run`` takes to apply this preset."""
        return [word for key, value in self.settings.items() for word in ("-S", f"{key}={format_value(value)}")]


def preset_names() -> list[str]:
    """Every preset shipped with the package, sorted."""
    return sorted(item.name.removesuffix(SUFFIX) for item in FOLDER.iterdir()
                  if item.is_file() and item.name.endswith(SUFFIX))


def preset_text(name: str) -> str:
    """The preset file ``name``, comments included; :class:`PresetError` naming the presets when unknown."""
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PresetError(f"unknown preset {name!r}{hint} (presets: {', '.join(names)}; "
                          "`wmbench preset` describes each)")
    return FOLDER.joinpath(name + SUFFIX).read_text(encoding="utf-8")


def load_preset(name: str) -> Preset:
    """The preset ``name``, checked: :class:`PresetError` if unknown or malformed."""
    return parse_preset(name, preset_text(name))


def parse_preset(name: str, text: str) -> Preset:
    """Read a preset file's text: the first-line comment is the description, the mapping the settings.

    Keys must be dotted params.yaml keys; values a bool, a number, or a string
    of letters, digits and ``_ . / : -`` (one shell word that ``-S`` reads back
    as the same string). Whether each key exists in params.yaml, and whether
    the values pass its validation, is for the caller (``dvc exp run``, the
    ``check`` stage, and ``tests/test_presets.py``).
    """
    first = text.splitlines()[0] if text.strip() else ""
    description = first.removeprefix("#").strip()
    if not first.startswith("#") or not description:
        raise PresetError(f"preset {name}: the first line must be a comment describing it (# ...)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PresetError(f"preset {name} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict) or not raw:
        raise PresetError(f"preset {name} must map dotted params.yaml keys to values, e.g. data.name: mnist")
    settings: dict[str, Value] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise PresetError(f"preset {name}: {key!r} is not a dotted params.yaml key such as train.epochs")
        format_value(value, where=f"preset {name}: {key}")
        settings[key] = value
    return Preset(name, description, settings)


def format_value(value: object, where: str = "value") -> str:
    """``value`` as ``dvc exp run -S`` reads it back to the same Python value: ``true``, ``0.0005``, ``lenet``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    raise PresetError(f"{where}={value!r}: a preset value must be a bool, a number, or a plain string "
                      "(letters, digits, _ . / : -) that does not read as a number or bool")


def listing() -> str:
    """Every preset with its one-line description, then how to use one."""
    presets = [load_preset(name) for name in preset_names()]
    width = max(len(p.name) for p in presets)
    lines = ["Presets: the params.yaml settings that suit a full-size data set and model.", ""]
    lines += [f"  {p.name:<{width}}  {p.description}" for p in presets]
    lines += ["",
              "Use one: dvc exp run $(wmbench preset NAME) [-S key=value ...]   (a -S after the preset's wins)",
              f"Each value's source: wmbench preset NAME --show   (the files: {FOLDER})"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``wmbench preset [NAME [--show]]``: list the presets, print one's ``-S`` arguments, or show its file."""
    parser = argparse.ArgumentParser(
        prog="wmbench preset",
        description="List the presets, or print one's `-S key=value` arguments for `dvc exp run` on one line.",
        epilog="e.g. dvc exp run $(wmbench preset fashion_mnist) -S watermark.scheme=noise",
    )
    parser.add_argument("name", nargs="?", help="a preset (without NAME: list them with a line each)")
    parser.add_argument("--show", action="store_true",
                        help="print the preset file, with the source of each value, instead of its arguments")
    args = parser.parse_args(argv)
    try:
        if args.name is None:
            print(listing())
        elif args.show:
            load_preset(args.name)
            print(preset_text(args.name), end="")
        else:
            print(" ".join(load_preset(args.name).arguments()))
    except PresetError as err:
        print(f"wmbench preset: {err}", file=sys.stderr)
        return 2
    return 0
