"""Stage ``evaluate``: every model against the clean-model threshold, in one table.

It scores each checkpoint it finds (the watermarked model, the clean ones,
every ``models/removed/<method>.pt``), so a new removal method needs no change here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from wmbench.checkpoint import load_checkpoint
from wmbench.evaluate import Evaluator, null_rate, verdicts
from wmbench.files import read_json, write_csv_atomic, write_json_atomic
from wmbench.precision import autocast, channels_last_model, channels_last_prepared
from wmbench.prepared import load_prepared
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


def find_models(models: Path) -> dict[str, Path]:
    """Name -> checkpoint: ``watermarked``, ``vanilla_seed<k>``, and each removal method."""
    found = {"watermarked": models / "watermarked.pt"}
    found.update({f"vanilla_{p.stem}": p for p in sorted((models / "vanilla").glob("*.pt"))})
    found.update({p.stem: p for p in sorted((models / "removed").glob("*.pt"))})
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "evaluate")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--models", default="models",
                        help="folder scored: <models>/watermarked.pt, <models>/vanilla/*.pt, <models>/removed/*.pt")
    parser.add_argument("--vanilla", default="models/vanilla/calibration.json", help="the clean models' threshold")
    parser.add_argument("--metrics", default="metrics/summary.json",
                        help="per model: test_acc, wm_acc, test_acc_drop, removed, p_value, ownership_verified, useful")
    parser.add_argument("--plot", default="plots/summary.csv", help="the same table, one row per model")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)
    params, device = start(args.params, args.threads)
    settings = run_settings("evaluate", params, device, evaluate=params.evaluate)
    prepared = channels_last_prepared(load_prepared(args.prepared), params.channels_last)
    threshold = read_json(args.vanilla)["threshold"]
    timer = Timer()

    evaluator = Evaluator(prepared.on("test", device), prepared.on("trigger", device))
    with autocast(params.precision, device):
        scores = {
            name: evaluator(channels_last_model(load_checkpoint(path).build_model().to(device), params.channels_last))
            for name, path in find_models(Path(args.models)).items()
        }
    trigger_size = len(evaluator.trigger)
    table = verdicts(scores, threshold=threshold, trigger_size=trigger_size, alpha=params.evaluate.alpha)
    for row in table.values():  # dvc metrics diff prints 1e-77 as 0.0; its exponent reads at any precision
        if "p_value" in row:
            row["p_value_log10"] = round(math.log10(max(row["p_value"], sys.float_info.min)), 3) + 0.0  # no -0.0
    with writing_outputs():
        write_csv_atomic(args.plot, [{"model": name, **row} for name, row in table.items()])
        write_json_atomic(args.metrics, {
            "threshold": threshold,
            "null_rate": null_rate(threshold, trigger_size),
            "trigger_size": trigger_size,
            "alpha": params.evaluate.alpha,
            "threads": params.threads,
            **table,
        })  # no time_s: the plots stage depends on these bytes
        write_settings(settings, args.metrics, args.settings)
    print(f"evaluate: {len(table)} models in {timer.seconds:.1f}s")
    for name, row in table.items():
        print(f"evaluate: {name:<16} test_acc {row['test_acc']:.4f}  wm_acc {row['wm_acc']:.3f}  "
              f"removed {row['removed']!s:<5}  p_value {row['p_value']:.2e}  "
              f"ownership_verified {row['ownership_verified']}")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
