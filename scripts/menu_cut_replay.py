"""Replay the verdict with one setting fewer on the grid's menu: what each setting buys, and what it costs.

Issue 14 part 1 sizes ``experiments/fashion_mnist`` to about 90 minutes on 2
cores, and every setting on its menu (a method, or a variant
``method@key=value``) is time. Dropping one changes the verdict only through
the adversary's picks (:func:`wmbench.robustness.verdicts`), so the committed
cells answer, without training, what the verdict would have been without it:
for each setting, the seeds removed per watermark and budget that change, and
the minutes per seed it took (the grid's settings files, every fraction).
``--drop LABEL`` (repeated) replays a cut of several entries together: the
counts the next run should reproduce (the eleventh run did, to the seed count).

The proxy is the one the cells were judged with (``proxy_wm_acc``) unless
``--proxy`` names another figure the cells hold (``region_wm_acc``,
``trigger_wm_acc``, ``wide_wm_acc``). True retention and test accuracy are read
here only to count removals after the fact, as the verdict does.

    python -m scripts.menu_cut_replay --cells experiments/fashion_mnist/cells \\
        --settings experiments/fashion_mnist/settings
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from wmbench.files import read_json
from wmbench.robustness import Attempt, verdicts

Counts = dict[tuple[float, str, float], int]


def read_cells(folder: Path, proxy: str) -> list[dict[str, Any]]:
    """Every ``seed<k>.json`` in ``folder``, each attempt's ``proxy_wm_acc`` replaced by its ``proxy`` figure."""
    files = sorted(folder.glob("seed*.json"))
    if not files:
        raise FileNotFoundError(f"no seed<k>.json in {folder}: point --cells at a grid's cells folder")
    seeds = []
    for path in files:
        metrics = read_json(path)
        for cells in metrics["cells"].values():
            for cell in cells.values():
                for model, figures in cell["attempts"].items():
                    if proxy not in figures:
                        held = sorted(k for k in figures if k.endswith("wm_acc"))
                        raise KeyError(f"{path}: attempt {model} has no {proxy!r}; the run that made these cells "
                                       f"did not write it (choose --proxy among {held})")
                    figures["proxy_wm_acc"] = figures[proxy]
        seeds.append(metrics)
    return seeds


def removed_counts(attempts: Mapping[float, Sequence[Attempt]], without: Collection[str] = ()) -> Counts:
    """Seeds removed per (fraction, watermark, budget), the attempts labelled any of ``without`` left off the menu."""
    counts: Counts = {}
    for fraction, found in attempts.items():
        kept = [a for a in found if a.label not in without]
        for verdict in verdicts(kept):
            counts[fraction, verdict.scheme, verdict.budget] = verdict.removed_seeds
    return counts


def menu(attempts: Mapping[float, Sequence[Attempt]]) -> set[str]:
    """Every label on any cell's menu."""
    return {a.label for found in attempts.values() for a in found}


def count_lines(counts: Counts) -> list[str]:
    """``  content at 10 %, within 0.5 pt: 1``, one line per (fraction, watermark, budget)."""
    return [f"  {scheme} at {100 * fraction:g} %, within {100 * budget:g} pt: {count}"
            for (fraction, scheme, budget), count in sorted(counts.items())]


def minutes_per_seed(folder: Path | None) -> dict[str, float]:
    """Minutes each menu entry took per seed, summed over a seed's cells (the grid's ``remove <cell> <label>``)."""
    if folder is None:
        return {}
    files = sorted(folder.glob("seed*.json"))
    total: dict[str, float] = defaultdict(float)
    for path in files:
        for piece, seconds in read_json(path).get("seconds", {}).items():
            match = re.fullmatch(r"remove \S+ (\S+)", piece)
            if match:
                total[match.group(1)] += seconds / 60
    return {label: minutes / len(files) for label, minutes in total.items()}


def changes(full: Counts, cut: Counts) -> str:
    """``content 10 % 0.5 pt: 0 -> 1`` for every count that differs, or ``none``."""
    moved = []
    for (fraction, scheme, budget), before in sorted(full.items()):
        after = cut.get((fraction, scheme, budget), 0)
        if after != before:
            moved.append(f"{scheme} {100 * fraction:g} % {100 * budget:g} pt: {before} -> {after}")
    return "; ".join(moved) or "none"


def table(attempts: Mapping[float, Sequence[Attempt]], minutes: Mapping[str, float]) -> str:
    """Markdown: per menu entry, its minutes per seed and the removed counts that change without it."""
    full = removed_counts(attempts)
    labels = sorted(menu(attempts), key=lambda x: (-minutes.get(x, 0), x))
    lines = ["| left off the menu | min per seed | seeds removed that change (full menu -> without) |", "|---|---|---|"]
    for label in labels:
        spent = f"{minutes[label]:.1f}" if label in minutes else "-"
        lines.append(f"| `{label}` | {spent} | {changes(full, removed_counts(attempts, {label}))} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from stages.verdict import gather

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=Path, required=True, help="a grid's cells folder (seed<k>.json)")
    parser.add_argument("--settings", type=Path, help="the grid's settings folder, for the minutes per entry")
    parser.add_argument("--proxy", default="proxy_wm_acc", help="the figure the adversary reads retention by")
    parser.add_argument("--drop", action="append", default=[], metavar="LABEL",
                        help="a menu entry (method or method@setting) to leave off together with the other --drop "
                             "entries: prints that cut's counts and changes; repeat for several")
    args = parser.parse_args(argv)

    attempts, _ = gather(read_cells(args.cells, args.proxy))
    labels = menu(attempts)
    unknown = sorted(set(args.drop) - labels)
    if unknown:
        raise SystemExit(f"--drop {unknown[0]!r} is on no cell's menu; the cells hold: {', '.join(sorted(labels))}")
    full = removed_counts(attempts)
    print("\n".join([f"Seeds removed with the full menu ({args.proxy}):", *count_lines(full), ""]))
    if args.drop:
        cut = removed_counts(attempts, set(args.drop))
        lines = [f"Without {', '.join(args.drop)}:", *count_lines(cut), f"  changes: {changes(full, cut)}", ""]
        print("\n".join(lines))
    print(table(attempts, minutes_per_seed(args.settings)))


if __name__ == "__main__":
    main()
