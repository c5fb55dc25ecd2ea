"""The held-out error probe's paired standard error (scripts/holdout_error.py)."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.holdout_error import paired_drop, summary


def test_identical_predictions_lose_nothing_with_no_error():
    correct = torch.tensor([True, False, True, True])
    assert paired_drop(correct, correct) == (0.0, 0.0)


def test_paired_error_counts_only_the_images_that_changed():
    before = torch.ones(100, dtype=torch.bool)
    after = before.clone()
    after[:10] = False  # 10 images lost, none gained
    drop, se = paired_drop(before, after)
    assert drop == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(0.1 * 0.9 * 100 / 99) / 10)
    # the same 10 losses with 10 gains elsewhere: no net loss, a larger error
    before[20:30] = False
    drop, se_both = paired_drop(before, after)
    assert drop == pytest.approx(0.0) and se_both > se


def test_one_image_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        paired_drop(torch.tensor([True]), torch.tensor([False]))


def test_summary_counts_attempts_within_two_standard_errors():
    rows = [{"seed": 0, "scheme": "square", "adversary_fraction": 0.1, "holdout_size": 1200,
             "holdout_acc_drop": h, "test_acc_drop": t, "holdout_se": 0.003, "test_se": 0.001}
            for h, t in ((0.010, 0.009), (0.020, 0.005))]
    table = summary(rows)
    assert "| 0 | square | 0.1 | 1200 | 2 | 0.30 | 0.10 |" in table
    assert table.endswith("| 1/2 |")


def test_a_margin_turns_a_pick_that_fits_by_its_estimate_away(tmp_path):
    """--margin: an attempt whose held-out loss fits the budget but not with one standard error added is
    the grid's pick (removed within 1 point) and not admissible under the margin rule (then the weak one is)."""
    import json

    from scripts.holdout_error import margin_counts

    attempts = {"laundering": {"proxy_wm_acc": 0.0, "test_acc_drop": 0.008, "wm_acc": 0.0},
                "finetune": {"proxy_wm_acc": 1.0, "test_acc_drop": 0.002, "wm_acc": 1.0}}
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "seed0.json").write_text(json.dumps(
        {"seed": 0, "cells": {"square": {"fraction_0_1": {"threshold": 0.02, "attempts": attempts}}}}))
    rows = [{"seed": "0", "scheme": "square", "adversary_fraction": "0.1", "model": "laundering",
             "holdout_acc_drop": "0.007", "holdout_se": "0.007"},
            {"seed": "0", "scheme": "square", "adversary_fraction": "0.1", "model": "finetune",
             "holdout_acc_drop": "0.001", "holdout_se": "0.002"}]
    table = margin_counts(rows, tmp_path, 1.0, budgets=(0.01,))
    assert table.splitlines()[-1] == "| square | 0.1 | 1 | 1/1 | 0/1 |", table
    # a CSV of another run (an attempt or cell these cells lack) is refused, naming the fix
    with pytest.raises(ValueError, match="point --experiment at that run's folder"):
        margin_counts([{**rows[0], "model": "wild_ce"}], tmp_path, 1.0)
