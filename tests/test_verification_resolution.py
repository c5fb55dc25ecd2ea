"""The verification probe's summary: a removal is judged against every clean model and epoch on the stamped images."""

from __future__ import annotations

from scripts.verification_resolution import rate, summary


def row(model: str, stamped: float, wm: float = 0.02, removed: object = "") -> dict[str, object]:
    return {"seed": 0, "scheme": "square", "adversary_fraction": 0.1, "threshold": 0.02, "model": model,
            "wm_acc": wm, "removed": removed, "stamped_rate": stamped, "stamped_se": 0.001}


def test_a_removal_is_removed_only_within_the_highest_clean_rate_of_any_epoch():
    rows = [row("watermarked", 0.99, wm=1.0), row("clean seed1 epoch 1", 0.03), row("clean seed1 epoch 5", 0.01),
            row("at", 0.03, removed=True), row("above", 0.031, wm=0.01, removed=True),
            row("kept", 0.9, wm=0.9, removed=False)]
    lines = summary(rows).splitlines()[2:]
    assert len(lines) == 2  # the watermarked model, the clean models and a removal keeping half are left out
    assert lines[0].startswith("| square | 0 | at | 2 / 2 | removed | 3.00 ± 0.10 / 3.00 | removed |")
    assert lines[1].endswith("| 1 / 2 | removed | 3.10 ± 0.10 / 3.00 | kept |")


def test_rate_is_an_exact_share_with_its_binomial_error():
    import torch

    share, se = rate(torch.tensor([True] * 3 + [False] * 97))
    assert share == 0.03 and abs(se - (0.03 * 0.97 / 100) ** 0.5) < 1e-12
