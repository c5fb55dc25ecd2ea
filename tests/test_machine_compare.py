"""scripts.machine_compare: one cell made on two machines, its picks and figures side by side."""

from __future__ import annotations

import json

import pytest

from scripts import machine_compare


def _write(folder, figures, threshold=0.05):
    """A content cell at 10 %, seed 0, whose attempts have (held-out lost, proxy, test lost, retention)."""
    attempts = {label: {"holdout_acc_drop": est, "proxy_wm_acc": proxy, "test_acc_drop": drop, "wm_acc": wm,
                        "test_acc": 0.9 - drop}
                for label, (est, proxy, drop, wm) in figures.items()}
    cell = {"adversary_fraction": 0.1, "threshold": threshold, "target_detected": True,
            "watermarked": {"test_acc": 0.9, "wm_acc": 1.0, "proxy_wm_acc": 1.0}, "attempts": attempts}
    folder.mkdir()
    (folder / "seed0.json").write_text(json.dumps({"seed": 0, "cells": {"content": {"fraction_0_1": cell}}}))


def test_a_pick_that_flips_across_machines_is_shown_and_the_gaps_counted(tmp_path, capsys):
    _write(tmp_path / "a", {"finetune": (0.002, 0.90, 0.003, 0.90), "laundering": (0.008, 0.04, 0.009, 0.04)})
    _write(tmp_path / "b", {"finetune": (0.002, 0.80, 0.004, 0.85), "laundering": (0.011, 0.03, 0.012, 0.03)})
    machine_compare.main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--names", "AVX-512", "AVX2"])
    out = capsys.readouterr().out
    assert "### content, 10 %, seed 0" in out
    # within 1 point machine a picks Laundering (removed); on b its held-out loss is 1.1 points, so finetune
    assert "| pick within 1 pt | `laundering` 0.90 pt, 4 %: **removed** | `finetune` 0.40 pt, 85 %: survives |" in out
    assert ("| in hindsight within 1 pt | `laundering` 0.90 pt, 4 %: **removed** | "
            "`finetune` 0.40 pt, 85 %: survives |") in out
    assert "| pick within 0.5 pt | `finetune` 0.30 pt, 90 %: survives |" in out
    assert "| `wm_acc` | 2 | 3.00 | 5.00 |" in out


def test_folders_without_a_shared_cell_are_refused(tmp_path):
    _write(tmp_path / "a", {"finetune": (0.002, 0.90, 0.003, 0.90)})
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="no seed<k>.json"):
        machine_compare.main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b")])
