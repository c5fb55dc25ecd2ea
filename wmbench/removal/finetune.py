"""FTAL and RTAL: fine-tune all layers, or re-initialise the output layer first, on the adversary's data.

Adi et al., Turning Your Weakness Into a Strength: Watermarking Deep Neural
Networks by Backdooring, USENIX Security 2018, robustness to fine-tuning: of
its four attacks (FTLL, FTAL, RTLL, RTAL) we take the two that train all layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from wmbench.params import LrSchedule
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, TrainingSettings, copy_model
from wmbench.seeding import derive_seed, seeded_init
from wmbench.training import fit, make_optimizer, make_scheduler


@dataclass
class FinetuneParams(TrainingSettings):
    """``removal.finetune``: plain fine-tuning of every layer with a small lr (FTAL).

    The lr is our choice: a tenth of the embedding lr (``train.lr`` 0.004),
    kept constant, small enough to keep test accuracy.
    - ``epochs`` 20, ``batch_size`` 32 (about 5 steps per epoch on the default
      135 adversary images), ``optimizer`` rmsprop, ``lr`` 0.0004.
    - ``lr_schedule``: ``constant`` or ``cosine`` (anneal to 0 over ``epochs``).
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.0004
    lr_schedule: LrSchedule = "constant"


@dataclass
class RtalParams(FinetuneParams):
    """``removal.rtal``: re-initialise the output layer, then train all layers (RTAL).

    The fresh output layer starts from chance, so RTAL trains longer and at a
    larger lr than FTAL (our choice):
    ``epochs`` 30, ``batch_size`` 32, ``optimizer`` rmsprop, ``lr`` 0.001,
    ``lr_schedule`` constant.
    """

    epochs: int = 30
    lr: float = 0.001


def tune(
    model: nn.Module,
    data: RemovalData,
    settings: FinetuneParams,
    *,
    name: str,
    after_step: Callable[[nn.Module], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on the adversary's data with cross-entropy; the per-epoch history.

    Shared by every baseline: batches come from ``data.generator(name)``, so
    the same seed gives the same run; ``after_step`` keeps pruned weights at zero.
    """
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr)
    return fit(
        model, data.adversary, optimizer, epochs=settings.epochs, batch_size=settings.batch_size,
        generator=data.generator(f"{name}-batches"), evaluate=data.evaluate,
        scheduler=make_scheduler(settings.lr_schedule, optimizer, settings.epochs),
        after_step=after_step, name=name,
    )


def reinitialise(module: nn.Module, seed: int) -> None:
    """Give every layer of ``module`` a fresh init, as at construction; the same for the same ``seed``.

    Each layer's own ``reset_parameters`` (PyTorch's default init, which every
    wmbench architecture keeps; batch norm also resets its running statistics)
    runs on a CPU copy under ``seed``, and the values are copied back: the init
    is the same on every device, and the global random state is left as it was.
    """
    fresh = copy.deepcopy(module).cpu()
    with seeded_init(seed):
        for layer in fresh.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
    module.load_state_dict(fresh.state_dict())


def output_layer(model: nn.Module) -> nn.Linear:
    """The last ``Linear`` of ``model.classifier``: the layer that maps features to class scores."""
    linears = [module for module in model.classifier.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__}.classifier has no Linear output layer")
    return linears[-1]


@REMOVALS.register("finetune")
class Finetune(Removal):
    """Fine-Tune All Layers (FTAL): continue training the whole model on the adversary's data.

    Adi et al., USENIX Security 2018 (FTAL).
    """

    Params = FinetuneParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        model = copy_model(model)
        history = tune(model, data, self.params, name="finetune")
        return RemovalResult(model, history)


@REMOVALS.register("rtal")
class Rtal(Removal):
    """Re-Train All Layers (RTAL): a freshly initialised output layer, then train the whole model.

    Adi et al., USENIX Security 2018 (RTAL). The output layer is the last
    ``Linear`` of ``model.classifier``; its fresh init is seeded from the run's seed.
    """

    Params = RtalParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        model = copy_model(model)
        reinitialise(output_layer(model), derive_seed(data.seed, "rtal-output-layer"))
        history = tune(model, data, self.params, name="rtal")
        return RemovalResult(model, history)
