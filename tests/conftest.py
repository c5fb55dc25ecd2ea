"""Shared fixtures: the digits dataset, small params, a prepared folder, a watermarked model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def small_params(**overrides: Any) -> dict[str, Any]:
    """The project's params.yaml with few epochs; ``overrides`` use dotted keys."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device"] = "cpu"
    params["train"]["epochs"] = 8
    params["vanilla"]["seeds"] = 2
    for dotted, value in overrides.items():
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return params


def write_params(folder: Path, **overrides: Any) -> Path:
    """Write :func:`small_params` to ``folder/params.yaml``."""
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(small_params(**overrides)))
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: these tiny models run no faster on two cores, and far slower when
    another process shares them (spinning thread pools stall each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The digits dataset; checked afterwards not to have been changed in place."""
    from wmbench.data import load_dataset

    data = load_dataset("digits")
    before = copy.deepcopy(data)
    yield data
    assert np.array_equal(data.train_images, before.train_images), "a test changed the shared dataset"


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """A prepared digits folder (content watermark) made by the real prepare stage."""
    from stages import prepare

    folder = tmp_path_factory.mktemp("run")
    params = write_params(folder)
    prepare.main(["--params", str(params), "--out", str(folder / "prepared")])
    return folder


@pytest.fixture(scope="session")
def watermarked(prepared_dir):
    """(prepared, params, model, history): a lenet with the content watermark, 8 epochs."""
    from stages.embed import train_model
    from wmbench.params import load_params
    from wmbench.prepared import load_prepared

    params = load_params(prepared_dir / "params.yaml")
    prepared = load_prepared(prepared_dir / "prepared")
    model, history = train_model(prepared, params, torch.device("cpu"), seed=0, watermark=True)
    return prepared, params, model, history


def grid_params(folder: Path) -> Path:
    """Small digits params for a grid: few epochs everywhere, one clean model, a held-out slice the owner never saw."""
    params = small_params(**{"train.epochs": 10, "vanilla.seeds": 1, "reconstruct.epochs": 20,
                             "data.holdout_pool": 0.1})
    for settings in params["removal"].values():
        if "epochs" in settings:
            settings["epochs"] = 2
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One seed of a two-watermark grid on digits, and the verdict over it."""
    from stages import grid, verdict

    folder = tmp_path_factory.mktemp("grid")
    params = grid_params(folder)
    grid.main(["--params", str(params), "--seed", "0", "--schemes", "content,square", "--fractions", "0.3",
               "--methods", "finetune,laundering,scratch", "--variants", "finetune@epochs=1+lr=0.001",
               "--jobs", "2", "--work", str(folder / "work"),
               "--metrics", str(folder / "cells" / "seed0.json"), "--settings", str(folder / "settings.json")])
    (folder / "grid.yaml").write_text("seeds: [0]\n")
    verdict.main(["--params", str(params), "--grid", str(folder / "grid.yaml"), "--cells", str(folder / "cells"),
                  "--metrics", str(folder / "robustness.json"), "--report", str(folder / "report.md"),
                  "--plots", str(folder / "plots")])
    return folder
