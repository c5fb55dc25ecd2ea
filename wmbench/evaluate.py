"""Accuracy, watermark retention, the ownership threshold, and per-model verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from wmbench.training import DeviceData, accuracy


@dataclass
class Evaluator:
    """Scores a model on the clean test set and the owner's trigger set."""

    test: DeviceData
    trigger: DeviceData

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """``test_acc`` and ``wm_acc`` (share of triggers classified as the watermark label)."""
        return {"test_acc": accuracy(model, self.test), "wm_acc": accuracy(model, self.trigger)}


def calibrate_threshold(wm_rates: Iterable[float]) -> float:
    """The highest watermark rate any clean model showed at any epoch (Aiken et al., Sec. 7.1).

    A model whose retention is at or below what clean models reach by chance
    proves no ownership.
    """
    rates = list(wm_rates)
    if not rates:
        raise ValueError("no clean-model watermark rates to calibrate the threshold from")
    return max(rates)


def verdicts(
    results: Mapping[str, Mapping[str, float]], *, threshold: float, reference: str = "watermarked"
) -> dict[str, dict[str, Any]]:
    """Per model: ``test_acc``, ``wm_acc``, ``test_acc_drop`` against ``reference``, ``removed``.

    ``removed`` is true when ``wm_acc`` is at or below ``threshold``: clean
    models reached that rate, so the owner can no longer claim the model.
    With a ``scratch`` entry, ``useful`` says whether a model beats training
    from scratch on the adversary's data (Aiken et al., Sec. 7.4).
    """
    base = results[reference]["test_acc"]
    scratch = results.get("scratch", {}).get("test_acc")
    table: dict[str, dict[str, Any]] = {}
    for name, scores in results.items():
        row: dict[str, Any] = {
            "test_acc": scores["test_acc"],
            "wm_acc": scores["wm_acc"],
            "test_acc_drop": base - scores["test_acc"],
            "removed": scores["wm_acc"] <= threshold,
        }
        if scratch is not None:
            row["useful"] = scores["test_acc"] > scratch
        table[name] = row
    return table
