"""Neural Cleanse trigger reconstruction for every class at once, and MAD outlier detection.

Wang et al., Neural Cleanse, IEEE S&P 2019, Sec. IV-A (reverse-engineering)
and Sec. IV-B (MAD outlier detection); used by Aiken et al., Neural Network
Laundering, Sec. 2.2 (Eq. 1, 2), Sec. 4 Step 1 and Step 3, Sec. 7.6.

Every class is optimised in one batched tensor: masks (K, 1, H, W) and
patterns (K, C, H, W); a step stamps the same B adversary images with every
class's trigger and runs one (K*B, C, H, W) forward and backward pass. Classes
do not interact: the loss is a sum of per-class terms, Adam is element-wise,
and each class has its own lambda, counters and early stop; so a class comes
out the same whether it is optimised with the others or alone
(``classes=[k]``), up to float round-off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate a normal distribution's standard deviation


@dataclass
class NeuralCleanseParams:
    """``reconstruct.*`` in params.yaml: the optimisation and the outlier rule.

    Defaults are sized for the embedded digits / lenet run, where Laundering
    repeats the search every round: 10 classes x 16 images per step, 140-210
    steps before every class has stopped, about 20k stamped images through the
    model, about 3 s of one CPU core (``bench/reconstruct_speed.py``). On digits
    they flag the watermark label of the content, noise and square schemes and
    no class of clean models. Neural Cleanse (Wang et al., Sec. IV-A, and their
    code) runs Adam at lr 0.1, betas (0.5, 0.9), lambda from 1e-3 adjusted once
    per epoch of mini-batches, for up to 80 epochs; we count in steps (one
    mini-batch per class) and adjust lambda every step, so we start lambda
    nearer its working value and double the lr to settle within the budget.
    A mask counts when every image of its batch is sent to the class; on all
    the adversary's images such masks reach about 0.9 (``attack_success``).
    """

    steps: int = 300  # most optimisation steps; each step sees one batch of images for every class
    batch_size: int = 16  # adversary images per class per step (the same images for every class)
    lr: float = 0.2  # Adam (betas 0.5, 0.9, as Neural Cleanse) on the free mask and pattern parameters
    init_cost: float = 1e-2  # initial lambda on |m|_1 (Neural Cleanse: 1e-3)
    attack_success_target: float = 0.99  # a mask counts once this share of its batch is classified as its class
    patience: int = 5  # steps above (below) the target before lambda is raised (lowered)
    cost_multiplier: float = 1.5  # lambda *= this to raise it, /= this**1.5 to lower it (Neural Cleanse)
    early_stop_patience: int = 20  # a class stops once its best norm has not improved for this many steps
    early_stop_threshold: float = 0.99  # "improved": the best norm fell below this share of the last best
    anomaly_threshold: float = 2.0  # flag classes whose anomaly index exceeds this (Neural Cleanse: 2)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patience", "early_stop_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0 or self.init_cost < 0:
            raise ValueError(f"lr={self.lr} must be positive and init_cost={self.init_cost} non-negative")
        if not 0 < self.attack_success_target <= 1:
            raise ValueError(f"attack_success_target={self.attack_success_target} is outside (0, 1]")
        if self.cost_multiplier <= 1:
            raise ValueError(f"cost_multiplier={self.cost_multiplier} must exceed 1")
        if not 0 < self.early_stop_threshold <= 1:
            raise ValueError(f"early_stop_threshold={self.early_stop_threshold} is outside (0, 1]")
        if self.anomaly_threshold <= 0:
            raise ValueError(f"anomaly_threshold={self.anomaly_threshold} must be positive")


@dataclass
class Reconstruction:
    """The smallest trigger found per class (row ``i`` belongs to label ``classes[i]``).

    ``l1`` is each mask's L1 norm, ``attack_success`` the share of all the
    adversary's images that the stamped trigger sends to the class. A class
    that never reached the attack-success target keeps its last mask (its
    ``attack_success`` shows it). ``classes`` is None when row k is label k.
    """

    masks: torch.Tensor  # (K, 1, H, W) in [0, 1]
    patterns: torch.Tensor  # (K, C, H, W) in [0, 1]
    l1: torch.Tensor  # (K,) mask L1 norms
    attack_success: torch.Tensor  # (K,) share of stamped images classified as the class
    classes: list[int] | None = None  # the label of each row; None: row k is label k
    steps: int = 0  # optimisation steps run before every class had stopped

    def row(self, label: int) -> int:
        """The row holding ``label``'s trigger."""
        if self.classes is None:
            if not 0 <= label < len(self.masks):
                raise ValueError(f"label {label} is not a class; use 0..{len(self.masks) - 1}")
            return label
        if label not in self.classes:
            raise ValueError(f"label {label} was not reconstructed; have {self.classes}")
        return self.classes.index(label)

    def stamp(self, images: torch.Tensor, label: int) -> torch.Tensor:
        """A(x, m, Delta) = (1 - m) * x + m * Delta with ``label``'s trigger (Aiken et al., Eq. 1)."""
        k = self.row(label)
        mask, pattern = self.masks[k].to(images), self.patterns[k].to(images)
        return (1 - mask) * images + mask * pattern


@dataclass
class AnomalyReport:
    """MAD outlier detection over the classes' mask norms (Wang et al., Sec. IV-B)."""

    anomaly_index: torch.Tensor  # (K,) MAD units below the median norm; 0 at or above it
    flagged: list[int]  # classes whose index exceeds the threshold, most anomalous first
    most_likely: int  # the smallest-norm class: the likeliest to be watermarked
    least_likely: int  # the largest-norm class: the least likely (Aiken et al., Sec. 4 Step 3)


def neural_cleanse(
    model: nn.Module,
    images: torch.Tensor,
    settings: NeuralCleanseParams,
    generator: torch.Generator,
    classes: Sequence[int] | None = None,
) -> Reconstruction:
    """Reverse-engineer the smallest trigger (mask m, pattern Delta) for every class at once.

    Wang et al., Neural Cleanse, Sec. IV-A; Aiken et al., Sec. 2.2, Eq. (2):
    minimise CE(y, f(A(x, m, Delta))) + lambda * |m|_1 with m = sigmoid(free
    parameter) and Delta = sigmoid(free parameter), lambda adapted per class.

    ``images``: the adversary's clean images, float (N, C, H, W) in [0, 1], on
    the model's device. ``classes`` picks a subset (default: every class). The
    model's weights, gradients and train/eval mode are left as they were.
    ``generator`` (on the images' device) draws the initial triggers for all
    classes, then one batch of image indices per step shared by all classes, so
    a class's random stream does not depend on which others run beside it.
    """
    with _inspecting(model):
        num_classes = _num_classes(model, images)
        chosen = list(range(num_classes)) if classes is None else [int(k) for k in classes]
        bad = [k for k in chosen if not 0 <= k < num_classes]
        if bad or not chosen:
            raise ValueError(f"classes {bad or chosen} are not classes of this model; use 0..{num_classes - 1}")
        search = _Search(model, images, settings, generator, chosen, num_classes)
        steps = search.run()
        masks, patterns, l1 = search.best()
        success = _attack_success(model, images, masks, patterns, chosen)
    return Reconstruction(masks, patterns, l1, success, None if classes is None else chosen, steps)


def mad_anomaly(l1: torch.Tensor, threshold: float = 2.0) -> AnomalyReport:
    """Anomaly index per class: |L1_y - median| / (1.4826 * MAD), on the small-norm side only.

    Wang et al., Neural Cleanse, Sec. IV-B: a watermarked class needs a much
    smaller trigger than the others, so only norms below the median count;
    classes at or above it get index 0. Flagged: index > ``threshold``.
    ``most_likely`` is the smallest-norm class, which is the flagged class with
    the largest index when any is flagged, and still the best guess when none
    is (an adversary assumes a watermark regardless, Aiken et al., Sec. 7.6).
    ``least_likely`` is the largest-norm class (Aiken et al., Sec. 4 Step 3).
    The median of an even count is the mean of the middle two. A MAD of zero
    (over half the norms equal) is replaced by the smallest positive float, so
    any norm below that common value is flagged.
    """
    l1 = l1.detach().double().flatten()
    if len(l1) < 2:
        raise ValueError(f"MAD needs at least 2 classes' norms, got {len(l1)}")
    median = l1.quantile(0.5)
    mad = (l1 - median).abs().quantile(0.5).clamp_min(torch.finfo(torch.float64).tiny)
    index = ((median - l1) / (MAD_CONSISTENCY * mad)).clamp_min(0)
    order = torch.argsort(index, descending=True, stable=True)
    flagged = [int(k) for k in order if index[k] > threshold]
    return AnomalyReport(
        anomaly_index=index.float(),
        flagged=flagged,
        most_likely=int(torch.argmin(l1)),
        least_likely=int(torch.argmax(l1)),
    )


class _Search:
    """The batched optimisation state: free parameters, per-class lambda, counters and best masks.

    Every per-class quantity is a tensor with a leading class axis, updated by
    ``torch.where``; nothing syncs with the host inside a step.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        settings: NeuralCleanseParams,
        generator: torch.Generator,
        classes: list[int],
        num_classes: int,
    ) -> None:
        self.model, self.images, self.settings, self.generator = model, images, settings, generator
        channels, height, width = images.shape[1:]
        device = images.device
        self.labels = torch.tensor(classes, device=device)
        k = len(classes)
        # Initial triggers drawn for every class, then the chosen rows taken: a class's start
        # does not depend on which others are optimised beside it.
        mask_init = _uniform((num_classes, 1, height, width), generator).to(device)[self.labels]
        pattern_init = _uniform((num_classes, channels, height, width), generator).to(device)[self.labels]
        self.mask_free = torch.logit(mask_init, eps=1e-3).requires_grad_()  # (K, 1, H, W)
        self.pattern_free = torch.logit(pattern_init, eps=1e-3).requires_grad_()  # (K, C, H, W)
        self.optimizer = torch.optim.Adam([self.mask_free, self.pattern_free], lr=settings.lr, betas=(0.5, 0.9))
        zeros = torch.zeros(k, device=device, dtype=torch.long)
        self.cost = torch.full((k,), settings.init_cost, device=device)
        self.above, self.below = zeros.clone(), zeros.clone()  # consecutive steps above / below the target
        self.raised = torch.zeros(k, device=device, dtype=torch.bool)  # lambda has been raised at least once
        self.lowered = self.raised.clone()  # ... and lowered at least once
        self.stale = zeros.clone()  # steps without the best norm improving
        self.last_best = torch.full((k,), math.inf, device=device)
        self.active = torch.ones(k, device=device, dtype=torch.bool)
        self.rows = torch.arange(k, device=device)
        self.best_l1 = torch.full((k,), math.inf, device=device)
        self.best_mask = torch.sigmoid(self.mask_free).detach().clone()
        self.best_pattern = torch.sigmoid(self.pattern_free).detach().clone()

    def run(self) -> int:
        """Optimise until every class has stopped or ``steps`` ran out; the number of steps run.

        Which classes are still active is read every ``patience`` steps, so the
        host waits for the device rarely; stopped classes then leave the batch
        and their best masks are frozen.
        """
        for step in range(1, self.settings.steps + 1):
            self.step()
            if step % self.settings.patience == 0:
                self.rows = torch.nonzero(self.active).flatten()
                if len(self.rows) == 0:
                    return step
        return self.settings.steps

    def step(self) -> None:
        """One Adam step on every class, then lambda, best mask and early stop per class."""
        n, b = len(self.images), self.settings.batch_size
        index = torch.randint(n, (b,), device=self.generator.device, generator=self.generator).to(self.images.device)
        batch = self.images[index]  # (B, C, H, W)
        rows = self.rows  # the R classes still active at the last check
        mask, pattern = torch.sigmoid(self.mask_free[rows]), torch.sigmoid(self.pattern_free[rows])
        stamped = (1 - mask[:, None]) * batch[None] + (mask * pattern)[:, None]  # (R, B, C, H, W)
        logits = self.model(stamped.flatten(0, 1))  # (R * B, classes)
        targets = self.labels[rows].repeat_interleave(b)
        ce = F.cross_entropy(logits, targets, reduction="none").view(-1, b).mean(1)  # (R,)
        l1 = mask.flatten(1).sum(1)  # (R,)
        loss = (ce + self.cost[rows] * l1).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            success = (logits.argmax(1) == targets).float().view(-1, b).mean(1)
            self.record(rows, mask.detach(), pattern.detach(), l1.detach(), success)

    def record(
        self, rows: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor, l1: torch.Tensor, success: torch.Tensor
    ) -> None:
        """Keep improved masks, adapt lambda, and stop classes whose best norm stalls (Neural Cleanse).

        ``rows`` are the classes this step optimised; the others count as inactive.
        """
        s = self.settings
        active = torch.zeros_like(self.active).index_fill(0, rows, True) & self.active
        mask, pattern = _scatter(rows, mask, self.best_mask), _scatter(rows, pattern, self.best_pattern)
        l1, success = _scatter(rows, l1, self.best_l1), _scatter(rows, success, self.cost)
        reached = success >= s.attack_success_target
        better = active & reached & (l1 < self.best_l1)
        self.best_l1 = torch.where(better, l1, self.best_l1)
        self.best_mask = torch.where(better[:, None, None, None], mask, self.best_mask)
        self.best_pattern = torch.where(better[:, None, None, None], pattern, self.best_pattern)

        self.above = torch.where(active & reached, self.above + 1, torch.zeros_like(self.above))
        self.below = torch.where(active & ~reached, self.below + 1, torch.zeros_like(self.below))
        up, down = self.above >= s.patience, self.below >= s.patience
        self.cost = torch.where(up, self.cost * s.cost_multiplier, self.cost)
        self.cost = torch.where(down, self.cost / s.cost_multiplier**1.5, self.cost)
        self.above, self.below = torch.where(up, 0, self.above), torch.where(down, 0, self.below)
        self.raised, self.lowered = self.raised | up, self.lowered | down

        # Stalls count only once lambda has gone both ways, i.e. it brackets the balance of CE and norm.
        settled = self.raised & self.lowered & torch.isfinite(self.best_l1)
        stalled = settled & (self.best_l1 >= s.early_stop_threshold * self.last_best)
        self.stale = torch.where(active & stalled, self.stale + 1, torch.where(active, 0, self.stale))
        self.last_best = torch.where(active & settled, torch.minimum(self.best_l1, self.last_best), self.last_best)
        self.active = active & (self.stale < s.early_stop_patience)

    def best(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks, patterns and L1 norms: the smallest that reached the target, else the last ones."""
        found = torch.isfinite(self.best_l1)[:, None, None, None]
        mask = torch.where(found, self.best_mask, torch.sigmoid(self.mask_free).detach())
        pattern = torch.where(found, self.best_pattern, torch.sigmoid(self.pattern_free).detach())
        return mask, pattern, mask.flatten(1).sum(1)


def _scatter(rows: torch.Tensor, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of the optimised rows placed into a zero tensor shaped like ``like`` (all classes)."""
    return torch.zeros_like(like).index_copy(0, rows, values.to(like.dtype))


@torch.no_grad()
def _attack_success(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor, classes: list[int],
    batch_size: int = 1024,
) -> torch.Tensor:
    """Per class, the share of all ``images`` that its stamped trigger sends to the class."""
    hits = torch.zeros(len(classes), device=images.device)
    for k, label in enumerate(classes):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            stamped = (1 - masks[k]) * x + masks[k] * patterns[k]
            hits[k] += (model(stamped).argmax(1) == label).sum()
    return hits / max(1, len(images))


@torch.no_grad()
def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
    if len(images) == 0:
        raise ValueError("Neural Cleanse needs at least one clean image")
    return int(model(images[:1]).shape[1])


def _uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


@contextmanager
def _inspecting(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen weights for the search; the mode and ``requires_grad`` flags restored after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
