"""WILD's alignment ablation and REFIT on full-size Fashion-MNIST, 3 seeds (issue 13).

Runs on the watermarked and clean models of ``scripts.aiken_results`` (same work
folder: ``lenet``, 5 embedding epochs, target 0, 10 % adversary data), so the
two result files describe the same models and share their thresholds (Aiken
et al. Sec. 7.1's rule: the highest rate any clean model shows at any epoch on
the scheme's trigger set). Every run is the pipeline's ``remove`` stage on a
params file written per run, so a row is what ``dvc exp run -S ...`` gives.

Runs, in the order they are started (the most important first, so that an
interrupted grid still answers the main question; a rerun skips finished runs):

1. ``wild_ce`` / ``wild_js`` at beta 0 (erasing only) and at WILD Table I's
   MNIST beta (CE 0.1, JS 1);
2. the other betas of the ablation (``--betas``: 0.1, 1, 10, 100 for both);
3. REFIT as WILD compared it (``variant=wild``, RMSprop, lr 0.001 / 0.003 /
   0.005, WILD Table II) after ``wild_dn`` at its defaults.

Outputs: ``results/wild_beta_ablation.csv`` (scheme, divergence, beta, seed,
test_acc, wm_acc, threshold, ...) and the WILD / REFIT rows of
``results/wild_fashion_mnist.csv`` (scheme, method, setting, ...); REFIT's
``variant=authors`` rows already there are kept.

    OMP_NUM_THREADS=1 python -m scripts.aiken_results --jobs 2 --models-only   # the shared models
    OMP_NUM_THREADS=1 python -m scripts.wild_results --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.wild_grid import run_quietly, set_dotted, write_yaml
from scripts.aiken_results import SCHEMES, thresholds

FRACTION = 0.1  # WILD's 10 %
PAPER_BETA = {"wild_ce": 0.1, "wild_js": 1.0}  # WILD Table I, MNIST
BETAS = (0.0, 0.1, 1.0, 10.0, 100.0)
REFIT_LRS = (0.001, 0.003, 0.005)  # WILD Table II's columns
ABLATION_COLUMNS = ("scheme", "divergence", "beta", "seed", "test_acc", "wm_acc", "threshold",
                    "test_acc_watermarked", "alignment", "seconds")
TABLE_COLUMNS = ("scheme", "method", "setting", "adversary_fraction", "seed", "test_acc_watermarked", "test_acc",
                 "wm_acc", "threshold", "seconds")


@dataclass(frozen=True)
class Run:
    """One removal of the grid: the method, the params it changes, and the name of its files."""

    scheme: str
    seed: int
    method: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return f"{self.method}-" + ",".join(f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float)
                                            else f"{key.rsplit('.', 1)[-1]}={value}"
                                            for key, value in self.settings)

    def folder(self, work: Path) -> Path:
        return work / self.scheme / f"seed{self.seed}" / f"{FRACTION:g}" / "wild"


def plan(seeds: Sequence[int], schemes: Sequence[str], betas: Sequence[float], refit: bool, dn: bool) -> list[Run]:
    """The runs in priority order: beta 0 and the paper's beta, the other betas, then REFIT and wild_dn."""
    first, second, third = [], [], []
    for seed in seeds:
        for scheme in schemes:
            for method in ("wild_js", "wild_ce"):
                for beta in betas:
                    run = Run(scheme, seed, method, (("beta", float(beta)),))
                    (first if beta in (0.0, PAPER_BETA[method]) else second).append(run)
            if dn:
                third.append(Run(scheme, seed, "wild_dn", ()))
            if refit:
                third += [Run(scheme, seed, "refit", (("removal.refit.variant", "wild"), ("removal.refit.lr", lr)))
                          for lr in REFIT_LRS]
    return first + second + third


def execute(work: Path, run: Run) -> str:
    """The ``remove`` stage for one run, in this process with one CPU thread; skipped when its metrics exist."""
    import torch

    torch.set_num_threads(1)
    from stages import remove

    cell = work / run.scheme / f"seed{run.seed}"
    source = cell / f"{FRACTION:g}"
    folder = run.folder(work)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = folder / f"{run.name}.json"
    if metrics.exists():
        return f"{run.scheme} seed {run.seed} {run.name} (kept)"
    params = yaml.safe_load((source / "params.yaml").read_text())
    for key, value in run.settings:
        set_dotted(params, key, value)
    seconds = run_quietly(remove.main, [
        "--params", write_yaml(folder / f"{run.name}.yaml", params), "--method", run.method,
        "--prepared", str(source / "prepared"), "--model", str(cell / "watermarked.pt"),
        "--out", str(folder / f"{run.name}.pt"), "--metrics", str(metrics),
        "--plot", str(folder / f"{run.name}.csv")], folder / "stages.log")
    (folder / f"{run.name}.pt").unlink()  # 250 kB a run, never read again
    return f"{run.scheme} seed {run.seed} {run.name} in {seconds:.0f} s"


def collect(work: Path, runs: Sequence[Run], table: Path) -> tuple[list[dict], list[dict]]:
    """Rows of the ablation and of the comparison table from every finished run."""
    seeds = sorted({run.seed for run in runs})
    schemes = [s for s in SCHEMES if any(run.scheme == s for run in runs)]
    limits = thresholds(work, seeds, schemes)
    ablation, rows = [], []
    for run in runs:
        path = run.folder(work) / f"{run.name}.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        embedded = json.loads((work / run.scheme / f"seed{run.seed}" / "embed.json").read_text())
        common = {"scheme": run.scheme, "seed": run.seed, "test_acc": metrics["test_acc"],
                  "wm_acc": metrics["wm_acc"], "threshold": limits[run.scheme, run.seed],
                  "test_acc_watermarked": embedded["test_acc"], "seconds": round(metrics["time_s"], 1)}
        settings = dict(run.settings)
        if run.method in PAPER_BETA:
            ablation.append({**common, "divergence": run.method.removeprefix("wild_"), "beta": settings["beta"],
                             "alignment": metrics.get("alignment", "")})
            setting = f"beta={settings['beta']:g}"
        elif run.method == "refit":
            setting = f"variant=wild,lr={settings['removal.refit.lr']:g}"
        else:
            setting = "defaults"
        rows.append({**common, "method": run.method, "setting": setting, "adversary_fraction": FRACTION})
    if table.exists():  # keep REFIT's authors rows (results/README.md says how they were made)
        with open(table, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["setting"] == "variant=authors"] + rows
    return ablation, rows


def write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """The CSV in one rename, so an interrupted write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def summary(rows: list[dict]) -> str:
    """Markdown: mean +- std over seeds of test accuracy and retention (%) per scheme, method and setting."""
    def stat(values: list[float]) -> str:
        values = [100 * float(v) for v in values]
        return f"{statistics.fmean(values):.1f} ± {statistics.pstdev(values):.1f}"

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scheme"], row["method"], row["setting"]), []).append(row)
    lines = ["| scheme | method | setting | seeds | test acc % (watermarked) | test acc % | wm_acc % | "
             "threshold % | removed |", "|---" * 9 + "|"]
    for (scheme, method, setting), group in sorted(groups.items()):
        removed = sum(float(r["wm_acc"]) <= float(r["threshold"]) for r in group)
        lines.append(f"| {scheme} | {method} | {setting} | {len(group)} | "
                     f"{stat([r['test_acc_watermarked'] for r in group])} | {stat([r['test_acc'] for r in group])} | "
                     f"{stat([r['wm_acc'] for r in group])} | {stat([r['threshold'] for r in group])} | "
                     f"{removed}/{len(group)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES,
                        help=f"default: {' '.join(SCHEMES)}")
    parser.add_argument("--betas", nargs="+", type=float, default=list(BETAS),
                        help=f"WILD's beta for wild_ce and wild_js (default: {' '.join(f'{b:g}' for b in BETAS)})")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="skip REFIT's lr sweep")
    parser.add_argument("--no-dn", dest="dn", action="store_false", help="skip wild_dn")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process and CPU thread each")
    parser.add_argument("--work", default=".cache/aiken", help="scripts.aiken_results' work folder, whose models "
                                                               "are used (default %(default)s)")
    parser.add_argument("--collect", action="store_true", help="run nothing; write the CSVs from finished runs")
    parser.add_argument("--ablation", default="results/wild_beta_ablation.csv", help="default %(default)s")
    parser.add_argument("--table", default="results/wild_fashion_mnist.csv", help="default %(default)s")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    runs = plan(args.seeds, args.schemes, args.betas, args.refit, args.dn)
    missing = [str(work / r.scheme / f"seed{r.seed}" / "watermarked.pt") for r in runs
               if not (work / r.scheme / f"seed{r.seed}" / "watermarked.pt").exists()]
    if missing:
        raise SystemExit(f"no watermarked model at {missing[0]} (and {len(set(missing)) - 1} more); make them with "
                         f"`python -m scripts.aiken_results --models-only --work {args.work}`")
    start = time.perf_counter()
    if not args.collect:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(execute, work, run) for run in runs]
            for done, future in enumerate(as_completed(futures), start=1):
                elapsed = time.perf_counter() - start
                left = elapsed / done * (len(runs) - done)
                print(f"[{done}/{len(runs)}] {future.result()}; {elapsed / 60:.0f} min so far, about "
                      f"{left / 60:.0f} min left", file=sys.stderr, flush=True)
    ablation, rows = collect(work, runs, Path(args.table))
    write_csv(Path(args.ablation), ABLATION_COLUMNS, ablation)
    write_csv(Path(args.table), TABLE_COLUMNS, rows)
    print(summary(rows))
    print(f"{len(ablation)} ablation rows in {args.ablation}, {len(rows)} rows in {args.table}; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
