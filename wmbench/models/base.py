"""The architecture registry and the shape every model shares."""

from __future__ import annotations

import torch
from torch import nn

from wmbench.registry import Registry

ARCHS: Registry[type[nn.Module]] = Registry("architecture")


class Classifier(nn.Module):
    """``features`` (the convolutional part) followed by ``classifier``.

    WILD aligns ``features(x)``, "the features after the last convolutional
    layer" (Liu et al., WILD, Sec. III-B); fine-pruning prunes its last conv.
    """

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.classifier(self.features(x))


def feature_shape(features: nn.Module, in_channels: int, image_size: int) -> torch.Size:
    """Shape of ``features`` output for one image, found by a dry run."""
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, image_size, image_size)).shape[1:]


def check_input(arch: str, in_channels: int, image_size: int, num_classes: int, minimum: int) -> None:
    """Reject shapes the architecture cannot take, naming the problem."""
    if in_channels not in (1, 3):
        raise ValueError(f"{arch}: in_channels must be 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"{arch}: num_classes must be at least 2, got {num_classes}")
    if image_size < minimum:
        raise ValueError(
            f"{arch} needs images of at least {minimum}x{minimum} pixels, got {image_size}; "
            "pick another model.arch for this dataset"
        )


def create_model(arch: str, *, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build the architecture registered as ``arch`` for the given input and classes."""
    return ARCHS.get(arch)(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
