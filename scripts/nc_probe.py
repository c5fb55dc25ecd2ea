"""Probe: does Neural Cleanse find more watermarks with another schedule or more starts than the grid's?

``wmbench.reconstruct.NeuralCleanseParams`` follows the reference code's
``Visualizer`` class defaults for two settings: lambda raised by x1.5 (and
lowered by 1.5^1.5), and "improved" meaning the best norm fell below 0.99 of
the last best. ``--settings`` picks what is searched beside that:
- ``authors``, "authors' script (x2, 1.0)" in the file (default): what the authors' own script
  (bolunwang/backdoor, ``gtsrb_visualize_example.py``) passes,
  ``COST_MULTIPLIER = 2`` and ``EARLY_STOP_THRESHOLD = 1.0`` (any
  improvement resets the early stop);
- ``restarts``, "three starts (restarts 3)": three independent searches per class, the
  smallest successful trigger kept (``reconstruct.restarts``; our option,
  the reference runs one), which lowers the norms' search noise that the MAD
  index divides by.
This re-runs the ``reconstruct`` stage on the full-size experiment's models
(``experiments/fashion_mnist/work/seed<k>/``, left by ``dvc repro`` there;
``--experiment`` for a copy): each watermarked model at each fraction with
each chosen setting, and each seed's first clean model with those and the
class defaults (the grid does not search clean models; their flagged
classes are the false positives). Everything else is the cell's params
file, so the watermarked rows sit beside the grid's own Neural Cleanse (the
class defaults, read from its ``reconstruct.json``).

    OMP_NUM_THREADS=1 python -m scripts.nc_probe --out results/nc_probe.csv
    OMP_NUM_THREADS=1 python -m scripts.nc_probe --schemes square content noise \
        --settings restarts --out results/nc_restarts_probe.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from scripts.experiment_work import add_cell_arguments, seed_work

GRID = "class defaults (x1.5, 0.99)"  # what the grid ran: its watermarked rows are read from its reconstruct.json
AUTHORS, RESTARTS = "authors' script (x2, 1.0)", "three starts (restarts 3)"
SETTINGS = {  # name (the CSV's `setting`) -> reconstruct.* overrides
    GRID: {},
    AUTHORS: {"cost_multiplier": 2.0, "early_stop_threshold": 1.0},
    RESTARTS: {"restarts": 3},
}
GRID_RAN = {"cost_multiplier": 1.5, "early_stop_threshold": 0.99, "restarts": 1}  # what GRID means
CHOICES = {"authors": AUTHORS, "restarts": RESTARTS}  # --settings names
COLUMNS = ("seed", "model", "adversary_fraction", "setting", "target_detected", "target_rank", "target_anomaly",
           "max_other_anomaly", "target_l1", "flagged", "epochs", "seconds")


def nc_row(folder: Path, metrics: dict[str, Any], target: int) -> dict[str, Any]:
    """One search's figures: the stage's metrics and the target's mask norm from ``classes.csv``."""
    from scripts.aiken_results import read_csv

    norms = {int(row["class"]): float(row["l1"]) for row in read_csv(folder / "classes.csv")}
    return {"target_detected": metrics["target_detected"], "target_rank": metrics["target_rank"],
            "target_anomaly": metrics["target_anomaly"], "max_other_anomaly": metrics["max_other_anomaly"],
            "target_l1": round(norms[target], 3), "flagged": " ".join(str(c) for c in metrics["flagged"]),
            "epochs": metrics["epochs"], "seconds": metrics["time_s"]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--settings", nargs="+", default=["authors"], choices=list(CHOICES),
                        help="settings searched beside the grid's (whose watermarked rows are its reconstruct.json): "
                             + "; ".join(f"{key}: {label}" for key, label in CHOICES.items()) + "; default: authors")
    parser.add_argument("--work", default="/tmp/nc_probe", help="folder for the probe's searches")
    parser.add_argument("--jobs", type=int, default=2, help="searches at once, one torch thread each")
    parser.add_argument("--out", default="results/nc_probe.csv", help="one row per search")
    args = parser.parse_args(argv)

    from wmbench.files import read_json, write_csv_atomic
    from wmbench.jobs import Job, run_jobs

    jobs, runs = [], []
    settings = [CHOICES[key] for key in dict.fromkeys(args.settings)]

    def search(seed: int, model_name: str, fraction: str, cell: Path, model: Path, setting: str) -> int:
        """Queue one search with ``setting``; the watermark's target label, read from the cell's params."""
        out = Path(args.work) / f"seed{seed}" / model_name / fraction / setting.split(" (")[0].replace(" ", "_")
        out.mkdir(parents=True, exist_ok=True)
        params = yaml.safe_load((cell / "params.yaml").read_text())
        ran = {key: params["reconstruct"][key] for key in GRID_RAN}
        if ran != GRID_RAN:  # the grid's rows are labelled GRID: refuse a copy that searched otherwise
            raise SystemExit(f"{cell / 'params.yaml'}: reconstruct {ran}, not the {GRID} this probe labels the "
                             f"grid's rows with ({GRID_RAN}); point --experiment at a run with those")
        params["reconstruct"].update(SETTINGS[setting])
        (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        jobs.append(Job(f"seed{seed} {model_name}-{fraction} {setting}", "stages.grid:stage", (
            "reconstruct", ["--params", str(out / "params.yaml"), "--prepared", str(cell / "prepared"),
                            "--model", str(model), "--out", str(out / "reconstruct"),
                            "--metrics", str(out / "reconstruct.json"), "--settings", str(out / "settings.json")]),
            str(Path(args.work) / "log"), 1.0))
        target = int(params["watermark"]["target"])
        runs.append((seed, model_name, fraction, setting, out, target))
        return target

    for seed in args.seeds:
        work = seed_work(args.experiment, seed)
        first_cell = work / args.schemes[0] / args.fractions[0]
        clean = sorted((work / "clean").glob("seed*.pt"))[0]
        for setting in (GRID, *settings):
            search(seed, f"clean {clean.stem}", args.fractions[0], first_cell, clean, setting)
        for scheme in args.schemes:
            for fraction in args.fractions:
                cell = work / scheme / fraction
                for setting in settings:
                    target = search(seed, scheme, fraction, cell, work / scheme / "0.1" / "models" / "watermarked.pt",
                                    setting)
                runs.append((seed, scheme, fraction, GRID, cell, target))
    run_jobs(jobs, args.jobs, say=print)

    rows = []
    for seed, model_name, fraction, setting, out, target in runs:
        metrics = read_json(out / "reconstruct.json")
        rows.append({"seed": seed, "model": model_name, "adversary_fraction": float(fraction), "setting": setting,
                     **nc_row(out / "reconstruct", metrics, target)})
    rows.sort(key=lambda r: (r["model"].startswith("clean"), r["model"], -r["adversary_fraction"], r["seed"],
                             r["setting"]))
    write_csv_atomic(args.out, [{key: row[key] for key in COLUMNS} for row in rows])
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
