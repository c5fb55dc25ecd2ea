"""The robustness verdict: the adversary chooses on its own data, the verdict reports what that choice measured."""

from __future__ import annotations

import math

import pytest

from wmbench.robustness import (
    Attempt,
    attempts_from_rows,
    best_in_hindsight,
    budget_key,
    choose,
    frontier,
    report,
    to_metrics,
    verdicts,
)


def attempt(method: str = "wild_js", setting: str = "beta=1", seed: int = 0, *, estimated: float = 0.01,
            proxy: float = 0.1, drop: float = 0.01, wm: float = 0.05, threshold: float = 0.03,
            scheme: str = "square") -> Attempt:
    return Attempt(scheme, method, setting, seed, estimated, proxy, drop, wm, threshold)


def test_choice_never_reads_test_accuracy_or_true_retention():
    """Two attempts that differ only in what the adversary cannot see: the pick follows its own estimates."""
    seen_strong = attempt(setting="a", estimated=0.004, proxy=0.02, drop=0.05, wm=0.9)
    seen_weak = attempt(setting="b", estimated=0.004, proxy=0.30, drop=0.0, wm=0.0)
    assert choose([seen_strong, seen_weak], budget=0.005) is seen_strong


def test_choice_keeps_to_the_budget_on_the_held_out_estimate():
    cheap = attempt(setting="cheap", estimated=0.003, proxy=0.5)
    strong = attempt(setting="strong", estimated=0.015, proxy=0.0)
    assert choose([cheap, strong], 0.005) is cheap
    assert choose([cheap, strong], 0.02) is strong
    assert choose([strong], 0.005) is None


def test_ties_go_to_the_smaller_drop_whatever_the_order():
    a = attempt(setting="a", estimated=0.008, proxy=0.1)
    b = attempt(setting="b", estimated=0.002, proxy=0.1)
    assert choose([a, b], 0.01) is b and choose([b, a], 0.01) is b


def test_removed_only_when_every_seed_is_below_its_threshold():
    attempts = [attempt(seed=0, wm=0.01, threshold=0.03), attempt(seed=1, wm=0.02, threshold=0.03),
                attempt(seed=2, wm=0.10, threshold=0.03)]
    (verdict,) = verdicts(attempts, budgets=[0.01])
    assert not verdict.removed and verdict.text == "survives 1 point"
    (verdict,) = verdicts(attempts[:2], budgets=[0.01])
    assert verdict.removed and verdict.text == "removed within 1 point, by wild_js@beta=1"


def test_a_seed_with_nothing_in_budget_survives():
    attempts = [attempt(seed=0, wm=0.0), attempt(seed=1, estimated=0.05, wm=0.0)]
    (verdict,) = verdicts(attempts, budgets=[0.01])
    assert verdict.picks[1] is None and not verdict.removed
    assert verdict.stat("wm_acc") == (0.0, 0.0)  # the one pick's figures


def test_seeds_that_pick_differently_are_each_named():
    """One name only when every seed made the same pick; otherwise each seed's, so no setting hides another."""
    same = [attempt(seed=k) for k in (0, 1)]
    assert verdicts(same, budgets=[0.01])[0].method == "wild_js@beta=1"
    mixed = [attempt(seed=0, setting="a"), attempt(seed=1, setting="b"), attempt(seed=1, setting="a", proxy=0.5),
             attempt(seed=3, setting="a")]
    (verdict,) = verdicts(mixed, budgets=[0.01])
    assert verdict.method == "seed 0: wild_js@a; seed 1: wild_js@b; seed 3: wild_js@a"
    assert to_metrics([verdict])["square"]["within_1"]["method"] == verdict.method
    (verdict,) = verdicts([attempt(seed=0), attempt(seed=1, estimated=0.05)], budgets=[0.01])
    assert verdict.method == "seed 0: wild_js@beta=1; seed 1: none"
    (verdict,) = verdicts([attempt(seed=0, estimated=0.05)], budgets=[0.01])
    assert verdict.method == "none"
    # the report shows no figures for no pick rather than "nan ± nan"
    assert "| square | 1 | none | - | - | 0/1 | survives 1 point |" in report([verdict])


def test_verdict_per_scheme_and_budget_with_mean_and_spread():
    attempts = [attempt(scheme=s, seed=k, wm=w, drop=d) for s in ("noise", "square")
                for k, (w, d) in enumerate([(0.02, 0.01), (0.04, 0.03)])]
    found = verdicts(attempts)
    assert [(v.scheme, v.budget) for v in found] == [(s, b) for s in ("noise", "square") for b in (0.005, 0.01, 0.02)]
    metrics = to_metrics(found)
    entry = metrics["square"]["within_1"]
    assert entry["wm_acc"] == pytest.approx(0.03) and entry["wm_acc_std"] == pytest.approx(0.01)
    assert entry["test_acc_drop"] == pytest.approx(0.02) and entry["removed"] is False and entry["seeds"] == 2
    assert set(metrics["noise"]) == {"within_0_5", "within_1", "within_2"}
    assert all("." not in key for scheme in metrics.values() for key in scheme)
    table = report(found)
    assert table.count("\n") == 2 + len(found) - 1
    assert "| square | 1 | wild_js@beta=1 | 2.0 ± 1.0 | 3.0 ± 1.0 | 1/2 |" in table


def test_budgets_are_fractions():
    with pytest.raises(ValueError, match="fractions"):
        verdicts([attempt()], budgets=[1])
    assert budget_key(0.005) == "within_0_5" and budget_key(0.02) == "within_2"


def test_frontier_keeps_only_settings_nothing_beats_on_both():
    attempts = [attempt(setting="beta=0", drop=0.01, wm=0.3), attempt(setting="beta=1", drop=0.02, wm=0.1),
                attempt(setting="beta=10", drop=0.03, wm=0.2), attempt("refit", "lr=0.005", drop=0.0, wm=0.9)]
    assert frontier(attempts) == {"refit": [(0.0, 0.9, "lr=0.005")],
                                  "wild_js": [(0.01, 0.3, "beta=0"), (0.02, 0.1, "beta=1")]}


def test_rows_without_the_adversarys_figures_fail_with_what_is_missing():
    row = {"scheme": "square", "method": "laundering", "setting": "", "seed": 0, "holdout_acc_watermarked": 0.92,
           "holdout_acc": 0.9, "proxy_wm_acc": 0.1, "test_acc_watermarked": 0.89, "test_acc": 0.88,
           "wm_acc": 0.02, "threshold": 0.03}
    (made,) = attempts_from_rows([row])
    assert made.estimated_drop == pytest.approx(0.02) and made.test_acc_drop == pytest.approx(0.01)
    with pytest.raises(ValueError, match="lacks holdout_acc"):
        attempts_from_rows([{**row, "holdout_acc": ""}])
    with pytest.raises(ValueError, match="adversary_holdout"):
        attempt(estimated=math.nan)


def test_a_pick_that_lost_more_than_the_budget_on_test_survives():
    """The held-out estimate fitted the budget, the test set says otherwise: the watermark survives that budget."""
    misled = attempt(estimated=0.0, drop=0.07, wm=0.0)
    (verdict,) = verdicts([misled], budgets=[0.01])
    assert verdict.chosen == [misled] and not verdict.removed
    assert verdict.text == "survives 1 point (a pick lost 7.0 on the test set)"
    (verdict,) = verdicts([misled], budgets=[0.1])
    assert verdict.removed


def test_hindsight_counts_what_the_menu_removed_whatever_the_adversary_picked():
    """Seed 0: the proxy misleads the pick, a better attempt existed; seed 1: nothing within budget removes it."""
    misled = attempt(seed=0, setting="misled", estimated=0.005, proxy=0.01, drop=0.004, wm=0.40)
    missed = attempt(seed=0, setting="missed", estimated=0.008, proxy=0.20, drop=0.007, wm=0.01)
    costly = attempt(seed=1, setting="costly", estimated=0.003, proxy=0.10, drop=0.015, wm=0.0)
    weak = attempt(seed=1, setting="weak", estimated=0.004, proxy=0.30, drop=0.002, wm=0.50)
    (verdict,) = verdicts([misled, missed, costly, weak], budgets=[0.01])
    assert verdict.picks == (misled, costly) and verdict.hindsight == (missed, weak)
    assert not verdict.removed and verdict.removable_in_hindsight == 1
    assert to_metrics([verdict])["square"]["within_1"]["removable_in_hindsight"] == 1
    assert report([verdict]).splitlines()[-1].endswith("| survives 1 point (a pick lost 1.5 on the test set) | 1/2 |")
    assert best_in_hindsight([costly], 0.01) is None  # its test loss is over the budget, whatever the slice said


def test_a_baseline_is_never_picked_nor_counted_in_hindsight():
    """Training from scratch on the adversary's data is the bar a removal must beat, not a removal."""
    scratch = attempt(method="scratch", setting="", estimated=0.004, proxy=0.0, drop=0.004, wm=0.0)
    weak = attempt(setting="weak", estimated=0.004, proxy=0.5, drop=0.004, wm=0.5)
    assert scratch.baseline and not weak.baseline
    assert choose([scratch, weak], 0.01) is weak and best_in_hindsight([scratch, weak], 0.01) is weak
    assert choose([scratch], 0.01) is None


def test_the_registrys_baselines_are_the_verdicts():
    from wmbench.removal import REMOVALS
    from wmbench.robustness import BASELINES

    assert {name for name in REMOVALS.names() if REMOVALS.get(name).baseline} == BASELINES


def test_a_loss_of_exactly_the_budget_fits_despite_float_error():
    """0.8914 - 0.8864 is 0.0050000000000000044: 50 test images of 10,000 fit a 0.5-point budget."""
    exact = attempt(estimated=0.8914 - 0.8864, drop=0.8914 - 0.8864, wm=0.03, threshold=0.03)
    (verdict,) = verdicts([exact], budgets=[0.005])
    assert verdict.chosen == [exact] and verdict.removed and not verdict.overshot
    assert best_in_hindsight([exact], 0.005) is exact


def test_the_report_says_over_how_many_seeds_the_picks_figures_are():
    attempts = [attempt(seed=0, drop=0.002), attempt(seed=1, estimated=0.05), attempt(seed=2, drop=0.004)]
    (verdict,) = verdicts(attempts, budgets=[0.01])
    assert "| 0.3 ± 0.1 (2 of 3 seeds) | 5.0 ± 0.0 (2 of 3 seeds) |" in report([verdict])
    assert "seeds)" not in report(verdicts(attempts[:1], budgets=[0.01]))
