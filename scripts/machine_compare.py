"""The same grid cells made on two machines: how far their figures and the adversary's picks move.

Same seed, same code and params, another CPU: float sums in another order
(AVX-512 against AVX2, say) change every trained weight a little, and training
carries that into every figure. The run-to-run spread a verdict should be read
against therefore has a part that is not the seed's. For each (scheme, fraction,
seed) cell that both folders of ``seed<k>.json`` hold, this prints the
watermarked model, the clean threshold and Neural Cleanse's flag on each side,
then for each budget the adversary's pick on each side
(:func:`wmbench.robustness.verdicts`: the lowest proxy retention within the
budget on the held-out slice), its test points lost, true retention and whether
it removed the mark as the verdict counts it (at or below the threshold and within
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

from scripts import menu_cut_replay
from stages.verdict import cell_attempts
from wmbench.robustness import BUDGETS, Attempt, Verdict, verdicts

FIGURES = ("holdout_acc_drop", "proxy_wm_acc", "test_acc_drop", "wm_acc")


def read_cells(folder: Path) -> dict[tuple[str, float, int], dict[str, Any]]:
    """(scheme, adversary fraction, seed) -> the cell, for every ``seed<k>.json`` in ``folder``."""
    cells = {}
    for metrics in menu_cut_replay.read_cells(folder, "proxy_wm_acc"):
        for scheme, by_fraction in metrics["cells"].items():
            for cell in by_fraction.values():
                cells[scheme, float(cell["adversary_fraction"]), int(metrics["seed"])] = cell
    return cells


def judged(scheme: str, seed: int, cell: dict[str, Any]) -> list[Verdict]:
    """The verdict on one cell, a :class:`Verdict` per budget (its one pick and its one best in hindsight)."""
    return verdicts(cell_attempts(scheme, seed, cell), BUDGETS)


def outcome(attempt: Attempt | None, verdict: Verdict) -> str:
    """``attempt``'s label, test points lost and retention, and whether it removed the mark as ``verdict``
    counts it (:meth:`Verdict.succeeded`: below the threshold, test loss within the budget)."""
    if attempt is None:
        return "none fits"
    if verdict.succeeded(attempt):
        result = "**removed**"
    elif attempt.removed:
        result = "below threshold, past the budget: survives"
    else:
        result = "survives"
    return f"`{attempt.label}` {100 * attempt.test_acc_drop:.2f} pt, {100 * attempt.wm_acc:.0f} %: {result}"


def cell_table(key: tuple[str, float, int], a: dict[str, Any], b: dict[str, Any], names: Sequence[str]) -> str:
    """One cell on both machines: the watermarked model, the threshold, the flag, and each budget's pick."""
    scheme, fraction, seed = key
    lines = [f"### {scheme}, {100 * fraction:g} %, seed {seed}", "", f"| | {names[0]} | {names[1]} |", "|---|---|---|"]
    lines.append(f"| watermarked test acc | {100 * a['watermarked']['test_acc']:.2f} | "
                 f"{100 * b['watermarked']['test_acc']:.2f} |")
    lines.append(f"| threshold | {100 * a['threshold']:.0f} % | {100 * b['threshold']:.0f} % |")
    lines.append(f"| Neural Cleanse flags the target | {a['target_detected']} | {b['target_detected']} |")
    sides = list(zip(judged(scheme, seed, a), judged(scheme, seed, b), strict=True))
    for row, attempt_of in (("pick", lambda v: v.picks[0]), ("in hindsight", lambda v: v.hindsight[0])):
        lines += [f"| {row} within {100 * va.budget:g} pt | {outcome(attempt_of(va), va)} | "
                  f"{outcome(attempt_of(vb), vb)} |" for va, vb in sides]
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
