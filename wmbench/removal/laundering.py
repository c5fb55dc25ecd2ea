"""Neural Network Laundering: reconstruct triggers, reset the units they excite, retrain; repeat.

Aiken et al., Neural Network Laundering: Removing Black-Box Backdoor
Watermarks from Deep Neural Networks, Sec. 4,
Algorithm 1, Fig. 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from wmbench import reconstruct
from wmbench.activations import Layer, UnitReset, find_layers, mean_activations, select_units
from wmbench.removal.base import REMOVALS, Removal, RemovalData, RemovalResult, TrainingSettings, copy_model
from wmbench.training import DeviceData, fit, make_optimizer, make_scheduler


@dataclass
class LaunderingParams(TrainingSettings):
    """``removal.laundering.*``: rounds of Steps 1-3, the reset thresholds, and retraining per round.

    Aiken et al., Neural Network Laundering, Sec. 4-6.
    ``epochs``, ``batch_size``, ``optimizer``, ``lr``: Step 3's retraining,
    per round, with a fresh optimizer each round; the paper gives no values.
    ``lr_schedule``: ``cosine`` anneals each round's lr to 0 (our choice: on
    136 images the test accuracy swings by several points from epoch to
    epoch at a constant lr), or ``constant``.
    8 epochs at RMSprop lr 0.001 take about 1 s per round on digits / lenet;
    Neural Cleanse (``reconstruct.*``) is most of a round's time.
    ``rounds``: Sec. 6 finds more than 3 rounds give diminishing returns.
    ``dense_threshold`` (DT), ``conv_threshold`` (CT): a unit is reset when
    its mean activation on reconstructed-trigger images exceeds its mean on
    clean images by more than this (Algorithm 1). The paper prints no values;
    ours were chosen on digits / lenet (post-ReLU activations): dense units
    average 0.5-2 on clean images and the reconstructed content trigger lifts
    the most excited ones by 5-14, so DT 2 resets about 35 of lenet's 204
    dense units in round 1 (DT 1 resets ~47 and costs more test accuracy);
    conv channel means change by at most ~0.3 there, so CT 0.5 leaves lenet's
    convs alone (CT 0.1 resets a few and helped neither metric). Other models
    and datasets will want their own; ``.inf`` turns a kind of layer off.
    ``layers``: ``all`` (Sec. 5, every model but ResNet) or ``second_half``
    (Sec. 5, the paper's choice for ResNet-18).
    ``reset``: ``zero`` the unit's incoming weights and bias, or set them to
    the layer's ``median`` weight (Sec. 4, for activations non-zero at 0).
    ``reset_batchnorm``: reset the running statistics of every batch norm
    before retraining (Sec. 5, against Adi et al.'s ResNet).
    ``retrain_triggers``: whose reconstructed triggers are stamped on the
    adversary's images for Step 3. ``flagged``: the classes Step 2 measured
    (MAD-flagged, else the most likely), as Sec. 4 Step 3 says ("the same
    examples passed through the neural network in the laundering step");
    ``all``: every class, as Sec. 7.6 puts it ("all images applied with the
    reconstructed mask"). On digits ``all`` cost 1-6 more points of test
    accuracy for no lower ``wm_acc``, hence the default.
    ``reconstruct``: Neural Cleanse settings, the top-level ``reconstruct``
    block (filled in by params.yaml's parser; defaults when ``None``).
    """

    epochs: int = 8  # retraining epochs per round
    batch_size: int = 64
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    lr: float = 0.001
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # per round
    rounds: int = 3
    dense_threshold: float = 2.0  # DT
    conv_threshold: float = 0.5  # CT
    layers: Literal["all", "second_half"] = "all"
    reset: Literal["zero", "median"] = "zero"
    reset_batchnorm: bool = False
    retrain_triggers: Literal["flagged", "all"] = "flagged"
    reconstruct: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be at least 1")
        for key in ("dense_threshold", "conv_threshold"):
            if getattr(self, key) != getattr(self, key):
                raise ValueError(f"{key} is NaN; use a number, or .inf to reset nothing")


@REMOVALS.register("laundering")
class Laundering(Removal):
    """Rounds of Step 1 (Neural Cleanse + MAD), Step 2 (Algorithm 1 reset) and Step 3 (retraining).

    Aiken et al., Neural Network Laundering, Sec. 4, Algorithm 1, Fig. 2.
    Step 2 measures the reconstructed triggers of the classes MAD flags, or
    of the most likely watermarked class when none is flagged (Sec. 7.6: the
    adversary assumes a watermark regardless of the outlier test).
    Step 3 retrains on the adversary's images, the same images stamped with
    reconstructed triggers (``retrain_triggers``) labelled with their true
    class, and every class's mask alone (as an image, copied to each colour
    channel) labelled with the least likely class.
    Laundering stops before a round whose least likely class is the first
    round's most likely class (Sec. 4: retraining would strengthen the mark).
    Reset units stay reset through every later round.
    """

    Params: ClassVar[type] = LaunderingParams

    def remove(self, model: nn.Module, data: RemovalData) -> RemovalResult:
        params: LaunderingParams = self.params
        settings = params.reconstruct if params.reconstruct is not None else reconstruct.NeuralCleanseParams()
        model = copy_model(model)
        layers = find_layers(model, params.layers)
        reset = UnitReset(params.reset)
        history: list[dict[str, float]] = []
        info: dict[str, float] = {"rounds": 0, "stopped_early_round": 0}
        first_most_likely: int | None = None

        for round_ in range(1, params.rounds + 1):
            # Step 1: reconstruct every class's trigger on the current model
            found = reconstruct.neural_cleanse(
                model, data.adversary.images, settings, data.generator(f"laundering-cleanse-{round_}")
            )
            report = reconstruct.mad_anomaly(found.l1, settings.anomaly_threshold)
            first_most_likely = report.most_likely if first_most_likely is None else first_most_likely
            if report.least_likely == first_most_likely:
                info["stopped_early_round"] = round_
                break
            suspects = list(report.flagged) or [report.most_likely]

            # Step 2: reset units that the reconstructed triggers excite (Algorithm 1)
            stamped = torch.cat([found.stamp(data.adversary.images, label) for label in suspects])
            new_units = reset_excited_units(
                model, layers, data.adversary.images, stamped, params.dense_threshold, params.conv_threshold, reset
            )

            # Step 3: retrain on clean, relabelled-trigger and mask images
            if params.reset_batchnorm:
                reset_batchnorm_statistics(model)
            triggers = range(data.num_classes) if params.retrain_triggers == "all" else suspects
            training = retraining_set(data.adversary, found, triggers, report.least_likely)
            optimizer = make_optimizer(params.optimizer, model.parameters(), params.lr)
            records = fit(
                model, training, optimizer, epochs=params.epochs, batch_size=params.batch_size,
                generator=data.generator(f"laundering-retrain-{round_}"), evaluate=data.evaluate,
                scheduler=make_scheduler(params.lr_schedule, optimizer, params.epochs),
                after_step=reset.apply, name="laundering",
            )
            for record in records:
                record.update(round=round_, epoch=len(history) + 1, units_reset=new_units)
                history.append(record)

            info.update({
                f"units_reset_round{round_}": new_units,
                f"flagged_round{round_}": len(report.flagged),
                f"most_likely_round{round_}": report.most_likely,
                f"least_likely_round{round_}": report.least_likely,
                "rounds": round_,
            })

        counts = reset.counts()
        info["units_reset_total"] = sum(counts.values())
        info.update({f"units_reset_{name.replace('.', '_')}": count for name, count in counts.items()})
        return RemovalResult(model, history, info)


def reset_excited_units(
    model: nn.Module, layers: list[Layer], clean: torch.Tensor, watermarked: torch.Tensor,
    dense_threshold: float, conv_threshold: float, reset: UnitReset,
) -> int:
    """Reset every unit whose mean activation on ``watermarked`` exceeds that on ``clean`` by DT / CT.

    Aiken et al., Neural Network Laundering, Sec. 4 Step 2, Algorithm 1.
    The rule is the text's activation *difference* ``AW_avg - AN_avg``, not
    line 14's ``AN_avg`` as printed. Returns how many units were newly reset;
    units reset before stay reset (``reset`` keeps them).
    """
    before = sum(reset.counts().values())
    masks = select_units(
        layers, mean_activations(model, layers, clean), mean_activations(model, layers, watermarked),
        dense_threshold, conv_threshold,
    )
    reset.add(layers, masks)
    return sum(reset.counts().values()) - before


def retraining_set(
    adversary: DeviceData, found: reconstruct.Reconstruction, triggers: Iterable[int], least_likely: int
) -> DeviceData:
    """Step 3's data: clean images, stamped images with their true labels, masks labelled ``least_likely``.

    Aiken et al., Neural Network Laundering, Sec. 4 Step 3 and Sec. 7.6.
    """
    images, labels = [adversary.images], [adversary.labels]
    for label in triggers:
        images.append(found.stamp(adversary.images, int(label)))
        labels.append(adversary.labels)
    channels = adversary.images.shape[1]
    masks = found.masks.to(adversary.device).expand(-1, channels, -1, -1)
    images.append(masks)
    labels.append(torch.full((len(masks),), least_likely, dtype=torch.long, device=adversary.device))
    return DeviceData(torch.cat(images).detach(), torch.cat(labels))


def reset_batchnorm_statistics(model: nn.Module) -> None:
    """Forget every batch norm's running mean and variance (Aiken et al., Sec. 5, for Adi et al.'s ResNet)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            module.reset_running_stats()
