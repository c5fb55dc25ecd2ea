"""scripts.add_attempts adds a later run's attempts only when both runs trained the same models."""

from __future__ import annotations

import json

import pytest

from scripts import add_attempts


def _cells(seed, attempts, threshold=0.03):
    cell = {"scheme": "square", "threshold": threshold, "flagged": [0], "watermarked": {"wm_acc": 1.0},
            "attempts": attempts}
    return {"seed": seed, "cells": {"square": {"fraction_0_1": cell}}}


def _write(folder, seed, obj):
    folder.mkdir(exist_ok=True)
    (folder / f"seed{seed}.json").write_text(json.dumps(obj))


def test_adds_the_missing_attempts_and_keeps_the_shared_ones(tmp_path):
    old = {"finetune": {"wm_acc": 0.9, "time_s": 10.0}, "prune": {"wm_acc": 0.5, "time_s": 3.0}}
    new = {"finetune": {"wm_acc": 0.9, "time_s": 12.5}, "laundering@epochs=48": {"wm_acc": 0.02, "time_s": 80.0}}
    _write(tmp_path / "into", 4, _cells(4, old))
    _write(tmp_path / "new", 4, _cells(4, new))
    assert add_attempts.main(["--into", str(tmp_path / "into"), "--from", str(tmp_path / "new"), "--seeds", "4"]) == 0
    attempts = json.loads((tmp_path / "into" / "seed4.json").read_text())["cells"]["square"]["fraction_0_1"]["attempts"]
    assert set(attempts) == {"finetune", "prune", "laundering@epochs=48"}
    assert attempts["finetune"]["time_s"] == 10.0  # the committed run's figures stay


@pytest.mark.parametrize(("new_cells", "problem"), [
    (_cells(4, {"finetune": {"wm_acc": 0.8, "time_s": 1.0}}), "attempt finetune differs"),
    (_cells(4, {}, threshold=0.04), "threshold 0.03 against 0.04"),
])
def test_refuses_runs_of_other_models_and_writes_nothing(tmp_path, new_cells, problem):
    committed = _cells(4, {"finetune": {"wm_acc": 0.9, "time_s": 1.0}})
    _write(tmp_path / "into", 4, committed)
    _write(tmp_path / "new", 4, new_cells)
    with pytest.raises(SystemExit, match=f"(?s)did not train the same models.*{problem}"):
        add_attempts.main(["--into", str(tmp_path / "into"), "--from", str(tmp_path / "new"), "--seeds", "4"])
    assert json.loads((tmp_path / "into" / "seed4.json").read_text()) == committed
