"""Probe: Laundering whose Step 3 keeps searching for the trigger on the model it retrains.

Laundering retrains against the trigger Neural Cleanse found on the
watermarked model (Aiken et al., Sec. 4 Step 3). What it leaves of a mark is
what that trigger missed: on the full-size experiment's models whatever stays
within a point keeps 5-25 % of the mark (README, "The full-size verdict";
results/laundering_retrain_probe.csv). Aiken et al. Sec. 6 search again
between rounds, a full Neural Cleanse and a full reset and retraining each
(two rounds cost more there and removed no more). This probe tries the cheap
form of that idea, as adversarial unlearning does (I-BAU, Zeng et al., ICLR
2022: alternate a search for the perturbation the model still answers to with
training it away): before every pass of Step 3, a trigger for each suspected
class, kept from pass to pass, takes ``refresh_steps`` more Adam steps on the
model as it is now, its mask's L1 held at most ``refresh_multiple`` times
Neural Cleanse's norm for that class (:func:`wmbench.proxy.budgeted_trigger`'s
search); the pass then trains on the adversary's images stamped with it too,
under the same targets as the clean image. ``refresh_steps: 0`` is Laundering.

The method lives here, registered as ``laundering_refresh`` only in this
probe's processes, so the library (and the full-size experiment that depends
on it) is unchanged until a result earns it a place. It runs on the
experiment's models like ``scripts.laundering_probe``:

    OMP_NUM_THREADS=1 python -m scripts.refresh_probe --schemes square content noise --out results/refresh_probe.csv

runs :data:`VARIANTS`; ``--variants`` runs others (``laundering_refresh@refresh_steps=100+...``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmbench import reconstruct
from wmbench.reconstruct import inspecting

NAME = "laundering_refresh"
REFRESH_STEPS = 50  # Adam steps of 64 images per suspected class before each pass (0: Laundering)
REFRESH_MULTIPLE = 2.0  # the searched mask's L1 cap, in multiples of Neural Cleanse's norm (the wide proxy's)
# what the probe runs without --variants, fixed before any run: the grid's two distilled flagged Laundering settings
# with the search added (each beside the grid's own run on the same model), and the search alone, nothing reset
VARIANTS = (
    f"{NAME}@distill_weight=1+epochs=24+retrain_triggers=flagged",
    f"{NAME}@conv_threshold=2+dense_threshold=4+distill_weight=1+epochs=48+retrain_triggers=flagged",
    f"{NAME}@conv_threshold=.inf+dense_threshold=.inf+distill_weight=1+epochs=24+mask_share=0+retrain_triggers=flagged",
)


class RefreshedTrigger:
    """A trigger for ``label`` whose mask (L1 at most ``budget``) and pattern keep their Adam state from call to
    call: Neural Cleanse's search (Wang et al., Sec. IV-A) with a norm cap in place of its penalty, continued
    on a model that changes between calls."""

    def __init__(self, label: int, budget: float, like: torch.Tensor, lr: float = 0.1) -> None:
        self.label, self.budget = label, budget
        self.free_mask = torch.zeros((1, *like.shape[2:]), device=like.device, requires_grad=True)
        self.free_pattern = torch.zeros(like.shape[1:], device=like.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.free_mask, self.free_pattern], lr=lr)

    def mask(self) -> torch.Tensor:
        soft = torch.sigmoid(self.free_mask)
        return soft * torch.clamp(self.budget / soft.sum(), max=1.0)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        return (1 - mask) * images + mask * torch.sigmoid(self.free_pattern)

    def search(self, model: nn.Module, images: torch.Tensor, steps: int, generator: torch.Generator,
               batch_size: int = 64) -> None:
        """``steps`` more Adam steps towards ``label`` on ``model`` (eval mode, weights frozen, both restored)."""
        target = torch.full((batch_size,), self.label, device=images.device)
        with inspecting(model), torch.enable_grad():
            for _ in range(steps):
                batch = images[torch.randint(0, len(images), (batch_size,), generator=generator, device=images.device)]
                loss = F.cross_entropy(model(self.apply(batch)), target)
                self.free_mask.grad, self.free_pattern.grad = torch.autograd.grad(
                    loss, [self.free_mask, self.free_pattern])
                self.optimizer.step()

    @torch.no_grad()
    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images)


def register() -> None:
    """Register ``laundering_refresh`` (Laundering with :class:`RefreshedTrigger` searches in Step 3)."""
    from wmbench.activations import UnitReset, find_layers
    from wmbench.removal import REMOVALS
    from wmbench.removal.base import RemovalData, RemovalResult, copy_model
    from wmbench.removal.laundering import Laundering, LaunderingParams, reset_excited_units, retraining_set
    from wmbench.training import DeviceData, fit, logits, make_optimizer, make_scheduler

    if NAME in REMOVALS.names():
        return

    @dataclass
    class RefreshParams(LaunderingParams):
        """Laundering's, plus ``refresh_steps`` (Adam steps of 64 images per suspected class before each pass;
        0 is Laundering) and ``refresh_multiple`` (the searched mask's L1 cap, in multiples of Neural
        Cleanse's norm for the class). One round."""

        refresh_steps: int = REFRESH_STEPS
        refresh_multiple: float = REFRESH_MULTIPLE

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.rounds != 1:
                raise ValueError(f"rounds={self.rounds}: {NAME} runs one round (its search goes on within it); "
                                 "set rounds=1")
            if self.refresh_steps < 0 or self.refresh_multiple <= 0:
                raise ValueError(f"refresh_steps={self.refresh_steps}, refresh_multiple={self.refresh_multiple}: "
                                 "steps are 0 or more (0: Laundering), the multiple positive (e.g. 2)")

    @REMOVALS.register(NAME)
    class RefreshLaundering(Laundering):
        Params = RefreshParams

        def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
            params = self.params
            settings = params.reconstruct if params.reconstruct is not None else reconstruct.NeuralCleanseParams()
            teacher = logits(model, data.adversary).softmax(1) if params.distill_weight > 0 else None
            model = copy_model(model)
            layers = find_layers(model, params.layers)
            reset = UnitReset(params.reset)
            found = data.reconstruction if data.reconstruction is not None else reconstruct.neural_cleanse(
                model, data.adversary.images, settings, data.generator("laundering-cleanse-1"))
            report = reconstruct.mad_anomaly(found.l1, settings.anomaly_threshold)
            suspects = list(report.flagged) or [report.most_likely]
            stamped = torch.cat([found.stamp(data.adversary.images, label) for label in suspects])
            units = reset_excited_units(model, layers, data.adversary.images, stamped, params.dense_threshold,
                                        params.conv_threshold, reset, params.conv_reduce)
            triggers = range(data.num_classes) if params.retrain_triggers == "all" else suspects
            base = retraining_set(data.adversary, found, triggers, report.least_likely, params.mask_share,
                                  teacher, params.distill_weight)
            targets = base.labels[: len(data.adversary)]  # the clean images' rows, which a stamped copy shares
            searches = [RefreshedTrigger(label, params.refresh_multiple * float(found.masks[found.row(label)].sum()),
                                         data.adversary.images) for label in suspects]
            optimizer = make_optimizer(params.optimizer, model.parameters(), params.lr)
            scheduler = make_scheduler(params.lr_schedule, optimizer, params.epochs)
            search_stream = data.generator("laundering-refresh-search")
            train_stream = data.generator("laundering-retrain-1")
            history = []
            for epoch in range(1, params.epochs + 1):
                images, labels = [base.images], [base.labels]
                for search in searches if params.refresh_steps else []:
                    search.search(model, data.adversary.images, params.refresh_steps, search_stream)
                    images.append(search.stamp(data.adversary.images))
                    labels.append(targets)
                training = DeviceData(torch.cat(images).detach(), torch.cat(labels))
                (record,) = fit(model, training, optimizer, epochs=1, batch_size=params.batch_size,
                                generator=train_stream, evaluate=data.evaluate, scheduler=scheduler,
                                after_step=reset.apply, name=f"laundering refresh pass {epoch}")
                record.update(epoch=epoch, round=1, units_reset=units)
                history.append(record)
            counts = reset.counts()
            info = {"rounds": 1, "units_reset_total": sum(counts.values()), "flagged_round1": len(report.flagged),
                    "most_likely_round1": report.most_likely,
                    "refreshed_l1": sum(float(s.mask().detach().sum()) for s in searches)}
            for kind in ("conv", "dense"):
                info[f"units_reset_{kind}"] = sum(counts.get(layer.name, 0) for layer in layers
                                                  if layer.kind == kind)
            return RemovalResult(model, history, info)


def stage(module: str, argv: list[str]) -> None:
    """:func:`stages.grid.stage` with ``laundering_refresh`` registered, in a worker process."""
    register()
    from stages import grid

    grid.stage(module, argv)


@contextmanager
def registered() -> Iterator[None]:
    """:func:`register` for the length of a ``with`` block: this process's registry is left as it was found
    (the workers' registration ends with them)."""
    from wmbench.removal import REMOVALS

    added = NAME not in REMOVALS
    register()
    try:
        yield
    finally:
        if added:
            del REMOVALS._entries[NAME]  # the registry has no public removal: the library never needs one


def main(argv: Sequence[str] | None = None) -> None:
    from scripts import laundering_probe

    argv = list(argv if argv is not None else sys.argv[1:])
    if not any(arg.startswith("--variants") for arg in argv):
        argv += ["--variants", ",".join(VARIANTS)]
    with registered():
        laundering_probe.main(argv, target="scripts.refresh_probe:stage",
                              default_out="results/refresh_probe.csv", doc=__doc__,
                              added={NAME: ("laundering", {"refresh_steps": REFRESH_STEPS,
                                                           "refresh_multiple": REFRESH_MULTIPLE})})


if __name__ == "__main__":
    main()
