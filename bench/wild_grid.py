"""The WILD Table II grid, timed: 3 schemes x 3 adversary fractions x 6 configurations.

Liu et al., WILD, Table II (MNIST, LeNet): content / noise / unrelated
watermarks; the adversary holds 10 / 20 / 40 % of the training data; REFIT at
lr 0.001 / 0.003 / 0.005 and WILD with CE / JS / DN. Every cell runs the
pipeline's own stage code (``stages.prepare``, ``stages.embed``,
``stages.remove``) in this one process, so the figures are the training work
without interpreter start-up or DVC. The owner trains on the whole training
split whatever the adversary's fraction (``stages.prepare``), so each scheme is
embedded once and its model attacked at every fraction, as in the paper.

Prints a markdown table (per cell: seconds, images/s through the model,
test accuracy and watermark retention), the seconds summed per kind of stage,
and the wall time of the whole grid, which is the figure to hold against a
time goal. ``--jobs N`` runs N stage runs at once in their own processes:
on a GPU one small-batch LeNet run leaves most of the device idle. Settings come from the
project's params.yaml, changed with ``--set KEY=VALUE`` (dotted keys that
already exist, as ``dvc exp run -S``).

    python -m bench.wild_grid                                      # digits, CPU
    python -m bench.wild_grid --device cuda --jobs 8 --set data.name=fashion_mnist \
        --set data.root=/usr/share/datasets/fashion-mnist --set train.epochs=10
    python -m bench.wild_grid --schemes content --fractions 0.1 --set ...   # one column's worth
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.stage_speed import removal_images
from wmbench.stage import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("content", "noise", "unrelated")
FRACTIONS = (0.1, 0.2, 0.4)
# configuration -> (removal method, overrides of removal.<method>)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "refit lr 0.001": ("refit", {"lr": 0.001}),
    "refit lr 0.003": ("refit", {"lr": 0.003}),
    "refit lr 0.005": ("refit", {"lr": 0.005}),
    "wild_ce": ("wild_ce", {}),
    "wild_js": ("wild_js", {}),
    "wild_dn": ("wild_dn", {}),
}


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``params[a][b] = value`` for ``key`` ``"a.b"``; a key that is not there is an error, as in ``dvc exp run -S``."""
    from stages.grid import set_dotted as set_key

    try:
        set_key(params, key, value)
    except ValueError as err:
        raise SystemExit(f"--set {err}; only existing keys can be set") from None


def cell_params(base: dict[str, Any], scheme: str, fraction: float, method: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` with the scheme, the adversary's fraction and one method's overrides set."""
    params = yaml.safe_load(yaml.safe_dump(base))  # a deep copy of plain data
    set_dotted(params, "watermark.scheme", scheme)
    set_dotted(params, "data.adversary_fraction", fraction)
    for key, value in (overrides or {}).items():
        set_dotted(params, f"removal.{method}.{key}", value)
    return params


def run_quietly(main: Callable[[Sequence[str] | None], None], argv: list[str], log: Path) -> float:
    """Seconds for ``main(argv)``; its printing goes to ``log``."""
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        main(argv)
    seconds = time.perf_counter() - start
    with open(log, "a") as f:
        f.write(buffer.getvalue())
    return seconds


def write_yaml(path: Path, params: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


@dataclass(frozen=True)
class Job:
    """One stage run of the grid: the stage module, its arguments, and the table row it fills."""

    stage: str  # "embed" | "remove"
    argv: tuple[str, ...]
    row: dict[str, Any]  # scheme, fraction, run
    metrics: str
    log: str
    plot: str = ""
    copies: int = 0
    cost: float = 0.0  # a guess at the work, to start the biggest jobs first


def row_of(job: Job, seconds: float) -> dict[str, Any]:
    """A finished job's row: its seconds, images through the model, test accuracy and watermark retention."""
    metrics = json.loads(Path(job.metrics).read_text())
    row = {**job.row, "seconds": seconds, "test_acc": metrics["test_acc"], "wm_acc": metrics["wm_acc"]}
    if job.stage == "remove":
        row["images"] = removal_images(metrics, job.copies, Path(job.plot))
    return row


def run_jobs(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    """Rows of ``jobs`` in their order, run by the project's one job runner (:func:`wmbench.jobs.run_jobs`, as
    ``stages.grid`` runs a full-size grid), ``workers`` processes at once, the biggest first.

    Small-batch training of a LeNet leaves a GPU mostly idle, waiting on Python
    and kernel launches; several processes keep it busy. Each job seeds itself
    (``wmbench.stage.start``) and takes its threads from the params' ``threads``,
    so the numbers do not depend on ``workers``.
    """
    from wmbench import jobs as runner

    named = [runner.Job(f"{job.stage} {job.row['scheme']} {job.row['fraction']:g} {job.row['run']} #{i}",
                        "stages.grid:stage", (job.stage, list(job.argv)), job.log, job.cost)
             for i, job in enumerate(jobs)]
    seconds = runner.run_jobs(named, workers, say=lambda line: print(line, file=sys.stderr, flush=True))
    return [row_of(job, seconds[entry.name]) for job, entry in zip(jobs, named, strict=True)]


def run_grid(base: dict[str, Any], folder: Path, schemes: Sequence[str], fractions: Sequence[float],
             configs: Sequence[str], workers: int = 1) -> list[dict[str, Any]]:
    """Prepare every (scheme, fraction), embed once per scheme, run every configuration; one row per run."""
    from stages import prepare

    rows: list[dict[str, Any]] = []
    embeds: list[Job] = []
    removals: list[Job] = []
    for scheme in schemes:
        model = folder / scheme / "watermarked.pt"
        for fraction in fractions:
            cell = folder / scheme / f"{fraction:g}"
            cell.mkdir(parents=True, exist_ok=True)
            log = str(cell / "stages.log")
            params_file = write_yaml(cell / "params.yaml", cell_params(base, scheme, fraction))
            seconds = run_quietly(prepare.main, ["--params", params_file, "--out", str(cell / "prepared")], Path(log))
            rows.append({"scheme": scheme, "fraction": fraction, "run": "prepare", "seconds": seconds})
            if fraction == fractions[0]:
                embeds.append(Job("embed", ("--params", params_file, "--prepared", str(cell / "prepared"),
                                            "--model", str(model), "--metrics", str(cell / "embed.json"),
                                            "--plot", str(cell / "embed.csv")),
                                  {"scheme": scheme, "fraction": fraction, "run": "embed"}, str(cell / "embed.json"),
                                  str(cell / "embed.log")))
            for config in configs:
                method, overrides = CONFIGS[config]
                params = cell_params(base, scheme, fraction, method, overrides)
                name = config.replace(" ", "_")
                out = {k: str(cell / f"{name}.{ext}") for k, ext in (("model", "pt"), ("metrics", "json"),
                                                                     ("plot", "csv"), ("log", "log"))}
                block = params["removal"][method]
                removals.append(Job(
                    "remove",
                    ("--params", write_yaml(cell / f"params-{name}.yaml", params), "--method", method,
                     "--prepared", str(cell / "prepared"), "--model", str(model), "--out", out["model"],
                     "--metrics", out["metrics"], "--plot", out["plot"]),
                    {"scheme": scheme, "fraction": fraction, "run": config}, out["metrics"], out["log"], out["plot"],
                    block.get("copies", 0), fraction * (1 + block.get("copies", 0)) * block["epochs"]))
    return rows + run_jobs(embeds, workers) + run_jobs(removals, workers)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per run, then the seconds spent preparing, embedding and removing."""
    lines = ["| scheme | fraction | run | seconds | images/s | test acc % | wm retention % |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["run"] == "prepare":
            continue
        rate = f"{r['images'] / r['seconds']:,.0f}" if r.get("images") else "-"
        lines.append(f"| {r['scheme']} | {r['fraction']:.0%} | {r['run']} | {r['seconds']:.1f} | {rate} | "
                     f"{100 * r['test_acc']:.2f} | {100 * r['wm_acc']:.2f} |")
    spent = dict.fromkeys(("prepare", "embed", "remove"), 0.0)
    for r in rows:
        spent[r["run"] if r["run"] in spent else "remove"] += r["seconds"]
    lines.append("")
    lines.append(f"prepare {spent['prepare']:.1f} s, embed {spent['embed']:.1f} s, "
                 f"{sum(1 for r in rows if r['run'] in CONFIGS)} removals {spent['remove']:.1f} s, "
                 f"sum {sum(spent.values()):.1f} s (stage seconds added up)")
    return "\n".join(lines)


def check_params(base: dict[str, Any], folder: Path) -> None:
    """Validate the settings as the stages will, before any work: a bad ``--set`` fails here, in one line."""
    from wmbench.params import ParamsError, load_params

    try:
        load_params(write_yaml(folder / "params-check.yaml", base))
    except ParamsError as err:
        raise SystemExit(f"error: {err}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the params' precision")
    parser.add_argument("--channels-last", action="store_true", help="channels_last: true (default: false)")
    parser.add_argument("--threads", type=int, default=None,
                        help="each stage run's CPU threads (params `threads`; 0 = every core; keep jobs x threads "
                             "<= cores); default: params.yaml's")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES, help="watermark schemes")
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS),
                        help="data.adversary_fraction values")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"default all: {', '.join(CONFIGS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a params.yaml key (default: none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stage runs at once, each in its own process (a GPU takes several)")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: must be at least 1")

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base.update(device=args.device, precision=args.precision, channels_last=args.channels_last)
    if args.threads is not None:
        base["threads"] = args.threads
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        set_dotted(base, key, yaml.safe_load(value))
    # the stages resolve relative data paths from the working directory; make them absolute
    if not Path(base["data"]["root"]).is_absolute():
        base["data"]["root"] = str(ROOT / base["data"]["root"])

    import torch

    with tempfile.TemporaryDirectory(prefix="wmbench-wild-grid-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        check_params(base, folder)
        start = time.perf_counter()
        rows = run_grid(base, folder, args.schemes, args.fractions, args.configs, args.jobs)
        wall = time.perf_counter() - start
    print(f"device {args.device}, precision {args.precision}, channels_last {args.channels_last}, "
          f"threads {base.get('threads', 1)} per run, torch {torch.__version__}, data {base['data']['name']}, "
          f"{base['train']['epochs']} embedding epochs, {len(args.schemes)} schemes x {len(args.fractions)} "
          f"fractions x {len(args.configs)} configurations, {args.jobs} job(s) at once")
    print(table(rows))
    print(f"wall {wall:.1f} s")


if __name__ == "__main__":
    main()
