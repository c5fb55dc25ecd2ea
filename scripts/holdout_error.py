"""Probe: how far the adversary's held-out slice can be trusted to tell a removal's accuracy cost.

The adversary of the ``robustness`` stage picks, within each budget, the
removal of lowest proxy retention among those whose accuracy loss on its
held-out slice (``data.adversary_holdout`` of its images) fits the budget
(:func:`wmbench.robustness.choose`); the verdict then counts a seed as removed
only if that pick is below the ownership threshold and its loss on the owner's
test set fits the budget too. Where the two losses disagree by about the
budget's size, the verdict turns on sampling error. This re-measures, on the
full-size experiment's models (``experiments/fashion_mnist/work/seed<k>/``,
left by ``dvc repro`` there; ``--experiment`` reads a copy run on other
seeds), each removal's loss against the watermarked model on both sets with its
*paired* standard error: the mean and sample deviation, over images, of
``correct(watermarked) - correct(removed)`` (the models agree on most images,
so the paired error is far below the unpaired binomial one). With
``data.holdout_pool`` > 0 the slice and the test set are independent samples
that no model trained on, so the held-out minus test loss should spread as
``sqrt(se_holdout^2 + se_test^2)``; the summary says how many attempts lie
within two of those. The attempts of a cell share its images and watermarked
model, so their errors are correlated (a shared offset, the watermarked
model's own luck on the slice): the count describes a cell, it is not a
coverage rate over independent trials. Each row's losses are checked against
the grid's own figures, so the probe measures what the verdict judged.

    OMP_NUM_THREADS=1 python -m scripts.holdout_error --experiment experiments/fashion_mnist \\
        --schemes square content noise --fractions 0.1 0.006 --out results/holdout_error.csv
    python -m scripts.holdout_error --summary results/holdout_error.csv
    python -m scripts.holdout_error --summary results/holdout_error.csv --margin 1

``--margin K`` adds the verdict under another rule (docs/design.md): an
attempt is admissible only when its held-out loss plus K of its paired
standard errors fits the budget, beside the grid's rule (K = 0); per
watermark, fraction and budget, the seeds whose pick is then below threshold
within the budget on the test set. The cells' figures (proxy retention,
retention, threshold) come from ``--experiment``'s ``cells/seed<k>.json``,
which must be the run the CSV measured (the committed CSV: the seventh run,
commit 287dfa1; a CSV of another run is refused).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.experiment_work import EXPERIMENT, add_cell_arguments, seed_work

if TYPE_CHECKING:
    import torch

    from wmbench.training import DeviceData

TOLERANCE = 1e-5  # the grid rounds its figures to 6 decimals


def paired_drop(correct_before: torch.Tensor, correct_after: torch.Tensor) -> tuple[float, float]:
    """Accuracy lost from ``before`` to ``after`` on the same images, and its paired standard error."""
    diff = correct_before.float() - correct_after.float()
    n = diff.numel()
    if n < 2:
        raise ValueError(f"a paired standard error needs at least 2 images, got {n}")
    return float(diff.mean()), float(diff.std(correction=1)) / math.sqrt(n)


def judged_sets(cell: Path) -> dict[str, DeviceData]:
    """The cell's held-out slice and test set, as the ``robustness`` stage reads them; refuses a cell whose slice
    the owner trained on (no pool) or whose models ran other than fp32 and standard layout."""
    import torch

    from wmbench.params import load_params
    from wmbench.prepared import load_prepared
    from wmbench.proxy import adversary_holdout

    params = load_params(cell / "params.yaml")
    if params.data.holdout_pool <= 0:
        raise SystemExit(f"{cell}: data.holdout_pool is 0, so the held-out slice is part of the owner's training "
                         "data and its error is a bias, not sampling error; this probe needs a pool (the experiment "
                         "sets 0.02)")
    if params.precision != "fp32" or params.channels_last:
        raise SystemExit(f"{cell}: precision {params.precision}, channels_last {params.channels_last}; this probe "
                         "re-measures fp32 models in the standard layout only")
    device = torch.device("cpu")
    prepared = load_prepared(cell / "prepared")
    return {"holdout": adversary_holdout(*prepared.arrays["adversary"], params.data.adversary_holdout, params.seed,
                                         device),
            "test": prepared.on("test", device)}


def measure_cell(seed: int, scheme: str, fraction: str, experiment: Path = EXPERIMENT) -> list[dict[str, Any]]:
    """Each judged removal's loss on the held-out slice and the test set, with paired standard errors; stops if
    a loss differs from the grid's own figure (the probe would not be measuring what the verdict judged)."""
    import torch

    from wmbench.checkpoint import load_checkpoint
    from wmbench.files import read_json
    from wmbench.training import predict
    from wmbench.verdict import fraction_key

    torch.set_num_threads(1)
    cell = seed_work(experiment, seed) / scheme / fraction
    sets = judged_sets(cell)
    figures = read_json(experiment / "cells" / f"seed{seed}.json")["cells"][scheme][fraction_key(float(fraction))]

    def correct(path: Path) -> dict[str, torch.Tensor]:
        model = load_checkpoint(path).build_model().eval()
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
            if abs(drop - attempt[f"{key}_acc_drop"]) > TOLERANCE:
                raise SystemExit(f"seed {seed} {scheme} {fraction} {name}: {key} loss {drop:.6f} here, "
                                 f"{attempt[f'{key}_acc_drop']} in the grid's figures; the work folder is not the "
                                 "one the cells came from")
            row[f"{key}_acc_drop"], row[f"{key}_se"] = round(drop, 6), round(se, 6)
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
        deviation = f"{100 * statistics.stdev(error):.2f}" if len(error) > 1 else "-"
        lines.append(
            f"| {key[0]} | {key[1]} | {float(key[2]):g} | {cell[0]['holdout_size']} | {len(cell)} "
            f"| {100 * statistics.median(float(r['holdout_se']) for r in cell):.2f} "
            f"| {100 * statistics.median(float(r['test_se']) for r in cell):.2f} "
            f"| {100 * statistics.fmean(error):+.2f} | {deviation} | {within}/{len(cell)} |")
    return "\n".join(lines)


def margin_counts(rows: list[dict[str, Any]], experiment: Path, margin: float,
                  budgets: Sequence[float] | None = None) -> str:
    """Seeds removed within each budget when the adversary admits an attempt only if its held-out loss plus
    ``margin`` paired standard errors fits (:func:`wmbench.robustness.choose` on the shifted estimate), beside
    ``margin`` 0, the grid's rule; a markdown table over the cells in ``rows`` (budgets: the verdict's own)."""
    from wmbench.files import read_json
    from wmbench.robustness import BUDGETS, Attempt, verdicts
    from wmbench.verdict import fraction_key

    budgets = BUDGETS if budgets is None else budgets

    figures: dict[tuple[str, str], dict[str, Any]] = {}  # (seed, fraction) -> that seed's cells at the fraction
    for row in rows:
        key = (row["seed"], row["adversary_fraction"])
        if key not in figures:
            cells = read_json(experiment / "cells" / f"seed{row['seed']}.json")["cells"]
            wanted = fraction_key(float(key[1]))
            figures[key] = {scheme: at[wanted] for scheme, at in cells.items() if wanted in at}
        cell = figures[key].get(row["scheme"], {})
        if row["model"] not in cell.get("attempts", {}):
            raise ValueError(f"{experiment}/cells/seed{row['seed']}.json has no {row['model']} for {row['scheme']} at "
                             f"{row['adversary_fraction']}: the CSV measured another run; point --experiment at that "
                             "run's folder (e.g. `git worktree add /tmp/run <commit>` of its commit)")

    def removed_seeds(fraction: str, k: float) -> dict[tuple[str, float], str]:
        """Per (watermark, budget): seeds whose pick succeeds with the held-out loss shifted by ``k`` errors."""
        attempts = []
        for row in (r for r in rows if r["adversary_fraction"] == fraction):
            cell = figures[(row["seed"], fraction)][row["scheme"]]
            found = cell["attempts"][row["model"]]
            attempts.append(Attempt(row["scheme"], row["model"], "", int(row["seed"]),
                                    float(row["holdout_acc_drop"]) + k * float(row["holdout_se"]),
                                    found["proxy_wm_acc"], found["test_acc_drop"], found["wm_acc"], cell["threshold"]))
        return {(v.scheme, v.budget): f"{v.removed_seeds}/{len(v.picks)}"
                for v in verdicts(attempts, budgets)}

    lines = ["| watermark | fraction | budget (points) | removed, held-out loss | "
             f"removed, loss + {margin:g} se |", "|---|---|---|---|---|"]
    for fraction in dict.fromkeys(r["adversary_fraction"] for r in rows):
        plain, shifted = removed_seeds(fraction, 0.0), removed_seeds(fraction, margin)
        for scheme in dict.fromkeys(r["scheme"] for r in rows if r["adversary_fraction"] == fraction):
            for budget in budgets:
                lines.append(f"| {scheme} | {float(fraction):g} | {100 * budget:g} | {plain[(scheme, budget)]} "
                             f"| {shifted[(scheme, budget)]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--out", default="results/holdout_error.csv", help="one row per removed model")
    parser.add_argument("--summary", metavar="CSV", help="print the per-cell summary of a saved probe and stop")
    parser.add_argument("--margin", type=float, metavar="K",
                        help="with --summary: also the verdict when the held-out loss plus K standard errors must fit")
    args = parser.parse_args(argv)

    from wmbench.files import write_csv_atomic

    if args.summary:
        with open(args.summary, newline="") as f:
            rows = list(csv.DictReader(f))
        print(summary(rows))
        if args.margin is not None:
            print()
            print(margin_counts(rows, args.experiment, args.margin))
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
