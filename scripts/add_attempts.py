"""Add a later run's attempts to committed grid cells, when both runs trained the same models.

The out-of-sample experiment (``results/fashion_mnist_oos``) took 56 minutes; a setting added to
the grid's menu since is checked there by re-running the grid on the same seeds with a menu of
only that setting (and one cheap method as a witness), then adding its attempts to the committed
cells. That is sound only when the re-run trained the very same models: same seed, same code,
same machine. So every shared figure must agree to the last digit (the watermarked model, the
threshold, Neural Cleanse's flags, and every attempt both runs made, ``time_s`` aside) or nothing
is written.

    python -m scripts.add_attempts --into results/fashion_mnist_oos/cells --from /tmp/mini/cells \\
        --seeds 4 5 6
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wmbench.files import read_json, write_json_atomic

#: Per-run figures, not properties of a model: they may differ between two runs of the same models.
RUN_KEYS = frozenset({"time_s"})


def _without_run_keys(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _without_run_keys(v) for k, v in obj.items() if k not in RUN_KEYS}
    return obj


def mismatches(into: Mapping[str, Any], new: Mapping[str, Any], where: str) -> list[str]:
    """What the two runs' cells disagree on: cells missing from ``into``, cell fields other than
    ``attempts``, and the attempts both made (``time_s`` aside)."""
    problems = []
    if into.get("seed") != new.get("seed"):
        problems.append(f"{where}: seed {into.get('seed')} against {new.get('seed')}")
    for scheme, fractions in new["cells"].items():
        for fraction, cell in fractions.items():
            name = f"{where} {scheme} {fraction}"
            old = into["cells"].get(scheme, {}).get(fraction)
            if old is None:
                problems.append(f"{name}: not in the committed cells")
                continue
            for key in sorted(set(old) | set(cell)):
                if key != "attempts" and _without_run_keys(old.get(key)) != _without_run_keys(cell.get(key)):
                    problems.append(f"{name}: {key} {old.get(key)!r} against {cell.get(key)!r}")
            for attempt in sorted(set(old["attempts"]) & set(cell["attempts"])):
                if _without_run_keys(old["attempts"][attempt]) != _without_run_keys(cell["attempts"][attempt]):
                    problems.append(f"{name}: attempt {attempt} differs")
    return problems


def merged(into: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``into`` with the attempts of ``new`` that it lacks (shared ones keep ``into``'s figures), and how many
    were added."""
    out: dict[str, Any] = {"seed": into["seed"], "cells": {}}
    added = 0
    for scheme, fractions in into["cells"].items():
        for fraction, cell in fractions.items():
            extra = new["cells"].get(scheme, {}).get(fraction, {}).get("attempts", {})
            fresh = {k: v for k, v in extra.items() if k not in cell["attempts"]}
            added += len(fresh)
            out["cells"].setdefault(scheme, {})[fraction] = {**cell, "attempts": {**cell["attempts"], **fresh}}
    return out, added


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, required=True, help="committed cells folder (seed<k>.json), rewritten")
    parser.add_argument("--from", dest="source", type=Path, required=True, help="the later run's cells folder")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    args = parser.parse_args(argv)
    pairs = [(args.into / f"seed{s}.json", args.source / f"seed{s}.json") for s in args.seeds]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise SystemExit(f"missing cells: {', '.join(missing)}; run the grid on seeds {args.seeds} first")
    runs = [(old, read_json(old), read_json(new)) for old, new in pairs]
    problems = [p for old, committed, later in runs for p in mismatches(committed, later, old.name)]
    if problems:
        raise SystemExit("the two runs did not train the same models (other code or machine?); nothing written:\n  "
                         + "\n  ".join(problems))
    for old, committed, later in runs:
        cells, added = merged(committed, later)
        write_json_atomic(old, cells)
        print(f"{old}: {added} attempts added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
