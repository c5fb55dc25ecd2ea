"""Probe: which retention proxy lets the adversary tell a removal that worked from one that did not?

The ``robustness`` stage judges every removal by a proxy the adversary can
compute (:mod:`wmbench.proxy`). The reconstructed trigger itself
(``trigger``) is what Laundering retrains against (Aiken et al., Sec. 4
Step 3): every Laundering setting drives it to 1-3 % whatever it leaves of
the true mark. This re-measures, on the full-size experiment's removed models
(``experiments/fashion_mnist/work/seed<k>/``, left by ``dvc repro`` there; ``--experiment`` reads a copy
of the experiment run on other seeds instead),
the ``trigger`` proxy and a pattern re-optimised on each removed model
(:func:`wmbench.proxy.region_retention`) in regions of several sizes around
the suspected class's reconstructed mask:

- ``area1``, ``area2``, ``area3``: :func:`wmbench.proxy.trigger_region` at 1, 2
  and 3 times the mask's support (pixels above 0.05);
- ``ring1``, ``ring2``: the support grown by one and two pixels in every
  direction (3x3 and 5x5 max-pooling).

One row per model, beside the grid's own figures (held-out and test accuracy
lost, true retention, threshold); a per-cell summary prints each proxy's rank
correlation with the true retention and what the adversary's own clean model
(``scratch``) reads on it: a region so large that a clean model reads high
measures the region's size, not the mark. The true retention is read here only
to judge proxies, never by the adversary's choice.

    OMP_NUM_THREADS=1 python -m scripts.proxy_probe --out results/proxy_probe.csv
    python -m scripts.proxy_probe --summary results/proxy_probe.csv  # the rank correlations again
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scripts.experiment_work import EXPERIMENT, add_cell_arguments, load_cell, seed_work

REGIONS = ("area1", "area2", "area3", "ring1", "ring2")


def regions(mask: Any) -> dict[str, Any]:
    """The candidate regions around one reconstructed mask (1, H, W)."""
    import torch.nn.functional as F

    from wmbench.proxy import SUPPORT_LEVEL, trigger_region

    support = (mask > SUPPORT_LEVEL).float()
    found = {f"area{k}": trigger_region(mask, k) for k in (1, 2, 3)}
    for ring in (1, 2):
        found[f"ring{ring}"] = F.max_pool2d(support[None], 2 * ring + 1, 1, ring)[0]
    return found


def probe_cell(seed: int, scheme: str, fraction: str, steps: int,
               experiment: Path = EXPERIMENT) -> list[dict[str, Any]]:
    """Every proxy of the watermarked and every removed model of one cell of ``experiment``."""
    import torch

    from wmbench.checkpoint import load_checkpoint
    from wmbench.proxy import proxy_retention, region_retention
    from wmbench.seeding import generator

    torch.set_num_threads(1)
    device = torch.device("cpu")
    loaded = load_cell(experiment, seed, scheme, fraction, device)
    params, train, holdout, found = loaded.params, loaded.train, loaded.holdout, loaded.reconstruction
    suspected, figures, models = loaded.suspected, loaded.figures, loaded.models
    areas = regions(found.masks[found.row(suspected)].float())
    rows = []
    for name, path in models.items():
        model = load_checkpoint(path).build_model().to(device).eval()
        row: dict[str, Any] = {"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction), "model": name,
                               "suspected": suspected, "threshold": figures["threshold"]}
        row.update({f"{key}_pixels": int(region.sum()) for key, region in areas.items()})
        row["trigger"] = round(proxy_retention(model, found, suspected, holdout), 4)
        for key, region in areas.items():
            row[key] = round(region_retention(model, region, suspected, train, holdout, steps,
                                              generator(params.seed, "proxy", device)), 4)
        true = figures["attempts"].get(name, {"holdout_acc_drop": 0.0, "test_acc_drop": 0.0,
                                              "wm_acc": figures["watermarked"]["wm_acc"]})
        row.update({key: true[key] for key in ("holdout_acc_drop", "test_acc_drop", "wm_acc")})
        rows.append(row)
    print(summary(rows), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Per proxy: Spearman's rank correlation with the true retention over the removed models (``all``) and over
    those the ``trigger`` proxy reads below 10 % (``low``: the ones it cannot tell apart), and ``scratch``'s
    reading."""
    removed = [row for row in rows if row["model"] != "watermarked"]
    low = [row for row in removed if float(row["trigger"]) < 0.1]
    head = f"seed {rows[0]['seed']} {rows[0]['scheme']} {float(rows[0]['adversary_fraction']):g} ({len(low)} low):"
    parts = [f"{key} rho all {rank_correlation(removed, key):.2f} low {rank_correlation(low, key):.2f}"
             + scratch_reading(removed, key) for key in ("trigger", *REGIONS)]
    return head + " " + "; ".join(parts)


def rank_correlation(rows: list[dict[str, Any]], key: str) -> float:
    """Spearman's rank correlation of the proxy ``key`` with the true retention (``wm_acc``) over ``rows``."""
    from scipy.stats import spearmanr

    return float(spearmanr([float(r[key]) for r in rows], [float(r["wm_acc"]) for r in rows]).statistic)


def scratch_reading(rows: list[dict[str, Any]], key: str) -> str:
    """`` scratch N %``: what the adversary's own clean model reads on the proxy ``key`` (empty without one)."""
    scratch = next((row for row in rows if row["model"] == "scratch"), None)
    return f" scratch {100 * float(scratch[key]):.0f} %" if scratch else ""


def verdict_table(rows: list[dict[str, Any]], keys: Sequence[str] = ("trigger", *REGIONS)) -> str:
    """Markdown: per proxy (a column of ``rows`` named in ``keys``), watermark and budget, how many seeds' picks
    (the adversary choosing by that proxy, :func:`wmbench.robustness.verdicts`) went below their threshold within
    the budget on the test set, and the picks' mean true retention: what each proxy would have made of the
    verdict."""
    from wmbench.robustness import BUDGETS, Attempt, split_label, verdicts

    lines = ["| proxy | watermark | " + " | ".join(f"within {100 * b:g} pt" for b in BUDGETS) + " |",
             "|---|---|" + "---|" * len(BUDGETS)]
    removed = [row for row in rows if row["model"] != "watermarked"]
    for key in keys:
        attempts = [Attempt(str(r["scheme"]), *split_label(str(r["model"])), int(r["seed"]),
                            estimated_drop=float(r["holdout_acc_drop"]), proxy_wm_acc=float(r[key]),
                            test_acc_drop=float(r["test_acc_drop"]), wm_acc=float(r["wm_acc"]),
                            threshold=float(r["threshold"])) for r in removed]
        found = verdicts(attempts)
        for scheme in sorted({a.scheme for a in attempts}):
            cells = []
            for verdict in (v for v in found if v.scheme == scheme):
                mean = verdict.stat("wm_acc")[0]
                kept = "-" if math.isnan(mean) else f"{100 * mean:.1f} %"
                cells.append(f"{verdict.removed_seeds}/{len(verdict.picks)} ({kept}; {len(verdict.chosen)} picked)")
            lines.append(f"| {key} | {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser)
    parser.add_argument("--steps", type=int, default=150, help="Adam steps per pattern (robustness.proxy_steps)")
    parser.add_argument("--jobs", type=int, default=2, help="cells at once, one torch thread each")
    parser.add_argument("--out", default="results/proxy_probe.csv", help="one row per model")
    parser.add_argument("--summary", metavar="CSV", help="print the per-cell summary of a saved probe and stop")
    args = parser.parse_args(argv)

    from wmbench.files import write_csv_atomic

    if args.summary:
        with open(args.summary, newline="") as f:
            saved = list(csv.DictReader(f))
        for key in dict.fromkeys((r["seed"], r["scheme"], r["adversary_fraction"]) for r in saved):
            print(summary([r for r in saved if (r["seed"], r["scheme"], r["adversary_fraction"]) == key]))
        for fraction in dict.fromkeys(r["adversary_fraction"] for r in saved):
            print(f"\nThe verdict by each proxy, adversary fraction {float(fraction):g}: seeds removed (picks' mean "
                  f"retention)\n")
            print(verdict_table([r for r in saved if r["adversary_fraction"] == fraction]))
        return

    for seed in args.seeds:
        seed_work(args.experiment, seed)  # every seed's models before any is read
    cells = [(s, m, f, args.steps, args.experiment) for s in args.seeds for m in args.schemes for f in args.fractions]
    with ProcessPoolExecutor(args.jobs) as pool:
        found = list(pool.map(probe_cell, *zip(*cells, strict=True)))
    rows = [row for cell in found for row in cell]
    write_csv_atomic(args.out, rows)
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
