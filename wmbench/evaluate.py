"""Accuracy, watermark retention, the ownership threshold, and per-model verdicts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from wmbench.training import DeviceData, accuracy


@dataclass
class Evaluator:
    """Scores a model on the clean test set and the owner's trigger set (and the adversary's held-out slice)."""

    test: DeviceData
    trigger: DeviceData
    holdout: DeviceData | None = None  # the adversary's held-out images (``data.adversary_holdout``)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """``test_acc`` and ``wm_acc`` (share of triggers classified as the watermark label), plus
        ``holdout_acc`` when there is a held-out slice: the only one of the three an adversary can see."""
        scores = {"test_acc": accuracy(model, self.test), "wm_acc": accuracy(model, self.trigger)}
        if self.holdout is not None and len(self.holdout):
            scores["holdout_acc"] = accuracy(model, self.holdout)
        return scores


def calibrate_threshold(wm_rates: Iterable[float]) -> float:
    """The highest watermark rate any clean model showed at any epoch (Aiken et al., Sec. 7.1).

    A model whose retention is at or below what clean models reach by chance
    proves no ownership.
    """
    rates = list(wm_rates)
    if not rates:
        raise ValueError("no clean-model watermark rates to calibrate the threshold from")
    return max(rates)


def binomial_tail(hits: int, trials: int, rate: float) -> float:
    """P(X >= ``hits``) for X ~ Binomial(``trials``, ``rate``): the one-sided exact test's p-value.

    Summed in log space (``math.lgamma``), so it neither overflows nor
    underflows for trigger sets of any size.
    """
    if not 0 <= hits <= trials:
        raise ValueError(f"hits={hits} must lie in 0..trials={trials}")
    if not 0 < rate < 1:
        raise ValueError(f"rate={rate} must lie strictly between 0 and 1")
    if hits == 0:
        return 1.0
    log_p, log_q = math.log(rate), math.log1p(-rate)
    terms = [
        math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * log_p + (trials - k) * log_q
        for k in range(hits, trials + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def null_rate(threshold: float, trials: int) -> float:
    """The clean-model hit rate the ownership test assumes: the threshold, kept inside [1/n, 1 - 1/n].

    Our choice (the papers give no test): clean models that never hit a
    trigger give a threshold of 0, under which any single hit would be
    "proof"; a rate below 1/n cannot be told apart from 0 on n triggers, so
    1/n is the smallest null rate used. The upper clip keeps the test defined.
    """
    if trials < 2:
        raise ValueError(f"the ownership test needs at least 2 trigger inputs, got {trials}")
    return min(max(threshold, 1 / trials), 1 - 1 / trials)


def ownership_test(wm_acc: float, trials: int, threshold: float) -> float:
    """p-value that a model hits the trigger set this often by chance, like a clean model would.

    One-sided exact binomial test: hits = round(``wm_acc`` * n) out of n
    trigger inputs against the clean models' rate :func:`null_rate` (the
    threshold of Aiken et al., Sec. 7.1). Our addition; neither paper tests.
    """
    return binomial_tail(round(wm_acc * trials), trials, null_rate(threshold, trials))


def verdicts(
    results: Mapping[str, Mapping[str, float]],
    *,
    threshold: float,
    trigger_size: int,
    alpha: float = 0.05,
    reference: str = "watermarked",
) -> dict[str, dict[str, Any]]:
    """Per model: accuracies, ``test_acc_drop`` against ``reference``, and the verdicts.

    - ``removed``: ``wm_acc`` at or below ``threshold``; clean models reached
      that rate, so the owner can no longer claim the model (Aiken et al., Sec. 7.1).
    - ``p_value``: :func:`ownership_test` on the ``trigger_size`` triggers.
    - ``ownership_verified``: ``p_value < alpha``; the owner can show, at
      level ``alpha``, that the model hits the triggers more often than clean models.
    - ``useful`` (only with a ``scratch`` entry): ``test_acc`` above training
      from scratch on the adversary's data (Aiken et al., Sec. 7.4).
    """
    base = results[reference]["test_acc"]
    scratch = results.get("scratch", {}).get("test_acc")
    table: dict[str, dict[str, Any]] = {}
    for name, scores in results.items():
        p_value = ownership_test(scores["wm_acc"], trigger_size, threshold)
        row: dict[str, Any] = {
            "test_acc": scores["test_acc"],
            "wm_acc": scores["wm_acc"],
            "test_acc_drop": base - scores["test_acc"],
            "removed": scores["wm_acc"] <= threshold,
            "p_value": p_value,
            "ownership_verified": p_value < alpha,
        }
        if scratch is not None:
            row["useful"] = scores["test_acc"] > scratch
        table[name] = row
    return table
