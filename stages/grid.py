"""Stage ``grid`` (full-size experiments): one seed's cells, every watermark, adversary fraction and removal.

The default pipeline (``dvc.yaml``) is one cell; a full-size experiment
(``experiments/fashion_mnist``) runs this stage once per seed. It runs the
same stage code, on a params file written per cell, in four steps, sharing
what can be shared:

1. **Prepare** each (watermark, fraction): its splits and trigger sets.
2. **Train**: one watermarked model per watermark (the owner trains on the
   whole training split but ``data.holdout_pool``, whatever the adversary
   holds), and the clean models,
   shared by every watermark: each is trained once and scored at every epoch
   on every cell's trigger set, so each threshold is still Aiken et al.
   Sec. 7.1's (the highest rate any clean model shows at any epoch).
3. **Attack** each (watermark, fraction): Neural Cleanse (``reconstruct``),
   then every removal method (``remove``), Laundering starting from it, and
   every variant (``--variants``: a method at other settings, e.g.
   ``wild_js@epochs=4``), so the adversary has settings to choose among
   (issue 14 part 2; each variant is one more attempt, judged like a method).
4. **Judge** each cell: ``evaluate`` and ``robustness`` (the adversary's pick
   on its held-out slice and reconstructed trigger, then the true figures).

The stage runs ``--jobs`` pieces at once in their own processes, one torch
thread each (``wmbench.jobs``), and prints progress with an estimate of the
time left. The models stay in ``--work`` (not a DVC output: hundreds of
megabytes of splits and checkpoints); ``--metrics`` holds every figure the
``verdict`` stage reads, and its settings file the seconds of every piece.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wmbench import seeding
from wmbench.files import read_json, write_json_atomic
from wmbench.jobs import Job, run_jobs
from wmbench.stage import SETTINGS_HELP, Timer, run_stage, settings_path, stage_parser, writing_outputs
from wmbench.verdict import fraction_key

# single-thread seconds of each piece on Fashion-MNIST with experiments/fashion_mnist's params (seed 0 of its
# first run), for the time-left estimate and the order of the queue only; removals at 10 % of the data
STEP_COST = {"prepare": 3.0, "embed": 85.0, "clean": 70.0, "reconstruct": 220.0, "judge": 16.0}
REMOVAL_COST = {"finetune": 41.0, "rtal": 60.0, "fineprune": 28.0, "prune": 24.0, "refit": 72.0,
                "laundering": 98.0, "wild_ce": 192.0, "wild_js": 204.0, "wild_dn": 250.0, "scratch": 92.0}


@dataclass(frozen=True)
class Variant:
    """One removal method at one setting: ``method@key=value+key=value``; a key is a param under
    ``removal.<method>``, or ``beta`` for WILD. Plain ``method`` is the params file's own setting."""

    method: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return "+".join([self.method, *(f"{k}={v}" for k, v in self.overrides)]).replace("+", "@", 1)

    def settings(self) -> list[tuple[str, Any]]:
        """The dotted params keys this variant sets and their values."""
        return [(key if key == "beta" else f"removal.{self.method}.{key}", value) for key, value in self.overrides]


def parse_variants(text: str) -> list[Variant]:
    """``--variants``: comma-separated ``method@key=value[+key=value]``; each key must bear on its method.

    Keys are sorted into one spelling (``lr=1+epochs=2`` is ``epochs=2+lr=1``)
    and a value reads as YAML, or as a number where YAML 1.1 leaves a string
    (``1e-3``)."""
    from wmbench.removal import REMOVALS
    from wmbench.sweep import WILD_METHODS

    variants = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not re.fullmatch(r"[\w.=@+-]+", item):
            raise ValueError(f"--variants {item!r}: use letters, digits and . _ - = @ + only (names become file names)")
        method, _, rest = item.partition("@")
        REMOVALS.get(method)
        overrides: dict[str, Any] = {}
        for pair in rest.split("+") if rest else []:
            key, sep, value = pair.partition("=")
            if not sep or not key or "." in key or (key == "beta" and method not in WILD_METHODS):
                raise ValueError(f"--variants {item!r}: write method@key=value[+key=value] with each key a param "
                                 f"of removal.{method} (or beta for WILD), e.g. wild_js@epochs=4")
            if key in overrides:
                raise ValueError(f"--variants {item!r} sets {key} twice")
            overrides[key] = _value(value)
        if not overrides:
            raise ValueError(f"--variants {item!r} names no setting; e.g. {method}@epochs=4")
        variants.append(Variant(method, tuple(sorted(overrides.items()))))
    return variants


def _value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


@dataclass(frozen=True)
class Cell:
    """One watermark at one adversary fraction, for this stage's seed; its files under ``work/<scheme>/<f>``."""

    scheme: str
    fraction: float
    work: Path

    @property
    def name(self) -> str:
        return f"{self.scheme}-{self.fraction:g}"

    @property
    def folder(self) -> Path:
        return self.work / self.scheme / f"{self.fraction:g}"

    def path(self, *parts: str) -> str:
        return str(self.folder.joinpath(*parts))


def excluded_cells(exclude: str, schemes: Sequence[str], fractions: Sequence[float]) -> set[tuple[str, float]]:
    """``--exclude``: comma-separated ``scheme@fraction`` (e.g. ``noise@0.006``), each a cell of this grid."""
    skipped = set()
    for item in (part.strip() for part in exclude.split(",")):
        if not item:
            continue
        scheme, _, text = (part.strip() for part in item.partition("@"))
        try:
            fraction: float | None = float(text)
        except ValueError:
            fraction = None
        if scheme not in schemes or fraction not in fractions:
            raise ValueError(f"--exclude {item!r} names no cell of this grid: write scheme@fraction with the scheme "
                             f"in --schemes ({','.join(schemes)}) and the fraction in --fractions "
                             f"({','.join(f'{f:g}' for f in fractions)}), e.g. {schemes[0]}@{fractions[0]:g}; after "
                             "shrinking the grid, clear grid.yaml's `exclude` of cells it no longer has")
        skipped.add((scheme, fraction))
    return skipped


def grid_cells(schemes: Sequence[str], fractions: Sequence[float], skipped: set[tuple[str, float]],
               work: Path) -> list[Cell]:
    """Every (watermark, fraction) but the ``skipped`` ones: a grid sized to its time budget leaves out cells,
    not a method or a seed."""
    cells = [Cell(s, f, work) for s in schemes for f in fractions if (s, f) not in skipped]
    if not cells:
        raise ValueError("--exclude leaves no cell to run; drop an entry")
    return cells


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``params[a][b] = value`` for ``key`` ``"a.b"``; the key must exist, as with ``dvc exp run -S``."""
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ValueError(f"{key}: the params file has no block {part!r}")
    if last not in node:
        raise ValueError(f"{key}: the params file has no key {key!r}")
    node[last] = value


def write_cell_params(base: dict[str, Any], cell: Cell, seed: int) -> str:
    """The experiment's params with the cell's seed, scheme and fraction, validated; the file's path."""
    from wmbench.params import parse_params

    params = yaml.safe_load(yaml.safe_dump(base))
    for key, value in (("seed", seed), ("watermark.scheme", cell.scheme), ("data.adversary_fraction", cell.fraction)):
        set_dotted(params, key, value)
    parse_params(params)  # a bad value fails here, before any work
    cell.folder.mkdir(parents=True, exist_ok=True)
    path = cell.folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def variant_params(params: dict[str, Any], variant: Variant) -> tuple[dict[str, Any], Any]:
    """``params`` (nested) with the variant's settings, and the parsed :class:`wmbench.params.Params`: a bad
    value fails here, before any work."""
    from wmbench.params import parse_params

    params = yaml.safe_load(yaml.safe_dump(params))
    for key, value in variant.settings():
        set_dotted(params, key, value)
    try:
        return params, parse_params(params)
    except ValueError as error:  # ParamsError too: say which variant
        raise type(error)(f"--variants {variant.name}: {error}") from error


def check_variants(base: dict[str, Any], variants: Sequence[Variant]) -> dict[str, float]:
    """Refuse a variant that repeats the params file's setting or another variant's; per variant, its epochs
    against its method's in ``base`` (the cost guess's scale, at least 0.1; 1 without an ``epochs``)."""
    from wmbench.params import parse_params

    plain = parse_params(yaml.safe_load(yaml.safe_dump(base))).removal.settings
    seen: dict[str, str] = {}
    scales = {variant.name: 1.0 for variant in variants}
    for variant in (v for v in variants if v.overrides):
        raw, parsed = variant_params(base, variant)
        if raw == base:
            raise ValueError(f"--variants {variant.name}: params.yaml already runs {variant.method} so; "
                             "drop it or change a value")
        key = yaml.safe_dump(raw, sort_keys=True)
        if key in seen:
            raise ValueError(f"--variants {variant.name} runs the same as {seen[key]}; drop one")
        seen[key] = variant.name
        mine = getattr(parsed.removal.settings[variant.method], "epochs", None)
        own = getattr(plain[variant.method], "epochs", None)
        if mine is not None and own:
            scales[variant.name] = max(mine / own, 0.1)
    return scales


def write_variant_params(cell_params: str, variant: Variant) -> str:
    """The cell's params with the variant's settings, beside the cell's (``params@<name>.yaml``); its path."""
    path = Path(cell_params)
    out = path.with_name(f"params@{variant.name}.yaml")
    out.write_text(yaml.safe_dump(variant_params(yaml.safe_load(path.read_text()), variant)[0], sort_keys=False))
    return str(out)


# ---- the pieces, run in worker processes (wmbench.jobs) -----------------------------------------------------

def stage(module: str, argv: list[str]) -> None:
    """One stage's ``main`` with ``argv``, in this process."""
    import importlib

    importlib.import_module(f"stages.{module}").main(argv)


def train_clean(params_path: str, cells: list[tuple[str, str]], seed: int, out: str) -> None:
    """Step 2's clean model ``seed``: trained on the owner's data once, scored at every epoch on the test set and
    every cell's trigger set (``cells``: (name, prepared folder)); the model and one CSV row per epoch."""
    import numpy as np
    import torch

    from stages.embed import checkpoint_meta, train_model
    from wmbench.checkpoint import save_checkpoint
    from wmbench.files import write_csv_atomic
    from wmbench.prepared import load_prepared
    from wmbench.stage import start
    from wmbench.training import accuracy

    params, device = start(params_path, 1)
    prepared = {name: load_prepared(folder) for name, folder in cells}
    first = next(iter(prepared.values()))
    owner_images, owner_labels = first.arrays["owner"]
    for name, other in prepared.items():  # the clean model stands for every cell only if they share the owner
        images, labels = other.arrays["owner"]
        if not (np.array_equal(labels, owner_labels) and np.array_equal(images, owner_images)):
            raise ValueError(f"cell {name} has another owner split than {cells[0][0]}; clean models cannot be shared")
    test = first.on("test", device)
    triggers = {name: p.on("trigger", device) for name, p in prepared.items()}

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        scores = {"test_acc": accuracy(model, test)}
        scores.update({f"wm_acc@{name}": accuracy(model, trigger) for name, trigger in triggers.items()})
        scores["wm_acc"] = max(v for k, v in scores.items() if k.startswith("wm_acc@"))
        return scores

    model, history = train_model(first, params, device, seed=seed, watermark=False, evaluate=evaluate)
    save_checkpoint(Path(out) / f"seed{seed}.pt", model, checkpoint_meta(first, params, seed, "vanilla"))
    write_csv_atomic(Path(out) / f"seed{seed}.csv", history)


def judge(params_path: str, cell_folder: str, watermarked: str, clean: str, clean_seeds: list[int],
          cell_name: str) -> None:
    """Step 4 for one cell: its threshold from the clean models' histories, then ``evaluate`` and ``robustness``."""
    from wmbench.evaluate import calibrate_threshold

    folder = Path(cell_folder)
    models = folder / "models"
    (models / "vanilla").mkdir(parents=True, exist_ok=True)
    if Path(watermarked) != models / "watermarked.pt":
        shutil.copyfile(watermarked, models / "watermarked.pt")
    rates = []
    for seed in clean_seeds:
        shutil.copyfile(Path(clean) / f"seed{seed}.pt", models / "vanilla" / f"seed{seed}.pt")
        with open(Path(clean) / f"seed{seed}.csv", newline="") as f:
            rates += [float(row[f"wm_acc@{cell_name}"]) for row in csv.DictReader(f)]
    write_json_atomic(models / "vanilla" / "calibration.json", {
        "threshold": calibrate_threshold(rates),
        "threshold_rule": "max wm_acc over all clean seeds and epochs (Aiken et al. Sec. 7.1)",
        "seeds": len(clean_seeds)})
    common = ["--params", params_path, "--prepared", str(folder / "prepared"), "--models", str(models),
              "--vanilla", str(models / "vanilla" / "calibration.json")]
    stage("evaluate", [*common, "--metrics", str(folder / "summary.json"), "--plot", str(folder / "summary.csv"),
                       "--settings", str(folder / "settings" / "evaluate.json")])
    stage("robustness", [*common, "--reconstruct", str(folder / "reconstruct"),
                         "--metrics", str(folder / "robustness.json"), "--plot", str(folder / "robustness.csv"),
                         "--report", str(folder / "robustness.md"),
                         "--frontier", str(folder / "robustness_frontier.png"),
                         "--settings", str(folder / "settings" / "robustness.json")])


# ---- the plan ----------------------------------------------------------------------------------------------

def plan(cells: Sequence[Cell], params_files: dict[str, str], variants: Sequence[Variant], clean_seeds: Sequence[int],
         work: Path, epoch_images: int, scales: dict[str, float] | None = None) -> list[Job]:
    """Every piece of the four steps, each waiting for what it reads. ``variants`` holds every removal, plain
    methods included; ``params_files`` a params file per cell name and per ``"<cell> <variant>"``; ``scales``
    (:func:`check_variants`) a variant's cost guess against its method's."""
    log = str(work / "stages.log")
    jobs: list[Job] = []
    first: dict[str, Cell] = {}
    for cell in cells:
        first.setdefault(cell.scheme, cell)
        jobs.append(Job(f"prepare {cell.name}", "stages.grid:stage",
                        ("prepare", ["--params", params_files[cell.name], "--out", cell.path("prepared")]), log,
                        STEP_COST["prepare"]))
    for scheme, cell in first.items():
        jobs.append(Job(f"embed {scheme}", "stages.grid:stage", (
            "embed", ["--params", params_files[cell.name], "--prepared", cell.path("prepared"),
                      "--model", cell.path("models", "watermarked.pt"), "--metrics", cell.path("embed.json"),
                      "--plot", cell.path("embed.csv"), "--settings", cell.path("settings", "embed.json")]),
            log, STEP_COST["embed"], (f"prepare {cell.name}",)))
    prepares = tuple(f"prepare {cell.name}" for cell in cells)
    any_params = params_files[cells[0].name]
    for seed in clean_seeds:
        jobs.append(Job(f"clean {seed}", "stages.grid:train_clean",
                        (any_params, [(cell.name, cell.path("prepared")) for cell in cells], seed, str(work / "clean")),
                        log, STEP_COST["clean"], prepares))
    for cell in cells:
        model = first[cell.scheme].path("models", "watermarked.pt")
        common = ["--params", params_files[cell.name], "--prepared", cell.path("prepared"), "--model", model]
        ready = (f"prepare {cell.name}", f"embed {cell.scheme}")
        jobs.append(Job(f"reconstruct {cell.name}", "stages.grid:stage", (
            "reconstruct", [*common, "--out", cell.path("reconstruct"), "--metrics", cell.path("reconstruct.json"),
                            "--settings", cell.path("settings", "reconstruct.json")]),
            log, STEP_COST["reconstruct"] * epoch_images / 1024, ready))
        scale = max(cell.fraction / 0.1, 0.05)
        for variant in variants:
            method, name = variant.method, variant.name
            params_file = params_files[f"{cell.name} {name}"] if variant.overrides else params_files[cell.name]
            common = ["--params", params_file, "--prepared", cell.path("prepared"), "--model", model]
            extra, after = [], ready
            if method == "laundering":
                extra, after = ["--reconstruct", cell.path("reconstruct")], (*ready, f"reconstruct {cell.name}")
            cost = REMOVAL_COST.get(method, 100.0) * (1.0 if method == "refit" else scale)
            cost *= (scales or {}).get(name, 1.0)
            jobs.append(Job(f"remove {cell.name} {name}", "stages.grid:stage", (
                "remove", [*common, "--method", method, "--out", cell.path("models", "removed", f"{name}.pt"),
                           "--metrics", cell.path("remove", f"{name}.json"),
                           "--plot", cell.path("remove", f"{name}.csv"),
                           "--settings", cell.path("settings", "remove", f"{name}.json"), *extra]),
                log, cost, after))
        jobs.append(Job(f"judge {cell.name}", "stages.grid:judge", (
            params_files[cell.name], str(cell.folder), model, str(work / "clean"), list(clean_seeds), cell.name),
            log, STEP_COST["judge"],
            (f"reconstruct {cell.name}", *(f"remove {cell.name} {v.name}" for v in variants),
             *(f"clean {s}" for s in clean_seeds))))
    return jobs


def cell_metrics(cell: Cell) -> dict[str, Any]:
    """What the verdict stage reads of one cell: the threshold, Neural Cleanse's finding, the watermarked model,
    and per removal the adversary's figures (held-out loss, proxy retention) beside the true ones."""
    robustness = read_json(cell.path("robustness.json"))
    summary = read_json(cell.path("summary.json"))
    reconstruct = read_json(cell.path("reconstruct.json"))
    attempts = {}
    for method, figures in robustness["attempts"].items():
        row = summary[method]
        attempts[method] = {**figures, "test_acc": row["test_acc"], "p_value_log10": row.get("p_value_log10"),
                            "time_s": read_json(cell.path("remove", f"{method}.json")).get("time_s")}
    return {
        "scheme": cell.scheme, "adversary_fraction": cell.fraction, "threshold": robustness["threshold"],
        "holdout_size": robustness["holdout_size"], "suspected_class": robustness["suspected_class"],
        "target_detected": reconstruct.get("target_detected"), "flagged": reconstruct.get("flagged"),
        "watermarked": {**robustness["watermarked"], "p_value_log10": summary["watermarked"].get("p_value_log10")},
        "attempts": attempts,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "grid")
    parser.add_argument("--seed", type=int, required=True, help="the seed of every cell (required)")
    parser.add_argument("--schemes", required=True, help="watermark schemes, comma-separated (required)")
    parser.add_argument("--fractions", required=True, help="adversary fractions, comma-separated (required)")
    parser.add_argument("--methods", required=True, help="removal methods, comma-separated (required)")
    parser.add_argument("--variants", default="",
                        help="more settings to attempt, comma-separated method@key=value[+key=value] (a key under "
                             "removal.<method>, or beta for WILD), e.g. wild_js@epochs=4")
    parser.add_argument("--exclude", default="",
                        help="cells left out, comma-separated scheme@fraction, e.g. noise@0.006 (to fit a time budget)")
    parser.add_argument("--jobs", type=int, default=2, help="pieces run at once, one torch thread each")
    parser.add_argument("--work", required=True, help="folder for the splits and models (emptied first; required)")
    parser.add_argument("--metrics", required=True, help="every cell's figures, for the verdict stage (required)")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)

    from wmbench.params import load_params
    from wmbench.removal import REMOVALS
    from wmbench.watermarks import WATERMARKS

    params = load_params(args.params)
    if params.data.adversary_holdout <= 0:
        raise ValueError("data.adversary_holdout is 0: the verdict needs a held-out slice of the adversary's images "
                         "to choose by; set it to e.g. 0.2")
    schemes = [s for s in args.schemes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    fractions = [float(f) for f in args.fractions.split(",") if f]
    for scheme in schemes:
        WATERMARKS.get(scheme)
    for method in methods:
        REMOVALS.get(method)
    variants = [Variant(m) for m in methods] + parse_variants(args.variants)
    if not schemes or not methods or not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"--schemes {args.schemes!r}, --methods {args.methods!r}, --fractions {args.fractions!r}: "
                         "each needs at least one value; fractions lie in (0, 1)")
    work = Path(args.work)
    skipped = excluded_cells(args.exclude, schemes, fractions)
    cells = grid_cells(schemes, fractions, skipped, work)
    base = yaml.safe_load(Path(args.params).read_text())
    scales = check_variants(base, variants)
    if work.exists():
        shutil.rmtree(work)
    params_files = {cell.name: write_cell_params(base, cell, args.seed) for cell in cells}
    params_files.update({f"{cell.name} {v.name}": write_variant_params(params_files[cell.name], v)
                         for cell in cells for v in variants if v.overrides})
    clean_seeds = seeding.clean_seeds(args.seed, params.vanilla.seeds)
    timer = Timer()

    jobs = plan(cells, params_files, variants, clean_seeds, work, params.reconstruct.epoch_images, scales)
    print(f"grid: seed {args.seed}, {len(cells)} cells, {len(jobs)} pieces, {args.jobs} at once", flush=True)
    seconds = run_jobs(jobs, args.jobs, say=lambda line: print(f"grid: {line}", flush=True))

    metrics = {"seed": args.seed, "cells": {}}
    for cell in cells:
        metrics["cells"].setdefault(cell.scheme, {})[fraction_key(cell.fraction)] = cell_metrics(cell)
    settings = {"stage": "grid", "seed": args.seed, "schemes": schemes, "fractions": fractions, "methods": methods,
                "excluded": sorted(f"{scheme}@{fraction:g}" for scheme, fraction in skipped),
                "variants": [v.name for v in variants if v.overrides],
                "jobs": args.jobs, "clean_seeds": clean_seeds, "wall_s": round(timer.seconds, 1),
                "seconds": {name: round(s, 1) for name, s in sorted(seconds.items())}}
    with writing_outputs():
        write_json_atomic(args.metrics, metrics)
        write_json_atomic(settings_path(args.metrics, args.settings), settings)
    busy = math.fsum(seconds.values())
    print(f"grid: seed {args.seed} done in {timer.seconds / 60:.1f} min ({busy / 60:.0f} min of work)")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
