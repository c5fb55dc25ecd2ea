"""The removal-method registry, what a method receives, and what it returns.

A method is a small class: a params dataclass (its ``removal.<name>.*`` keys,
defaults documented once, there) and ``remove(model, data) -> RemovalResult``.
It copies the model before changing it and reads no files; every method trains
through :func:`wmbench.training.fit`, so all of them log the same per-epoch
records (``epoch``, ``loss``, ``lr``, ``test_acc``, ``wm_acc``).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from wmbench.evaluate import Evaluator
from wmbench.reconstruct import Reconstruction
from wmbench.registry import Registry
from wmbench.seeding import generator
from wmbench.training import DeviceData

REMOVALS: Registry[type[Removal]] = Registry("removal method")


@dataclass
class RemovalData:
    """What the adversary holds, on one device, plus the owner's yardstick.

    ``adversary``: the stolen model's training images the adversary has, with
    labels (``data.adversary_fraction`` of the training split, stratified).
    ``unlabeled``: in-distribution images without labels (the owner's training
    images, uint8 on the CPU as stored: only REFIT's optional augmentation
    reads them, so only the few it picks go to the device, labelled with
    the model's own predictions). ``evaluate`` scores the owner's test and
    trigger sets after each epoch for the curves: a method must never use it
    to make decisions, since the adversary does not know the trigger set.
    ``reconstruction``: Neural Cleanse's triggers for this model on the
    adversary's images, when the pipeline has them (``--reconstruct``).
    """

    adversary: DeviceData
    unlabeled: torch.Tensor
    evaluate: Evaluator
    num_classes: int
    seed: int
    reconstruction: Reconstruction | None = None  # the reconstruct stage's triggers, for Laundering's round 1

    @property
    def device(self) -> torch.device:
        return self.adversary.device

    def generator(self, purpose: str) -> torch.Generator:
        """A generator on the data's device, seeded for ``purpose`` (e.g. ``"wild-erasing"``)."""
        return generator(self.seed, purpose, self.device)


@dataclass
class RemovalResult:
    """The cleaned model, one record per epoch, and method-specific figures.

    ``info`` holds flat numbers worth reporting beside ``test_acc`` / ``wm_acc``
    (e.g. ``sparsity``, ``units_reset``); keys without dots.
    """

    model: nn.Module
    history: list[dict[str, float]]
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingSettings:
    """What every method that trains shares; each method's dataclass overrides the defaults."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    lr: float = 0.001

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be positive")


class Removal(ABC):
    """One removal method; ``Params`` is its settings dataclass (``removal.<name>.*``)."""

    Params: ClassVar[type] = TrainingSettings
    uses_reconstruction: ClassVar[bool] = False  # starts from RemovalData.reconstruction when given
    baseline: ClassVar[bool] = False  # a reference, not a removal: never the verdict's pick (robustness.BASELINES)

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        """Return a cleaned copy of ``model``; ``model`` itself is left unchanged."""


def create_removal(name: str, settings: Any | None = None) -> Removal:
    """The method registered as ``name``, with its validated settings (defaults when ``None``)."""
    return REMOVALS.get(name)(settings)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy in training mode, so the caller's model is never changed."""
    return copy.deepcopy(model).train()
