"""Probe: is Laundering on the flagged class cheaper because of what it retrains on, or because it retrains less?

``retrain_triggers: flagged`` retrains on one clean and one stamped copy of
each adversary image, ``all`` on one clean and ten stamped: at the same
``epochs`` flagged takes a fifth of the steps. On the 136 digits images that
fifth does not repair Algorithm 1's resets (tests/test_laundering.py's model:
74 % test accuracy against 85 % with ``all``; 86 % with flagged at 44 epochs,
``all``'s number of steps). This re-runs ``remove@laundering`` on the full-size
experiment's watermarked models (``experiments/fashion_mnist/work/seed<k>/``,
left by ``dvc repro`` there; ``--experiment`` reads a copy run on other seeds)
with flagged at more epochs, everything else as the grid ran it (the cell's params file, data, Neural Cleanse output and
held-out slice), and writes one row per run beside the grid's own flagged (8
epochs) and ``all`` rows. ``holdout_acc_drop`` is what an adversary sees.

    OMP_NUM_THREADS=1 python -m scripts.laundering_probe --out results/laundering_probe.csv

``--variants`` probes other settings the same way (the grid's
``method@key=value+...`` spelling), e.g. Laundering's thresholds between the
default's and twice it: ``--variants laundering@conv_threshold=1.5+dense_threshold=3+retrain_triggers=flagged``,
or another method's (``wild_ce@distill_weight=1``), written beside the grid's
own run of that method.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from scripts.experiment_work import add_cell_arguments, seed_work

SCHEMES = ("square", "content")  # the grid's
FRACTIONS = ("0.1", "0.006")
EPOCHS = (24, 44)  # flagged's epochs: about half and all of `all`'s steps at its 8 epochs


def main(argv: Sequence[str] | None = None, target: str = "stages.grid:stage",
         default_out: str = "results/laundering_probe.csv", doc: str | None = None,
         added: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None) -> None:
    """Run the probe; ``target`` runs one removal in a worker (``scripts.refresh_probe`` passes its own, which
    registers the method it probes), ``added`` maps a method the grid does not run to the method whose
    ``removal`` block it starts from and its own keys, ``default_out`` and ``doc`` are the calling probe's."""
    parser = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/laundering_probe", help="folder for the probe's models")
    parser.add_argument("--jobs", type=int, default=2, help="removals at once, one torch thread each")
    parser.add_argument("--out", default=default_out, help="one row per run")
    parser.add_argument("--variants", default="", help="method@key=value[+key=value],... instead of Laundering "
                        f"on the flagged class at {' and '.join(map(str, EPOCHS))} epochs")
    add_cell_arguments(parser, SCHEMES, FRACTIONS)
    args = parser.parse_args(argv)

    from stages.grid import Variant, parse_variants, variant_params

    if args.variants:
        settings = [(v.name, v) for v in parse_variants(args.variants)]
    else:
        settings = [(f"flagged, epochs={e}", Variant("laundering", (("epochs", e), ("retrain_triggers", "flagged"))))
                    for e in EPOCHS]

    from wmbench.files import read_json, write_csv_atomic
    from wmbench.jobs import Job, run_jobs
    from wmbench.verdict import fraction_key

    works = {seed: seed_work(args.experiment, seed) for seed in args.seeds}  # every seed's models before any work
    current = yaml.safe_load((args.experiment / "params.yaml").read_text())
    jobs, runs = [], []
    for seed, work in works.items():
        for scheme in args.schemes:
            for fraction in args.fractions:
                cell = work / scheme / fraction
                cell_params = yaml.safe_load((cell / "params.yaml").read_text())
                for method, settings_ in current["removal"].items():  # keys added since the grid ran, at their default
                    cell_params["removal"][method] = {**settings_, **cell_params["removal"].get(method, {})}
                for method, (source, keys) in (added or {}).items():
                    cell_params["removal"][method] = {**cell_params["removal"][source], **keys}
                for label, variant in settings:
                    params, _ = variant_params(cell_params, variant)
                    epochs = params["removal"][variant.method]["epochs"]
                    out = Path(args.work) / f"seed{seed}" / scheme / fraction / label.replace(", ", "-")
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                    jobs.append(Job(f"seed{seed} {scheme}-{fraction} {label}", target, (
                        "remove", ["--params", str(out / "params.yaml"), "--method", variant.method,
                                   "--prepared", str(cell / "prepared"),
                                   "--model", str(cell / "models" / "watermarked.pt"),  # the judge step copies it there
                                   "--out", str(out / "model.pt"), "--metrics", str(out / "metrics.json"),
                                   "--plot", str(out / "curve.csv"), "--settings", str(out / "settings.json"),
                                   "--reconstruct", str(cell / "reconstruct")]), str(Path(args.work) / "log"),
                        cost=epochs * float(fraction)))  # the longest runs first
                    runs.append((seed, scheme, fraction, label, variant.method, out))
    run_jobs(jobs, args.jobs, say=print)

    rows, grids = [], {}
    cells = {seed: read_json(args.experiment / "cells" / f"seed{seed}.json")["cells"] for seed in args.seeds}
    for seed, scheme, fraction, label, method, out in runs:
        if (seed, scheme, fraction, method) not in grids:
            cell = cells[seed][scheme][fraction_key(float(fraction))]
            grids[seed, scheme, fraction, method] = cell
            grid_runs = ((("laundering", "all, epochs=8"), ("laundering@retrain_triggers=flagged", "flagged, epochs=8"))
                         if method == "laundering" else ((method, f"{method} (the grid's)"),))
            if method not in cell["attempts"]:  # a method the grid does not run: beside the grid's Laundering runs
                grid_runs = tuple((name, f"{name} (the grid's)") for name in cell["attempts"]
                                  if name.split("@")[0] == "laundering")
            for name, setting in grid_runs:
                if name not in cell["attempts"]:  # a grid run on a smaller menu
                    continue
                attempt = cell["attempts"][name]
                rows.append({"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction),
                             "setting": setting, "threshold": cell["threshold"],
                             "test_acc_drop": attempt["test_acc_drop"],
                             "holdout_acc_drop": attempt["holdout_acc_drop"], "wm_acc": attempt["wm_acc"],
                             "seconds": attempt["time_s"]})
        cell, probe = grids[seed, scheme, fraction, method], read_json(out / "metrics.json")
        rows.append({"seed": seed, "scheme": scheme, "adversary_fraction": float(fraction),
                     "setting": label, "threshold": cell["threshold"],
                     "test_acc_drop": round(cell["watermarked"]["test_acc"] - probe["test_acc"], 6),
                     "holdout_acc_drop": round(probe["holdout_acc_watermarked"] - probe["holdout_acc"], 6),
                     "wm_acc": probe["wm_acc"], "seconds": probe["time_s"]})
    write_csv_atomic(args.out, rows)

    from wmbench.robustness import mean_spread

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scheme"], -row["adversary_fraction"], row["setting"]), []).append(row)
    print("| scheme | data | setting | test points lost | held-out points lost | retention % | below threshold |")
    print("|---|---|---|---|---|---|---|")
    for (scheme, fraction, setting), group in sorted(groups.items()):
        below = sum(r["wm_acc"] <= r["threshold"] for r in group)
        print(f"| {scheme} | {-fraction:.1%} | {setting} | {mean_spread([r['test_acc_drop'] for r in group])} | "
              f"{mean_spread([r['holdout_acc_drop'] for r in group])} | {mean_spread([r['wm_acc'] for r in group])} "
              f"| {below}/{len(group)} |")


if __name__ == "__main__":
    main()
