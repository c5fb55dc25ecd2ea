"""Neural Cleanse trigger reconstruction for every class at once, and MAD outlier detection.

Wang et al., Neural Cleanse, IEEE S&P 2019, Sec. IV-A (reverse-engineering)
and Sec. IV-B (MAD outlier detection); used by Aiken et al., Neural Network
Laundering, Sec. 2.2 (Eq. 1, 2), Sec. 4 Step 1 and Step 3, Sec. 7.6.

Every class is optimised in one batched tensor: masks (K, 1, H, W) and
patterns (K, C, H, W); a step stamps the same B adversary images with every
class's trigger and runs one (K*B, C, H, W) forward and backward pass; the
schedule (lambda, early stop) follows the reference code, per epoch. Classes
do not interact: the loss is a sum of per-class terms, Adam is element-wise,
and each class has its own lambda, counters and early stop; so a class comes
out the same whether it is optimised with the others or alone
(``classes=[k]``), up to float round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wmbench.files import load_arrays, save_arrays_atomic

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate a normal distribution's standard deviation


@dataclass
class NeuralCleanseParams:
    """``reconstruct.*`` in params.yaml: the optimisation and the outlier rule.

    The schedule is Neural Cleanse's reference code (Wang et al., IEEE S&P
    2019, github.com/bolunwang/backdoor, ``visualizer.py``), counted in the
    same units. One *epoch* is ``epoch_images`` of the adversary's images,
    in shuffled passes that cycle a set smaller than that (the reference's
    1,000 samples in mini-batches of 32, from a generator that loops), for
    every class;
    the attack success and the mask norm that decide everything are the means
    over an epoch, never one mini-batch's. lambda starts at 0, so the search
    first finds any trigger; once one succeeds for ``patience`` epochs lambda
    is set to ``init_cost`` and then raised (lowered) after ``patience``
    epochs above (below) the target; a class stops once lambda has gone both
    ways and its best norm has not improved for ``early_stop_patience``
    epochs (the reference: 5 x patience). Masks and patterns are sigmoids of
    free parameters at lr 0.2, which is the reference's tanh / 2 + 0.5 at lr
    0.1 exactly (sigmoid(2x) = tanh(x) / 2 + 0.5, and Adam's steps do not
    depend on the gradient's scale).
    ``epoch_images`` defaults to 256 so the quick ``digits`` default (136
    adversary images) stays within minutes; the presets for full-size data
    (``wmbench preset``) and the results in ``results/`` use 1,024, the
    reference's epoch. On ``digits`` both find the square: anomaly index 4.3
    at 256 (42 s) and 5.2 at 1,024 (283 s, both on a loaded 2-core machine).
    ``restarts``: the search is non-convex, and which trigger a class ends
    with depends on its random start. On a Fashion-MNIST square model (seed 2)
    one start took the target to a 60-pixel mask and stopped there while
    another found the 4x4 square (L1 12.5), so Neural Cleanse missed the
    watermark. Neural Cleanse's objective is the *smallest* trigger per class
    (Sec. IV-A); ``restarts`` > 1 runs independent searches and keeps, per
    class, the smallest norm among those that reached the attack-success
    target: a better minimiser of the same objective, at ``restarts`` times
    the cost. 1 (the reference) in params.yaml; the full-size presets use 3.
    An earlier version counted patience in single mini-batches of 16 and
    judged success on one of them: on Fashion-MNIST it stopped classes while
    their masks were near random and missed a 4x4 square (issue 12).
    """

    epochs: int = 300  # most epochs per class (reference: 1,000); classes stop early far sooner
    epoch_images: int = 256  # stamped adversary images per class per epoch, cycling a small set (reference: 1,000)
    batch_size: int = 32  # images per class per optimisation step (reference: 32)
    lr: float = 0.2  # Adam (betas 0.5, 0.9) on the sigmoid's free parameters = the reference's tanh at 0.1
    init_cost: float = 1e-3  # lambda once a trigger first succeeds; 0 before (reference: 1e-3, reset to 0)
    attack_success_target: float = 0.99  # an epoch succeeds when this share of its stamped images go to the class
    patience: int = 5  # epochs above (below) the target before lambda is raised (lowered) (reference: 5)
    cost_multiplier: float = 1.5  # lambda *= this to raise it, /= this**1.5 to lower it (reference class default)
    early_stop_patience: int = 25  # epochs without the best norm improving before a class stops (reference: 25)
    early_stop_threshold: float = 0.99  # "improved": the best norm fell below this share of the last best
    anomaly_threshold: float = 2.0  # flag classes whose anomaly index exceeds this (Neural Cleanse: 2)
    restarts: int = 1  # independent searches per class, the smallest successful trigger kept (reference: 1)

    RENAMED: ClassVar[dict[str, str]] = {"steps": "epochs (epoch_images images per class each; steps were batches)"}

    def __post_init__(self) -> None:
        for name in ("epochs", "epoch_images", "batch_size", "patience", "early_stop_patience", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0 or self.init_cost <= 0:
            raise ValueError(f"lr={self.lr} and init_cost={self.init_cost} must be positive")
        if not 0 < self.attack_success_target <= 1:
            raise ValueError(f"attack_success_target={self.attack_success_target} is outside (0, 1]")
        if self.cost_multiplier <= 1:
            raise ValueError(f"cost_multiplier={self.cost_multiplier} must exceed 1")
        if not 0 < self.early_stop_threshold <= 1:
            raise ValueError(f"early_stop_threshold={self.early_stop_threshold} is outside (0, 1]")
        if self.anomaly_threshold <= 0:
            raise ValueError(f"anomaly_threshold={self.anomaly_threshold} must be positive")

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches per epoch (the reference's ``mini_batch``: 1,000 / 32, rounded up here)."""
        return -(-self.epoch_images // self.batch_size)


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
    epochs: int = 0  # epochs run before every class had stopped, summed over restarts

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
    rank: torch.Tensor  # (K,) 1 for the smallest norm, K for the largest (ties share the better rank)


def neural_cleanse(
    model: nn.Module,
    images: torch.Tensor,
    settings: NeuralCleanseParams,
    generator: torch.Generator,
    classes: Sequence[int] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> Reconstruction:
    """Reverse-engineer the smallest trigger (mask m, pattern Delta) for every class at once.

    Wang et al., Neural Cleanse, Sec. IV-A; Aiken et al., Sec. 2.2, Eq. (2):
    minimise CE(y, f(A(x, m, Delta))) + lambda * |m|_1 with m = sigmoid(free
    parameter) and Delta = sigmoid(free parameter), lambda adapted per class.

    ``images``: the adversary's clean images, float (N, C, H, W) in [0, 1], on
    the model's device. ``classes`` picks a subset (default: every class). The
    model's weights, gradients and train/eval mode are left as they were.
    ``generator`` (on the images' device) draws the initial triggers for all
    classes, then each epoch's image order, shared by all classes, so
    a class's random stream does not depend on which others run beside it.
    ``on_epoch(epoch, classes_still_active)`` is called after every epoch (progress;
    epochs count on across ``settings.restarts``). The returned ``epochs`` is the
    total over restarts.
    """
    with inspecting(model):
        num_classes = _num_classes(model, images)
        chosen = list(range(num_classes)) if classes is None else [int(k) for k in classes]
        bad = [k for k in chosen if not 0 <= k < num_classes]
        if bad or not chosen:
            raise ValueError(f"classes {bad or chosen} are not classes of this model; use 0..{num_classes - 1}")
        epochs, kept = 0, None
        for _ in range(settings.restarts):  # each start continues the generator's stream: a new draw
            search = _Search(model, images, settings, generator, chosen, num_classes)
            offset = epochs
            search.on_epoch = None if on_epoch is None else (lambda e, n, o=offset: on_epoch(o + e, n))
            epochs += search.run()
            found = (*search.best(), torch.isfinite(search.best_l1))
            kept = found if kept is None else _smaller(kept, found)
        masks, patterns, l1, _ = kept
        success = _attack_success(model, images, masks, patterns, chosen)
    return Reconstruction(masks, patterns, l1, success, None if classes is None else chosen, epochs)


def save_reconstruction(path: str | Path, found: Reconstruction) -> None:
    """Masks (K, H, W), patterns, norms and attack success as an ``.npz`` (row k: class k), atomically."""
    save_arrays_atomic(path, masks=found.masks[:, 0].float().cpu().numpy(),
                       patterns=found.patterns.float().cpu().numpy(), l1=found.l1.float().cpu().numpy(),
                       attack_success=found.attack_success.float().cpu().numpy())


def load_reconstruction(path: str | Path, device: torch.device) -> Reconstruction:
    """What :func:`save_reconstruction` wrote, on ``device``; names the stage to run when it is missing.

    Files from before the norms were saved are refused with the fix (re-run the stage).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found; run `dvc repro reconstruct` first")
    arrays = load_arrays(path)
    missing = {"masks", "patterns", "l1", "attack_success"} - set(arrays)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; re-run `dvc repro -f reconstruct`")
    tensors = {key: torch.from_numpy(arrays[key]).to(device) for key in ("masks", "patterns", "l1", "attack_success")}
    return Reconstruction(tensors["masks"][:, None], tensors["patterns"], tensors["l1"], tensors["attack_success"])


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
        rank=1 + (l1[None, :] < l1[:, None]).sum(1),
    )


class _Search:
    """The batched optimisation state: free parameters, per-class lambda, counters and best masks.

    Every per-class quantity is a tensor with a leading class axis, updated by
    ``torch.where`` once per epoch; the host reads which classes are still
    active once per epoch, nothing inside one.
    """

    on_epoch: Callable[[int, int], None] | None = None  # see neural_cleanse

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
        falses = torch.zeros(k, device=device, dtype=torch.bool)
        self.cost = torch.zeros(k, device=device)  # lambda: 0 until a trigger first succeeds (reference)
        self.started = zeros.clone()  # consecutive successful epochs at lambda 0
        self.above, self.below = zeros.clone(), zeros.clone()  # consecutive epochs above / below the target
        self.raised, self.lowered = falses.clone(), falses.clone()  # lambda went up / down since it was set
        self.stale = zeros.clone()  # epochs without the best norm improving
        self.last_best = torch.full((k,), math.inf, device=device)
        self.active = ~falses
        self.rows = torch.arange(k, device=device)
        self.best_l1 = torch.full((k,), math.inf, device=device)
        self.best_mask = torch.sigmoid(self.mask_free).detach().clone()
        self.best_pattern = torch.sigmoid(self.pattern_free).detach().clone()

    def run(self) -> int:
        """Optimise until every class has stopped or ``epochs`` ran out; the number of epochs run."""
        for epoch in range(1, self.settings.epochs + 1):
            self.epoch()
            self.rows = torch.nonzero(self.active).flatten()
            if self.on_epoch is not None:
                self.on_epoch(epoch, len(self.rows))
            if len(self.rows) == 0:
                return epoch
        return self.settings.epochs

    def epoch(self) -> None:
        """An epoch of Adam steps on every active class, then the epoch's bookkeeping."""
        s = self.settings
        b, steps = s.batch_size, s.steps_per_epoch
        order = self.epoch_order(steps * b)
        rows = self.rows  # the R classes still active
        targets = self.labels[rows].repeat_interleave(b)
        success = torch.zeros(len(rows), device=self.images.device)
        norm = torch.zeros(len(rows), device=self.images.device)
        for step in range(steps):
            batch = self.images[order[step * b : (step + 1) * b]]  # (B, C, H, W)
            mask, pattern = torch.sigmoid(self.mask_free[rows]), torch.sigmoid(self.pattern_free[rows])
            stamped = (1 - mask[:, None]) * batch[None] + (mask * pattern)[:, None]  # (R, B, C, H, W)
            logits = self.model(stamped.flatten(0, 1))  # (R * B, classes)
            ce = F.cross_entropy(logits, targets, reduction="none").view(-1, b).mean(1)  # (R,)
            l1 = mask.flatten(1).sum(1)  # (R,)
            loss = (ce + self.cost[rows] * l1).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                success += (logits.argmax(1) == targets).float().view(-1, b).mean(1)
                norm += l1.detach()
        with torch.no_grad():
            self.record(rows, success / steps, norm / steps)

    def epoch_order(self, count: int) -> torch.Tensor:
        """``count`` image indices: shuffled passes over the adversary's images, as many as needed."""
        n = len(self.images)
        passes = [torch.randperm(n, device=self.generator.device, generator=self.generator)
                  for _ in range(-(-count // n))]
        return torch.cat(passes)[:count].to(self.images.device)

    def record(self, rows: torch.Tensor, success: torch.Tensor, norm: torch.Tensor) -> None:
        """The reference's end-of-epoch steps per class: keep the best mask, early stop, then adapt lambda.

        ``success`` and ``norm`` are the epoch's means for the optimised ``rows``;
        the other classes count as inactive.
        """
        s = self.settings
        active = torch.zeros_like(self.active).index_fill(0, rows, True) & self.active
        success, norm = _scatter(rows, success, self.cost), _scatter(rows, norm, self.best_l1)
        reached = active & (success >= s.attack_success_target)

        # Keep the current trigger when the epoch succeeded with a smaller mean norm than any before.
        better = reached & (norm < self.best_l1)
        mask, pattern = torch.sigmoid(self.mask_free), torch.sigmoid(self.pattern_free)
        self.best_l1 = torch.where(better, norm, self.best_l1)
        self.best_mask = torch.where(better[:, None, None, None], mask, self.best_mask)
        self.best_pattern = torch.where(better[:, None, None, None], pattern, self.best_pattern)

        # Early stop: lambda has gone both ways and the best norm has stalled for early_stop_patience epochs.
        found = torch.isfinite(self.best_l1)
        stalled = self.best_l1 >= s.early_stop_threshold * self.last_best
        self.stale = torch.where(active & found, torch.where(stalled, self.stale + 1, 0), self.stale)
        self.last_best = torch.where(active, torch.minimum(self.best_l1, self.last_best), self.last_best)
        done = self.raised & self.lowered & (self.stale >= s.early_stop_patience)

        # lambda: set to init_cost after `patience` successful epochs at 0, then raised / lowered.
        self.started = torch.where(active & reached & (self.cost == 0), self.started + 1,
                                   torch.where(active, 0, self.started))
        begin = self.started >= s.patience
        self.cost = torch.where(begin, s.init_cost, self.cost)
        self.started = torch.where(begin, 0, self.started)
        self.above, self.below = torch.where(begin, 0, self.above), torch.where(begin, 0, self.below)
        self.raised, self.lowered = self.raised & ~begin, self.lowered & ~begin
        self.above = torch.where(active, torch.where(reached, self.above + 1, 0), self.above)
        self.below = torch.where(active, torch.where(reached, 0, self.below + 1), self.below)
        up = self.above >= s.patience
        down = ~up & (self.below >= s.patience)
        self.cost = torch.where(up, self.cost * s.cost_multiplier, self.cost)
        self.cost = torch.where(down, self.cost / s.cost_multiplier**1.5, self.cost)
        self.above, self.below = torch.where(up, 0, self.above), torch.where(down, 0, self.below)
        self.raised, self.lowered = self.raised | up, self.lowered | down
        self.active = active & ~done

    def best(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks, patterns and L1 norms: the smallest that reached the target, else the last ones."""
        found = torch.isfinite(self.best_l1)[:, None, None, None]
        mask = torch.where(found, self.best_mask, torch.sigmoid(self.mask_free).detach())
        pattern = torch.where(found, self.best_pattern, torch.sigmoid(self.pattern_free).detach())
        return mask, pattern, mask.flatten(1).sum(1)


def _smaller(
    kept: tuple[torch.Tensor, ...], found: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Per class, the restart with the smaller norm among those that succeeded (any, if neither did)."""
    masks, patterns, l1, succeeded = kept
    new_masks, new_patterns, new_l1, new_succeeded = found
    take = (new_succeeded & ~succeeded) | ((new_succeeded == succeeded) & (new_l1 < l1))
    pick = take[:, None, None, None]
    return (torch.where(pick, new_masks, masks), torch.where(pick, new_patterns, patterns),
            torch.where(take, new_l1, l1), succeeded | new_succeeded)


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
def inspecting(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen weights for a trigger search (here and :mod:`wmbench.proxy`); the mode and
    ``requires_grad`` flags restored after."""
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
