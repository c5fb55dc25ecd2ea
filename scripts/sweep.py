"""Run a grid of experiments with DVC's queue and write the papers' tables and the verdict from it.

    python scripts/sweep.py --schemes content,noise,unrelated --fractions 0.1,0.2,0.4 \
        --methods finetune,wild_ce,scratch --jobs 2 --out results/sweep.md
    python scripts/sweep.py --schemes square --fractions 0.1 --seeds 0,1,2 --set beta=0.1 --set beta=10

Queues one ``dvc exp run --queue -S ...`` per scheme, adversary fraction, seed
and ``--set`` combination (all methods run inside each experiment), starts
``dvc queue start -j N``, waits until the queue is empty, then writes a
markdown table from ``dvc exp show --json`` with the papers' MNIST numbers
beside ours, and the robustness verdict across seeds and settings
(``--verdict``: per budget the adversary's pick on its held-out figures,
then what the pick measured; a JSON and a frontier plot per watermark beside it).
``--table-only`` skips the runs and rebuilds both from existing experiments,
e.g. after ``dvc exp pull`` of cells other machines ran (README: "A grid on
several machines").
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from wmbench.files import write_json_atomic, write_text_atomic
from wmbench.results import dvc_executable
from wmbench.stage import HelpFormatter
from wmbench.sweep import ROBUSTNESS, SUMMARY, collect_attempts, collect_rows, markdown_table, queue_commands
from wmbench.verdict import judge_fractions


def dvc(*args: str, capture: bool = False) -> str:
    """Run one dvc command; stop with its output if it fails."""
    result = subprocess.run([dvc_executable(), *args], capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"`dvc {' '.join(args)}` failed ({result.returncode}): {result.stderr if capture else ''}")
    return result.stdout if capture else ""


def pending(status: str) -> tuple[list[str], int]:
    """From ``dvc queue status``: the names of the running experiments and how many wait in the queue."""
    running, queued = [], 0
    for line in status.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[-1] == "Running":
            running.append(words[1])
        elif len(words) >= 3 and words[-1] == "Queued":
            queued += 1
    return running, queued


def wait_for_queue(poll_s: float, total: int, retries: int = 5) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; return the last status.

    Prints a line whenever the picture changes: the cells done out of ``total``,
    the running ones, and the time left at the mean pace so far. A status call
    can fail while a worker rewrites the queue's files (seen as "Expecting
    value" from DVC); up to ``retries`` failures in a row are retried.
    """
    failures, start, last = 0, time.perf_counter(), None
    while True:
        result = subprocess.run([dvc_executable(), "queue", "status"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            failures += 1
            if failures > retries:
                sys.exit(f"`dvc queue status` failed {failures} times in a row: {result.stderr}")
        else:
            failures = 0
            running, queued = pending(result.stdout)
            if not running and not queued:
                return result.stdout
            done = max(0, total - len(running) - queued)
            if (done, running) != last:
                last = (done, running)
                elapsed = time.perf_counter() - start
                left = f"about {elapsed / done * (total - done) / 60:.0f} min left" if done else "time left unknown"
                print(f"[{done}/{total} done] running {', '.join(running) or 'nothing yet'}; "
                      f"{elapsed / 60:.0f} min so far, {left}", flush=True)
        time.sleep(poll_s)


def setting_combinations(sets: list[str]) -> list[list[str]]:
    """``--set`` values as cells: a key given twice varies (one combination per value), once is fixed."""
    values: dict[str, list[str]] = {}
    for item in sets:
        key, sep, _ = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r} is not KEY=VALUE, e.g. --set beta=10")
        values.setdefault(key, []).append(item)
    return [list(combination) for combination in itertools.product(*values.values())]


def suffix(settings: list[str]) -> str:
    """The part of an experiment name that tells varied settings apart, e.g. ``-beta10``."""
    return "".join("-" + item.rsplit(".", 1)[-1].replace("=", "").replace(".", "p") for item in settings)


def write_verdict(attempts: dict[float, list], path: Path) -> str:
    """The verdict per adversary fraction as markdown at ``path``, its metrics as JSON and a frontier plot per
    watermark beside it; returns the markdown."""
    if not attempts:
        return f"no experiment has {ROBUSTNESS}; no verdict written"
    tables, metrics = judge_fractions(attempts, path.parent, f"{path.stem}_")
    text = "# Removed within how many points? (picked on the adversary's held-out data)\n\n" + tables
    write_text_atomic(path, text + "\n")
    write_json_atomic(path.with_suffix(".json"), metrics)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--schemes", default="content,noise,unrelated", help="watermark.scheme values, comma-separated")
    parser.add_argument("--fractions", default="0.1,0.2,0.4", help="data.adversary_fraction values")
    parser.add_argument("--methods", default="", help="methods shown in the table (default: all; every method runs)")
    parser.add_argument("--seeds", default="", help="seeds, comma-separated (default: params.yaml's seed only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more -S settings for every cell; the same key twice makes one cell per value "
                             "(default: none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (dvc queue start -j); keep jobs x params `threads` <= cores")
    parser.add_argument("--target", default="",
                        help="run each experiment up to this stage only, e.g. robustness (default: every stage)")
    parser.add_argument("--prefix", default="sweep", help="experiment name prefix; the table reads these only")
    parser.add_argument("--out", default="results/sweep.md", help="the markdown table written")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between queue polls")
    parser.add_argument("--verdict", default="results/sweep_robustness.md",
                        help="the robustness verdict across seeds and settings (JSON and plots beside it)")
    parser.add_argument("--table-only", action="store_true",
                        help="only rebuild the table and verdict from existing experiments")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if not args.table_only:
        schemes = [s for s in args.schemes.split(",") if s]
        fractions = [float(f) for f in args.fractions.split(",") if f]
        seeds = [int(k) for k in args.seeds.split(",") if k]
        commands = [command for extra in setting_combinations(args.set)
                    for command in queue_commands(schemes, fractions, extra, args.prefix + suffix(extra), seeds,
                                                  args.target)]
        for command in commands:
            print(" ".join(command), flush=True)
            dvc(*command[1:])
        dvc("queue", "start", "-j", str(args.jobs))
        status = wait_for_queue(args.poll, len(commands))
        print(status)
        if "Failed" in status:
            print("some experiments failed; `dvc queue logs <name>` shows why", file=sys.stderr)
    wall = time.perf_counter() - start

    methods = [m for m in args.methods.split(",") if m]
    exp_show = json.loads(dvc("exp", "show", "--json", capture=True))
    rows = collect_rows(exp_show, prefix=args.prefix, methods=methods)
    attempts = collect_attempts(exp_show, prefix=args.prefix)
    if not rows and not attempts:
        print(f"no experiment named {args.prefix}* with {SUMMARY} or {ROBUSTNESS} in `dvc exp show`; run the sweep "
              "without --table-only, or pass the --prefix its experiments were queued with (`dvc exp list` names "
              "them)", file=sys.stderr)
        return 1
    note = "" if args.table_only else f"\nSweep wall time: {wall:.0f} s with {args.jobs} job(s).\n"
    if rows:  # the evaluate stage ran (not with --target robustness)
        table = markdown_table(rows)
        write_text_atomic(args.out, f"# Sweep `{args.prefix}`: ours beside the papers (MNIST numbers)\n\n"
                                    f"{table}{note}")
        print(table)
    print(write_verdict(attempts, Path(args.verdict)) + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
