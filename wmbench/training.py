"""One training loop for every stage and removal method.

Data live on the device as float tensors in [0, 1], scaled once; an epoch is a
device-side permutation and a batch a slice (after KellerJordan/cifar10-airbench).
Losses are summed on the device and read (``.item()``) once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.progress import MID_EPOCH_SECONDS, Progress

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Evaluate = Callable[[nn.Module], dict[str, float]]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; nothing is written."""


class TrainingCollapsedError(ValueError):
    """Training ended with a model that puts (nearly) every input in one class; nothing is written."""


# A classifier that puts this share of a class-balanced set in one class has collapsed (dead ReLUs after too
# large an lr): its trigger rate is 0 or 1 whatever it learned, so a threshold or a retention read from it is
# meaningless. A poorly trained but working model spreads its predictions far more.
COLLAPSED_SHARE = 0.9


@dataclass
class DeviceData:
    """Images (N, C, H, W) float in [0, 1] and int64 labels, both on one device.

    Labels may instead be float (N, classes) probability rows: soft targets
    that :func:`cross_entropy` takes as they are (Laundering's distillation);
    :func:`accuracy` needs classes.
    """

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_arrays(
        cls, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, device: torch.device
    ) -> DeviceData:
        """Move uint8 (0..255) or float (0..1) images and their labels to ``device`` once."""
        x = torch.as_tensor(images)
        x = x.to(device, torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(device, torch.float32)
        return cls(x, torch.as_tensor(labels).to(device, torch.long))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def concat(self, other: DeviceData) -> DeviceData:
        """Both sets in one (e.g. owner data plus watermark samples)."""
        return DeviceData(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]))

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Slices of one epoch: shuffled when a ``generator`` is given, else in order."""
        n = len(self)
        order = (
            torch.randperm(n, device=generator.device, generator=generator).to(self.device)
            if generator is not None
            else torch.arange(n, device=self.device)
        )
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self.labels[idx]


def make_optimizer(
    name: str, parameters: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """RMSprop (the papers' choice), Adam or SGD by name."""
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, rmsprop, sgd")


def make_scheduler(
    name: str, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cosine`` anneals the lr to zero over ``epochs`` (stepped per epoch); ``constant`` keeps it."""
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ValueError(f"unknown lr schedule {name!r}; valid: constant, cosine")


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The plain classification loss."""
    return F.cross_entropy(model(images), labels)


@torch.no_grad()
def logits(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """``model``'s outputs (N, classes) for each image of ``data``, in eval mode (its mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images) for images, _ in data.batches(batch_size)])
    finally:
        model.train(was_training)


def soft_targets(labels: torch.Tensor, teacher: torch.Tensor, weight: float) -> torch.Tensor:
    """Probability rows: ``weight`` of ``teacher``'s (N, classes) and the rest the one-hot ``labels``.

    Knowledge distillation's targets (Hinton et al. 2015) with the
    watermarked model as teacher: Laundering's and WILD's ``distill_weight``.
    """
    one_hot = F.one_hot(labels, teacher.shape[1]).to(teacher.dtype)
    return (1 - weight) * one_hot + weight * teacher


def predict(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> torch.Tensor:
    """The class ``model`` predicts for each image of ``data`` (eval mode)."""
    return logits(model, data, batch_size).argmax(1)


def accuracy(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> float:
    """Share of ``data`` whose predicted class equals its label (0 for no data)."""
    if len(data) == 0:
        return 0.0
    return float((predict(model, data, batch_size) == data.labels).sum().item()) / len(data)


def majority_class(model: nn.Module, data: DeviceData, batch_size: int = 1024) -> tuple[int, float]:
    """The class ``model`` predicts most often on ``data``, and the share of ``data`` it gets."""
    if len(data) == 0:
        raise ValueError("majority_class needs at least one image")
    counts = torch.bincount(predict(model, data, batch_size))
    return int(counts.argmax()), float(counts.max()) / len(data)


def fit(
    model: nn.Module,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: LossFn = cross_entropy,
    evaluate: Evaluate | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    name: str = "training",
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``epochs``; one history record per epoch.

    Each record holds ``epoch``, ``loss`` (mean over batches), ``lr`` and
    whatever ``evaluate(model)`` returns (``test_acc``, ``wm_acc``). ``augment``
    maps a batch to a training batch on the device; ``after_step`` runs after
    every optimizer step (e.g. to keep pruned weights at zero). A NaN or
    infinite loss raises :class:`TrainingDivergedError` naming ``name`` and the lr.
    Progress goes to stderr under ``name`` (:class:`wmbench.progress.Progress`).
    """
    history: list[dict[str, float]] = []
    progress = Progress(epochs, name)
    batches_per_epoch = max(1, math.ceil(len(data) / batch_size))
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=data.device)
        steps = 0
        lr = optimizer.param_groups[0]["lr"]
        epoch_start = time.monotonic()
        for images, labels in data.batches(batch_size, generator):
            if steps and time.monotonic() - epoch_start > MID_EPOCH_SECONDS:
                progress.within(steps / batches_per_epoch)
            if augment is not None:
                images, labels = augment(images, labels)
            loss = loss_fn(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            total += loss.detach()
            steps += 1
        if scheduler is not None:
            scheduler.step()
        mean_loss = total.item() / max(1, steps)
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"{name}: the loss became {mean_loss} in epoch {epoch} at lr {lr:g}; "
                "lower the learning rate"
            )
        record = {"epoch": epoch, "loss": mean_loss, "lr": lr}
        if evaluate is not None:
            record.update(evaluate(model))
        history.append(record)
        progress.update(record)
    progress.close()
    return history
