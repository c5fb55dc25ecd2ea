"""Probe: how far the adversary's held-out slice can be trusted to tell a removal's accuracy cost.

The adversary of the ``robustness`` stage picks, within each budget, the
removal whose estimated accuracy loss on its held-out slice (``data.adversary_holdout``
of its images) is within the budget; the verdict then counts a seed as removed
only if the loss on the owner's test set is too. Where the two disagree by
about the budget's size, the verdict turns on sampling error. This re-measures,
on the full-size experiment's models (``experiments/fashion_mnist/work/seed<k>/``,
left by ``dvc repro`` there; ``--experiment`` reads a copy run on other
seeds), each removal's loss against the watermarked model on both sets with its
*paired* standard error: the mean and sample deviation, over images, of
``correct(watermarked) - correct(removed)`` (the models agree on most images,
so the paired error is far below the unpaired binomial one). The slice and the
test set are independent samples (``data.holdout_pool``: the owner never
trained on the slice), so the held-out minus test loss should spread as
``sqrt(se_holdout^2 + se_test^2)``: the summary says how many attempts lie
within two of those.

    OMP_NUM_THREADS=1 python -m scripts.holdout_error --experiment experiments/fashion_mnist \\
        --schemes square content noise --fractions 0.1 0.006 --out results/holdout_error.csv
    python -m scripts.holdout_error --summary results/holdout_error.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.experiment_work import EXPERIMENT, add_cell_arguments, seed_work


def paired_drop(correct_before: Any, correct_after: Any) -> tuple[float, float]:
    """Accuracy lost from ``before`` to ``after`` on the same images, and its paired standard error."""
    diff = correct_before.float() - correct_after.float()
    n = diff.numel()
    if n < 2:
        raise ValueError(f"a paired standard error needs at least 2 images, got {n}")
    return float(diff.mean()), float(diff.std(correction=1)) / math.sqrt(n)


def measure_cell(seed: int, scheme: str, fraction: str, experiment: Path = EXPERIMENT) -> list[dict[str, Any]]:
    """Each judged removal's loss on the held-out slice and the test set, with paired standard errors."""
    import torch

    from wmbench.checkpoint import load_checkpoint
    from wmbench.files import read_json
    from wmbench.params import load_params
    from wmbench.prepared import load_prepared
    from wmbench.proxy import adversary_holdout
    from wmbench.training import predict

    torch.set_num_threads(1)
    device = torch.device("cpu")
    cell = seed_work(experiment, seed) / scheme / fraction
    params = load_params(cell / "params.yaml")
    prepared = load_prepared(cell / "prepared")
    sets = {"holdout": adversary_holdout(*prepared.arrays["adversary"], params.data.adversary_holdout, params.seed,
                                         device),
            "test": prepared.on("test", device)}
    figures = read_json(experiment / "cells" / f"seed{seed}.json")["cells"][scheme][
        "fraction_" + fraction.replace(".", "_")]

    def correct(path: Path) -> dict[str, Any]:
        model = load_checkpoint(path).build_model().to(device).eval()
        with torch.no_grad():
            return {key: predict(model, data) == data.labels for key, data in sets.items()}

    before = correct(cell / "models" / "watermarked.pt")
    rows = []
    for name, attempt in sorted(figures["attempts"].items()):
        after = correct(cell / "models" / "removed" / f"{name}.pt")
        row: dict[str, Any] = {"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction), "model": name,
                               "holdout_size": len(sets["holdout"]), "test_size": len(sets["test"])}
        for key in sets:
            drop, se = paired_drop(before[key], after[key])
            row[f"{key}_acc_drop"], row[f"{key}_se"] = round(drop, 6), round(se, 6)
        # the grid's own figures, to show that this measures what it judged
        row["grid_holdout_acc_drop"] = attempt["holdout_acc_drop"]
        row["grid_test_acc_drop"] = attempt["test_acc_drop"]
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Per cell: the median paired standard errors, the held-out minus test loss (mean, deviation) and how many
    attempts lie within two combined standard errors of zero; in points."""
    lines = ["| seed | watermark | fraction | slice | attempts | se held-out | se test | error mean | error sd "
             "| within 2 se |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["seed"], r["scheme"], r["adversary_fraction"]) for r in rows):
        cell = [r for r in rows if (r["seed"], r["scheme"], r["adversary_fraction"]) == key]
        error = [float(r["holdout_acc_drop"]) - float(r["test_acc_drop"]) for r in cell]
        spread = [math.hypot(float(r["holdout_se"]), float(r["test_se"])) for r in cell]
        within = sum(abs(e) <= 2 * s for e, s in zip(error, spread, strict=True))
        lines.append(
            f"| {key[0]} | {key[1]} | {float(key[2]):g} | {cell[0]['holdout_size']} | {len(cell)} "
            f"| {100 * statistics.median(float(r['holdout_se']) for r in cell):.2f} "
            f"| {100 * statistics.median(float(r['test_se']) for r in cell):.2f} "
            f"| {100 * statistics.fmean(error):+.2f} | {100 * statistics.stdev(error):.2f} | {within}/{len(cell)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--out", default="results/holdout_error.csv", help="one row per removed model")
    parser.add_argument("--summary", metavar="CSV", help="print the per-cell summary of a saved probe and stop")
    args = parser.parse_args(argv)

    from wmbench.files import write_csv_atomic

    if args.summary:
        with open(args.summary, newline="") as f:
            print(summary(list(csv.DictReader(f))))
        return
    for seed in args.seeds:
        seed_work(args.experiment, seed)  # every seed's models before any is read
    rows = [row for seed in args.seeds for scheme in args.schemes for fraction in args.fractions
            for row in measure_cell(seed, scheme, fraction, args.experiment)]
    write_csv_atomic(args.out, rows)
    print(summary(rows))
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
