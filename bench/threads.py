"""One stage's time with every core's threads against one thread, alone and beside a competing process.

Why ``threads: 1`` is the default: torch's thread pool spin-waits, so two
threads that share their cores with another busy process stall each other.
This script runs one stage (``embed`` on ``digits`` by default, each run in its
own process as DVC would start it) four ways in one run:

- load 0 (nothing else started by this script) or with a competing process
  (a torch matrix-multiply loop using every core, like another training job);
- ``--threads 0`` (every core this process may use: torch's own default) or 1.

It prints the stage's own seconds (its ``time_s``) per run, and per load the
ratio of the all-core time to the one-thread time (above 1: one thread is
faster). The machine's 1-minute load average before each run is shown, since
other users' jobs count too.

    python -m bench.threads                                  # embed, 5 epochs
    python -m bench.threads --stage remove --method wild_ce --set removal.wild_ce.epochs=3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from wmbench.stage import HelpFormatter, resolve_threads

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = """
import torch, sys
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a)
"""


def write_params(folder: Path, settings: list[str]) -> Path:
    """The project's params.yaml on the CPU with ``KEY=VALUE`` settings applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device"] = "cpu"
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(folder: Path, argv: list[str]) -> dict[str, Any]:
    """Run ``python -m stages.<...>`` in ``folder``; its metrics."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "WMBENCH_PROGRESS_SECONDS": "3600"}
    env.pop("OMP_NUM_THREADS", None)  # the stage sets its own threads; this must not cap them
    done = subprocess.run([sys.executable, "-m", *argv], cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    metrics = [argv[i + 1] for i, a in enumerate(argv) if a == "--metrics"]
    return json.loads((folder / metrics[0]).read_text()) if metrics else {}


def stage_argv(stage: str, method: str) -> list[str]:
    """The stage's command line in the benchmark's folder."""
    common = ["--params", "params.yaml", "--prepared", "prepared"]
    if stage == "embed":
        return ["stages.embed", *common, "--model", "wm.pt", "--metrics", "embed.json", "--plot", "embed.csv"]
    if stage == "remove":
        return ["stages.remove", *common, "--method", method, "--model", "wm.pt", "--out", "removed.pt",
                "--metrics", "remove.json", "--plot", "remove.csv"]
    raise SystemExit(f"--stage {stage!r}: embed or remove")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--stage", default="embed", choices=["embed", "remove"], help="the stage timed")
    parser.add_argument("--method", default="wild_ce", help="the removal method when --stage remove")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params.yaml keys for every run (default: train.epochs=5)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the median is shown")
    parser.add_argument("--competitor-threads", type=int, default=0,
                        help="the competing process's torch threads (0 = every core, torch's default)")
    args = parser.parse_args(argv)
    args.set = args.set or ["train.epochs=5"]
    cores = resolve_threads(0)

    with tempfile.TemporaryDirectory(prefix="wmbench-threads-") as tmp:
        folder = Path(tmp)
        write_params(folder, args.set)
        run_stage(folder, ["stages.prepare", "--params", "params.yaml", "--out", "prepared"])
        if args.stage == "remove":  # the watermarked model it attacks
            run_stage(folder, stage_argv("embed", args.method))
        rows = []
        for load in ("load 0", "1 competing process"):
            competitor = None
            if load != "load 0":
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR,
                                               str(resolve_threads(args.competitor_threads))])
                time.sleep(2)  # let it start spinning
            try:
                for threads in (0, 1):
                    seconds = []
                    for _ in range(args.repeats):
                        loadavg = os.getloadavg()[0]
                        metrics = run_stage(folder, [*stage_argv(args.stage, args.method), "--threads", str(threads)])
                        seconds.append(metrics["time_s"])
                        print(f"{load}, threads {threads}: {metrics['time_s']:.1f}s (load average {loadavg:.1f})",
                              file=sys.stderr, flush=True)
                    rows.append({"load": load, "threads": threads, "used": metrics["threads"],
                                 "seconds": statistics.median(seconds), "loadavg": loadavg,
                                 "test_acc": metrics["test_acc"]})
            finally:
                if competitor is not None:
                    competitor.terminate()
                    competitor.wait()

    print(f"stage {args.stage}{' --method ' + args.method if args.stage == 'remove' else ''}, settings "
          f"{' '.join(args.set) or 'none'}, {cores} cores, median of {args.repeats} run(s)")
    print("| load | threads | seconds | load average before | test_acc |")
    print("|---|---|---|---|---|")
    for row in rows:
        label = f"0 = every core ({row['used']})" if row["threads"] == 0 else "1"
        print(f"| {row['load']} | {label} | {row['seconds']:.2f} | {row['loadavg']:.1f} | {row['test_acc']:.4f} |")
    for load in ("load 0", "1 competing process"):
        every, one = (next(r["seconds"] for r in rows if r["load"] == load and r["threads"] == t) for t in (0, 1))
        print(f"{load}: every core / one thread = {every / one:.2f}")


if __name__ == "__main__":
    main()
