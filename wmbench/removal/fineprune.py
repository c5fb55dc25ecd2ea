"""Fine-pruning: silence the last conv's least active channels on clean data, then fine-tune.

Liu, Dolan-Gavitt and Garg, Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks, RAID 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wmbench.pruning import apply_masks, channel_activations, channel_masks, last_conv
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, copy_model
from wmbench.removal.finetune import FinetuneParams, tune
from wmbench.removal.prune import check_pruning_settings, pruned_record
from wmbench.training import accuracy


@dataclass
class FinepruneParams(FinetuneParams):
    """``removal.fineprune``: prune channels until accuracy falls by ``accuracy_drop``, then fine-tune.

    - ``accuracy_drop`` 0.04: the largest fall of accuracy on the adversary's
      own data that pruning may cause, in [0, 1] (Liu et al. stop at 4%).
    - ``max_ratio`` 0.9: at most this share of the last conv's channels is
      pruned, in [0, 1), whatever the accuracy.
    - ``epochs`` 10 of fine-tuning (0: prune only), ``batch_size`` 32,
      ``optimizer`` rmsprop, ``lr`` 0.0004, ``lr_schedule`` constant, as ``finetune``.
    """

    accuracy_drop: float = 0.04
    max_ratio: float = 0.9
    epochs: int = 10

    def __post_init__(self) -> None:
        check_pruning_settings(self)
        if not 0 <= self.accuracy_drop <= 1:
            raise ValueError(f"accuracy_drop={self.accuracy_drop} is outside [0, 1]; use e.g. 0.04 for 4 points")
        if not 0 <= self.max_ratio < 1:
            raise ValueError(f"max_ratio={self.max_ratio} is outside [0, 1); use e.g. 0.9")


@torch.no_grad()
def prune_channels(model: nn.Module, data: RemovalData, accuracy_drop: float, max_ratio: float) -> list[int]:
    """Silence the last conv's channels in increasing order of mean activation; the channels silenced.

    Liu et al., RAID 2018 (the pruning defense): the ranking is computed once
    on the clean data, before pruning. A channel is silenced as long as the
    accuracy on the adversary's data stays within ``accuracy_drop`` of the
    unpruned model's; the first channel that would take it further is left in
    place, and pruning stops there or at ``max_ratio`` of the channels
    (our reading of "until the accuracy drops by 4%"). Decisions use only the
    adversary's data, never the owner's test or trigger sets.
    """
    _, conv, _, _ = last_conv(model)
    order = torch.argsort(channel_activations(model, data.adversary), stable=True).tolist()
    floor = accuracy(model, data.adversary) - accuracy_drop
    names = channel_masks(model, []).keys()
    parameters = dict(model.named_parameters())
    original = {name: parameters[name].detach().clone() for name in names}
    pruned: list[int] = []
    for channel in order[: int(max_ratio * conv.out_channels)]:
        apply_masks(model, channel_masks(model, [channel]))
        if accuracy(model, data.adversary) < floor:
            for name in names:
                parameters[name][channel] = original[name][channel]
            break
        pruned.append(channel)
    return pruned


@REMOVALS.register("fineprune")
class Fineprune(Removal):
    """Prune the last conv's dormant channels, then fine-tune with them kept at zero.

    Liu et al., Fine-Pruning, RAID 2018. What a pruned channel is, for each
    architecture, is told in :func:`wmbench.pruning.channel_masks` (filter, bias
    and the following batch norm's scale and shift set to zero; in resnet18 the
    last block's residual branch). The history starts with epoch 0, the pruned
    model before fine-tuning. ``info``: ``channels_pruned``, ``channels_ratio``
    (share of the last conv's channels), ``test_acc_pruned``, ``wm_acc_pruned``.
    """

    Params = FinepruneParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        model = copy_model(model)
        channels = prune_channels(model, data, self.params.accuracy_drop, self.params.max_ratio)
        masks = channel_masks(model, channels)
        history = [pruned_record(model, data)]
        history += tune(model, data, self.params, name="fineprune", after_step=lambda m: apply_masks(m, masks))
        info = {
            "channels_pruned": len(channels),
            "channels_ratio": len(channels) / last_conv(model)[1].out_channels,
            "test_acc_pruned": history[0]["test_acc"],
            "wm_acc_pruned": history[0]["wm_acc"],
        }
        return RemovalResult(model, history, info)
