"""Probe: what keeps REFIT-as-WILD-ran-it from removing the Fashion-MNIST square at lr 0.005? (issue 13)

WILD Table II removes its MNIST square with REFIT at RMSprop lr 0.005 (3.3 %
left at 0.4 points lost); ours leaves about 55 % at 1.1 points. This re-runs
that removal on the same models with one of REFIT's pieces changed at a time,
beside the unchanged run: EWC off (``ewc_weight`` 0, plain large-lr fine-tuning
with REFIT's schedule and crops) or weaker (1), and no random crops
(``random_crop`` 0). Or REFIT cut to a twelfth of its steps, as the full-size
experiment must cut it: its first 5 of 60 epochs (``epochs`` 5, the
experiment's cut), or all 60 epochs of one pass over the adversary's images
each (``epoch_length`` adversary: REFIT's whole lr schedule, shorter). It
reads ``scripts.aiken_results``' work folder (the 10 % cells' watermarked
models and clean-model thresholds) and uses ``scripts.wild_results``' run
code, so a row is what ``dvc exp run -S removal.refit.variant=wild -S ...``
gives. A diagnosis, not an adversary's choice: test accuracy and retention
are reported, nothing is selected on them.

    OMP_NUM_THREADS=1 python -m scripts.aiken_results --jobs 2 --models-only --schemes square --fractions 0.1
    OMP_NUM_THREADS=1 python -m scripts.refit_probe --jobs 2 --settings unchanged ewc_weight=0 ewc_weight=1
    OMP_NUM_THREADS=1 python -m scripts.refit_probe --seeds 0 --settings random_crop=0
    OMP_NUM_THREADS=1 python -m scripts.aiken_results --jobs 2 --models-only --schemes content --fractions 0.1
    OMP_NUM_THREADS=1 python -m scripts.refit_probe --jobs 2 --schemes content --settings unchanged ewc_weight=0
    # 16 runs of 10-11 minutes each, two at once
    OMP_NUM_THREADS=1 python -m scripts.refit_probe --jobs 2 --schemes square content \
        --settings epochs=5 epoch_length=adversary epoch_length=adversary,ewc_weight=0   # 18 runs, 12 min
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scripts.aiken_results import merge, read_csv, thresholds, write_csv
from scripts.wild_results import Run, finished, settings_name
from wmbench.jobs import Job, run_jobs

BASE = (("removal.refit.variant", "wild"), ("removal.refit.lr", 0.005))  # REFIT as WILD ran it, Table II's lr
CHANGES = (  # the params each probe setting changes besides BASE; its name is what they read as (settings_name)
    (("removal.refit.ewc_weight", 0.0),),
    (("removal.refit.ewc_weight", 1.0),),
    (("removal.refit.random_crop", 0),),
    # the full-size experiment's cut (its params.yaml: 5 of the 60 epochs), and a cut at the same cost that keeps
    # REFIT's whole lr schedule: 60 epochs of one pass over the adversary's images instead of the owner's length
    (("removal.refit.epochs", 5),),
    (("removal.refit.epoch_length", "adversary"),),
    (("removal.refit.epoch_length", "adversary"), ("removal.refit.ewc_weight", 0.0)),
)
VARIANTS = {"unchanged": (), **{settings_name(extra): extra for extra in CHANGES}}  # name -> its changes
COLUMNS = ("scheme", "seed", "setting", "test_acc_watermarked", "test_acc", "wm_acc", "threshold", "seconds")


def plan(seeds: Sequence[int], schemes: Sequence[str], settings: Sequence[str]) -> list[Run]:
    """A run for every seed, scheme and ``VARIANTS`` name in ``settings``, the unchanged run first."""
    return [Run(scheme, seed, "refit", BASE + extra)
            for seed in seeds for scheme in schemes for name, extra in VARIANTS.items() if name in settings]


def setting(run: Run) -> str:
    """What a row says was run, read like ``scripts.wild_results``' (``variant=wild,lr=0.005,ewc_weight=0``)."""
    return settings_name(run.settings)


def check_models(work: Path, runs: Sequence[Run]) -> None:
    """Stop before any run when a cell's watermarked model or the clean models are missing, naming the command."""
    cells = {run.folder(work).parent for run in runs}  # the adversary's cell; its model lies one folder up
    needed = sorted({cell / "params.yaml" for cell in cells} | {cell.parent / "watermarked.pt" for cell in cells})
    missing = [str(path) for path in needed if not path.exists()]
    if missing or not any((work / "clean").glob("seed*/epoch*.pt")):
        seeds = " ".join(sorted({str(run.seed) for run in runs}))
        schemes = " ".join(sorted({run.scheme for run in runs}))
        raise SystemExit(f"{missing[0] if missing else work / 'clean'} is missing: run `python -m "
                         f"scripts.aiken_results --models-only --seeds {seeds} --schemes {schemes} --fractions 0.1 "
                         f"--work {work}` first")


def rows(work: Path, runs: Sequence[Run]) -> list[dict]:
    """One row per finished run, with its seed's threshold (Aiken et al. Sec. 7.1's rule)."""
    limits = thresholds(work, sorted({run.seed for run in runs}), sorted({run.scheme for run in runs}))
    return [{"scheme": run.scheme, "seed": run.seed, "setting": setting(run),
             "test_acc_watermarked": embedded["test_acc"], "test_acc": metrics["test_acc"],
             "wm_acc": metrics["wm_acc"], "threshold": limits[run.scheme, run.seed],
             "seconds": round(metrics["time_s"], 1)}
            for run, metrics, embedded in finished(work, runs)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--schemes", nargs="+", default=["square"], help="default: square (WILD's pattern)")
    parser.add_argument("--settings", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        metavar="NAME", help=f"what is changed: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one process and CPU thread each")
    parser.add_argument("--work", default=".cache/aiken", help="scripts.aiken_results' work folder")
    parser.add_argument("--out", default="results/refit_probe.csv", help="one row per run")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1")
    work, runs = Path(args.work), plan(args.seeds, args.schemes, args.settings)
    check_models(work, runs)
    run_jobs([Job(f"{run.scheme} seed {run.seed} {setting(run)}", "scripts.wild_results:execute", (work, run),
                  str(work / "runner.log"), cost=300.0) for run in runs],
             args.jobs, say=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    key = ("scheme", "seed", "setting")
    write_csv(out, merge(read_csv(out) if out.exists() else [], rows(work, runs), key), COLUMNS)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
