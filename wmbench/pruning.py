"""Pruning masks shared by the ``prune`` and ``fineprune`` removal methods.

A mask maps a parameter's name (as in ``model.named_parameters()``) to a 0/1
tensor of its shape. Pruned entries are set to zero once and kept there by
:func:`apply_masks` after every optimizer step (``fit``'s ``after_step``).
We chose this over ``torch.nn.utils.prune``, which renames ``weight`` to
``weight_orig`` plus a buffer and so changes the state dict the checkpoints
and the ONNX export read; here the model keeps its plain parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from wmbench.training import DeviceData

Masks = dict[str, torch.Tensor]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the masked entries of ``model``'s parameters in place."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights (not biases, not batch norm) of every ``Conv2d`` and ``Linear`` layer, by name."""
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


@torch.no_grad()
def magnitude_masks(model: nn.Module, ratio: float, scope: Literal["global", "layer"] = "global") -> Masks:
    """Masks removing the ``ratio`` share of conv and linear weights with the smallest magnitude.

    Zhang et al., Protecting Intellectual Property of Deep Neural Networks with
    Watermarking, AsiaCCS 2018 (robustness to pruning; magnitude pruning
    after Han et al. 2015). ``global`` ranks all weights together, ``layer``
    prunes each layer to ``ratio`` on its own. Exactly round(``ratio`` * n)
    weights are removed: ties at the threshold are broken by position.
    """
    weights = prunable_weights(model)
    if scope == "layer":
        return {name: _smallest_mask(w.detach().abs().flatten(), ratio).view_as(w) for name, w in weights.items()}
    if scope != "global":
        raise ValueError(f"unknown pruning scope {scope!r}; valid: global, layer")
    flat = _smallest_mask(torch.cat([w.detach().abs().flatten() for w in weights.values()]), ratio)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = flat[start : start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def _smallest_mask(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """A float 0/1 vector that is 0 at the round(``ratio`` * n) smallest entries of ``magnitudes``."""
    mask = torch.ones_like(magnitudes)
    k = round(ratio * magnitudes.numel())
    if k > 0:
        mask[torch.argsort(magnitudes, stable=True)[:k]] = 0.0
    return mask


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> float:
    """Share of conv and linear weights that are exactly zero."""
    weights = list(prunable_weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d, str | None, nn.BatchNorm2d | None]:
    """The last ``Conv2d`` of ``model.features`` and the batch norm right after it, with their names.

    "Last" and "right after" follow the order in which modules are registered,
    which is the order they run in for every wmbench architecture. For
    resnet18 this is ``conv2`` of the last block and its ``bn2``: the residual
    branch, whose output is added to the block's identity shortcut.
    """
    found = [(f"features.{name}", module) for name, module in model.features.named_modules()]
    convs = [i for i, (_, module) in enumerate(found) if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__}.features has no Conv2d to prune")
    index = convs[-1]
    conv_name, conv = found[index]
    assert isinstance(conv, nn.Conv2d)
    if index + 1 < len(found):
        bn_name, bn = found[index + 1]
        if isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
            return conv_name, conv, bn_name, bn
    return conv_name, conv, None, None


def channel_masks(model: nn.Module, channels: torch.Tensor | list[int]) -> Masks:
    """Masks that silence output ``channels`` of the last conv (:func:`last_conv`).

    Silencing a channel zeroes its filter and bias and, where a batch norm
    follows, that channel's scale and shift, so the channel outputs exactly
    zero whatever the input and the running statistics. In resnet18 only the
    last block's residual branch is silenced; the shortcut still carries the
    block's input on that channel.
    """
    conv_name, conv, bn_name, bn = last_conv(model)
    index = torch.as_tensor(channels, dtype=torch.long, device=conv.weight.device)
    masks: Masks = {}
    layers: list[tuple[str, nn.Module]] = [(conv_name, conv)] + ([(bn_name, bn)] if bn_name and bn else [])
    for prefix, layer in layers:
        for kind in ("weight", "bias"):
            parameter = getattr(layer, kind, None)
            if isinstance(parameter, nn.Parameter):
                mask = torch.ones_like(parameter)
                mask[index] = 0.0
                masks[f"{prefix}.{kind}"] = mask
    return masks


@torch.no_grad()
def channel_activations(model: nn.Module, data: DeviceData, batch_size: int = 256) -> torch.Tensor:
    """Mean activation of each output channel of the last conv over ``data`` (model in eval mode).

    Liu et al., Fine-Pruning, RAID 2018 (the pruning defense): channels are ranked by their
    average activation on clean inputs. The activation is ReLU of the conv's
    output, after its batch norm where one follows, averaged over images and
    positions: what the channel passes on in every wmbench architecture
    (in resnet18, the residual branch's contribution before the sum).
    """
    _, conv, _, bn = last_conv(model)
    watched = bn if bn is not None else conv
    total = torch.zeros(conv.out_channels, device=data.device)

    def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        total.add_(output.relu().mean(dim=(2, 3)).sum(dim=0))

    was_training = model.training
    model.eval()
    handle = watched.register_forward_hook(record)
    try:
        for images, _ in data.batches(batch_size):
            model(images)
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(1, len(data))
