"""``wmbench <stage> [args]``: run a stage outside DVC, same as ``python -m stages.<stage>``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

STAGES = ("check", "prepare", "embed", "vanilla", "reconstruct", "remove", "evaluate", "plots", "export")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``stages.<name>.main``; ``--help`` lists the stages."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in STAGES:
        print(f"usage: wmbench {{{','.join(STAGES)}}} [--help | stage arguments]")
        return 0 if not args or args[0] in ("-h", "--help") else 2
    from wmbench.stage import run_stage

    module = importlib.import_module(f"stages.{args[0]}")
    return run_stage(module.main, args[1:])
