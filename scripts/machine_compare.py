"""The same grid cells made on two machines: how far their figures and the adversary's picks move.

Same seed, same code and params, another CPU: float sums in another order
(AVX-512 against AVX2, say) change every trained weight a little, and training
carries that into every figure. The run-to-run spread a verdict should be read
against therefore has a part that is not the seed's. For each (scheme, fraction,
seed) cell that both folders of ``seed<k>.json`` hold, this prints the
watermarked model, the clean threshold and Neural Cleanse's flag on each side,
then for each budget the adversary's pick on each side
(:func:`wmbench.robustness.choose`: the lowest proxy retention within the
budget on the held-out slice), its test points lost, true retention and whether
it removed the mark as the verdict counts it (below the threshold and within
the budget on the test set), and the same for the best attempt in hindsight
(:func:`wmbench.robustness.best_in_hindsight`: what the menu could do). Last, over every attempt both cells hold, the
median and largest absolute difference of each figure.

Only cells present in both folders count; a pick is compared, never made, with
the test set (as the verdict does).

    python -m scripts.machine_compare --a experiments/fashion_mnist/cells --b /tmp/avx2/cells \\
        --names "AVX-512" "AVX2"
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmbench.files import read_json
from wmbench.robustness import BUDGETS, Attempt, best_in_hindsight, choose

FIGURES = ("holdout_acc_drop", "proxy_wm_acc", "test_acc_drop", "wm_acc")


def read_cells(folder: Path) -> dict[tuple[str, float, int], dict[str, Any]]:
    """(scheme, adversary fraction, seed) -> the cell, for every ``seed<k>.json`` in ``folder``."""
    files = sorted(folder.glob("seed*.json"))
    if not files:
        raise FileNotFoundError(f"no seed<k>.json in {folder}: point --a and --b at grid cells folders")
    cells = {}
    for path in files:
        metrics = read_json(path)
        for scheme, by_fraction in metrics["cells"].items():
            for cell in by_fraction.values():
                cells[scheme, float(cell["adversary_fraction"]), int(metrics["seed"])] = cell
    return cells


def attempts(cell: dict[str, Any]) -> list[Attempt]:
    """The cell's removals as the verdict reads them (:func:`stages.verdict.gather`)."""
    from stages.verdict import gather

    return gather([{"seed": 0, "cells": {"cell": {"cell": cell}}}])[0][float(cell["adversary_fraction"])]


def outcome(attempt: Attempt | None, budget: float) -> str:
    """``attempt``'s label, test points lost and retention, and whether it removed the mark within ``budget``
    as the verdict counts it (below the threshold, test loss within the budget)."""
    if attempt is None:
        return "none fits"
    if not attempt.removed:
        verdict = "survives"
    elif attempt.test_acc_drop <= budget:
        verdict = "**removed**"
    else:
        verdict = "below threshold, past the budget: survives"
    return f"`{attempt.label}` {100 * attempt.test_acc_drop:.2f} pt, {100 * attempt.wm_acc:.0f} %: {verdict}"


def cell_table(key: tuple[str, float, int], a: dict[str, Any], b: dict[str, Any], names: Sequence[str]) -> str:
    """One cell on both machines: the watermarked model, the threshold, the flag, and each budget's pick."""
    scheme, fraction, seed = key
    lines = [f"### {scheme}, {100 * fraction:g} %, seed {seed}", "", f"| | {names[0]} | {names[1]} |", "|---|---|---|"]
    lines.append(f"| watermarked test acc | {100 * a['watermarked']['test_acc']:.2f} | "
                 f"{100 * b['watermarked']['test_acc']:.2f} |")
    lines.append(f"| threshold | {100 * a['threshold']:.0f} % | {100 * b['threshold']:.0f} % |")
    lines.append(f"| Neural Cleanse flags the target | {a['target_detected']} | {b['target_detected']} |")
    for budget in BUDGETS:
        lines.append(f"| pick within {100 * budget:g} pt | {outcome(choose(attempts(a), budget), budget)} | "
                     f"{outcome(choose(attempts(b), budget), budget)} |")
    for budget in BUDGETS:
        lines.append(f"| in hindsight within {100 * budget:g} pt | "
                     f"{outcome(best_in_hindsight(attempts(a), budget), budget)} | "
                     f"{outcome(best_in_hindsight(attempts(b), budget), budget)} |")
    return "\n".join(lines)


def differences(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Median and largest absolute difference (points) of each figure over the attempts both sides hold."""
    lines = ["| figure | attempts | median difference (points) | largest |", "|---|---|---|---|"]
    for figure in FIGURES:
        gaps = [100 * abs(a["attempts"][m][figure] - b["attempts"][m][figure])
                for a, b in pairs for m in sorted(set(a["attempts"]) & set(b["attempts"]))]
        if gaps:
            lines.append(f"| `{figure}` | {len(gaps)} | {statistics.median(gaps):.2f} | {max(gaps):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="one machine's cells folder (seed<k>.json)")
    parser.add_argument("--b", type=Path, required=True, help="the other machine's cells folder")
    parser.add_argument("--names", nargs=2, default=("a", "b"), metavar=("A", "B"), help="the two machines' names")
    args = parser.parse_args(argv)
    a, b = read_cells(args.a), read_cells(args.b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit(f"no (scheme, fraction, seed) cell is in both {args.a} and {args.b}")
    print("\n\n".join([cell_table(key, a[key], b[key], args.names) for key in shared]))
    print(f"\nEvery attempt both hold, {args.names[0]} against {args.names[1]}:\n")
    print(differences([(a[key], b[key]) for key in shared]))


if __name__ == "__main__":
    main()
