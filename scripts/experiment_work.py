"""Where the probes find the full-size experiment's models: its ``work/seed<k>/`` folders.

``dvc repro`` in ``experiments/fashion_mnist`` leaves every cell's splits and
models there (untracked); a probe re-reads them instead of training again.
``--experiment`` points a probe at a copy run on other seeds (its grid.yaml
``seeds``), for an out-of-sample check.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class CellModels:
    """What a proxy probe reads of one cell: its params, the adversary's training images and held-out slice,
    Neural Cleanse's reconstruction and suspected class, the grid's figures, and the models the grid judged
    (``watermarked`` first, then each removal by name)."""

    params: Any
    train: Any
    holdout: Any
    reconstruction: Any
    suspected: int
    figures: dict[str, Any]
    models: dict[str, Path]


def load_cell(experiment: Path, seed: int, scheme: str, fraction: str, device: Any) -> CellModels:
    """One cell of ``experiment``'s work folder, as :class:`CellModels`."""
    from wmbench.files import read_json
    from wmbench.params import load_params
    from wmbench.prepared import load_prepared
    from wmbench.proxy import adversary_holdout, adversary_training_images, suspected_class
    from wmbench.reconstruct import load_reconstruction

    cell = seed_work(experiment, seed) / scheme / fraction
    params = load_params(cell / "params.yaml")
    arrays = load_prepared(cell / "prepared").arrays["adversary"]
    found = load_reconstruction(cell / "reconstruct" / "triggers.npz", device)
    cells = read_json(experiment / "cells" / f"seed{seed}.json")["cells"]
    figures = cells[scheme]["fraction_" + fraction.replace(".", "_")]
    models = {"watermarked": cell / "models" / "watermarked.pt"}
    # only the models the grid judged: a stale work folder's other files have no figures to set beside them
    removed = sorted((cell / "models" / "removed").glob("*.pt"))
    models.update({p.stem: p for p in removed if p.stem in figures["attempts"]})
    return CellModels(params, adversary_training_images(*arrays, params.data.adversary_holdout, params.seed, device),
                      adversary_holdout(*arrays, params.data.adversary_holdout, params.seed, device), found,
                      suspected_class(found), figures, models)
