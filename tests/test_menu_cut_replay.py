"""scripts.menu_cut_replay: what the verdict loses when one setting leaves the grid's menu."""

from __future__ import annotations

import json

import pytest

from scripts import menu_cut_replay
from stages.verdict import gather

# per attempt: held-out points lost, the grid's proxy, another proxy, true retention, test points lost
FIGURES = {"finetune": (0.002, 0.90, 0.90, 0.90, 0.003),
           "laundering@epochs=48": (0.004, 0.01, 0.95, 0.01, 0.006)}


def _write_seed(folder, seed):
    attempts = {label: {"holdout_acc_drop": est, "proxy_wm_acc": proxy, "region_wm_acc": other, "wm_acc": wm,
                        "test_acc_drop": drop, "test_acc": 0.9 - drop}
                for label, (est, proxy, other, wm, drop) in FIGURES.items()}
    cell = {"scheme": "square", "adversary_fraction": 0.1, "threshold": 0.05, "target_detected": True,
            "watermarked": {"test_acc": 0.9, "wm_acc": 1.0, "proxy_wm_acc": 1.0}, "attempts": attempts}
    folder.mkdir(exist_ok=True)
    (folder / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "cells": {"square": {"fraction_0_1": cell}}}))


def test_leaving_off_the_only_setting_that_removes_the_mark_costs_its_seeds(tmp_path):
    for seed in (0, 1):
        _write_seed(tmp_path, seed)
    attempts, _ = gather(menu_cut_replay.read_cells(tmp_path, "proxy_wm_acc"))
    full = menu_cut_replay.removed_counts(attempts)
    assert full[0.1, "square", 0.01] == 2 and full[0.1, "square", 0.005] == 0
    assert menu_cut_replay.removed_counts(attempts, {"laundering@epochs=48"})[0.1, "square", 0.01] == 0
    table = menu_cut_replay.table(attempts, {"finetune": 1.5})
    assert "| `finetune` | 1.5 | none |" in table
    assert "square 10 % 1 pt: 2 -> 0" in table and "square 10 % 2 pt: 2 -> 0" in table


def test_another_proxy_misleads_the_pick(tmp_path):
    _write_seed(tmp_path, 0)
    attempts, _ = gather(menu_cut_replay.read_cells(tmp_path, "region_wm_acc"))
    assert menu_cut_replay.removed_counts(attempts)[0.1, "square", 0.01] == 0  # it reads the removal as 95 %


def test_a_proxy_the_cells_lack_is_named_with_the_ones_they_hold(tmp_path):
    _write_seed(tmp_path, 0)
    with pytest.raises(KeyError, match="no 'wide_wm_acc'.*region_wm_acc"):
        menu_cut_replay.read_cells(tmp_path, "wide_wm_acc")
    with pytest.raises(FileNotFoundError, match="no seed<k>.json"):
        menu_cut_replay.read_cells(tmp_path / "empty", "proxy_wm_acc")


def test_a_cut_of_several_entries_is_replayed_together_and_an_unknown_entry_is_named(tmp_path, capsys):
    _write_seed(tmp_path, 0)
    menu_cut_replay.main(["--cells", str(tmp_path), "--drop", "finetune", "--drop", "laundering@epochs=48"])
    printed = capsys.readouterr().out
    assert "Without finetune, laundering@epochs=48:" in printed
    assert "changes: square 10 % 1 pt: 1 -> 0; square 10 % 2 pt: 1 -> 0" in printed
    with pytest.raises(SystemExit, match="'wild_js' is on no cell's menu; the cells hold: finetune, laundering@"):
        menu_cut_replay.main(["--cells", str(tmp_path), "--drop", "wild_js"])
