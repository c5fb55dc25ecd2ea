"""Per-unit mean activations of dense neurons and conv channels, their differences, and resetting units.

A unit is one output neuron of an ``nn.Linear`` or one output channel of an
``nn.Conv2d``. Layers are found by walking the model's modules, so every
architecture in the registry works without per-model code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

# Modules that may sit between a layer and its activation without changing which unit is which.
_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Tanh, nn.Sigmoid)


@dataclass
class Layer:
    """A dense or conv layer whose output units can be measured and reset.

    ``probe`` is the module whose output is measured: the layer's activation
    when it follows the layer in the same ``nn.Sequential`` (past any batch
    norm or dropout), else the layer itself (e.g. inside a ResNet block,
    where the activation is a functional call after the shortcut's sum).
    ``norm`` is a batch norm directly after the layer, reset together with it.
    """

    name: str
    module: nn.Linear | nn.Conv2d
    probe: nn.Module
    norm: nn.Module | None = None

    @property
    def kind(self) -> Literal["dense", "conv"]:
        return "dense" if isinstance(self.module, nn.Linear) else "conv"

    @property
    def units(self) -> int:
        return self.module.out_features if isinstance(self.module, nn.Linear) else self.module.out_channels


def find_layers(model: nn.Module, which: Literal["all", "second_half"] = "all") -> list[Layer]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` in module order except the last (the output layer).

    ``second_half`` keeps the later half of them, Aiken et al.'s choice for
    ResNet (Neural Network Laundering, Sec. 5).
    """
    layers = [Layer(name, module, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear | nn.Conv2d)]
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            _attach_probes(module, layers)
    probes = [id(layer.probe) for layer in layers]
    for layer in layers:  # an activation module shared by two layers cannot tell them apart
        if probes.count(id(layer.probe)) > 1:
            layer.probe = layer.module
    layers = layers[:-1]
    if which == "second_half":
        layers = layers[len(layers) // 2 :]
    elif which != "all":
        raise ValueError(f"layers={which!r}; valid: all, second_half")
    return layers


def _attach_probes(sequential: nn.Sequential, layers: list[Layer]) -> None:
    """For each layer in ``sequential``, probe the activation that follows it, if any."""
    children = list(sequential)
    by_module = {id(layer.module): layer for layer in layers}
    for index, child in enumerate(children):
        layer = by_module.get(id(child))
        if layer is None:
            continue
        for follower in children[index + 1 :]:
            if isinstance(follower, nn.BatchNorm1d | nn.BatchNorm2d) and layer.norm is None:
                layer.norm = follower
            elif isinstance(follower, _ACTIVATIONS):
                layer.probe = follower
                break
            elif not isinstance(follower, _PASS_THROUGH):
                break


@torch.no_grad()
def mean_activations(model: nn.Module, layers: list[Layer], images: torch.Tensor,
                     batch_size: int = 256) -> list[torch.Tensor]:
    """Mean output of every unit of ``layers`` over ``images``, in eval mode; one tensor per layer.

    A dense layer gives (units,); a conv layer its mean feature map (C, H, W),
    averaged over the images only, so the caller chooses how to reduce space.
    Aiken et al., Neural Network Laundering, Sec. 4, Algorithm 1, lines 3-9.
    """
    totals: list[torch.Tensor | None] = [None] * len(layers)

    def recorder(index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            summed = output.float().sum(0) if output.dim() == 4 else output.float().reshape(-1, output.shape[-1]).sum(0)
            totals[index] = summed if totals[index] is None else totals[index] + summed
        return hook

    was_training = model.training
    model.eval()
    handles = [layer.probe.register_forward_hook(recorder(i)) for i, layer in enumerate(layers)]
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [total / max(1, len(images)) for total in totals]


def activation_differences(normal: list[torch.Tensor], watermarked: list[torch.Tensor],
                           conv_reduce: Literal["max", "mean"] = "max") -> list[torch.Tensor]:
    """Per unit, AW_avg - AN_avg; a conv channel's difference map reduced over space by ``conv_reduce``.

    Aiken et al., Sec. 4, Algorithm 1, lines 10-19. The paper does not say how a
    channel's map becomes one number. ``max`` (the Watermark-Robustness-Toolbox's
    choice) keeps a trigger detector that fires strongly in a few positions, as
    a corner square's does; ``mean`` averages it away over the map (on a
    Fashion-MNIST square model: largest mean 0.04, largest maximum 2.1).
    """
    differences = []
    for an, aw in zip(normal, watermarked, strict=True):
        difference = aw - an
        if difference.dim() == 3:  # (C, H, W) -> (C,)
            flat = difference.flatten(1)
            difference = flat.amax(1) if conv_reduce == "max" else flat.mean(1)
        differences.append(difference)
    return differences


def select_units(layers: list[Layer], differences: list[torch.Tensor],
                 dense_threshold: float, conv_threshold: float) -> list[torch.Tensor]:
    """Boolean masks of units whose activation rises by more than DT (dense) or CT (conv).

    Aiken et al., Neural Network Laundering, Sec. 4, Algorithm 1, lines 10-19.
    Algorithm 1 as printed compares the normal-image mean ``AN_avg`` with the
    threshold; the text of Sec. 4 resets units whose *difference*
    ``AW_avg - AN_avg`` is above it, and that is what this does.
    """
    return [difference > (dense_threshold if layer.kind == "dense" else conv_threshold)
            for layer, difference in zip(layers, differences, strict=True)]


@dataclass
class UnitReset:
    """Units held at a fixed value: their incoming weights and bias, per layer.

    ``apply`` writes the values again (after every optimizer step), so reset
    units stay reset through retraining. ``zero``: weights and bias 0, plus
    the channel's scale and shift in a batch norm right after the layer, so
    the unit's output is 0 (our addition: otherwise the norm's shift brings
    it back). ``median``: weights and bias set to the layer's median weight
    at reset time (Sec. 4, for activations that are non-zero at 0).
    """

    how: Literal["zero", "median"] = "zero"
    entries: dict[str, tuple[Layer, torch.Tensor, float]] = field(default_factory=dict)

    def add(self, layers: Iterable[Layer], masks: Iterable[torch.Tensor]) -> None:
        """Reset the masked units (joined with those reset before) and write them now."""
        for layer, mask in zip(layers, masks, strict=True):
            previous = self.entries.get(layer.name)
            joined = mask.clone() if previous is None else previous[1] | mask
            if previous is not None:
                value = previous[2]
            elif self.how == "median":
                value = float(layer.module.weight.detach().median())
            else:
                value = 0.0
            self.entries[layer.name] = (layer, joined, value)
        self.apply()

    @torch.no_grad()
    def apply(self, _model: nn.Module | None = None) -> None:
        """Write the reset values into the weights (``fit``'s ``after_step`` signature)."""
        for layer, mask, value in self.entries.values():
            if not mask.any():
                continue
            layer.module.weight[mask] = value
            if layer.module.bias is not None:
                layer.module.bias[mask] = value
            if self.how == "zero" and layer.norm is not None and layer.norm.affine:
                layer.norm.weight[mask] = 0.0
                layer.norm.bias[mask] = 0.0

    def counts(self) -> dict[str, int]:
        """Units reset so far, per layer name."""
        return {name: int(mask.sum()) for name, (_, mask, _) in self.entries.items()}
