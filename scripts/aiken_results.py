"""Neural Cleanse and Laundering on full-size Fashion-MNIST, several seeds: ``results/aiken_fashion_mnist.csv``.

Aiken et al., Neural Network Laundering, Table 2 (MNIST) and Sec. 7.6, redone
on Fashion-MNIST (Debian's IDX files). For each seed and scheme the owner's
model is embedded once; for each adversary fraction the ``reconstruct`` stage
runs Neural Cleanse on the adversary's images and ``remove@laundering``
launders the model. Clean models (one per seed, never shown a trigger) give
the ownership threshold, Aiken et al. Sec. 7.1's rule: the highest watermark
rate any clean model shows at any epoch on the scheme's trigger set; Neural
Cleanse also runs on them, so their false-positive classes are listed.

Every step is the pipeline's own stage code (``stages.prepare``, ``stages.embed``,
``stages.reconstruct``, ``stages.remove``) run in-process on a params file
written per cell, so a row is exactly what ``dvc exp run`` with the same
settings gives. Finished cells are kept in ``--work`` and skipped on a rerun.

    OMP_NUM_THREADS=1 python -m scripts.aiken_results --jobs 2      # about 50 min on 2 cores
    python -m scripts.aiken_results --seeds 0 --schemes square --fractions 0.1   # one cell
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.wild_grid import run_quietly, set_dotted, write_yaml
from wmbench.jobs import Job, run_jobs
from wmbench.robustness import mean_spread

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("square", "content", "noise")  # the default grid
# Schemes a grid can add with --schemes, and what each sets besides watermark.scheme.
SCHEME_SETTINGS: dict[str, dict[str, Any]] = {
    "square": {}, "content": {}, "noise": {},
    # WILD Sec. IV-A / Adi et al.: 100 out-of-domain images labelled the target, verified on those same images
    "unrelated": {"watermark.unrelated.verification": "same", "watermark.size": 100},
}
FRACTIONS = (0.1, 0.006)  # WILD's 10 %; Laundering's 0.6 % (360 Fashion-MNIST images)
COLUMNS = ("scheme", "arch", "seed", "adversary_fraction", "target_detected", "target_anomaly",
           "max_other_anomaly", "target_rank", "flagged", "threshold", "test_acc_watermarked", "test_acc",
           "wm_acc", "seconds", "reconstruct_seconds", "units_reset_conv", "units_reset_dense", "nc_restarts")
BASE = {  # Fashion-MNIST, lenet, 5 embedding epochs, target 0 (the settings of issue 12)
    "data.name": "fashion_mnist",
    "data.root": "/usr/share/datasets/fashion-mnist",
    "model.arch": "lenet",
    "train.epochs": 5,
    "watermark.target": 0,
    "device": "cpu",
    "reconstruct.epoch_images": 1024,  # the reference's epoch, as the full-size presets set it
    "reconstruct.restarts": 3,  # as the full-size presets
    "data.adversary_holdout": 0.0,  # the committed runs train on all of the adversary's images
}
CLEAN_SEED_OFFSET = 100  # a clean model's training seed: the run's seed + this


def cell_params(seed: int, scheme: str, fraction: float, sets: Sequence[str]) -> dict[str, Any]:
    """The project's params.yaml with the base settings, the cell's and ``--set KEY=VALUE`` applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in {**BASE, "seed": seed, "watermark.scheme": scheme, **SCHEME_SETTINGS[scheme],
                       "data.adversary_fraction": fraction}.items():
        set_dotted(params, key, value)
    for item in sets:
        key, _, value = item.partition("=")
        set_dotted(params, key, yaml.safe_load(value))
    return params


def run_cell(work: Path, seed: int, scheme: str, fractions: Sequence[float], sets: Sequence[str],
             models_only: bool = False, launder: bool = True) -> str:
    """Prepare, embed once, then reconstruct and launder at every fraction; files under ``work/scheme/seed``.

    ``models_only`` stops after the embedding (other grids, e.g. ``scripts.wild_results``, share it);
    ``launder`` False stops after Neural Cleanse (``--launder-choice`` launders with a held-out slice itself).
    """
    import torch

    torch.set_num_threads(1)
    from stages import embed, prepare, reconstruct, remove

    cell = work / scheme / f"seed{seed}"
    model = cell / "watermarked.pt"
    log = cell / "stages.log"
    for fraction in fractions:
        folder = cell / f"{fraction:g}"
        folder.mkdir(parents=True, exist_ok=True)
        params = write_yaml(folder / "params.yaml", cell_params(seed, scheme, fraction, sets))
        prepared = str(folder / "prepared")
        if not (folder / "prepared" / "info.json").exists():
            run_quietly(prepare.main, ["--params", params, "--out", prepared], log)
        if not model.exists():
            run_quietly(embed.main, ["--params", params, "--prepared", prepared, "--model", str(model),
                                     "--metrics", str(cell / "embed.json"), "--plot", str(cell / "embed.csv")], log)
        if models_only:
            continue
        if not (folder / "reconstruct.json").exists():
            run_quietly(reconstruct.main, ["--params", params, "--prepared", prepared, "--model", str(model),
                                           "--out", str(folder / "reconstruct"),
                                           "--metrics", str(folder / "reconstruct.json")], log)
        if launder and not (folder / "laundering.json").exists():
            run_quietly(remove.main, ["--params", params, "--method", "laundering", "--prepared", prepared,
                                      "--model", str(model), "--out", str(folder / "laundering.pt"),
                                      "--metrics", str(folder / "laundering.json"),
                                      "--plot", str(folder / "laundering.csv"),
                                      "--reconstruct", str(folder / "reconstruct")], log)
    return f"{scheme} seed {seed}"


HOLDOUT = 0.1  # the adversary's held-out share when it chooses Laundering's retraining
LAUNDER_CHOICE = {  # Step 3's retraining recipes (the paper gives none): name -> removal.laundering settings
    "epochs=8,lr=0.001": {"epochs": 8, "lr": 0.001},  # the default
    "epochs=4,lr=0.001": {"epochs": 4, "lr": 0.001},
    "epochs=16,lr=0.001": {"epochs": 16, "lr": 0.001},
    "epochs=16,lr=0.0005": {"epochs": 16, "lr": 0.0005},
    # Algorithm 1's thresholds (the default retraining): fewer units reset, and none (retraining alone)
    "dense_threshold=4,conv_threshold=2": {"dense_threshold": 4.0, "conv_threshold": 2.0},
    "dense_threshold=inf,conv_threshold=inf": {"dense_threshold": math.inf, "conv_threshold": math.inf},
}
CHOICE_COLUMNS = ("scheme", "seed", "recipe", "holdout_acc_watermarked", "holdout_acc", "test_acc_watermarked",
                  "test_acc", "wm_acc", "threshold", "units_reset_total", "seconds")


def launder_candidate(work: Path, seed: int, scheme: str, recipe: str) -> str:
    """``remove@laundering`` with one retraining recipe on the 10 % cell, trained on 90 % of the adversary's
    images and judged on the other 10 %; round 1 reuses the cell's Neural Cleanse output."""
    import torch

    torch.set_num_threads(1)
    from stages import remove

    folder = work / scheme / f"seed{seed}" / f"{FRACTIONS[0]:g}"
    out = folder / "launder_choice"
    out.mkdir(exist_ok=True)
    if (out / f"{recipe}.json").exists():
        return f"{scheme} seed {seed} {recipe} (kept)"
    params = yaml.safe_load((folder / "params.yaml").read_text())
    set_dotted(params, "data.adversary_holdout", HOLDOUT)
    for key, value in LAUNDER_CHOICE[recipe].items():
        set_dotted(params, f"removal.laundering.{key}", value)
    run_quietly(remove.main, ["--params", write_yaml(out / f"{recipe}.yaml", params), "--method", "laundering",
                              "--prepared", str(folder / "prepared"),
                              "--model", str(work / scheme / f"seed{seed}" / "watermarked.pt"),
                              "--out", str(out / f"{recipe}.pt"), "--metrics", str(out / f"{recipe}.json"),
                              "--plot", str(out / f"{recipe}.csv"), "--reconstruct", str(folder / "reconstruct")],
                out / "stages.log")
    (out / f"{recipe}.pt").unlink()
    return f"{scheme} seed {seed} {recipe}"


def choice_rows(work: Path, seeds: Sequence[int], schemes: Sequence[str]) -> list[dict]:
    """One row per finished candidate; the adversary ranks by ``holdout_acc``, the rest is reported after."""
    limits = thresholds(work, seeds, schemes)
    rows = []
    for seed in seeds:
        for scheme in schemes:
            out = work / scheme / f"seed{seed}" / f"{FRACTIONS[0]:g}" / "launder_choice"
            embedded = _read(work / scheme / f"seed{seed}" / "embed.json")
            for recipe in LAUNDER_CHOICE:
                if not (out / f"{recipe}.json").exists():
                    continue
                metrics = _read(out / f"{recipe}.json")
                rows.append({"scheme": scheme, "seed": seed, "recipe": recipe,
                             "holdout_acc_watermarked": metrics["holdout_acc_watermarked"],
                             "holdout_acc": metrics["holdout_acc"], "test_acc_watermarked": embedded["test_acc"],
                             "test_acc": metrics["test_acc"], "wm_acc": metrics["wm_acc"],
                             "threshold": limits[scheme, seed], "units_reset_total": metrics["units_reset_total"],
                             "seconds": round(metrics["time_s"], 1)})
    return rows


def choice_summary(rows: Sequence[dict]) -> str:
    """Markdown: per recipe, what the adversary ranks by (held-out accuracy), then what it could not see."""
    def stat(values: list[float]) -> str:
        return mean_spread(values, scale=1.0)

    lines = ["| recipe | cells | held-out acc % (chooses) | test acc lost (points) | wm_acc % | removed | "
             "units reset |",
             "|---|---|---|---|---|---|---|"]
    for recipe in LAUNDER_CHOICE:
        group = [r for r in rows if r["recipe"] == recipe]
        if group:
            removed = sum(float(r["wm_acc"]) <= float(r["threshold"]) for r in group)
            lines.append(f"| {recipe} | {len(group)} | {stat([100 * float(r['holdout_acc']) for r in group])} | "
                         f"{stat([100 * (float(r['test_acc_watermarked']) - float(r['test_acc'])) for r in group])} | "
                         f"{stat([100 * float(r['wm_acc']) for r in group])} | {removed}/{len(group)} | "
                         f"{stat([float(r['units_reset_total']) for r in group])} |")
    return "\n".join(lines)


def run_clean(work: Path, seed: int, fraction: float, sets: Sequence[str], models_only: bool = False) -> str:
    """One clean model (every epoch kept, for the threshold), then Neural Cleanse on it unless ``models_only``."""
    import torch

    torch.set_num_threads(1)
    from stages import prepare, reconstruct
    from stages.embed import checkpoint_meta, train_model
    from wmbench.checkpoint import save_checkpoint
    from wmbench.params import load_params
    from wmbench.prepared import load_prepared
    from wmbench.seeding import seed_everything

    folder = work / "clean" / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "stages.log"
    params_file = write_yaml(folder / "params.yaml", cell_params(seed, "content", fraction, sets))
    if not (folder / "prepared" / "info.json").exists():
        run_quietly(prepare.main, ["--params", params_file, "--out", str(folder / "prepared")], log)
    model_path = folder / "clean.pt"
    if not model_path.exists():
        params = load_params(params_file)
        seed_everything(params.seed)
        prepared = load_prepared(folder / "prepared")
        device = torch.device("cpu")
        test = prepared.on("test", device)
        epoch = [0]

        def keep_epoch(model: torch.nn.Module) -> dict[str, float]:
            epoch[0] += 1
            meta = checkpoint_meta(prepared, params, seed + CLEAN_SEED_OFFSET, "vanilla")
            save_checkpoint(folder / f"epoch{epoch[0]}.pt", model, meta)
            from wmbench.training import accuracy

            return {"test_acc": accuracy(model, test)}

        start = time.perf_counter()
        model, history = train_model(prepared, params, device, seed=seed + CLEAN_SEED_OFFSET, watermark=False,
                                     evaluate=keep_epoch)
        save_checkpoint(model_path, model, checkpoint_meta(prepared, params, seed + CLEAN_SEED_OFFSET, "vanilla"))
        (folder / "clean.json").write_text(json.dumps({"test_acc": history[-1]["test_acc"],
                                                        "time_s": time.perf_counter() - start}))
    if not models_only and not (folder / "reconstruct.json").exists():
        run_quietly(reconstruct.main, ["--params", params_file, "--prepared", str(folder / "prepared"),
                                       "--model", str(model_path), "--out", str(folder / "reconstruct"),
                                       "--metrics", str(folder / "reconstruct.json")], log)
    return f"clean seed {seed}"


def thresholds(work: Path, seeds: Sequence[int], schemes: Sequence[str]) -> dict[tuple[str, int], float]:
    """Per (scheme, seed): the highest rate any clean model shows at any epoch on that trigger set (Sec. 7.1)."""
    import torch

    from wmbench.checkpoint import load_checkpoint
    from wmbench.evaluate import calibrate_threshold
    from wmbench.prepared import load_prepared
    from wmbench.training import accuracy

    models = [load_checkpoint(path).build_model().eval()
              for path in sorted((work / "clean").glob("seed*/epoch*.pt"))]
    found = {}
    for scheme in schemes:
        for seed in seeds:
            folder = next((work / scheme / f"seed{seed}").glob("*/prepared"))
            trigger = load_prepared(folder).on("trigger", torch.device("cpu"))
            found[scheme, seed] = calibrate_threshold(accuracy(m, trigger) for m in models)
    return found


def collect(work: Path, seeds: Sequence[int], schemes: Sequence[str], fractions: Sequence[float],
            arch: str) -> list[dict]:
    """One row per (scheme, seed, fraction) laundered, and one per clean model's Neural Cleanse; ``arch`` is
    the model the cells trained (``--set model.arch=...``), written in every row."""
    limits = thresholds(work, seeds, schemes)
    rows = []
    for seed in seeds:
        clean = work / "clean" / f"seed{seed}"
        rows.append({"scheme": "clean", "seed": seed, "adversary_fraction": FRACTIONS[0],  # NC at 10 % only
                     **_nc_fields(clean),
                     "test_acc": _read(clean / "clean.json")["test_acc"]})
        for scheme in schemes:
            cell = work / scheme / f"seed{seed}"
            embedded = _read(cell / "embed.json")
            for fraction in fractions:
                folder = cell / f"{fraction:g}"
                launder = _read(folder / "laundering.json")
                units = {kind: launder.get(f"units_reset_{kind}", sum(  # older metrics: per layer name
                    v for k, v in launder.items() if k.startswith(f"units_reset_{prefix}")))
                    for kind, prefix in (("conv", "features"), ("dense", "classifier"))}
                rows.append({
                    "scheme": scheme, "seed": seed, "adversary_fraction": fraction,
                    **_nc_fields(folder),
                    "threshold": limits[scheme, seed], "test_acc_watermarked": embedded["test_acc"],
                    "test_acc": launder["test_acc"], "wm_acc": launder["wm_acc"],
                    "seconds": launder["time_s"], "units_reset_conv": units["conv"],
                    "units_reset_dense": units["dense"],
                })
    return [{column: row.get(column, arch if column == "arch" else "") for column in COLUMNS} for row in rows]


def _nc_fields(folder: Path) -> dict[str, Any]:
    """Neural Cleanse's verdicts from ``reconstruct.json``; the target's norm rank from ``classes.csv``."""
    metrics = _read(folder / "reconstruct.json")
    with open(folder / "reconstruct" / "classes.csv", newline="") as handle:
        ranks = {int(row["class"]): int(row["rank"]) for row in csv.DictReader(handle)}
    return {
        "target_detected": metrics["target_detected"],
        "target_anomaly": metrics["target_anomaly"],
        "max_other_anomaly": metrics["max_other_anomaly"],
        "target_rank": ranks[BASE["watermark.target"]],
        "flagged": " ".join(str(k) for k in metrics["flagged"]),
        "reconstruct_seconds": metrics["time_s"],
        "nc_restarts": _read(folder / "reconstruct.settings.json")["reconstruct"].get("restarts", 1),
    }


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def merge(committed: Sequence[dict], fresh: Sequence[dict], key: Sequence[str]) -> list[dict]:
    """The committed rows that no fresh run replaces, then the fresh rows: a rerun in a new work folder
    (or of part of the grid) adds to the files instead of dropping what it did not run."""
    def ident(row: dict) -> tuple[str, ...]:
        return tuple(f"{float(row[k]):g}" if k in ("beta", "seed") else str(row[k]) for k in key)

    replaced = {ident(row) for row in fresh}
    return [row for row in committed if ident(row) not in replaced] + list(fresh)



def read_csv(path: Path) -> list[dict]:
    """Every row of a CSV as a dict."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict], columns: Sequence[str] = COLUMNS) -> None:
    """The CSV in one rename, so an interrupted write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def summary(rows: list[dict]) -> str:
    """Markdown: per scheme and fraction, mean +- std over seeds, and Neural Cleanse's hit count."""
    def stat(values: list[float]) -> str:
        values = [100 * float(v) for v in values]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {spread:.2f}"

    lines = ["| scheme | fraction | seeds | NC target detected | target anomaly | test acc wm % | "
             "test acc laundered % | wm_acc % | threshold % | removed | s |", "|---|" * 1 + "---|" * 10]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scheme"], float(row["adversary_fraction"])), []).append(row)
    for (scheme, fraction), group in groups.items():
        detected = sum(str(r["target_detected"]) == "True" for r in group)
        anomaly = statistics.fmean(float(r["target_anomaly"]) for r in group)
        if scheme == "clean":
            flagged = "; ".join(f"seed {r['seed']}: [{r['flagged']}]" for r in group)
            lines.append(f"| clean | {fraction:g} | {len(group)} | {detected} (flagged: {flagged}) | "
                         f"{anomaly:.2f} | | {stat([r['test_acc'] for r in group])} | | | | |")
            continue
        removed = sum(float(r["wm_acc"]) <= float(r["threshold"]) for r in group)
        lines.append(
            f"| {scheme} | {fraction:g} | {len(group)} | {detected} | {anomaly:.2f} | "
            f"{stat([r['test_acc_watermarked'] for r in group])} | {stat([r['test_acc'] for r in group])} | "
            f"{stat([r['wm_acc'] for r in group])} | {stat([r['threshold'] for r in group])} | "
            f"{removed}/{len(group)} | {statistics.fmean(float(r['seconds']) for r in group):.0f} |")
    return "\n".join(lines)


def progress(line: str) -> None:
    """The job runner's progress lines, on stderr beside the stages' logs."""
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEME_SETTINGS,
                        help=f"default: {' '.join(SCHEMES)}; unrelated: WILD's and Adi et al.'s 100-image key")
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS),
                        help="adversary fractions (default: 0.1 0.006)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a params.yaml key in every cell (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="cells at once, one process and CPU thread each "
                                                             "(default 1)")
    parser.add_argument("--work", default=".cache/aiken", help="folder for models and stage outputs, kept "
                                                               "between runs (default .cache/aiken)")
    parser.add_argument("--out", default="results/aiken_fashion_mnist.csv", help="the CSV written "
                                                                                 "(default %(default)s)")
    parser.add_argument("--launder-choice", action="store_true",
                        help="instead of the grid: the cells' Neural Cleanse and Laundering, then Laundering's "
                             "retraining recipes judged on a held-out slice of the adversary's images -> "
                             "--choice-out (no clean-model search, no --out); use with --fractions 0.1")
    parser.add_argument("--choice-out", default="results/laundering_choice.csv", help="default %(default)s")
    parser.add_argument("--models-only", action="store_true", help="embed and train the clean models, nothing "
                                                                  "else (for grids that share them)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    # a bad --set fails here, before any work
    arch = cell_params(args.seeds[0], args.schemes[0], args.fractions[0], args.set)["model"]["arch"]

    log = str(work / "runner.log")
    tasks = [Job(f"{scheme} seed {seed}", "scripts.aiken_results:run_cell",
                 (work, seed, scheme, list(args.fractions), list(args.set), args.models_only, not args.launder_choice),
                 log) for seed in args.seeds for scheme in args.schemes]
    if not args.launder_choice:  # the choice needs the cells' triggers, not the clean models' false positives
        tasks += [Job(f"clean seed {seed}", "scripts.aiken_results:run_clean",
                      (work, seed, FRACTIONS[0], list(args.set), args.models_only), log) for seed in args.seeds]
    start = time.perf_counter()
    run_jobs(tasks, args.jobs, say=progress)
    if args.models_only:
        print(f"models in {work} after {time.perf_counter() - start:.0f} s")
        return
    if args.launder_choice:
        candidates = [(seed, scheme, recipe) for seed in args.seeds for scheme in args.schemes
                      for recipe in LAUNDER_CHOICE]
        choices = [Job(f"{scheme} seed {seed} {recipe}", "scripts.aiken_results:launder_candidate",
                       (work, seed, scheme, recipe), log) for seed, scheme, recipe in candidates]
        run_jobs(choices, args.jobs, say=progress)
        out = Path(args.choice_out)
        chosen = merge(read_csv(out) if out.exists() else [], choice_rows(work, args.seeds, args.schemes),
                       ("scheme", "seed", "recipe"))
        write_csv(out, chosen, CHOICE_COLUMNS)
        print(choice_summary(chosen))
        print(f"wall {time.perf_counter() - start:.0f} s; rows in {args.choice_out}")
        return
    rows = collect(work, args.seeds, args.schemes, args.fractions, arch)
    write_csv(Path(args.out), rows)
    print(summary(rows))
    print(f"wall {time.perf_counter() - start:.0f} s; rows in {args.out}")


if __name__ == "__main__":
    main()
