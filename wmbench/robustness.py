"""The robustness verdict: per watermark, the strongest removal an adversary can pick within an accuracy budget.

A model owner asks "can someone with part of my data remove my watermark while
losing at most N points of accuracy?". The answer is read from removal runs
(:class:`Attempt`: one method at one setting on one seed's model) in two steps
that keep the adversary's knowledge apart from the measurement:

1. **Choose** (:func:`choose`), per model, with the adversary's data only: the
   attempts whose accuracy drop on its held-out slice fits the budget, and of
   those the one with the lowest *proxy* retention (its stand-in for the true
   trigger set, e.g. the reconstructed trigger or erased copies). Test accuracy
   and the true retention are never looked at here. Baselines
   (:data:`BASELINES`: ``scratch``, a model trained on the adversary's data
   alone) are not removals and are never picked: they are the bar a removal
   must beat (DESIGN: "the bar a removed model must beat to be worth stealing").
2. **Measure** (:func:`verdicts`): the chosen attempts' test-accuracy drop and
   retention against the vanilla threshold, with the spread over seeds. A
   watermark is "removed within N points" only when every seed's pick is at
   or below its threshold and lost at most N points on the test set; one
   surviving seed (or a pick whose held-out estimate hid a larger loss) makes
   it "survives".

"At or below": Aiken et al. Sec. 7.1 argue that a laundered model that "falls
below the highest naturally occurring watermark classification rate" proves no
ownership; a model *at* that rate scores what some clean model scored, so it
proves none either, and with 100 verification images ties are common.

:func:`frontier` gives the measured accuracy-retention trade-off per method
(every setting, mean over seeds): what the best setting in hindsight reaches,
shown beside the verdict, never used to make it. :func:`best_in_hindsight` is
the same per seed and budget (the attempt of lowest true retention among those
that lost at most the budget on the test set): it says whether a watermark that
survives does so because no attempt removes it within the budget (the menu's
limit) or because the adversary's own figures could not find the one that does
(its judgement's limit). No adversary can choose so; the verdict never does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BUDGETS = (0.005, 0.01, 0.02)  # accuracy an owner tolerates losing: 0.5, 1 and 2 points
BASELINES = frozenset({"scratch"})  # methods reported beside the removals but never picked (Removal.baseline)
TOLERANCE = 1e-9  # accuracies are counts over n images: 0.8914 - 0.8864 is 0.0050000000000000044, not above 0.005


def fits(drop: float, budget: float) -> bool:
    """``drop`` is within ``budget``, up to float error: a loss of exactly 50 images in 10,000 fits 0.5 points."""
    return drop <= budget + TOLERANCE


@dataclass(frozen=True)
class Attempt:
    """One removal run. ``estimated_drop`` and ``proxy_wm_acc`` are the adversary's; the rest is measured after."""

    scheme: str
    method: str
    setting: str
    seed: int
    estimated_drop: float  # holdout_acc_watermarked - holdout_acc, on the adversary's held-out slice
    proxy_wm_acc: float  # retention as the adversary can estimate it (lower: a stronger removal)
    test_acc_drop: float
    wm_acc: float
    threshold: float

    def __post_init__(self) -> None:
        for name in ("estimated_drop", "proxy_wm_acc", "test_acc_drop", "wm_acc", "threshold"):
            if not math.isfinite(getattr(self, name)):
                hint = ("run the remove stage with data.adversary_holdout > 0 for the held-out figures"
                        if name == "estimated_drop" else "re-run the stage that measured it")
                raise ValueError(f"{self.scheme} {self.method} {self.setting} seed {self.seed}: {name} is "
                                 f"{getattr(self, name)}; every attempt needs a finite value ({hint})")

    @property
    def label(self) -> str:
        """``method@setting``, as the grid stage names a variant's model; the method alone at its own setting."""
        return f"{self.method}@{self.setting}" if self.setting else self.method

    @property
    def removed(self) -> bool:
        """At or below the ownership threshold (the module's docstring says why "at")."""
        return self.wm_acc <= self.threshold + TOLERANCE

    @property
    def baseline(self) -> bool:
        """A reference model (:data:`BASELINES`), not a removal: never the adversary's pick."""
        return self.method in BASELINES


def split_label(label: str) -> tuple[str, str]:
    """``(method, setting)`` of an :attr:`Attempt.label` (a removed model's name): its inverse."""
    method, _, setting = label.partition("@")
    return method, setting


@dataclass(frozen=True)
class Verdict:
    """The adversary's picks for one watermark and budget, one per seed of ``seeds`` (None: nothing fit the
    budget), and per seed the best attempt in hindsight."""

    scheme: str
    budget: float
    picks: tuple[Attempt | None, ...]
    seeds: tuple[int, ...]
    hindsight: tuple[Attempt | None, ...]  # per seed, :func:`best_in_hindsight` (reported, never chosen by)

    def __post_init__(self) -> None:
        if not len(self.seeds) == len(self.picks) == len(self.hindsight):
            raise ValueError(f"{self.scheme} within {self.budget}: {len(self.picks)} picks and "
                             f"{len(self.hindsight)} hindsight attempts for {len(self.seeds)} seeds")

    @property
    def chosen(self) -> list[Attempt]:
        return [pick for pick in self.picks if pick is not None]

    def succeeded(self, pick: Attempt | None) -> bool:
        """The pick removed the mark (at or below its threshold) and its measured test loss kept to the budget."""
        return pick is not None and pick.removed and fits(pick.test_acc_drop, self.budget)

    @property
    def removed(self) -> bool:
        """Every seed's pick succeeded; a seed with no admissible attempt, or whose pick lost more test accuracy
        than the budget (the held-out estimate misled the adversary), counts as surviving."""
        return bool(self.picks) and self.removed_seeds == len(self.picks)

    @property
    def removed_seeds(self) -> int:
        """Seeds whose pick succeeded (at or below its threshold within the budget on the test set)."""
        return sum(self.succeeded(pick) for pick in self.picks)

    @property
    def removable_in_hindsight(self) -> int:
        """Seeds on which some attempt removed the mark within the budget on the test set: the menu's reach."""
        return sum(self.succeeded(best) for best in self.hindsight)

    @property
    def overshot(self) -> list[Attempt]:
        """Picks whose measured test loss exceeded the budget although the held-out estimate fitted it."""
        return [pick for pick in self.chosen if not fits(pick.test_acc_drop, self.budget)]

    @property
    def method(self) -> str:
        """The pick (method and setting) when every seed made the same one, ``none`` when no seed had one, else
        each seed's (``seed 0: a; seed 1: b``): naming only the most common pick hid that seeds disagree."""
        labels = [pick.label if pick is not None else "none" for pick in self.picks]
        if not self.chosen:
            return "none"
        if len(set(labels)) == 1:
            return labels[0]
        return "; ".join(f"seed {seed}: {label}" for seed, label in zip(self.seeds, labels, strict=True))

    def stat(self, field: str) -> tuple[float, float]:
        """Mean and population standard deviation of ``field`` over the picks (NaN when none)."""
        values = [getattr(pick, field) for pick in self.chosen]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.pstdev(values)

    @property
    def text(self) -> str:
        points = f"{100 * self.budget:g} point" + ("" if f"{100 * self.budget:g}" == "1" else "s")
        if self.removed:
            return f"removed within {points}, by {self.method}"
        if self.overshot:
            lost = max(pick.test_acc_drop for pick in self.overshot)
            return f"survives {points} (a pick lost {100 * lost:.1f} on the test set)"
        return f"survives {points}"


def choose(attempts: Iterable[Attempt], budget: float) -> Attempt | None:
    """The adversary's pick on one model (step 1): lowest proxy retention among the removals (baselines left
    out) whose held-out drop is within ``budget``; ties go to the smaller drop, then the name, so the pick is
    deterministic."""
    admissible = [a for a in attempts if not a.baseline and fits(a.estimated_drop, budget)]
    if not admissible:
        return None
    return min(admissible, key=lambda a: (a.proxy_wm_acc, a.estimated_drop, a.label))


def best_in_hindsight(attempts: Iterable[Attempt], budget: float) -> Attempt | None:
    """On one model, the removal (baselines left out) of lowest true retention among those whose *test* loss
    is within ``budget`` (ties: the smaller loss, then the name): what the menu can do, known only afterwards.
    Reported beside the adversary's pick to tell a menu too weak from a judgement misled; never used to choose."""
    fitting = [a for a in attempts if not a.baseline and fits(a.test_acc_drop, budget)]
    if not fitting:
        return None
    return min(fitting, key=lambda a: (a.wm_acc, a.test_acc_drop, a.label))


def verdicts(attempts: Sequence[Attempt], budgets: Sequence[float] = BUDGETS) -> list[Verdict]:
    """One :class:`Verdict` per (scheme, budget), each seed's model judged on its own attempts (step 2)."""
    if any(not 0 < b < 1 for b in budgets):
        raise ValueError(f"budgets {list(budgets)} must be accuracy fractions in (0, 1), e.g. 0.01 for one point")
    schemes = sorted({a.scheme for a in attempts})
    result = []
    for scheme in schemes:
        mine = [a for a in attempts if a.scheme == scheme]
        seeds = sorted({a.seed for a in mine})
        models = [[a for a in mine if a.seed == seed] for seed in seeds]
        for budget in budgets:
            picks = tuple(choose(model, budget) for model in models)
            best = tuple(best_in_hindsight(model, budget) for model in models)
            result.append(Verdict(scheme, budget, picks, tuple(seeds), best))
    return result


def budget_key(budget: float) -> str:
    """``within_0_5`` for 0.005: metric keys carry no dots (DVC flattens nested keys with them)."""
    return "within_" + f"{100 * budget:g}".replace(".", "_")


def to_metrics(found: Sequence[Verdict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scheme: {within_<points>: {wm_acc, wm_acc_std, test_acc_drop, test_acc_drop_std, method, removed,
    seeds, removable_in_hindsight}}}``, for ``metrics/robustness.json``; the last counts seeds, not a verdict."""
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for verdict in found:
        wm, wm_std = verdict.stat("wm_acc")
        drop, drop_std = verdict.stat("test_acc_drop")
        metrics.setdefault(verdict.scheme, {})[budget_key(verdict.budget)] = {
            "wm_acc": wm, "wm_acc_std": wm_std, "test_acc_drop": drop, "test_acc_drop_std": drop_std,
            "method": verdict.method, "removed": verdict.removed, "seeds": len(verdict.picks),
            "removable_in_hindsight": verdict.removable_in_hindsight}
    return metrics


def mean_spread(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``12.3 ± 4.5`` (mean and population standard deviation, in percent by default); ``-`` when empty."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * statistics.pstdev(values):.{digits}f}"


def report(found: Sequence[Verdict]) -> str:
    """Markdown: one row per watermark and budget, the measured figures of the adversary's picks, and the seeds
    on which some attempt removed the mark within the budget on the test set (:func:`best_in_hindsight`)."""
    lines = ["| watermark | budget (points) | adversary's pick | test acc lost (points) | wm_acc % | "
             "removed within budget | verdict | some attempt did, in hindsight |", "|---|---|---|---|---|---|---|---|"]
    for verdict in found:
        # the picks' figures leave out seeds that had none: say over how many when that is fewer
        picked, seeds = len(verdict.chosen), len(verdict.picks)
        over = f" ({picked} of {seeds} seeds)" if 0 < picked < seeds else ""
        lines.append(f"| {verdict.scheme} | {100 * verdict.budget:g} | {verdict.method} | "
                     f"{mean_spread([p.test_acc_drop for p in verdict.chosen])}{over} | "
                     f"{mean_spread([p.wm_acc for p in verdict.chosen])}{over} | "
                     f"{verdict.removed_seeds}/{len(verdict.picks)} | {verdict.text} | "
                     f"{verdict.removable_in_hindsight}/{len(verdict.seeds)} |")
    return "\n".join(lines)


def frontier(attempts: Sequence[Attempt]) -> dict[str, list[tuple[float, float, str]]]:
    """Per method, its settings' measured (test drop, retention, setting), means over seeds, keeping only those
    no other setting of the method beats on both, sorted by drop: the trade-off in hindsight."""
    groups: dict[tuple[str, str], list[Attempt]] = {}
    for attempt in attempts:
        groups.setdefault((attempt.method, attempt.setting), []).append(attempt)
    points: dict[str, list[tuple[float, float, str]]] = {}
    for (method, setting), group in groups.items():
        points.setdefault(method, []).append((statistics.fmean(a.test_acc_drop for a in group),
                                              statistics.fmean(a.wm_acc for a in group), setting))
    result = {}
    for method, candidates in sorted(points.items()):
        candidates.sort()
        kept, best = [], math.inf
        for drop, wm, setting in candidates:
            if wm < best:
                kept.append((drop, wm, setting))
                best = wm
        result[method] = kept
    return result


def picks(found: Sequence[Verdict]) -> dict[float, tuple[float, float, str] | None]:
    """Per budget, the picks' mean test drop, mean retention and method (None: no pick), for the frontier plot."""
    return {v.budget: (v.stat("test_acc_drop")[0], v.stat("wm_acc")[0], v.method) if v.chosen else None
            for v in found}


def attempts_from_rows(rows: Iterable[Mapping[str, Any]], proxy: str = "proxy_wm_acc") -> list[Attempt]:
    """Attempts from result rows (``scheme, method, setting, seed, holdout_acc_watermarked, holdout_acc,
    <proxy>, test_acc_watermarked, test_acc, wm_acc, threshold``), as the ``results/`` CSVs write them."""
    attempts = []
    for row in rows:
        missing = [k for k in ("holdout_acc_watermarked", "holdout_acc", proxy, "test_acc_watermarked",
                               "test_acc", "wm_acc", "threshold") if row.get(k) in (None, "")]
        if missing:
            raise ValueError(f"row {dict(row)} lacks {', '.join(missing)}: the verdict needs the adversary's "
                             "held-out accuracy and proxy retention beside the measured figures")
        attempts.append(Attempt(
            scheme=str(row["scheme"]), method=str(row["method"]), setting=str(row.get("setting") or ""),
            seed=int(row["seed"]),
            estimated_drop=float(row["holdout_acc_watermarked"]) - float(row["holdout_acc"]),
            proxy_wm_acc=float(row[proxy]),
            test_acc_drop=float(row["test_acc_watermarked"]) - float(row["test_acc"]),
            wm_acc=float(row["wm_acc"]), threshold=float(row["threshold"])))
    return attempts
