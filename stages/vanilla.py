"""Stage ``vanilla``: clean models on the owner's data calibrate the ownership threshold.

Aiken et al., Sec. 7.1: a clean model's watermark rate fluctuates from epoch to
epoch, so the threshold is the highest rate any clean model shows at any epoch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from stages.embed import checkpoint_meta, train_model
from wmbench.checkpoint import save_checkpoint
from wmbench.evaluate import calibrate_threshold
from wmbench.files import write_csv_atomic, write_json_atomic
from wmbench.precision import autocast, channels_last_prepared
from wmbench.prepared import load_prepared
from wmbench.seeding import clean_seeds
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "vanilla")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--models", default="models/vanilla", help="output folder for clean models (seed<k>.pt)")
    parser.add_argument("--calibration", help="the threshold and how it was obtained, without wall-clock time, "
                        "which evaluate and plots read (default: <models>/calibration.json)")
    parser.add_argument("--metrics", default="metrics/vanilla.json", help="the calibration plus time_s")
    parser.add_argument("--plot", default="plots/vanilla.csv", help="one row per seed and epoch: wm_acc, test_acc")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)
    params, device = start(args.params, args.threads)
    settings = run_settings("vanilla", params, device, train=params.train, vanilla=params.vanilla)
    prepared = channels_last_prepared(load_prepared(args.prepared), params.channels_last)
    timer = Timer()

    seeds = clean_seeds(params.seed, params.vanilla.seeds)
    rows, finals, models = [], {}, {}
    for seed in seeds:
        with autocast(params.precision, device):
            model, history = train_model(prepared, params, device, seed=seed, watermark=False)
        models[seed] = model
        rows += [{"seed": seed, **record} for record in history]
        finals[seed] = history[-1]

    threshold = calibrate_threshold(row["wm_acc"] for row in rows)
    final_wm = [f["wm_acc"] for f in finals.values()]
    final_test = [f["test_acc"] for f in finals.values()]
    calibration = {
        "threshold": threshold,
        "threshold_rule": "max wm_acc over all clean seeds and epochs (Aiken et al. Sec. 7.1)",
        "seeds": len(seeds),
        "epochs": len(rows) // len(seeds),
        "wm_acc_mean": statistics.fmean(final_wm),
        "wm_acc_std": statistics.pstdev(final_wm),
        "test_acc_mean": statistics.fmean(final_test),
        "test_acc_std": statistics.pstdev(final_test),
        "threads": params.threads,
        **{f"wm_acc_seed{s}": f["wm_acc"] for s, f in finals.items()},
        **{f"test_acc_seed{s}": f["test_acc"] for s, f in finals.items()},
    }
    with writing_outputs():
        for seed, model in models.items():
            save_checkpoint(Path(args.models) / f"seed{seed}.pt", model,
                            checkpoint_meta(prepared, params, seed, "vanilla"))
        write_csv_atomic(args.plot, rows)
        # evaluate and plots depend on the calibration, so it holds no wall-clock time
        write_json_atomic(args.calibration or Path(args.models) / "calibration.json", calibration)
        write_json_atomic(args.metrics, {**calibration, "time_s": timer.seconds})
        write_settings(settings, args.metrics, args.settings)
    print(f"vanilla: threshold {threshold:.3f}, test_acc {calibration['test_acc_mean']:.4f} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
