"""The robustness verdict across seeds and settings, written out: markdown, metrics and frontier plots.

Shared by the full-size experiments' ``verdict`` stage and ``scripts/sweep.py``
(the same attempts, gathered from stage outputs or from ``dvc exp show``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wmbench.plotting import plot_robustness_frontier
from wmbench.robustness import BUDGETS, Attempt, frontier, picks, report, to_metrics, verdicts


def fraction_key(fraction: float) -> str:
    """``fraction_0_1`` for 0.1: metric keys carry no dots (DVC flattens nested keys with them)."""
    return "fraction_" + f"{fraction:g}".replace(".", "_")


def judge_fractions(attempts: Mapping[float, Sequence[Attempt]], plots: Path, prefix: str = "frontier_",
                    budgets: Sequence[float] = BUDGETS) -> tuple[str, dict[str, Any]]:
    """Per adversary fraction, the verdict table (markdown) and metrics; a frontier plot per watermark and
    fraction in ``plots`` (``<prefix><scheme>_<fraction>.png``)."""
    parts, metrics = [], {}
    for fraction, found in attempts.items():
        judged = verdicts(found, budgets)
        parts.append(f"## Adversary fraction {fraction:g}\n\n{report(judged)}")
        metrics[fraction_key(fraction)] = to_metrics(judged)
        for scheme in sorted({a.scheme for a in found}):
            mine = [a for a in found if a.scheme == scheme]
            seeds = len({a.seed for a in mine})
            plot_robustness_frontier(
                frontier(mine), picks([v for v in judged if v.scheme == scheme]),
                max(a.threshold for a in mine), plots / f"{prefix}{scheme}_{fraction:g}.png",
                f"Removing the {scheme} watermark ({fraction:g} of the data), means over {seeds} seed(s)",
                "ownership threshold" if seeds == 1 else "highest seed's ownership threshold")
    return "\n\n".join(parts), metrics


