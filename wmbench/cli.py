"""``wmbench <command> [args]``: a stage outside DVC (``python -m stages.<stage>``), methods, results, presets."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Sequence

STAGES = ("check", "prepare", "embed", "vanilla", "reconstruct", "remove", "evaluate", "robustness", "plots", "export")
TOOLS = {
    "methods": "list the removal methods with their params.yaml keys and defaults",
    "results": "one row per DVC experiment: changed params, then test accuracy, retention and verdict per method",
    "preset": "the settings for a full-size data set, as -S arguments: dvc exp run $(wmbench preset fashion_mnist)",
}


def usage() -> str:
    """The top-level help: every stage with its one-line summary, then the other commands."""
    width = max(map(len, (*STAGES, *TOOLS)))
    lines = ["usage: wmbench <command> [--help | arguments]", "",
             "Stages (each also runs as `python -m stages.<stage>`; `wmbench <stage> --help` lists its flags):"]
    lines += [f"  {name:<{width}}  {_summary(name)}" for name in STAGES]
    lines += ["", "Other commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TOOLS.items()]
    lines += ["", "In a DVC project, `dvc repro` runs the stages in order; see README.md."]
    return "\n".join(lines)


def _summary(stage: str) -> str:
    """The first line of ``stages/<stage>.py``'s docstring, without the ``Stage `x`:`` prefix."""
    doc = importlib.import_module(f"stages.{stage}").__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(":", 1)[1].strip() if first.startswith("Stage") and ":" in first else first


def methods() -> str:
    """Every removal method, its one-line summary, and its ``removal.<method>.*`` keys with their defaults."""
    from wmbench.removal import REMOVALS

    lines = []
    for name in REMOVALS.names():
        cls = REMOVALS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name}: {doc[0] if doc else ''}")
        for field in dataclasses.fields(cls.Params):
            if field.name == "reconstruct":
                lines.append("    reconstruct         (top-level reconstruct.*: Neural Cleanse settings)")
                continue
            if field.name == "beta":
                lines.append("    beta                (top-level beta: `dvc exp run -S beta=...`)")
                continue
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            lines.append(f"    {field.name:<19} {default!r}  (removal.{name}.{field.name})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``stages.<name>.main`` or a tool; ``--help`` lists them; a typo is named with a suggestion."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command = args[0]
    if command == "methods":
        print(methods())
        return 0
    if command == "results":
        from wmbench.results import main as results_main

        return results_main(args[1:])
    if command == "preset":
        from wmbench.presets import main as preset_main

        return preset_main(args[1:])
    if command not in STAGES:
        close = difflib.get_close_matches(command, [*STAGES, *TOOLS], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"wmbench: unknown command {command!r}{hint} (commands: {', '.join([*STAGES, *TOOLS])}; "
              "`wmbench --help` says what each does)", file=sys.stderr)
        return 2
    from wmbench.stage import run_stage

    module = importlib.import_module(f"stages.{command}")
    return run_stage(module.main, args[1:])
