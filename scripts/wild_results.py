"""WILD's alignment ablation and REFIT on full-size Fashion-MNIST, 3 seeds (issue 13).

Runs on the watermarked and clean models of ``scripts.aiken_results`` (same work
folder: ``lenet`` unless its params say otherwise, 5 embedding epochs, target 0,
10 % adversary data), so the two result files describe the same models and
share their thresholds (Aiken et al. Sec. 7.1's rule: the highest rate any
clean model shows at any epoch on the scheme's trigger set). Every run is the
pipeline's ``remove`` stage on a params file written per run, so a row is what
``dvc exp run -S ...`` gives.

Runs, in the order they are started (the most important first, so that an
interrupted grid still answers the main question; a rerun skips finished runs):

1. ``wild_ce`` / ``wild_js`` at beta 0 (erasing only) and at WILD Table I's
   MNIST beta (CE 0.1, JS 1);
2. the other betas of the ablation (``--betas``: 0.1, 1, 10, 100 for both);
3. ``wild_dn`` at its defaults, REFIT as WILD compared it (``variant=wild``,
   RMSprop, lr 0.001 / 0.003 / 0.005, WILD Table II) and as its authors run it
   (``variant=authors``).

Outputs: ``results/wild_beta_ablation.csv`` (scheme, divergence, beta, seed,
test_acc, wm_acc, threshold, ...) and ``results/wild_fashion_mnist.csv``
(scheme, method, setting, ...). Fresh runs replace the files' rows of the same
cell; the files' other rows are kept (a partial rerun adds to them).

    OMP_NUM_THREADS=1 python -m scripts.aiken_results --jobs 2 --models-only   # the shared models
    OMP_NUM_THREADS=1 python -m scripts.wild_results --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.wild_grid import run_quietly, set_dotted, write_yaml
from scripts.aiken_results import SCHEME_SETTINGS, SCHEMES, merge, read_csv, thresholds, write_csv
from wmbench.jobs import Job, run_jobs
from wmbench.robustness import mean_spread

FRACTION = 0.1  # WILD's 10 %
PAPER_BETA = {"wild_ce": 0.1, "wild_js": 1.0}  # WILD Table I, MNIST
BETAS = (0.0, 0.1, 1.0, 10.0, 100.0)
REFIT_LRS = (0.001, 0.003, 0.005)  # WILD Table II's columns
ABLATION_COLUMNS = ("scheme", "divergence", "beta", "seed", "test_acc", "wm_acc", "threshold",
                    "test_acc_watermarked", "alignment", "seconds")
TABLE_COLUMNS = ("scheme", "method", "setting", "adversary_fraction", "seed", "test_acc_watermarked", "test_acc",
                 "wm_acc", "threshold", "seconds")


def settings_name(settings: Sequence[tuple[str, Any]]) -> str:
    """``key=value,...`` with each key's last part (``ewc_weight=0`` for ``removal.refit.ewc_weight``, 0.0)."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float)
                    else f"{key.rsplit('.', 1)[-1]}={value}" for key, value in settings)


@dataclass(frozen=True)
class Run:
    """One removal of the grid: the method, the params it changes, and the name of its files."""

    scheme: str
    seed: int
    method: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return f"{self.method}-{settings_name(self.settings)}"

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
                third.append(Run(scheme, seed, "wild_dn", (("removal.wild_dn.discriminator_input", "distribution"),)))
            if refit:
                third += [Run(scheme, seed, "refit", (("removal.refit.variant", "wild"), ("removal.refit.lr", lr)))
                          for lr in REFIT_LRS]
                third.append(Run(scheme, seed, "refit", (("removal.refit.variant", "authors"),)))
    return first + second + third


HOLDOUT = 0.1  # the adversary's held-out share for choosing wild_dn's input
DN_CHOICE = (  # (method, settings): wild_dn's candidates at the paper's unweighted term, and references
    ("wild_dn", (("removal.wild_dn.discriminator_input", "raw"),)),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "std"),)),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "distribution"),)),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "raw"), ("removal.wild_dn.discriminator_lr", 0.0001))),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "raw"), ("beta", 0.1))),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "raw"), ("beta", 0.01))),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "raw"), ("removal.wild_dn.discriminator_lr", 0.0001),
                 ("beta", 0.1))),
    ("wild_dn", (("removal.wild_dn.discriminator_input", "distribution"), ("beta", 0.1))),
    ("wild_js", (("beta", 0.0),)),
    ("wild_js", (("beta", 1.0),)),
)
DN_CHOICE_COLUMNS = ("scheme", "seed", "method", "setting", "holdout_acc_watermarked", "holdout_acc",
                     "discriminator_acc", "test_acc_watermarked", "test_acc", "wm_acc", "seconds")


def dn_choice_plan(scheme: str = "square", seed: int = 0) -> list[Run]:
    """wild_dn's discriminator input chosen as an adversary would: every candidate trains on 90 % of its
    images and is judged by its accuracy on the other 10 % (``data.adversary_holdout``)."""
    return [Run(scheme, seed, method, (("data.adversary_holdout", HOLDOUT), *settings))
            for method, settings in DN_CHOICE]


def finished(work: Path, runs: Sequence[Run]) -> Iterator[tuple[Run, dict, dict]]:
    """(run, its remove metrics, its model's embed metrics) for every run that has finished."""
    for run in runs:
        path = run.folder(work) / f"{run.name}.json"
        if path.exists():
            embedded = json.loads((work / run.scheme / f"seed{run.seed}" / "embed.json").read_text())
            yield run, json.loads(path.read_text()), embedded


def dn_choice_rows(work: Path, runs: Sequence[Run]) -> list[dict]:
    """One row per finished candidate; test accuracy and retention are reported, not used to choose."""
    rows = []
    for run, metrics, embedded in finished(work, runs):
        setting = ",".join(f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float)
                           else f"{key.rsplit('.', 1)[-1]}={value}" for key, value in run.settings[1:])
        rows.append({"scheme": run.scheme, "seed": run.seed, "method": run.method, "setting": setting,
                     "holdout_acc_watermarked": metrics["holdout_acc_watermarked"],
                     "holdout_acc": metrics["holdout_acc"], "discriminator_acc": metrics.get("discriminator_acc", ""),
                     "test_acc_watermarked": embedded["test_acc"], "test_acc": metrics["test_acc"],
                     "wm_acc": metrics["wm_acc"], "seconds": round(metrics["time_s"], 1)})
    return rows


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


def collect(work: Path, runs: Sequence[Run], ablation_path: Path, table: Path) -> tuple[list[dict], list[dict]]:
    """Rows of the ablation and of the comparison table: every finished run, merged into the files' rows."""
    seeds = sorted({run.seed for run in runs})
    schemes = [s for s in SCHEME_SETTINGS if any(run.scheme == s for run in runs)]
    limits = thresholds(work, seeds, schemes)
    ablation, rows = [], []
    for run, metrics, embedded in finished(work, runs):
        common = {"scheme": run.scheme, "seed": run.seed, "test_acc": metrics["test_acc"],
                  "wm_acc": metrics["wm_acc"], "threshold": limits[run.scheme, run.seed],
                  "test_acc_watermarked": embedded["test_acc"], "seconds": round(metrics["time_s"], 1)}
        settings = dict(run.settings)
        if run.method in PAPER_BETA:
            ablation.append({**common, "divergence": run.method.removeprefix("wild_"), "beta": settings["beta"],
                             "alignment": metrics.get("alignment", "")})
            setting = f"beta={settings['beta']:g}"
        elif run.method == "refit" and settings["removal.refit.variant"] == "authors":
            setting = "variant=authors"
        elif run.method == "refit":
            setting = f"variant=wild,lr={settings['removal.refit.lr']:g}"
        else:
            setting = ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in run.settings) or "defaults"
        rows.append({**common, "method": run.method, "setting": setting, "adversary_fraction": FRACTION})
    return (merge(read_csv(ablation_path) if ablation_path.exists() else [], ablation, ABLATION_KEY),
            merge(read_csv(table) if table.exists() else [], rows, TABLE_KEY))


ABLATION_KEY = ("scheme", "divergence", "beta", "seed")
TABLE_KEY = ("scheme", "method", "setting", "seed")


def summary(rows: list[dict]) -> str:
    """Markdown: mean +- std over seeds of test accuracy and retention (%) per scheme, method and setting."""
    def stat(values: list[float]) -> str:
        return mean_spread([float(v) for v in values])

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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


def ablation_groups(rows: Sequence[dict]) -> dict[tuple[str, str], list[tuple[float, list[dict]]]]:
    """Rows by (scheme, divergence), then by beta in increasing order."""
    groups: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for row in rows:
        groups.setdefault((row["scheme"], row["divergence"]), {}).setdefault(float(row["beta"]), []).append(row)
    return {key: sorted(by_beta.items()) for key, by_beta in sorted(groups.items())}


def ablation_table(rows: Sequence[dict]) -> str:
    """Markdown: per scheme, divergence and beta, retention and test-accuracy loss (points), mean ± std."""
    lines = ["| scheme | D | beta | seeds | wm_acc % | test acc lost (points) | below threshold |",
             "|---|---|---|---|---|---|---|"]
    for (scheme, divergence), by_beta in ablation_groups(rows).items():
        for beta, group in by_beta:
            wm = _mean_std([100 * float(r["wm_acc"]) for r in group])
            lost = _mean_std([100 * (float(r["test_acc_watermarked"]) - float(r["test_acc"])) for r in group])
            below = sum(float(r["wm_acc"]) <= float(r["threshold"]) for r in group)
            lines.append(f"| {scheme} | {divergence.upper()} | {beta:g} | {len(group)} | {wm[0]:.1f} ± {wm[1]:.1f} | "
                         f"{lost[0]:.2f} ± {lost[1]:.2f} | {below}/{len(group)} |")
    return "\n".join(lines)


TABLE_II_COLUMNS = (  # (our method, our setting, WILD Table II column)
    ("refit", "variant=wild,lr=0.001", "refit lr 0.001"),
    ("refit", "variant=wild,lr=0.003", "refit lr 0.003"),
    ("refit", "variant=wild,lr=0.005", "refit lr 0.005"),
    ("wild_ce", f"beta={PAPER_BETA['wild_ce']:g}", "wild_ce"),
    ("wild_js", f"beta={PAPER_BETA['wild_js']:g}", "wild_js"),
    ("wild_dn", "discriminator_input=distribution", "wild_dn"),
)


def table_ii(rows: Sequence[dict]) -> str:
    """WILD Table II's shape on our rows: test accuracy / retention (%, mean ± std), the paper's MNIST 10 % below.

    Only schemes with a WILD row of the same protocol (``wmbench.sweep.PAPER_ROWS``) get paper
    numbers: WILD's "content" is our ``square``; our ``content`` (Zhang's text) has none.
    """
    from wmbench.sweep import WILD, paper_references

    references = paper_references()
    header = " | ".join(column for _, _, column in TABLE_II_COLUMNS)
    lines = [f"| scheme | {header} |", "|---" * (1 + len(TABLE_II_COLUMNS)) + "|"]
    for scheme in dict.fromkeys(row["scheme"] for row in rows):
        ours, paper = [], []
        for method, setting, column in TABLE_II_COLUMNS:
            group = [r for r in rows if (r["scheme"], r["method"], r["setting"]) == (scheme, method, setting)]
            if group:
                test = _mean_std([100 * float(r["test_acc"]) for r in group])
                wm = _mean_std([100 * float(r["wm_acc"]) for r in group])
                ours.append(f"{test[0]:.1f} ± {test[1]:.1f} / {wm[0]:.1f} ± {wm[1]:.1f}")
            else:
                ours.append("not run")
            method_key, _, lr = column.partition(" lr ")
            source = f"{WILD}, lr {lr}" if lr else WILD
            found = [ref for ref in references.get((scheme, method_key), [])
                     if ref.fraction == FRACTION and ref.source == source]
            paper.append(f"{100 * found[0].test_acc:.2f} / {100 * found[0].wm_acc:.2f}" if found else "")
        lines.append(f"| {scheme} (ours, Fashion-MNIST) | " + " | ".join(ours) + " |")
        if any(paper):
            lines.append(f"| {found_row(references, scheme)} (paper, MNIST) | " + " | ".join(paper) + " |")
    return "\n".join(lines)


def found_row(references: dict, scheme: str) -> str:
    """The WILD row name our ``scheme`` stands for, e.g. ``WILD "content"``."""
    from wmbench.sweep import WILD

    rows = [ref.row for ref in references.get((scheme, "wild_ce"), []) if ref.source == WILD]
    return f'WILD "{rows[0].name}"' if rows else scheme


def plot_ablation(rows: Sequence[dict], path: Path, arch: str) -> None:
    """Retention and test-accuracy loss against beta (symlog axis), one line per scheme and D, ± std bars."""
    from matplotlib.figure import Figure

    from wmbench.plotting import save_figure

    figure = Figure(figsize=(11, 4.2))
    retention, lost = figure.subplots(1, 2)
    colors: dict[str, str] = {}
    for (scheme, divergence), by_beta in ablation_groups(rows).items():
        betas = [beta for beta, _ in by_beta]
        style = {"label": f"{scheme} {divergence.upper()}", "color": colors.setdefault(scheme, f"C{len(colors)}"),
                 "marker": "o" if divergence == "js" else "s",
                 "linestyle": "-" if divergence == "js" else "--", "capsize": 3}
        wm = [_mean_std([100 * float(r["wm_acc"]) for r in group]) for _, group in by_beta]
        drop = [_mean_std([100 * (float(r["test_acc_watermarked"]) - float(r["test_acc"])) for r in group])
                for _, group in by_beta]
        retention.errorbar(betas, [m for m, _ in wm], yerr=[s for _, s in wm], **style)
        lost.errorbar(betas, [m for m, _ in drop], yerr=[s for _, s in drop], **style)
    for axis, label in ((retention, "watermark retention (%)"), (lost, "test accuracy lost (points)")):
        axis.set_xscale("symlog", linthresh=0.1)
        axis.set_xlabel("beta (0, then log scale)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    lost.axhline(1.5, color="grey", linewidth=0.8, linestyle=":")
    retention.legend(fontsize=8)
    figure.suptitle(f"WILD on Fashion-MNIST, 10 % adversary data, {arch}: mean ± std over 3 seeds")
    save_figure(figure, path)


def models_arch(work: Path, runs: Sequence[Run]) -> str:
    """The architecture of the work folder's models (``model.arch`` in their cells' params)."""
    cells = {run.folder(work).parent for run in runs}  # the cell whose model and params a run starts from
    archs = {yaml.safe_load((cell / "params.yaml").read_text())["model"]["arch"] for cell in cells}
    if len(archs) != 1:
        raise SystemExit(f"the work folder {work} mixes architectures {sorted(archs)}; use one folder per architecture")
    return archs.pop()


def run_all(work: Path, runs: Sequence[Run], jobs: int) -> None:
    """Every run, ``jobs`` at once, with progress and an estimate of the time left."""
    log = str(work / "runner.log")
    run_jobs([Job(f"{run.scheme} seed {run.seed} {run.name}", "scripts.wild_results:execute", (work, run), log)
              for run in runs], jobs, say=lambda line: print(line, file=sys.stderr, flush=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEME_SETTINGS,
                        help=f"default: {' '.join(SCHEMES)}; unrelated: WILD's and Adi et al.'s 100-image key")
    parser.add_argument("--betas", nargs="+", type=float, default=list(BETAS),
                        help=f"WILD's beta for wild_ce and wild_js (default: {' '.join(f'{b:g}' for b in BETAS)})")
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="skip REFIT's lr sweep")
    parser.add_argument("--no-dn", dest="dn", action="store_false", help="skip wild_dn")
    parser.add_argument("--methods", nargs="+", choices=("wild_ce", "wild_js", "wild_dn", "refit"),
                        help="run only these methods (default: all)")
    parser.add_argument("--dn-choice", action="store_true",
                        help="instead of the grid: wild_dn's discriminator inputs on square seed 0, judged on a "
                             f"{100 * HOLDOUT:g} %% held-out slice of the adversary's images -> --dn-choice-csv")
    parser.add_argument("--dn-choice-csv", default="results/wild_dn_choice.csv", help="default %(default)s")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process and CPU thread each")
    parser.add_argument("--work", default=".cache/aiken", help="scripts.aiken_results' work folder, whose models "
                                                               "are used (default %(default)s)")
    parser.add_argument("--collect", action="store_true", help="run nothing; write the CSVs from finished runs")
    parser.add_argument("--ablation", default="results/wild_beta_ablation.csv", help="default %(default)s")
    parser.add_argument("--table", default="results/wild_fashion_mnist.csv", help="default %(default)s")
    parser.add_argument("--plot", default="docs/wild_beta_ablation.png",
                        help="the ablation's curves against beta (default %(default)s)")
    parser.add_argument("--from-csv", action="store_true",
                        help="run nothing and read no work folder: print the tables and draw the plot from the "
                             "committed CSVs")
    parser.add_argument("--arch", default="lenet",
                        help="with --from-csv: the architecture the CSVs' runs used, for the plot's title (the CSVs "
                             "do not name it; otherwise it is read from the work folder). Default %(default)s")
    args = parser.parse_args(argv)
    if args.from_csv:
        ablation, rows = (read_csv(Path(path)) for path in (args.ablation, args.table))
        print(ablation_table(ablation), table_ii(rows), summary(rows), sep="\n\n")
        plot_ablation(ablation, Path(args.plot), args.arch)
        return
    work = Path(args.work).resolve()
    if args.dn_choice:
        choice = dn_choice_plan()
        run_all(work, choice, args.jobs)
        write_csv(Path(args.dn_choice_csv), dn_choice_rows(work, choice), DN_CHOICE_COLUMNS)
        print(f"{args.dn_choice_csv} written")
        return
    runs = [run for run in plan(args.seeds, args.schemes, args.betas, args.refit, args.dn)
            if not args.methods or run.method in args.methods]
    missing = [str(work / r.scheme / f"seed{r.seed}" / "watermarked.pt") for r in runs
               if not (work / r.scheme / f"seed{r.seed}" / "watermarked.pt").exists()]
    if missing:
        raise SystemExit(f"no watermarked model at {missing[0]} (and {len(set(missing)) - 1} more); make them with "
                         f"`python -m scripts.aiken_results --models-only --work {args.work}`")
    start = time.perf_counter()
    if not args.collect:
        run_all(work, runs, args.jobs)
    ablation, rows = collect(work, runs, Path(args.ablation), Path(args.table))
    write_csv(Path(args.ablation), ablation, ABLATION_COLUMNS)
    write_csv(Path(args.table), rows, TABLE_COLUMNS)
    plot_ablation(ablation, Path(args.plot), models_arch(work, runs))
    print(ablation_table(ablation), table_ii(rows), summary(rows), sep="\n\n")
    print(f"{len(ablation)} ablation rows in {args.ablation}, {len(rows)} rows in {args.table}; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
