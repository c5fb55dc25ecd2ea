"""Stage ``embed``: train the watermarked model on the owner's data plus watermark samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wmbench.checkpoint import load_state_dict, load_weights, save_checkpoint
from wmbench.evaluate import Evaluator
from wmbench.files import write_csv_atomic, write_json_atomic
from wmbench.models import create_model
from wmbench.params import Params
from wmbench.precision import autocast, channels_last_model, channels_last_prepared
from wmbench.prepared import Prepared, load_prepared
from wmbench.seeding import generator
from wmbench.stage import (
    SETTINGS_HELP,
    Timer,
    run_settings,
    run_stage,
    stage_parser,
    start,
    write_settings,
    writing_outputs,
)
from wmbench.training import (
    COLLAPSED_SHARE,
    DeviceData,
    Evaluate,
    TrainingCollapsedError,
    fit,
    majority_class,
    make_optimizer,
    make_scheduler,
)


def train_model(
    prepared: Prepared, params: Params, device: torch.device, *, seed: int, watermark: bool,
    evaluate: Evaluate | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``model.arch`` on the owner's data, with the watermark samples mixed in if asked.

    ``watermark.embedding: pretrained`` is Adi et al.'s PT variant: clean
    training for ``train.pretrain_epochs``, then ``train.epochs`` with the
    watermark samples; ``scratch`` (FS) mixes them in from the first epoch.
    The model is built channels-last when ``params.channels_last`` asks; the
    caller enters the precision (:func:`wmbench.precision.autocast`).
    ``evaluate`` scores each epoch (default: the test and trigger sets).
    A model that ends up putting nearly every test image in one class raises
    :class:`~wmbench.training.TrainingCollapsedError` (see :func:`check_not_collapsed`).
    """
    torch.manual_seed(seed)
    model = channels_last_model(create_model(params.model.arch, **prepared.arch_kwargs()).to(device),
                                params.channels_last)
    owner = prepared.on("owner", device)
    evaluate = evaluate or Evaluator(prepared.on("test", device), prepared.on("trigger", device))
    batches = generator(seed, "train-batches", device)
    train = params.train
    optimizer = make_optimizer(train.optimizer, model.parameters(), train.lr, train.momentum, train.weight_decay)
    history: list[dict[str, float]] = []
    if watermark and params.watermark.embedding == "pretrained":
        history += fit(
            model, owner, optimizer, epochs=train.pretrain_epochs, batch_size=train.batch_size,
            generator=batches, evaluate=evaluate, name="pretrain",
            scheduler=make_scheduler(train.lr_schedule, optimizer, train.pretrain_epochs),
        )
        optimizer = make_optimizer(train.optimizer, model.parameters(), train.lr, train.momentum, train.weight_decay)
    data = owner.concat(prepared.on("embedding", device)) if watermark else owner
    history += fit(
        model, data, optimizer, epochs=train.epochs, batch_size=train.batch_size,
        generator=batches, evaluate=evaluate, name="embed" if watermark else "vanilla",
        scheduler=make_scheduler(train.lr_schedule, optimizer, train.epochs),
    )
    for epoch, record in enumerate(history, start=1):
        record["epoch"] = epoch
    check_not_collapsed(model, prepared.on("test", device), params, seed, "watermarked" if watermark else "clean")
    return model, history


def check_not_collapsed(model: nn.Module, test: DeviceData, params: Params, seed: int, role: str) -> None:
    """Refuse a model that predicts one class for at least ``COLLAPSED_SHARE`` of the test images.

    Such a model's trigger rate is 0 or 1 whatever was embedded, so a clean one
    would set a meaningless ownership threshold (Aiken et al. Sec. 7.1's rule
    takes the highest rate any clean model shows) and a watermarked one a
    meaningless retention. Seen with ``zhang_mnist`` at RMSprop lr 0.004 on
    Fashion-MNIST: two of three clean training seeds ended at 10 % accuracy.
    """
    label, share = majority_class(model, test)
    if share >= COLLAPSED_SHARE:
        train = params.train
        raise TrainingCollapsedError(
            f"the {role} {params.model.arch} model (training seed {seed}) puts {share:.0%} of the test images "
            f"in class {label} after training: it collapsed, and its trigger rate would say nothing. Lower "
            f"train.lr (now {train.lr:g}) or change train.optimizer (now {train.optimizer}), then re-run; "
            "nothing was written")


def import_model(prepared: Prepared, params: Params, device: torch.device) -> nn.Module:
    """The owner's own weights (``model.checkpoint``), checked against ``model.arch`` and the data.

    The file is untrusted: it is read as tensors only (``weights_only`` or safetensors).
    """
    model = create_model(params.model.arch, **prepared.arch_kwargs())
    load_weights(model, load_state_dict(params.model.checkpoint), source=params.model.checkpoint)
    return channels_last_model(model.to(device), params.channels_last)


def checkpoint_meta(prepared: Prepared, params: Params, seed: int, role: str) -> dict:
    """What rebuilds the model and says where it came from."""
    return {
        "arch": params.model.arch,
        "arch_kwargs": prepared.arch_kwargs(),
        "role": role,
        "seed": seed,
        "dataset": prepared.info["dataset"],
        "scheme": prepared.info["scheme"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "embed")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--model", default="models/watermarked.pt", help="the watermarked checkpoint written")
    parser.add_argument("--metrics", default="metrics/embed.json", help="test_acc, wm_acc, time_s, seed, threads")
    parser.add_argument("--plot", default="plots/embed.csv", help="one row per epoch: loss, lr, test_acc, wm_acc")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)
    params, device = start(args.params, args.threads)
    settings = run_settings("embed", params, device, train=params.train, embedding=params.watermark.embedding)
    prepared = channels_last_prepared(load_prepared(args.prepared), params.channels_last)
    timer = Timer()

    with autocast(params.precision, device):
        if params.model.checkpoint:
            model = import_model(prepared, params, device)
            history = [{"epoch": 0, **Evaluator(prepared.on("test", device), prepared.on("trigger", device))(model)}]
        else:
            model, history = train_model(prepared, params, device, seed=params.seed, watermark=True)
    final = history[-1]
    meta = checkpoint_meta(prepared, params, params.seed, "watermarked")
    if params.model.checkpoint:
        meta["source"] = params.model.checkpoint
    metrics = {"test_acc": final["test_acc"], "wm_acc": final["wm_acc"], "time_s": timer.seconds, "seed": params.seed,
               "threads": params.threads}
    with writing_outputs():
        save_checkpoint(args.model, model, meta)
        write_csv_atomic(args.plot, history)
        write_json_atomic(args.metrics, metrics)
        write_settings(settings, args.metrics, args.settings)
    print(f"embed: {metrics}")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
