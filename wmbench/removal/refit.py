"""REFIT: fine-tuning with a large, decaying learning rate, held back by Elastic Weight Consolidation.

Chen et al., REFIT: A Unified Watermark Removal Framework for Deep Learning
Systems with Limited Data, AsiaCCS 2021 (arXiv 1911.07205): fine-tune with a
large initial lr that decays; EWC (Kirkpatrick et al., PNAS 2017)
keeps the weights that matter for the task near their watermarked values; an
optional augmentation (AU) adds unlabeled images labelled by the watermarked
model. Two ways to run it (``removal.refit.variant``): ``authors``, as the
authors' code does (sunblaze-ucb/REFIT, ``fine-tune.py`` and ``trainer.py``:
SGD with momentum, a Fisher from labels sampled from the model, normalized by
its maximum, the EWC coefficient clamped by the lr); ``wild``, as WILD's
baseline (Liu et al., Sec. IV-A, Table II: RMSprop, lr 0.001 / 0.003 / 0.005).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, TrainingSettings, copy_model
from wmbench.training import DeviceData, TrainingDivergedError, cross_entropy, fit, make_optimizer

Weights = dict[str, torch.Tensor]

PER_SAMPLE_FLOATS = 2**26  # per-sample gradients held at once while estimating the Fisher (256 MiB)

# The optimizer each variant fills in where removal.refit leaves a key null (see RefitParams).
VARIANTS: dict[str, dict[str, Any]] = {
    # sunblaze-ucb/REFIT fine-tune.py: --optim SGD, --momentum 0.9, --weight_decay 5e-4 (its defaults);
    # README's examples: --lr 0.05 (fine-tuning alone), 0.1 (with AU), 0.15 (with EWC, ResNet-18).
    "authors": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    # Liu et al., WILD, Sec. IV-A: "we continue to use RMSProp"; Table II's largest lr. REFIT's
    # --optim RMSprop builds torch's RMSprop with no momentum and no weight decay.
    "wild": {"optimizer": "rmsprop", "lr": 0.005, "momentum": 0.0, "weight_decay": 0.0},
}


@dataclass
class RefitParams(TrainingSettings):
    """``removal.refit``: REFIT's settings.

    Sources: the authors' code, sunblaze-ucb/REFIT (``fine-tune.py``,
    ``trainer.py``, ``helpers/loaders.py``, ``helpers/utils.py``,
    ``datasets/cifar_partial.py``) and its README's commands (CIFAR-10,
    ResNet-18); WILD, Liu et al., Sec. IV-A and Table II. The REFIT paper
    (arXiv 1911.07205) describes the method (large-lr fine-tuning, EWC, AU);
    the numbers below are read from the code, not from the paper's text.

    - ``variant``: ``authors`` (default) or ``wild``; fills ``optimizer``,
      ``lr``, ``momentum`` and ``weight_decay`` where they are left null
      (``None``), so ``-S removal.refit.variant=wild`` switches all four and
      ``-S removal.refit.lr=0.003`` sets the initial lr of either. ``authors``
      (``VARIANTS``): SGD, momentum 0.9, weight decay 5e-4 (``fine-tune.py``
      defaults), lr 0.05. The README uses 0.05 (fine-tuning alone), 0.1 (with
      AU) and 0.15 (with EWC) on a ResNet-18 with batch norm. On our LeNet (no
      batch norm) on digits, 0.15 diverges within two epochs and 0.1 diverges
      or leaves 10 % test accuracy on the noise scheme; 0.05 held in all of 3
      schemes x 3 seeds (test accuracy 91-98 %, retention 1-76 %).
      ``wild``: RMSprop, no momentum, no weight decay (what REFIT's
      ``--optim RMSprop`` builds), lr 0.005, the largest of the three WILD's
      Table II compares. WILD names only the optimizer and the lr ("we
      continue to use RMSProp"), so every other key is REFIT's in both.
    - ``epochs`` / ``batch_size``: 60 and 100, the README's commands.
    - ``lr_decay`` / ``lr_decay_epochs``: the lr is multiplied by
      ``lr_decay`` every ``lr_decay_epochs`` epochs (``helpers/utils.py``
      ``adjust_learning_rate``, ``--ratio`` / ``--lradj``; the README's
      fine-tuning and EWC commands: 0.9 every epoch).
    - ``epoch_length``: ``owner`` (REFIT, ``datasets/cifar_partial.py``: the
      adversary's part keeps the whole training set's length, its images
      cycled, so an epoch has as many steps as the owner's training) or
      ``adversary`` (one pass over the adversary's images).
    - ``random_crop`` / ``random_flip``: every training batch zero-padded by
      this many pixels and cropped back at a random offset / mirrored at
      random (``helpers/loaders.py``: ``RandomCrop(32, padding=4)``,
      ``RandomHorizontalFlip``). The augmentation keeps the loss off zero:
      the watermarked model fits the adversary's images (they are part of
      the owner's), so plain SGD on them barely moves the weights. Flipping
      is off by default: mirrored digits are other characters.
    - ``ewc_weight``: lambda of the EWC penalty (lambda/2) sum_i F_i (theta_i - theta*_i)^2;
      0 turns EWC off. 10, the README's ``--EWC_coef``, on a Fisher
      normalized to a maximum of 1; on a raw Fisher (``fisher_normalization:
      none``) its scale depends on the model (digits lenet: mean F ~ 1e-6).
    - ``fisher_labels``: ``sampled`` (``fine-tune.py``: each image's label
      drawn from the model's own softmax, the Fisher of the model) or
      ``given`` (the adversary's labels, the empirical Fisher).
    - ``fisher_normalization``: ``max`` (``fine-tune.py``: every entry
      divided by the largest over all parameters) or ``none``.
    - ``ewc_clamp``: per weight, the coefficient lambda F_i is capped at 1/lr
      (the current lr, ``trainer.py``), so a plain SGD step on the penalty
      cannot carry a weight past its watermarked value; with momentum or
      RMSprop the cap is a heuristic.
    - ``fisher_samples``: adversary images the Fisher is estimated on (a
      seeded random subset when the adversary has more); 10000, the README's
      ``--EWC_samples``.
    - ``unlabeled_count``: unlabeled in-distribution images added to the
      training set with the watermarked model's predictions as labels (AU);
      0 turns AU off.
    - ``divergence_retries``: when the loss becomes NaN, start again from the
      watermarked model at half the lr, at most this many times (the used lr
      is ``lr_used`` in the metrics). REFIT's code has no guard; an adversary
      sees the NaN on its own data and lowers the lr, as the error message
      says. At lr 0.05 the authors' SGD diverged in its first epoch on one
      full-size Fashion-MNIST model (seed 2's square, owner trained on
      58,800 images) where the other eleven held. 0: fail at once.

    Before the two variants (issue 13), REFIT here was ``variant: wild`` with
    ``fisher_labels: given``, ``fisher_normalization: none``, ``ewc_clamp:
    false``, ``ewc_weight: 1000``, ``epoch_length: adversary``,
    ``random_crop: 0``, ``fisher_samples: 1000``, 30 epochs of batch 64.
    """

    variant: Literal["authors", "wild"] = "authors"
    epochs: int = 60
    batch_size: int = 100
    optimizer: Literal["sgd", "rmsprop", "adam"] | None = None  # None: the variant's
    lr: float | None = None  # initial lr; None: the variant's
    momentum: float | None = None  # sgd and rmsprop; None: the variant's
    weight_decay: float | None = None  # None: the variant's
    lr_decay: float = 0.9
    lr_decay_epochs: int = 1
    epoch_length: Literal["owner", "adversary"] = "owner"
    random_crop: int = 4
    random_flip: bool = False
    ewc_weight: float = 10.0
    fisher_labels: Literal["sampled", "given"] = "sampled"
    fisher_normalization: Literal["max", "none"] = "max"
    ewc_clamp: bool = True
    fisher_samples: int = 10000
    unlabeled_count: int = 0
    divergence_retries: int = 2

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}; valid: {', '.join(VARIANTS)}")
        for key, value in VARIANTS[self.variant].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        super().__post_init__()
        choices = {"optimizer": ("sgd", "rmsprop", "adam"), "fisher_labels": ("sampled", "given"),
                   "fisher_normalization": ("max", "none"), "epoch_length": ("owner", "adversary")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r}; valid: {', '.join(valid)}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay} must lie in (0, 1]")
        if self.lr_decay_epochs < 1:
            raise ValueError(f"lr_decay_epochs={self.lr_decay_epochs} must be at least 1")
        if self.random_crop < 0:
            raise ValueError(f"random_crop={self.random_crop} must be >= 0 (0 = no cropping)")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must lie in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.ewc_weight < 0:
            raise ValueError(f"ewc_weight={self.ewc_weight} must be >= 0")
        if self.fisher_samples <= 0:
            raise ValueError(f"fisher_samples={self.fisher_samples} must be positive")
        if self.unlabeled_count < 0:
            raise ValueError(f"unlabeled_count={self.unlabeled_count} must be >= 0")
        if self.divergence_retries < 0:
            raise ValueError(f"divergence_retries={self.divergence_retries} must be >= 0 (0: fail at once)")


def diagonal_fisher(
    model: nn.Module,
    data: DeviceData,
    labels: Literal["sampled", "given"] = "given",
    generator: torch.Generator | None = None,
) -> Weights:
    """Per parameter: the mean over ``data`` of the squared gradient of log p(label | image).

    Kirkpatrick et al., EWC, PNAS 2017, Eq. (3); REFIT (Chen et al.)
    estimates it on the adversary's own data, since the original training set
    is out of reach. ``labels="sampled"`` draws each image's label from the
    model's own softmax (with ``generator``), as REFIT's ``fine-tune.py`` does:
    the Fisher of the model's predictive distribution. ``"given"`` uses the
    data's labels: the empirical Fisher. Exact per-sample gradients
    (``torch.func.vmap``), in eval mode.
    """
    if labels not in ("sampled", "given"):
        raise ValueError(f"labels={labels!r}; valid: sampled, given")
    was_training = model.training
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def log_likelihood(weights: Weights, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (image[None],))
        return -F.cross_entropy(logits, label[None])

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    chunk = max(1, PER_SAMPLE_FLOATS // sum(p.numel() for p in params.values()))
    for images, targets in data.batches(chunk):
        if labels == "sampled":
            with torch.no_grad():
                probabilities = F.softmax(model(images), dim=1)
            targets = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        for name, g in per_sample(params, images, targets).items():
            fisher[name] += g.pow(2).sum(0)
    model.train(was_training)
    return {name: f / max(1, len(data)) for name, f in fisher.items()}


def normalize_fisher(fisher: Weights) -> Weights:
    """Every entry divided by the largest entry over all parameters, so the maximum is 1.

    REFIT ``fine-tune.py`` (after the Fisher estimate): lambda then means the
    same for any model and data. An all-zero Fisher is returned unchanged.
    """
    largest = torch.stack([f.max() for f in fisher.values()]).max()
    if largest <= 0:
        return dict(fisher)
    return {name: f / largest for name, f in fisher.items()}


def ewc_coefficients(fisher: Weights, ewc_weight: float, lr: float, clamp: bool) -> Weights:
    """lambda F_i per weight; with ``clamp``, capped at 1/lr.

    REFIT ``trainer.py``: the Fisher is clamped at 1/(lr lambda) before it is
    multiplied by lambda. The penalty (1/2) c_i (theta_i - theta*_i)^2 has
    gradient c_i (theta_i - theta*_i); an SGD step of lr c_i <= 1 times that
    moves a weight at most back to theta*_i, never past it.
    """
    coefficients = {name: ewc_weight * f for name, f in fisher.items()}
    if clamp:
        coefficients = {name: c.clamp(max=1.0 / lr) for name, c in coefficients.items()}
    return coefficients


def ewc_penalty(model: nn.Module, fisher: Weights, reference: Weights) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over every parameter; 0 at ``reference`` (Kirkpatrick et al., Eq. 3).

    ``fisher`` may be any per-weight coefficients (e.g. :func:`ewc_coefficients`);
    the caller multiplies by 1/2 (and by lambda, if not already in them).
    """
    terms = [(fisher[name] * (p - reference[name]).pow(2)).sum() for name, p in model.named_parameters()]
    return torch.stack(terms).sum()


@dataclass
class CycledData(DeviceData):
    """``images`` and ``labels`` cycled to ``length`` per epoch: each appears ``length / len`` times, shuffled.

    REFIT ``datasets/cifar_partial.py`` (``remain_size``): the adversary's
    share of the training set keeps the whole set's length, so an epoch (and
    the lr schedule) counts as many images as the owner trained on. Indexes
    into the tensors; nothing is copied.
    """

    length: int = 0

    def __len__(self) -> int:
        return max(self.length, len(self.labels))

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Slices of one epoch of ``len(self)`` images, shuffled when a ``generator`` is given."""
        n, total = len(self.labels), len(self)
        order = (
            torch.randperm(total, device=generator.device, generator=generator).to(self.device)
            if generator is not None
            else torch.arange(total, device=self.device)
        ) % n
        for start in range(0, total, batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self.labels[idx]


def crop_and_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Each image zero-padded by ``padding`` pixels and cropped back at a random offset; if ``flip``, mirrored at p 1/2.

    REFIT ``helpers/loaders.py``: ``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip()`` on every training batch. One gather over the
    whole batch, no per-image loop.
    """
    n, _, height, width = images.shape
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))
        shifts = torch.randint(0, 2 * padding + 1, (2, n), device=images.device, generator=generator)
        rows = (shifts[0, :, None] + torch.arange(height, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (shifts[1, :, None] + torch.arange(width, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]  # (N, C, H, W)
    if flip:
        mirrored = torch.rand(n, device=images.device, generator=generator) < 0.5
        images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    return images


@torch.no_grad()
def pseudo_label(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> DeviceData:
    """``images`` with the model's predicted classes as labels (REFIT's unlabeled augmentation, AU)."""
    was_training = model.training
    model.eval()
    labels = torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return DeviceData(images, labels)


@REMOVALS.register("refit")
class Refit(Removal):
    """Fine-tune a copy at a large, decaying lr plus the EWC penalty; as its authors (SGD) or as WILD (RMSprop) ran it.

    Chen et al., REFIT (arXiv 1911.07205); the details follow the authors'
    code (sunblaze-ucb/REFIT ``fine-tune.py``, ``trainer.py``, ``helpers/``).
    Differences: the Fisher is estimated on a seeded random subset of the
    labelled adversary images (REFIT: the first batches of its shuffled
    loader), with exact per-sample gradients; the lr is scheduled per epoch
    and the clamp reads the epoch's lr.
    """

    Params: ClassVar[type] = RefitParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        """:meth:`refit` at the params' lr, halved after a NaN loss at most ``divergence_retries`` times."""
        lr, halvings = self.params.lr, 0
        while True:
            try:
                result = self.refit(model, data, lr)
            except TrainingDivergedError as error:
                if halvings == self.params.divergence_retries:
                    raise TrainingDivergedError(f"{error} (after halving it {halvings} times from "
                                                f"{self.params.lr:g}; raise removal.refit.divergence_retries)"
                                                ) from error
                lr, halvings = lr / 2, halvings + 1
                continue
            result.info.update(lr_used=lr, lr_halvings=float(halvings))
            return result

    def refit(self, model: nn.Module, data: RemovalData, lr: float) -> RemovalResult:
        """One REFIT run from ``model`` at initial lr ``lr``."""
        p = self.params
        model = copy_model(model)
        train = data.adversary
        if p.unlabeled_count:
            if p.unlabeled_count > len(data.unlabeled):
                raise ValueError(
                    f"unlabeled_count={p.unlabeled_count} exceeds the {len(data.unlabeled)} unlabeled images"
                )
            pick = torch.randperm(len(data.unlabeled), generator=data.generator("refit-unlabeled"),
                                  device=data.device)[: p.unlabeled_count]
            picked = data.unlabeled[pick.cpu()]
            images = DeviceData.from_arrays(picked, torch.zeros(len(picked), dtype=torch.long), data.device).images
            train = train.concat(pseudo_label(model, images))

        train_size = len(train)
        if p.epoch_length == "owner":
            train = CycledData(train.images, train.labels, length=len(data.unlabeled))
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        if p.random_crop or p.random_flip:
            augment_generator = data.generator("refit-augment")

            def augment(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return crop_and_flip(images, p.random_crop, p.random_flip, augment_generator), labels

        subset = data.adversary
        if len(subset) > p.fisher_samples:
            pick = torch.randperm(len(subset), generator=data.generator("refit-fisher"),
                                  device=data.device)[: p.fisher_samples]
            subset = DeviceData(subset.images[pick], subset.labels[pick])
        fisher = diagonal_fisher(model, subset, p.fisher_labels, data.generator("refit-fisher-labels"))
        fisher_max = float(torch.stack([f.max() for f in fisher.values()]).max())
        if p.fisher_normalization == "max":
            fisher = normalize_fisher(fisher)
        reference = {name: w.detach().clone() for name, w in model.named_parameters()}
        optimizer = make_optimizer(p.optimizer, model.parameters(), lr, p.momentum, p.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.lr_decay_epochs, gamma=p.lr_decay)
        coefficients: dict[float, Weights] = {}  # by lr: the clamp changes only when the lr does

        def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            loss = cross_entropy(model, images, labels)
            if p.ewc_weight:
                lr = optimizer.param_groups[0]["lr"]
                if lr not in coefficients:
                    coefficients.clear()
                    coefficients[lr] = ewc_coefficients(fisher, p.ewc_weight, lr, p.ewc_clamp)
                loss = loss + 0.5 * ewc_penalty(model, coefficients[lr], reference)
            return loss

        history = fit(model, train, optimizer, epochs=p.epochs, batch_size=p.batch_size,
                      generator=data.generator("refit-shuffle"), loss_fn=loss_fn, evaluate=data.evaluate,
                      scheduler=scheduler, augment=augment, name="refit")
        with torch.no_grad():
            drift = float(ewc_penalty(model, fisher, reference).item())
        flat = torch.cat([f.flatten() for f in fisher.values()])
        last_lr = lr * p.lr_decay ** ((p.epochs - 1) // p.lr_decay_epochs)  # the last epoch's (StepLR)

        def clamped(at_lr: float) -> float:
            """Share of weights whose EWC coefficient the clamp 1 / lr caps at ``at_lr``."""
            return float((p.ewc_weight * flat > 1.0 / at_lr).float().mean()) if p.ewc_clamp and p.ewc_weight else 0.0

        info = {"ewc_penalty": drift, "fisher_mean": float(flat.mean()), "fisher_max": fisher_max,
                "ewc_clamped_share": clamped(lr), "ewc_clamped_share_last": clamped(last_lr),
                "train_size": float(train_size)}
        return RemovalResult(model.eval(), history, info)
