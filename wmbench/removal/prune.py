"""Magnitude pruning of conv and linear weights, then optional fine-tuning with the pruned weights kept at zero.

Zhang et al., Protecting Intellectual Property of Deep Neural Networks with
Watermarking, AsiaCCS 2018 (robustness to model pruning, up to 90%); Aiken et
al., Neural Network Laundering, Table 2 ("Zhang et al. (90% pruning)").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wmbench.pruning import apply_masks, magnitude_masks, weight_sparsity
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, copy_model
from wmbench.removal.finetune import FinetuneParams, tune


@dataclass
class PruneParams(FinetuneParams):
    """``removal.prune``: prune ``ratio`` of the weights by magnitude, then fine-tune ``epochs``.

    - ``ratio`` 0.9: share of conv and linear weights set to zero, in [0, 1)
      (Zhang et al.'s strongest test); biases and batch norm are kept.
    - ``scope`` ``global``: rank all layers' weights together; ``layer``: prune
      each layer to ``ratio`` (as Han et al. 2015, whom Zhang et al. follow).
    - ``epochs`` 10: fine-tuning after pruning; 0 is Zhang et al.'s test as
      published, pruning alone. ``batch_size`` 32, ``optimizer`` rmsprop,
      ``lr`` 0.0004 and ``lr_schedule`` constant, as ``finetune``.
    """

    ratio: float = 0.9
    scope: Literal["global", "layer"] = "global"
    epochs: int = 10

    def __post_init__(self) -> None:
        check_pruning_settings(self)
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio={self.ratio} is outside [0, 1); use e.g. 0.9 to zero 90% of the weights")


def check_pruning_settings(settings: FinetuneParams) -> None:
    """:class:`TrainingSettings`' checks, except that ``epochs`` may be 0 (prune, do not fine-tune)."""
    if settings.epochs < 0:
        raise ValueError(f"epochs={settings.epochs} must be >= 0 (0: prune only, no fine-tuning)")
    for key in ("batch_size", "lr"):
        if getattr(settings, key) <= 0:
            raise ValueError(f"{key}={getattr(settings, key)} must be positive")


def pruned_record(model: nn.Module, data: RemovalData) -> dict[str, float]:
    """The history's epoch 0: the model right after pruning, before any fine-tuning (lr 0).

    ``loss`` is the cross-entropy on the adversary's data, the same loss the
    later epochs report.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in data.adversary.batches(1024))
    model.train(was_training)
    return {"epoch": 0, "loss": loss / max(1, len(data.adversary)), "lr": 0.0, **data.evaluate(model)}


@REMOVALS.register("prune")
class Prune(Removal):
    """Zero the smallest-magnitude conv and linear weights, then fine-tune with them held at zero.

    Zhang et al., AsiaCCS 2018 (pruning test). The history starts with epoch 0,
    the pruned model before fine-tuning. ``info``: ``sparsity`` (share of conv
    and linear weights that are zero in the returned model),
    ``test_acc_pruned`` and ``wm_acc_pruned`` (before fine-tuning).
    """

    Params = PruneParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        model = copy_model(model)
        masks = magnitude_masks(model, self.params.ratio, self.params.scope)
        apply_masks(model, masks)
        history = [pruned_record(model, data)]
        history += tune(model, data, self.params, name="prune", after_step=lambda m: apply_masks(m, masks))
        info = {
            "sparsity": weight_sparsity(model),
            "test_acc_pruned": history[0]["test_acc"],
            "wm_acc_pruned": history[0]["wm_acc"],
        }
        return RemovalResult(model, history, info)
