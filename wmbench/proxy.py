"""What an adversary can measure about a removal without the owner's trigger set or test set.

Figures on the slice of its own images it kept aside (``data.adversary_holdout``,
never trained on):

- **held-out accuracy**, its estimate of the test accuracy a removal costs;
- **trigger retention** (:func:`proxy_retention`): the share of those images
  (true class excluded) that the trigger Neural Cleanse reconstructed for the
  suspected class sends to that class. The suspected class is the one with the
  smallest trigger norm (Wang et al., Neural Cleanse, Sec. IV-B: the likeliest
  infected label); the adversary does not know the true target. Neural
  Cleanse's own mitigation is judged this way (Wang et al., Sec. VI).
- **region retention** (:func:`region_retention`, the default proxy,
  ``robustness.proxy``): the same share for a pattern re-optimised, on the
  removed model, inside a region around the reconstructed trigger;
- **wide retention** (``robustness.proxy: wide``): the same re-optimisation in
  a wider region, where a trigger allowed a few times the reconstructed
  trigger's norm spreads its mask on the watermarked model
  (:func:`budgeted_trigger`, :func:`wide_region`).

Why the second: Laundering retrains against the reconstructed trigger itself
(Aiken et al., Sec. 4 Step 3), so it drives trigger retention to the floor
(1-3 %) whatever it leaves of the true mark (0-29 % on the full-size
experiment's models, ``results/proxy_probe.csv``); the adversary then cannot
tell a Laundering setting that removed the mark from one that did not, and
picks the wrong one. A backdoor still in the model answers to a pattern found
afresh near the same place; over the Laundering and WILD attempts that trigger
retention cannot tell apart, the re-optimised pattern's rank correlation with the true retention
is 0.52 on average against the trigger's 0.09 (six cells, ``results/proxy_probe.csv``). The
region (:func:`trigger_region`) holds twice as many pixels as the trigger's support: the size, of
five measured, whose rank correlation was best on average and positive in every cell, while the
adversary's own clean model (``scratch``, trained on its data from scratch) stays at 2-21 % on it;
growing the support by a pixel all round instead takes a text trigger's 34-48 pixels to 142-264
and the clean model to 96 %. Chosen on the same models the experiment judges (in-sample).

Why the third: Neural Cleanse keeps the *smallest* trigger (Wang et al., Sec. IV-A), which can be a
part of the mark or a natural feature of the class. On the ninth run's content model of seed 1
Laundering against it leaves 34-43 % of the true mark while the region around it reads 1-2 %, and
the adversary picks those removals. Triggers allowed twice that norm spread over more of what the
model responds to; in a region of their strongest mean-mask pixels the same models read 62-79 %,
the Laundering settings that removed the mark 10-27 %, the adversary's own clean model 8 %. Over
the nine cells of the ninth run at 10 %, the rank correlation with the true retention is 0.82 on
average against the region's 0.75 (``results/wide_proxy_probe.csv``; chosen there, in-sample, after
a region sized by the support instead saturated: ``wide_region``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmbench.data import adversary_holdout_split
from wmbench.reconstruct import Reconstruction, inspecting, mad_anomaly
from wmbench.training import DeviceData, accuracy


def adversary_holdout(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                      device: torch.device) -> DeviceData:
    """The held-out slice the ``remove`` stage kept out of training (same split, same seed)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"data.adversary_holdout={fraction}: the adversary needs a held-out slice to judge "
                         "removals by; set it in (0, 0.5], e.g. 0.2, and re-run the remove stages")
    _, held = adversary_holdout_split(labels, fraction, seed)
    return DeviceData.from_arrays(images[held], labels[held], device)


def adversary_training_images(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                              device: torch.device) -> torch.Tensor:
    """The adversary's images the ``remove`` stage trained on: its subset less :func:`adversary_holdout`.

    Indexed as a tensor, so a channels-last layout of ``images`` (:func:`wmbench.precision.channels_last_prepared`)
    carries over."""
    train, _ = adversary_holdout_split(labels, fraction, seed)
    return DeviceData.from_arrays(images, labels, device).images[torch.as_tensor(train, device=device)]


def suspected_class(reconstruction: Reconstruction) -> int:
    """The class whose reconstructed trigger is smallest: Neural Cleanse's likeliest infected label."""
    return mad_anomaly(reconstruction.l1.float().cpu()).most_likely


@torch.no_grad()
def proxy_retention(model: nn.Module, reconstruction: Reconstruction, label: int, holdout: DeviceData) -> float:
    """Share of ``holdout`` images not of class ``label`` that ``label``'s reconstructed trigger sends to it."""
    return _share_sent_to(model, reconstruction.stamp(_other_classes(holdout, label), label), label)


def _other_classes(holdout: DeviceData, label: int) -> torch.Tensor:
    """The held-out images not of class ``label``: the ones a trigger for ``label`` can move."""
    others = holdout.labels != label
    if not bool(others.any()):
        raise ValueError(f"every held-out image is of class {label}; the proxy needs images of other classes")
    return holdout.images[others]


@torch.no_grad()
def _share_sent_to(model: nn.Module, stamped: torch.Tensor, label: int) -> float:
    """Share of ``stamped`` images ``model`` classifies as ``label``."""
    return accuracy(model, DeviceData(stamped, torch.full((len(stamped),), label, device=stamped.device)))


SUPPORT_LEVEL = 0.05  # mask values above this make up the reconstructed trigger's support


def strongest(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A 0/1 mask shaped like ``mask`` of the ``pixels`` pixels where ``mask`` is largest."""
    region = torch.zeros(mask.numel(), device=mask.device)
    region[mask.flatten().topk(min(mask.numel(), max(1, pixels))).indices] = 1
    return region.view_as(mask)


def trigger_region(mask: torch.Tensor, area: float) -> torch.Tensor:
    """A 0/1 mask (1, H, W) of ``round(area x n)`` pixels, n the support's (mask > 0.05): those of highest
    ``10 x mask + mean of the mask over the 3x3 neighbourhood``.

    The strongest mask pixels come first and, where the mask is faint or zero, the pixels beside strong ones:
    the trigger's region as its mask weighs it, not a ring of fixed width (a support pixel at 0.06 can rank
    below a zero pixel between strong ones).
    """
    if area < 1:
        raise ValueError(f"robustness.proxy_area={area} must be at least 1 (the support itself)")
    support = int((mask > SUPPORT_LEVEL).sum())
    return strongest(10 * mask + F.avg_pool2d(mask[None], 3, 1, 1)[0], round(area * support))


def region_retention(model: nn.Module, region: torch.Tensor, label: int, train: torch.Tensor, holdout: DeviceData,
                     steps: int, generator: torch.Generator, batch_size: int = 64, lr: float = 0.1) -> float:
    """Share of ``holdout`` images not of class ``label`` sent to it by a pattern re-optimised on ``model``.

    The pattern (a sigmoid of free parameters, starting at 0.5) is stamped through the 0/1 ``region`` (1, H, W),
    e.g. :func:`trigger_region` of ``label``'s reconstructed mask, and trained by Adam for ``steps``
    mini-batches of ``train`` (the adversary's own images, none held out) towards ``label``: Neural
    Cleanse's search (Wang et al., Sec. IV-A) with the mask fixed near where it found the trigger. The
    model runs in eval mode (its own mode restored after); its weights and gradients are untouched. On CUDA a
    model whose backward pass has no deterministic kernel (adaptive pooling) may read differently run to run.
    """
    others = _other_classes(holdout, label)
    region = region.to(train)
    free = torch.zeros((train.shape[1], *region.shape[1:]), device=train.device, requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=lr)
    target = torch.full((batch_size,), label, device=train.device)

    def stamp(images: torch.Tensor) -> torch.Tensor:
        return (1 - region) * images + region * torch.sigmoid(free)

    with inspecting(model), torch.enable_grad():  # eval mode, weights frozen, both restored after
        for _ in range(steps):
            batch = train[torch.randint(0, len(train), (batch_size,), generator=generator, device=train.device)]
            (free.grad,) = torch.autograd.grad(F.cross_entropy(model(stamp(batch)), target), free)
            optimizer.step()
    return _share_sent_to(model, stamp(others).detach(), label)


def budgeted_trigger(model: nn.Module, budget: float, label: int, train: torch.Tensor, steps: int,
                     generator: torch.Generator, batch_size: int = 64, lr: float = 0.1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (1, H, W) and pattern (C, H, W) of a trigger searched afresh on ``model`` that sends ``train`` images to
    ``label``, the mask's L1 held at most ``budget``.

    Neural Cleanse's search (Wang et al., Sec. IV-A: sigmoids of free parameters, Adam, cross-entropy towards
    the label) with a cap on the norm in place of its adaptive penalty: the mask is scaled down whenever its L1
    exceeds ``budget``, so the trigger may spread over as much of what the model responds to as the budget
    allows, where Neural Cleanse keeps the smallest part that suffices. ``steps`` mini-batches of ``batch_size``
    drawn by ``generator``; eval mode, weights untouched (both restored after).
    """
    if budget <= 0:
        raise ValueError(f"a trigger's L1 budget must be positive, got {budget}")
    free_mask = torch.zeros((1, *train.shape[2:]), device=train.device, requires_grad=True)
    free_pattern = torch.zeros(train.shape[1:], device=train.device, requires_grad=True)
    optimizer = torch.optim.Adam([free_mask, free_pattern], lr=lr)
    target = torch.full((batch_size,), label, device=train.device)

    def mask() -> torch.Tensor:
        soft = torch.sigmoid(free_mask)
        return soft * torch.clamp(budget / soft.sum(), max=1.0)

    with inspecting(model), torch.enable_grad():  # eval mode, weights frozen, both restored after
        for _ in range(steps):
            batch = train[torch.randint(0, len(train), (batch_size,), generator=generator, device=train.device)]
            stamped = (1 - mask()) * batch + mask() * torch.sigmoid(free_pattern)
            loss = F.cross_entropy(model(stamped), target)
            free_mask.grad, free_pattern.grad = torch.autograd.grad(loss, [free_mask, free_pattern])
            optimizer.step()
    return mask().detach(), torch.sigmoid(free_pattern).detach()


def mean_budgeted_mask(watermarked: nn.Module, budget: float, label: int, train: torch.Tensor, steps: int,
                       searches: int, generator: torch.Generator) -> torch.Tensor:
    """The mean mask (1, H, W) of ``searches`` :func:`budgeted_trigger` searches on ``watermarked``, one random
    stream continued: one search's strongest pixels depend on its start. Two streams' regions on the same
    model overlap by Jaccard 0.30-0.76 from one search each, 0.46-0.82 from means of four (nine full-size
    cells, ``results/wide_proxy_probe.csv``)."""
    if searches < 1:
        raise ValueError(f"robustness.proxy_searches={searches} must be at least 1")
    found = [budgeted_trigger(watermarked, budget, label, train, steps, generator)[0] for _ in range(searches)]
    return torch.stack(found).mean(0)


def wide_region(watermarked: nn.Module, reconstruction: Reconstruction, label: int, train: torch.Tensor,
                multiple: float, area: float, steps: int, searches: int, generator: torch.Generator) -> torch.Tensor:
    """Where the wide proxy re-optimises its pattern: the ``multiple x area x norm`` pixels (norm: the L1 of
    ``label``'s reconstructed mask) where ``searches`` triggers of ``multiple`` times that norm have their
    strongest mean mask on ``watermarked`` (:func:`mean_budgeted_mask`, ``steps`` mini-batches each).

    Sized by the norm, which Neural Cleanse minimised, not by the support, which counts faint pixels too: sized
    by the support (``area`` x pixels above 0.05) the region grew to 164-172 pixels on two full-size content
    models, where the adversary's own clean model then read 83-87 %.
    """
    if multiple < 1:
        raise ValueError(f"robustness.proxy_multiple={multiple} must be at least 1 (the reconstructed trigger's norm)")
    norm = float(reconstruction.masks[reconstruction.row(label)].float().sum())
    found = mean_budgeted_mask(watermarked, multiple * norm, label, train, steps, searches, generator)
    return strongest(found, round(multiple * area * norm))
