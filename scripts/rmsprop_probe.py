"""Probe: do torch RMSprop's first steps explain why our removals cost more accuracy than the papers'?

torch's RMSprop starts its average of squared gradients at zero with alpha
0.99 and no bias correction, so its first step moves every weight by about
10 x lr, and steps stay above lr for a few hundred steps: a kick to a trained
model that a removal must then repair. Its bias-corrected form (Adam with
beta1 0 and beta2 0.99) steps by about lr from the start. This re-runs some
removals of one seed of the full-size experiment with that form, everything
else as the ``grid`` stage ran them (same params files, data and seeds), and
writes one row per run beside the grid's own figures. It reads
``experiments/fashion_mnist/work/seed<k>/`` (the untracked models ``dvc
repro`` there leaves) and ``cells/seed<k>.json``.

    OMP_NUM_THREADS=1 python -m scripts.rmsprop_probe --seed 0 --out results/rmsprop_probe.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.experiment_work import EXPERIMENT, seed_work

RUNS = (("square", "0.1", "wild_ce"), ("square", "0.1", "laundering"), ("square", "0.1", "finetune"),
        ("content", "0.1", "laundering"), ("content", "0.1", "wild_ce"), ("square", "0.1", "wild_js"))


def corrected_remove(argv: list[str]) -> None:
    """The ``remove`` stage with every momentum-free RMSprop replaced by its bias-corrected form."""
    import torch

    import wmbench.removal.finetune as finetune
    import wmbench.removal.laundering as laundering
    import wmbench.removal.wild as wild
    from stages import remove
    from wmbench import training

    original = training.make_optimizer

    def corrected(name: str, parameters: Any, lr: float, momentum: float = 0.0,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer:
        if name == "rmsprop" and momentum == 0.0:
            return torch.optim.Adam(parameters, lr=lr, betas=(0.0, 0.99), eps=1e-8, weight_decay=weight_decay)
        return original(name, parameters, lr, momentum, weight_decay)

    for module in (finetune, laundering, wild):
        module.make_optimizer = corrected
    remove.main(argv)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the experiment seed whose models are re-attacked")
    parser.add_argument("--work", default="/tmp/rmsprop_probe", help="folder for the probe's models")
    parser.add_argument("--jobs", type=int, default=2, help="removals at once, one torch thread each")
    parser.add_argument("--out", default="results/rmsprop_probe.csv", help="one row per run, both optimizers")
    args = parser.parse_args(argv)

    from wmbench.files import read_json, write_csv_atomic
    from wmbench.jobs import Job, run_jobs
    from wmbench.verdict import fraction_key

    work = seed_work(EXPERIMENT, args.seed)
    jobs = []
    for scheme, fraction, method in RUNS:
        cell, out = work / scheme / fraction, Path(args.work) / scheme / fraction / method
        extra = ["--reconstruct", str(cell / "reconstruct")] if method == "laundering" else []
        jobs.append(Job(f"{scheme}-{fraction} {method}", "scripts.rmsprop_probe:corrected_remove", ([
            "--params", str(cell / "params.yaml"), "--method", method, "--prepared", str(cell / "prepared"),
            "--model", str(work / scheme / "0.1" / "models" / "watermarked.pt"), "--out", str(out / "model.pt"),
            "--metrics", str(out / "metrics.json"), "--plot", str(out / "curve.csv"),
            "--settings", str(out / "settings.json"), *extra],), str(Path(args.work) / "log")))
    run_jobs(jobs, args.jobs)

    cells = read_json(EXPERIMENT / "cells" / f"seed{args.seed}.json")["cells"]
    rows = []
    for scheme, fraction, method in RUNS:
        cell = cells[scheme][fraction_key(float(fraction))]
        marked, grid = cell["watermarked"], cell["attempts"][method]
        probe = read_json(Path(args.work) / scheme / fraction / method / "metrics.json")
        base = {"seed": args.seed, "scheme": scheme, "adversary_fraction": float(fraction), "method": method,
                "threshold": cell["threshold"]}
        rows.append({**base, "optimizer": "torch_rmsprop", "test_acc_drop": grid["test_acc_drop"],
                     "holdout_acc_drop": grid["holdout_acc_drop"], "wm_acc": grid["wm_acc"]})
        rows.append({**base, "optimizer": "bias_corrected", "test_acc_drop": round(marked["test_acc"] -
                     probe["test_acc"], 6), "holdout_acc_drop": round(marked["holdout_acc"] - probe["holdout_acc"], 6),
                     "wm_acc": probe["wm_acc"]})
    write_csv_atomic(args.out, rows)
    for row in rows:
        print(f"{row['scheme']} {row['method']:<10} {row['optimizer']:<14} test lost {100 * row['test_acc_drop']:.1f} "
              f"held-out lost {100 * row['holdout_acc_drop']:.1f} wm_acc {100 * row['wm_acc']:.0f} %")


if __name__ == "__main__":
    main()
