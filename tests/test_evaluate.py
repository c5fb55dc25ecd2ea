"""Verdicts and the ownership test on hand-made metrics."""

from __future__ import annotations

import math

import pytest

from wmbench.evaluate import binomial_tail, null_rate, ownership_test, verdicts
from wmbench.params import ParamsError, parse_params


def test_binomial_tail_matches_known_value():
    # P(X >= 7), X ~ Bin(20, 0.1) = 0.0023860894... (scipy.stats.binomtest(7, 20, 0.1, "greater"))
    assert binomial_tail(7, 20, 0.1) == pytest.approx(0.002386089408966118, rel=1e-12)


def test_binomial_tail_edges_are_exact():
    assert binomial_tail(0, 50, 0.3) == 1.0
    assert binomial_tail(50, 50, 0.3) == pytest.approx(0.3**50, rel=1e-12)
    assert binomial_tail(1, 1, 0.25) == pytest.approx(0.25)


def test_binomial_tail_large_trigger_set_does_not_overflow():
    p = binomial_tail(5000, 10_000, 0.01)
    assert 0 <= p < 1e-300
    assert binomial_tail(100, 10_000, 0.01) == pytest.approx(0.5, abs=0.05)


def test_binomial_tail_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hits=11"):
        binomial_tail(11, 10, 0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        binomial_tail(1, 10, 0.0)


def test_null_rate_is_clipped_to_one_over_n():
    assert null_rate(0.0, 100) == pytest.approx(0.01)
    assert null_rate(0.08, 100) == pytest.approx(0.08)
    assert null_rate(1.0, 100) == pytest.approx(0.99)


def test_ownership_test_uses_rounded_hits():
    assert ownership_test(0.35, 20, 0.1) == pytest.approx(binomial_tail(7, 20, 0.1))


HAND_MADE = {
    "watermarked": {"test_acc": 0.97, "wm_acc": 1.00},
    "vanilla_seed1": {"test_acc": 0.96, "wm_acc": 0.02},
    "finetune": {"test_acc": 0.95, "wm_acc": 0.60},
    "wild_ce": {"test_acc": 0.94, "wm_acc": 0.05},
    "scratch": {"test_acc": 0.945, "wm_acc": 0.03},
}


def test_verdicts_fields_on_hand_made_metrics():
    table = verdicts(HAND_MADE, threshold=0.08, trigger_size=100, alpha=0.05)
    assert set(table) == set(HAND_MADE)
    assert table["finetune"]["test_acc_drop"] == pytest.approx(0.02)
    assert [name for name, row in table.items() if row["removed"]] == ["vanilla_seed1", "wild_ce", "scratch"]
    assert table["watermarked"]["ownership_verified"] and table["finetune"]["ownership_verified"]
    assert not table["wild_ce"]["ownership_verified"]
    assert table["finetune"]["p_value"] == pytest.approx(binomial_tail(60, 100, 0.08))
    assert table["wild_ce"]["p_value"] > 0.05
    assert {name: row["useful"] for name, row in table.items()} == {
        "watermarked": True, "vanilla_seed1": True, "finetune": True, "wild_ce": False, "scratch": False,
    }


def test_verdicts_without_scratch_leave_out_useful():
    table = verdicts({k: v for k, v in HAND_MADE.items() if k != "scratch"}, threshold=0.08, trigger_size=100)
    assert all("useful" not in row for row in table.values())


def test_verdicts_alpha_decides_ownership():
    scores = {"watermarked": {"test_acc": 0.9, "wm_acc": 0.15}}
    p = verdicts(scores, threshold=0.08, trigger_size=100)["watermarked"]["p_value"]
    assert 0.01 < p < 0.05
    assert verdicts(scores, threshold=0.08, trigger_size=100, alpha=0.05)["watermarked"]["ownership_verified"]
    assert not verdicts(scores, threshold=0.08, trigger_size=100, alpha=0.01)["watermarked"]["ownership_verified"]
    assert math.isfinite(p)


@pytest.mark.parametrize("alpha", [0, 1, 1.5])
def test_evaluate_alpha_out_of_range_is_rejected(alpha):
    with pytest.raises(ParamsError, match=r"evaluate\.alpha"):
        parse_params({"evaluate": {"alpha": alpha}})


def test_evaluate_unknown_key_suggests_alpha():
    with pytest.raises(ParamsError, match="did you mean 'alpha'"):
        parse_params({"evaluate": {"alpah": 0.05}})
