"""Stage ``remove@<method>``: attack the watermarked model with the adversary's data only.

The method is picked by name (``--method``, one of ``wmbench.removal.REMOVALS``);
its settings are ``removal.<method>`` in params.yaml.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from wmbench.checkpoint import load_checkpoint, save_checkpoint
from wmbench.data import adversary_holdout_split
from wmbench.evaluate import Evaluator
from wmbench.files import write_csv_atomic, write_json_atomic
from wmbench.params import Params
from wmbench.precision import autocast, channels_last_model, channels_last_prepared
from wmbench.prepared import Prepared, load_prepared
from wmbench.reconstruct import Reconstruction, load_reconstruction
from wmbench.removal import REMOVALS, RemovalData, RemovalResult, create_removal
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
from wmbench.training import DeviceData, accuracy


def adversary_view(prepared: Prepared, params: Params, device: torch.device,
                   reconstruction: Reconstruction | None = None) -> RemovalData:
    """The adversary's labelled subset and unlabeled images, plus the owner's yardstick for the curves.

    With ``data.adversary_holdout`` > 0 a stratified slice of the subset is
    kept aside: the method never trains on it, and every curve and the final
    metrics report ``holdout_acc`` on it, the accuracy an adversary can judge
    its settings by (it has no test set).
    """
    images, labels = prepared.arrays["adversary"]
    train, held = adversary_holdout_split(labels, params.data.adversary_holdout, params.seed)
    holdout = DeviceData.from_arrays(images[held], labels[held], device) if len(held) else None
    return RemovalData(
        adversary=DeviceData.from_arrays(images[train], labels[train], device),
        unlabeled=torch.from_numpy(prepared.arrays["owner"][0]),
        evaluate=Evaluator(prepared.on("test", device), prepared.on("trigger", device), holdout),
        num_classes=prepared.num_classes,
        seed=params.seed,
        reconstruction=reconstruction,
    )


def run_removal(method: str, params: Params, model: torch.nn.Module, data: RemovalData) -> RemovalResult:
    """Seed, then let the method clean a copy of ``model``."""
    torch.manual_seed(params.seed)
    return create_removal(method, params.removal.settings[method]).remove(model, data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "remove")
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(REMOVALS.names())} (required)")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--model", default="models/watermarked.pt", help="the watermarked checkpoint")
    parser.add_argument("--out", help="cleaned checkpoint (default models/removed/<method>.pt)")
    parser.add_argument("--metrics", help="test_acc, wm_acc, time_s, seed, threads and the method's own figures "
                        "(default: metrics/remove/<method>.json)")
    parser.add_argument("--plot", help="per-epoch curve (default: plots/remove/<method>.csv)")
    parser.add_argument("--settings",
                        help=SETTINGS_HELP.replace("effective params", "effective params (beta for WILD)"))
    parser.add_argument("--reconstruct", default="",
                        help="the reconstruct stage's folder (triggers.npz), for methods that start from it "
                             f"({', '.join(n for n in REMOVALS.names() if REMOVALS.get(n).uses_reconstruction)}); "
                             "default: none, the method searches itself")
    args = parser.parse_args(argv)
    REMOVALS.get(args.method)  # an unknown name fails before any work
    params, device = start(args.params, args.threads)
    settings = run_settings(f"remove@{args.method}", params, device, method=args.method,
                            removal=params.removal.settings[args.method])
    prepared = channels_last_prepared(load_prepared(args.prepared), params.channels_last)
    watermarked = load_checkpoint(args.model)
    timer = Timer()

    reconstruction = (load_reconstruction(Path(args.reconstruct) / "triggers.npz", device)
                      if args.reconstruct and REMOVALS.get(args.method).uses_reconstruction else None)
    data = adversary_view(prepared, params, device, reconstruction)
    model = channels_last_model(watermarked.build_model().to(device), params.channels_last)
    with autocast(params.precision, device):
        holdout = data.evaluate.holdout
        watermarked_holdout = accuracy(model, holdout) if holdout is not None else None
        result = run_removal(args.method, params, model, data)
        final = data.evaluate(result.model)

    meta = {**watermarked.meta, "role": "removed", "method": args.method, "seed": params.seed}
    if watermarked_holdout is not None:
        final["holdout_acc_watermarked"] = watermarked_holdout
    metrics = {**final, "time_s": timer.seconds, "seed": params.seed, "threads": params.threads,
               "adversary_size": len(data.adversary), **result.info}
    with writing_outputs():
        save_checkpoint(args.out or f"models/removed/{args.method}.pt", result.model, meta)
        write_csv_atomic(args.plot or f"plots/remove/{args.method}.csv", result.history)
        metrics_path = args.metrics or f"metrics/remove/{args.method}.json"
        write_json_atomic(metrics_path, metrics)
        write_settings(settings, metrics_path, args.settings)
    print(f"remove@{args.method}: {metrics}")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
