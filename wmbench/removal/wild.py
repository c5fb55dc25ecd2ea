"""WILD: fine-tune on randomly erased copies while aligning their features with the clean ones.

Liu et al., Removing Backdoor-Based Watermarks in Neural Networks with
Limited Data (WILD), ICPR 2020, Sec. III-B, Eq. (2):
``L = L_aug + beta * D(G(d_clean), G(d_aug))``, where ``d_aug`` are Random
Erasing copies of the adversary's images (Sec. III-A, IV-A), ``L_aug`` their
cross-entropy, and ``G`` the flattened, softmax-normalised output of the last
convolutional layer (``model.features``). ``D`` is cross-entropy (``wild_ce``),
Jensen-Shannon divergence (``wild_js``) or a discriminator network (``wild_dn``).

The softmax's scale is ours to choose (:class:`WildDivergenceParams`): taken on
the raw features, as the paper words it, G is nearly uniform and D's gradient
a few thousandths of ``L_aug``'s at the paper's beta (docs/wild_alignment.md).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from wmbench.augment import ERASE_AREA, EraseFill, random_erasing
from wmbench.params import LrSchedule
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, TrainingSettings, copy_model
from wmbench.seeding import derive_seed, seeded_init
from wmbench.training import DeviceData, fit, logits, make_optimizer, make_scheduler, soft_targets

Divergence = Literal["ce", "js"]
FeatureNormalization = Literal["std", "none"]  # what G divides each image's features by before the softmax


@dataclass
class WildParams(TrainingSettings):
    """``removal.wild_ce`` / ``removal.wild_js`` (and ``removal.wild_dn``): WILD's settings.

    - ``epochs``: passes over the adversary's images; each pass trains on
      ``copies`` freshly erased copies of every image. 12 by default (our
      choice, the paper gives no count): 3-5 s on one CPU thread for the
      digits default, where wm_acc is still falling at the end (content
      scheme, seed 0, beta 1: 1.0 -> 0.17 with CE, 0.44 with JS, 0.18 with
      DN; 0.17, 0.29, 0.08 with ``erase_fill: gaussian``; CE / JS with the
      earlier G of :class:`WildDivergenceParams`: 0.42 / 0.47, gaussian
      0.38 / 0.36).
    - ``batch_size``: clean images per step; a step trains on
      ``batch_size * copies`` erased images (8 * 10 = 80; our choice, the
      paper gives none). Smaller steps remove more per epoch than larger ones
      (32 * 10 left wm_acc ~0.7 after 8 epochs).
    - ``optimizer`` / ``lr``: RMSprop at 0.001, constant (Sec. IV-A).
    - ``lr_schedule``: ``constant`` (Sec. IV-A, default) or ``cosine``
      (anneal to 0 over ``epochs``; our option, not the paper's: at a
      constant lr the last epoch's test accuracy on Fashion-MNIST swings by
      1.5-2.4 points from epoch to epoch, and annealing ends the run in a
      settled model instead of wherever the last step left it).
    - ``beta``: the alignment weight of Eq. (2), filled from the top-level
      ``beta``. Paper, Table I: MNIST CE 0.1, JS 1; CIFAR-10 CE 2, JS 10.
      For ``wild_dn`` it weighs the "judged clean" term; the paper adds that
      term unweighted, i.e. ``beta`` = 1.
    - ``copies``: erased copies per image ("augmented ten times", Sec. IV-A).
    - ``erase_probability``: the chance that a copy is erased at all (Zhong et
      al.'s p). 1 by default: WILD trains on erased copies only (Sec. III-A,
      "augmented ten times"), so ``L_aug`` never sees a clean image; Zhong et
      al. erase with probability 0.5, which keeps about half the copies clean.
      A copy left clean still pairs with its clean image (D is then 0 for it).
      On Fashion-MNIST (10 %, 3 seeds, results/wild_erase_probe.csv) 0.5
      saved at most 0.7 points and left 8-27 % of the mark instead of 2-8 %.
    - ``distill_weight``: not in the paper, our extension (default 0, the
      paper's labels in ``L_aug``). The share of each erased copy's target
      taken from the watermarked model's softmax on the copy's *clean* image
      (knowledge distillation, Hinton et al. 2015, with the model the
      adversary holds as teacher), the rest its one-hot label; 1 trains on the
      teacher's probabilities only. On clean images the teacher's outputs carry
      the accuracy the adversary wants to keep and none of the trigger, which
      the erased copies never show it; the same idea as Laundering's
      ``distill_weight``. On Fashion-MNIST (10 %, 3 seeds,
      results/wild_distill_probe.csv) it did not lower WILD's cost (CE 2.9
      points on content either way; square 2.7 against 3.4, with more left).
    - ``erase_fill``: what the erased rectangles hold, per pixel and channel
      (:func:`wmbench.augment.random_erasing`). ``uniform`` (default): uniform
      random values, as Random Erasing defines it (Zhong et al., AAAI 2020,
      Algorithm 1: "a random value in [0, 255]"), which WILD cites for its
      augmentation. ``gaussian``: N(0.5, 0.5^2) clipped to [0, 1], WILD's own
      wording ("random Gaussian noises", Sec. III-A); the clip saturates about
      a third of the erased values at 0 or 1 (the earlier default).
    - ``erase_max_area``: the largest share of the image one rectangle
      covers (Zhong et al.'s s_h, 0.4 there and by default; s_l stays 0.02).
      Our option, not the paper's (WILD gives no area range): smaller
      rectangles leave more of each copy intact, the knob that trades
      removal for accuracy inside the augmentation itself. On Fashion-MNIST
      (10 %, 3 seeds, results/wild_sgd_area_probe.csv) 0.1 saved 0.5-1.3
      points and left 16-28 % of the mark instead of 3-12 %.
    - ``momentum``: the optimizer's momentum (0 by default: WILD's RMSprop
      has none, Sec. IV-A). With ``optimizer: sgd`` it gives the SGD with
      momentum that REFIT's authors and most fine-tuning recipes run; an
      option to test whether WILD's accuracy cost comes from its optimizer.
      It does not: SGD at momentum 0.9 cost 4.5-4.8 points at lr 0.003 and
      6.9-7.5 at 0.01, against RMSprop's 3.4-3.8 (same probe).
    """

    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.001
    lr_schedule: LrSchedule = "constant"
    beta: float = 1.0
    copies: int = 10
    erase_fill: EraseFill = "uniform"
    erase_probability: float = 1.0
    distill_weight: float = 0.0  # not in the paper: share of the watermarked model's softmax in L_aug's targets
    erase_max_area: float = ERASE_AREA[1]  # Zhong et al.'s s_h; s_l stays ERASE_AREA[0]
    momentum: float = 0.0  # the optimizer's; WILD's RMSprop has none

    def __post_init__(self) -> None:
        super().__post_init__()
        if not ERASE_AREA[0] <= self.erase_max_area <= 1:
            raise ValueError(f"erase_max_area={self.erase_max_area} is outside [{ERASE_AREA[0]}, 1]: the largest "
                             f"share of the image a rectangle covers (Zhong et al.: 0.4), at least the smallest, "
                             f"{ERASE_AREA[0]}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} is outside [0, 1); 0 for WILD's RMSprop, e.g. 0.9 with sgd")
        if self.momentum and self.optimizer == "adam":
            raise ValueError(f"momentum={self.momentum} with optimizer adam, which has no momentum setting; "
                             "use optimizer sgd or rmsprop, or momentum 0")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight={self.distill_weight} is outside [0, 1]; 0 for the paper's labels, "
                             "1 for the watermarked model's probabilities only")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0")
        if self.copies <= 0:
            raise ValueError(f"copies={self.copies} must be positive")
        if not 0 < self.erase_probability <= 1:
            raise ValueError(f"erase_probability={self.erase_probability} is outside (0, 1]; 1 erases every copy "
                             "(WILD), 0.5 is Zhong et al.'s Random Erasing")
        if self.erase_fill not in ("uniform", "gaussian"):
            raise ValueError(f"erase_fill={self.erase_fill!r}; valid: uniform, gaussian")


@dataclass
class WildDivergenceParams(WildParams):
    """``removal.wild_ce`` / ``removal.wild_js``: :class:`WildParams` plus the scale of G's softmax.

    Liu et al., WILD, Sec. III-B: G is "the features after the last
    convolutional layer [...] flattened into a one-dimensional vector, then
    normalized by a softmax function", and Eq. (2) weighs D(G(clean), G(aug))
    by beta (Table I: MNIST CE 0.1, JS 1). A softmax is not scale-free, and
    the paper prints neither its features' scale nor a temperature, so its
    beta values belong to a scale we cannot recover. On our LeNet the raw
    post-pool features (400 values, 65 % zero, std ~0.36 on digits) give a
    softmax whose largest probability is ~0.02 against a uniform 0.0025: D's
    gradient is 0.1-1.2 % of L_aug's, and at the paper's beta neither D nor
    the watermark retention moves: the alignment does nothing
    (docs/wild_alignment.md). We keep D as the paper defines it and take
    G(f) = softmax(f / (T * s(f))):

    - ``feature_normalization``: ``std`` (default): s(f) is the standard
      deviation of the image's own flattened features, gradient flowing
      through it. G then depends on the features' shape, not their scale: a
      ReLU network can rescale its last conv output and undo that in the first
      dense layer at no cost, and with raw features shrinking every feature
      (towards a uniform softmax) lowers D without aligning anything; with
      ``std`` it cannot, and one T gives the same sharpness on every
      architecture. ``none``: s(f) = 1, the raw features, as the paper words it.
    - ``feature_temperature``: T > 0, in units of s(f). 0.5 by default: the
      round value at which D's gradient on the digits LeNet reaches ~5 % of
      L_aug's at the paper's MNIST beta from the first step (CE at beta 0.1 /
      JS at beta 1, content: 4.9 / 4.6 %; noise 7.0 / 3.2 %; square 21 / 23 %)
      and 20-80 % once L_aug has fallen, against 0.1-1.2 % for the old G
      (tests/test_wild.py, docs/wild_alignment.md); T = 1 leaves CE at
      1.7-6 %. G's largest probability is then ~0.6-0.7, so many features
      still count; lower T sharpens G towards the one largest feature, where
      JS saturates (its gradient stops growing).

    Differences from the paper: the division by T * s(f). ``feature_normalization:
    none`` with ``feature_temperature: 1.0`` reproduces the paper's wording and
    our earlier G. Unchanged: D is summed over the features and averaged over
    image pairs (the per-image KL / JS; a mean over the features would divide
    it by their number, 400 for LeNet), and G is taken on ``model.features``'
    output, the tensor the classifier flattens (the last conv's pre-activation
    output, 1,600 values for LeNet, is as uniform: gradient ratio 0.25 / 0.8 %
    instead of 0.15 / 0.55 % at T = 1).
    """

    feature_normalization: FeatureNormalization = "std"
    feature_temperature: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_normalization not in ("std", "none"):
            raise ValueError(f"feature_normalization={self.feature_normalization!r}; valid: std, none")
        if not self.feature_temperature > 0:
            raise ValueError(f"feature_temperature={self.feature_temperature} must be positive")


@dataclass
class WildDNParams(WildParams):
    """``removal.wild_dn``: :class:`WildParams` plus the discriminator's lr.

    - ``discriminator_lr``: lr of the discriminator's own optimizer (same
      kind and ``momentum`` as the model's); our choice, the model's lr, as the paper gives none.
    - ``discriminator_input``: what the discriminator sees of each image.
      ``distribution`` (default): G itself, the probability vector CE and JS
      compare (:func:`feature_distribution`, std-normalised, at
      ``feature_temperature``), so that all three variants align the same
      distribution (Sec. III-B) and the model cannot fool the discriminator
      by rescaling its features. ``raw``: the flattened features as they are
      (the earlier default). ``std``: divided by their own standard deviation.
      Chosen on the adversary's own held-out images (``data.adversary_holdout``
      0.1, Fashion-MNIST square, seed 0, the paper's unweighted term, beta 1):
      holdout accuracy 0.887 with ``distribution`` against 0.792 ``raw`` and
      0.813 ``std`` (erasing alone: 0.888); the discriminator then ends at 66 %
      instead of 79 % right. On Fashion-MNIST (10 % adversary data, 3 seeds,
      results/wild_fashion_mnist.csv) ``raw`` cost 11-16 points of test
      accuracy and left 1-3 % retention; ``distribution`` costs 2.7-3.7 and
      leaves 7-15 %, a few points above the vanilla threshold.
    - ``feature_temperature``: G's T when ``discriminator_input`` is ``distribution``.
    """

    discriminator_lr: float = 0.001
    discriminator_input: Literal["raw", "std", "distribution"] = "distribution"
    feature_temperature: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator_lr <= 0:
            raise ValueError(f"discriminator_lr={self.discriminator_lr} must be positive")
        if self.discriminator_input not in ("raw", "std", "distribution"):
            raise ValueError(f"discriminator_input={self.discriminator_input!r}; valid: raw, std, distribution")
        if not self.feature_temperature > 0:
            raise ValueError(f"feature_temperature={self.feature_temperature} must be positive")


def feature_distribution(
    features: torch.Tensor, *, normalization: FeatureNormalization, temperature: float
) -> torch.Tensor:
    """Log of G: each image's features flattened, divided by T * s(f), softmax-normalised; (N, D).

    Liu et al., WILD, Sec. III-B ("flattened into a one-dimensional vector,
    then normalized by a softmax function"); the division is ours, see
    :class:`WildDivergenceParams`. ``normalization="std"``: s(f) is the
    standard deviation over the image's own features (an all-zero image keeps
    a uniform G); ``"none"``: s(f) = 1.
    """
    flat = features.flatten(1)
    if normalization == "std":
        flat = flat / flat.std(1, keepdim=True).clamp_min(1e-12)
    elif normalization != "none":
        raise ValueError(f"unknown feature normalization {normalization!r}; valid: std, none")
    return F.log_softmax(flat / temperature, dim=1)


def alignment_loss(
    kind: Divergence,
    clean_features: torch.Tensor,
    augmented_features: torch.Tensor,
    *,
    normalization: FeatureNormalization,
    temperature: float,
) -> torch.Tensor:
    """D(G(clean), G(augmented)) summed over features, averaged over image pairs; zero when they agree.

    Liu et al., WILD, Sec. III-B, Eq. (3) and (4); both arguments are raw
    features (N, ...) of paired images, row i of one belonging to row i of the
    other; G is :func:`feature_distribution` with ``normalization`` and ``temperature``.
    - ``"ce"``: the cross-entropy H(P, Q) = -sum P log Q with target P = G(clean),
      less the target's entropy H(P): that is KL(P || Q). Our choice: Eq. (3)
      drops the minus sign, and H(P, Q) never reaches 0 for identical
      features; subtracting H(P) keeps the paper's gradient for the augmented
      side exactly and makes "aligned" read as 0. Natural log.
    - ``"js"``: Jensen-Shannon divergence with log base 2, so that it lies in
      [0, 1] as Sec. III-B states.
    """
    log_p = feature_distribution(clean_features, normalization=normalization, temperature=temperature)
    log_q = feature_distribution(augmented_features, normalization=normalization, temperature=temperature)
    if kind == "ce":
        return (log_p.exp() * (log_p - log_q)).sum(1).mean()
    if kind == "js":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2)
        kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
        kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
        return ((kl_pm + kl_qm) / 2).mean() / math.log(2)
    raise ValueError(f"unknown divergence {kind!r}; valid: ce, js")


def build_discriminator(in_features: int) -> nn.Module:
    """Four fully connected layers, one logit out: "clean" (1) versus "augmented" (0).

    Liu et al., WILD, Sec. IV-A ("a discriminative network composed of
    four-layer fully connected layers"); the widths 256-128-64 are our choice.
    """
    return nn.Sequential(
        nn.Linear(in_features, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 1),
    )


def _check_classifier(model: nn.Module, name: str) -> None:
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        raise ValueError(
            f"{name} aligns the last convolutional features, so the model needs `.features` and "
            f"`.classifier` (a wmbench Classifier); got {type(model).__name__}"
        )


def _erased_pairs(
    images: torch.Tensor, copies: int, generator: torch.Generator, params: WildParams, probability: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Clean images followed by ``copies`` erased copies of them (copy k of image i at n + k*n + i).

    The rectangles follow ``params`` (``erase_fill``, ``erase_max_area``); ``probability`` is the chance a
    copy is erased (``erase_probability`` in training, 1 for the reports).
    """
    erased = random_erasing(images.repeat(copies, 1, 1, 1), generator, fill=params.erase_fill,
                            probability=probability, area=(ERASE_AREA[0], params.erase_max_area))
    return torch.cat([images, erased]), len(images)


class _Wild(Removal):
    """The shared loop of the three variants; ``alignment`` is what differs."""

    Params: ClassVar[type] = WildParams
    name: ClassVar[str]

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        """Fine-tune a copy on erased copies with ``L_aug + beta * D`` (Eq. 2); clean images only feed D.

        Our choices where Sec. III-B / IV-A are vague: each erased copy is
        paired with its own clean image, G being a distribution per image;
        G(clean) is the target and passes no gradient (the paper "pushes
        G(d_aug) close to G(d_clean)", and the clean images' own loss does
        not train the model); the rectangles are drawn afresh for every
        batch instead of once for a fixed ten-fold set, which gives the same
        number of erased images per epoch.
        """
        _check_classifier(model, self.name)
        p = self.params
        adversary = data.adversary
        if p.distill_weight > 0:  # targets from the watermarked model, before it is changed
            teacher = logits(model, adversary).softmax(1)
            adversary = DeviceData(adversary.images, soft_targets(adversary.labels, teacher, p.distill_weight))
        model = copy_model(model)
        erasing = data.generator(f"{self.name}-erasing")
        self.setup(model, data)

        def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            classification, alignment = self.loss_terms(model, images, labels, erasing)
            return classification + p.beta * alignment

        optimizer = make_optimizer(p.optimizer, model.parameters(), p.lr, momentum=p.momentum)
        history = fit(model, adversary, optimizer, epochs=p.epochs, batch_size=p.batch_size,
                      generator=data.generator(f"{self.name}-shuffle"), loss_fn=loss_fn,
                      evaluate=data.evaluate, scheduler=make_scheduler(p.lr_schedule, optimizer, p.epochs),
                      name=self.name)
        return RemovalResult(model.eval(), history, self.report(model, data))

    def loss_terms(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, erasing: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2)'s two terms for one batch of clean images: ``L_aug`` and D(G(clean), G(aug)), unweighted.

        ``copies`` erased copies of every image are drawn with ``erasing``;
        for ``wild_dn`` (with gradients on) this also steps the discriminator.
        """
        p = self.params
        # one forward of clean + erased keeps batch-norm statistics shared
        batch, n = _erased_pairs(images, p.copies, erasing, p, p.erase_probability)
        features = model.features(batch)
        augmented = features[n:]
        clean = features[:n].detach().flatten(1).repeat(p.copies, 1)  # row k*n + i: image i
        targets = labels.repeat(p.copies, *[1] * (labels.dim() - 1))  # class ids, or probability rows
        classification = F.cross_entropy(model.classifier(augmented), targets)
        return classification, self.alignment(clean, augmented)

    def setup(self, model: nn.Module, data: RemovalData) -> None:
        """Prepare state that spans epochs (the discriminator); nothing for CE / JS."""

    @abstractmethod
    def alignment(self, clean: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        """D(G(clean), G(augmented)) for paired features; what the three variants differ in."""

    @torch.no_grad()
    def report(self, model: nn.Module, data: RemovalData) -> dict[str, float]:
        """The alignment term on the adversary's images with one erased copy each, after training."""
        model.eval()
        batch, n = _erased_pairs(data.adversary.images, 1, data.generator(f"{self.name}-report"),
                                 self.params)
        features = model.features(batch)
        return {"alignment": float(self.alignment(features[:n], features[n:]).item())}


@REMOVALS.register("wild_ce")
class WildCE(_Wild):
    """WILD with D = cross-entropy between feature distributions (Liu et al., Sec. III-B, Eq. 3)."""

    Params: ClassVar[type] = WildDivergenceParams
    name = "wild_ce"

    def alignment(self, clean: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        return alignment_loss("ce", clean, augmented, normalization=self.params.feature_normalization,
                              temperature=self.params.feature_temperature)


@REMOVALS.register("wild_js")
class WildJS(_Wild):
    """WILD with D = Jensen-Shannon divergence between feature distributions (Liu et al., Sec. III-B, Eq. 4)."""

    Params: ClassVar[type] = WildDivergenceParams
    name = "wild_js"

    def alignment(self, clean: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        return alignment_loss("js", clean, augmented, normalization=self.params.feature_normalization,
                              temperature=self.params.feature_temperature)


@REMOVALS.register("wild_dn")
class WildDN(_Wild):
    """WILD with a discriminator network in place of D (Liu et al., Sec. IV-A, "DN").

    A four-layer MLP learns to tell clean features (label 1) from erased ones
    (label 0); the model is trained with ``L_aug`` plus ``beta`` times the
    binary cross-entropy of its erased features against label 1, so that they
    pass for clean. Our choices where the paper is silent: the two updates
    alternate once per batch, discriminator first (on detached features, the
    two classes' losses averaged separately so the 10:1 imbalance does not
    matter), then the model against the just-updated discriminator; the
    discriminator sees G, the std-normalised softmax CE and JS compare
    (``discriminator_input``, :class:`WildDNParams`).
    """

    Params: ClassVar[type] = WildDNParams
    name = "wild_dn"

    def setup(self, model: nn.Module, data: RemovalData) -> None:
        with torch.no_grad():
            dim = model.features(data.adversary.images[:1]).flatten(1).shape[1]
        with seeded_init(derive_seed(data.seed, "wild_dn-discriminator")):
            self.discriminator = build_discriminator(dim).to(data.device)
        self.discriminator_optimizer = make_optimizer(
            self.params.optimizer, self.discriminator.parameters(), self.params.discriminator_lr,
            momentum=self.params.momentum,
        )

    def judge(self, features: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit ("clean") per image, on features normalised as configured."""
        p = self.params
        if p.discriminator_input == "distribution":
            flat = feature_distribution(features, normalization="std", temperature=p.feature_temperature).exp()
        else:
            flat = features.flatten(1)
            if p.discriminator_input == "std":
                flat = flat / flat.std(1, keepdim=True).clamp_min(1e-12)
        return self.discriminator(flat).squeeze(1)

    def alignment(self, clean: torch.Tensor, augmented: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.train_discriminator(clean.detach(), augmented.detach())
        logits = self.judge(augmented)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def train_discriminator(self, clean: torch.Tensor, augmented: torch.Tensor) -> None:
        """One step: clean features -> 1, erased features -> 0, the two means summed."""
        clean_logits = self.judge(clean)
        augmented_logits = self.judge(augmented)
        loss = (F.binary_cross_entropy_with_logits(clean_logits, torch.ones_like(clean_logits))
                + F.binary_cross_entropy_with_logits(augmented_logits, torch.zeros_like(augmented_logits)))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()

    @torch.no_grad()
    def report(self, model: nn.Module, data: RemovalData) -> dict[str, float]:
        """Share of clean and erased adversary images the discriminator classifies right, at the end."""
        model.eval()
        batch, n = _erased_pairs(data.adversary.images, 1, data.generator(f"{self.name}-report"),
                                 self.params)
        judged_clean = self.judge(model.features(batch)) > 0
        truth = torch.arange(len(batch), device=batch.device) < n
        return {"discriminator_acc": float((judged_clean == truth).float().mean().item())}
