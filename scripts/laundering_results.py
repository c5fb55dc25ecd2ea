"""Laundering's retraining settings on full-size Fashion-MNIST, 3 seeds: ``results/laundering_fashion_mnist.csv``.

Issue 12's table (Aiken et al., Table 2, redone on Fashion-MNIST) from the
full-size experiment's cells (``experiments/fashion_mnist/cells/seed<k>.json``:
``square`` and ``content`` at 10 % and 0.6 % adversary data, its noise cells
skipped; Laundering at
its params and at the grid's ``laundering@...`` variants) and, with ``--run``,
the same grid code (``stages.grid``, the experiment's params file) on the
``noise`` scheme at both fractions, Laundering alone (the experiment has
noise at 10 % only, since its eighth run). Every figure is the grid's
own: the threshold from three clean models (Aiken et al. Sec. 7.1), Neural
Cleanse with one start, the removal trained on 80 % of the adversary's images
and its accuracy lost on the other 20 % (``holdout_acc_drop``, what an
adversary can see) beside the test set's.

    OMP_NUM_THREADS=1 python -m scripts.laundering_results --run      # noise, 3 seeds: about 15 min on 2 cores
    python -m scripts.laundering_results                             # the CSV and table from the cells
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

EXPERIMENT = Path("experiments/fashion_mnist")
NOISE = Path("results/laundering_noise")  # the noise grid's cells, one JSON a seed (committed)
SEEDS = (0, 1, 2)
COLUMNS = ("scheme", "seed", "adversary_fraction", "setting", "target_detected", "flagged", "threshold",
           "test_acc_watermarked", "test_acc", "wm_acc", "holdout_acc_drop", "removed", "seconds")


def laundering_variants() -> str:
    """The experiment's ``laundering@...`` variants (its grid.yaml), comma-separated as ``stages.grid`` takes them."""
    import yaml

    from stages.grid import parse_variants

    variants = parse_variants(yaml.safe_load((EXPERIMENT / "grid.yaml").read_text())["variants"])
    return ",".join(v.name for v in variants if v.method == "laundering")


def run_noise(seeds: Sequence[int], jobs: int, work: Path) -> None:
    """The experiment's grid stage on ``noise`` for each seed: Laundering and its variants, 10 % and 0.6 %."""
    variants = laundering_variants()
    for seed in seeds:
        subprocess.run([
            sys.executable, "-m", "stages.grid", "--params", str(EXPERIMENT / "params.yaml"), "--seed", str(seed),
            "--schemes", "noise", "--fractions", "0.1,0.006", "--methods", "laundering",
            f"--variants={variants}", "--jobs", str(jobs), "--work", str(work / f"seed{seed}"),
            "--metrics", str(NOISE / f"seed{seed}.json")], check=True)


def rows_from(cells_file: Path, schemes: Sequence[str] | None = None) -> list[dict]:
    """One row per Laundering run (plain or variant) of one seed's cells file, of ``schemes`` (default all)."""
    from wmbench.files import read_json
    from wmbench.robustness import split_label

    metrics = read_json(cells_file)
    rows = []
    for scheme, fractions in metrics["cells"].items():
        if schemes is not None and scheme not in schemes:
            continue
        for cell in fractions.values():
            for name, attempt in cell["attempts"].items():
                method, setting = split_label(name)
                if method != "laundering":
                    continue
                rows.append({
                    "scheme": scheme, "seed": metrics["seed"], "adversary_fraction": cell["adversary_fraction"],
                    "setting": setting or "params", "target_detected": cell["target_detected"],
                    "flagged": " ".join(map(str, cell["flagged"] or [])), "threshold": cell["threshold"],
                    "test_acc_watermarked": cell["watermarked"]["test_acc"], "test_acc": attempt["test_acc"],
                    "wm_acc": attempt["wm_acc"], "holdout_acc_drop": attempt["holdout_acc_drop"],
                    "removed": attempt["removed"], "seconds": attempt["time_s"]})
    return rows


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds (population, as the report) per scheme, fraction and setting, in points and %."""
    from wmbench.robustness import mean_spread

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scheme"], -row["adversary_fraction"], row["setting"])].append(row)

    lines = ["| scheme | data | setting | test points lost | held-out points lost | retention % | threshold % "
             "| removed |", "|---|---|---|---|---|---|---|---|"]
    for (scheme, fraction, setting), group in sorted(groups.items()):
        lines.append(
            f"| {scheme} | {-fraction:.1%} | {setting} "
            f"| {mean_spread([r['test_acc_watermarked'] - r['test_acc'] for r in group])} "
            f"| {mean_spread([r['holdout_acc_drop'] for r in group])} "
            f"| {mean_spread([r['wm_acc'] for r in group])} | {mean_spread([r['threshold'] for r in group])} "
            f"| {sum(bool(r['removed']) for r in group)}/{len(group)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the noise grid first (its cells go to "
                        f"{NOISE}/seed<k>.json)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="default: 0 1 2")
    parser.add_argument("--jobs", type=int, default=2, help="pieces at once, one torch thread each")
    parser.add_argument("--work", default=".cache/laundering_noise", help="the noise grid's models (emptied)")
    parser.add_argument("--out", default="results/laundering_fashion_mnist.csv", help="one row per run")
    args = parser.parse_args(argv)

    from wmbench.files import write_csv_atomic

    if args.run:
        run_noise(args.seeds, args.jobs, Path(args.work))
    experiment = [EXPERIMENT / "cells" / f"seed{s}.json" for s in args.seeds]
    noise = [NOISE / f"seed{s}.json" for s in args.seeds]
    missing = [str(f) for f in experiment + noise if not f.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `dvc repro` in {EXPERIMENT}, and this with --run")
    # the experiment's square and content; noise from the noise grid (both fractions: the experiment has 10 % only)
    rows = [row for f in experiment for row in rows_from(f, ("square", "content"))]
    rows += [row for f in noise for row in rows_from(f)]
    write_csv_atomic(args.out, [{k: row[k] for k in COLUMNS} for row in rows])
    print(table(rows))
    print(noise_verdict(args.seeds))


def noise_verdict(seeds: Sequence[int]) -> str:
    """The verdict stage's choice (:mod:`wmbench.robustness`) on ``noise``, among Laundering's settings only (the
    noise grid runs no other method): per fraction, the markdown table of ``report.md``."""
    from stages.verdict import gather
    from wmbench.files import read_json
    from wmbench.robustness import report, verdicts

    attempts, _ = gather([read_json(NOISE / f"seed{s}.json") for s in seeds])
    return "\n".join(f"\nnoise, adversary fraction {fraction:g}, the adversary choosing among Laundering's "
                     f"settings:\n\n{report(verdicts(found))}" for fraction, found in attempts.items())


if __name__ == "__main__":
    main()
