"""Where the probes find the full-size experiment's models: its ``work/seed<k>/`` folders.

``dvc repro`` in ``experiments/fashion_mnist`` leaves every cell's splits and
models there (untracked); a probe re-reads them instead of training again.
``--experiment`` points a probe at a copy run on other seeds (its grid.yaml
``seeds``), for an out-of-sample check.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

EXPERIMENT = Path("experiments/fashion_mnist")


def add_cell_arguments(parser: argparse.ArgumentParser, schemes: Sequence[str] = ("square", "content"),
                       fractions: Sequence[str] = ("0.1",), with_experiment: bool = True) -> None:
    """``--seeds``, ``--schemes``, ``--fractions``: which of the experiment's cells a probe reads, and
    ``--experiment`` (unless ``with_experiment`` is false: a probe tied to the committed experiment's cells)."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    parser.add_argument("--schemes", nargs="+", default=list(schemes), help="default: " + " ".join(schemes))
    parser.add_argument("--fractions", nargs="+", default=list(fractions), help="default: " + " ".join(fractions))
    if not with_experiment:
        return
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT,
                        help=f"a copy of {EXPERIMENT} run on other seeds (grid.yaml `seeds`), for an out-of-sample "
                             f"check; default: {EXPERIMENT}")


def seed_work(experiment: Path, seed: int) -> Path:
    """``experiment/work/seed<seed>``; exits naming the run that leaves it when it is missing."""
    folder = experiment / "work" / f"seed{seed}"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run `dvc repro` in {experiment} first, its grid.yaml `seeds` "
                         f"listing {seed} (it leaves the models)")
    return folder
