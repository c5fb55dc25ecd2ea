"""Run a grid of experiments with DVC's queue and write the papers' tables from it.

    python scripts/sweep.py --schemes content,noise,unrelated --fractions 0.1,0.2,0.4 \
        --methods finetune,wild_ce,scratch --jobs 2 --out results/sweep.md

Queues one ``dvc exp run --queue -S ...`` per scheme and adversary fraction
(all methods run inside each experiment), starts ``dvc queue start -j N``,
waits until the queue is empty, then writes a markdown table from
``dvc exp show --json`` with the papers' MNIST numbers beside ours.
``--table-only`` skips the runs and rebuilds the table from existing experiments.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from wmbench.files import atomic_path
from wmbench.results import dvc_executable
from wmbench.stage import HelpFormatter
from wmbench.sweep import SUMMARY, collect_rows, markdown_table, queue_commands


def dvc(*args: str, capture: bool = False) -> str:
    """Run one dvc command; stop with its output if it fails."""
    result = subprocess.run([dvc_executable(), *args], capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"`dvc {' '.join(args)}` failed ({result.returncode}): {result.stderr if capture else ''}")
    return result.stdout if capture else ""


def wait_for_queue(poll_s: float, retries: int = 5) -> str:
    """Poll ``dvc queue status`` until nothing is queued or running; return the last status.

    A status call can fail while a worker rewrites the queue's files (seen as
    "Expecting value" from DVC); up to ``retries`` failures in a row are retried.
    """
    failures = 0
    while True:
        result = subprocess.run([dvc_executable(), "queue", "status"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            failures += 1
            if failures > retries:
                sys.exit(f"`dvc queue status` failed {failures} times in a row: {result.stderr}")
        else:
            failures = 0
            if not any(word in result.stdout for word in ("Queued", "Running")):
                return result.stdout
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--schemes", default="content,noise,unrelated", help="watermark.scheme values, comma-separated")
    parser.add_argument("--fractions", default="0.1,0.2,0.4", help="data.adversary_fraction values")
    parser.add_argument("--methods", default="", help="methods shown in the table (default: all; every method runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more -S settings (default: none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (dvc queue start -j); keep jobs x params `threads` <= cores")
    parser.add_argument("--prefix", default="sweep", help="experiment name prefix; the table reads these only")
    parser.add_argument("--out", default="results/sweep.md", help="the markdown table written")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between queue polls")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from existing experiments")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if not args.table_only:
        schemes = [s for s in args.schemes.split(",") if s]
        fractions = [float(f) for f in args.fractions.split(",") if f]
        commands = queue_commands(schemes, fractions, args.set, args.prefix)
        for command in commands:
            print(" ".join(command), flush=True)
            dvc(*command[1:])
        dvc("queue", "start", "-j", str(args.jobs))
        status = wait_for_queue(args.poll)
        print(status)
        if "Failed" in status:
            print("some experiments failed; `dvc queue logs <name>` shows why", file=sys.stderr)
    wall = time.perf_counter() - start

    methods = [m for m in args.methods.split(",") if m]
    rows = collect_rows(json.loads(dvc("exp", "show", "--json", capture=True)), prefix=args.prefix, methods=methods)
    if not rows:
        print(f"no experiment named {args.prefix}* with {SUMMARY} in `dvc exp show`; run the sweep without "
              "--table-only, or pass the --prefix its experiments were queued with (`dvc exp list` names them)",
              file=sys.stderr)
        return 1
    table = markdown_table(rows)
    note = "" if args.table_only else f"\nSweep wall time: {wall:.0f} s with {args.jobs} job(s).\n"
    with atomic_path(args.out) as tmp:
        tmp.write_text(f"# Sweep `{args.prefix}`: ours beside the papers (MNIST numbers)\n\n{table}{note}")
    Path(args.out).chmod(0o644)
    print(table + note)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
