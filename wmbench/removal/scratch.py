"""Train the same architecture from a fresh init on the adversary's data only: the bar to beat.

Aiken et al., Neural Network Laundering, Sec. 7.4: "a laundered model is useless
only if the laundered model performs worse than a model trained from scratch on
the same (limited) dataset".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from wmbench.params import LrSchedule
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, TrainingSettings, copy_model
from wmbench.removal.finetune import reinitialise, tune
from wmbench.seeding import derive_seed
from wmbench.training import accuracy


@dataclass
class ScratchParams(TrainingSettings):
    """``removal.scratch``: the embedding recipe (``train``: RMSprop, lr 0.004, cosine) on the small set.

    ``epochs`` 40 and ``batch_size`` 32 (about 5 steps per epoch on the default
    135 adversary images, 200 in all): training loss near 0 and test accuracy flat by then;
    ``optimizer`` rmsprop; ``lr`` 0.004; ``lr_schedule`` cosine.
    """

    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.004
    lr_schedule: LrSchedule = "cosine"


@REMOVALS.register("scratch")
class Scratch(Removal):
    """The watermarked model's architecture, re-initialised and trained on the adversary's data only.

    Aiken et al., Neural Network Laundering, Sec. 7.4. The watermarked weights
    are discarded: every layer gets a fresh init seeded from the run's seed,
    so the result carries no watermark and shows what the adversary's data
    alone is worth. ``info``: ``adversary_acc``, the final accuracy on that data.
    """

    Params = ScratchParams
    baseline = True  # what the adversary's data alone is worth: the bar, not a removal

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        model = copy_model(model)
        reinitialise(model, derive_seed(data.seed, "scratch-init"))
        history = tune(model, data, self.params, name="scratch")
        return RemovalResult(model, history, {"adversary_acc": accuracy(model, data.adversary)})
