"""scripts.wide_proxy_probe's replay: the adversary's pick under each proxy, from a saved probe."""

from __future__ import annotations

import csv

from scripts.wide_proxy_probe import main

FIELDS = ("seed", "scheme", "adversary_fraction", "model", "threshold", "region", "wide", "wide_again", "support",
          "single", "single_again", "holdout_acc_drop", "test_acc_drop", "wm_acc")


def row(model: str, region: float, wide: float, wm_acc: float, seed: int = 0) -> dict[str, object]:
    return {"seed": seed, "scheme": "content", "adversary_fraction": 0.1, "model": model, "threshold": 0.02,
            "region": region, "wide": wide, "wide_again": wide, "support": wide, "single": wide,
            "single_again": wide, "holdout_acc_drop": 0.004, "test_acc_drop": 0.004, "wm_acc": wm_acc}


def test_summary_replays_each_proxys_pick(tmp_path, capsys):
    """Region reads the model that kept the mark lower; wide reads the one that removed it lower: the replay says
    region's pick survives and wide's removes, at every budget."""
    rows = [row("watermarked", float("nan"), 1.0, 1.0),
            row("laundering@retrain_triggers=flagged", 0.01, 0.7, 0.43),  # kept 43 %: region is fooled
            row("laundering@distill_weight=1", 0.03, 0.2, 0.01),  # removed it
            row("scratch", 0.02, 0.3, 0.01)]
    rows[-1]["holdout_acc_drop"] = rows[-1]["test_acc_drop"] = 0.04  # out of every budget
    path = tmp_path / "probe.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    main(["--summary", str(path)])
    out = capsys.readouterr().out
    assert "seed 0 content 0.1: region rho" in out and "scratch 2 %" in out
    assert "| region | content | 0/1 (43.0 %; 1 picked) | 0/1 (43.0 %; 1 picked) | 0/1 (43.0 %; 1 picked) |" in out
    assert "| wide | content | 1/1 (1.0 %; 1 picked) | 1/1 (1.0 %; 1 picked) | 1/1 (1.0 %; 1 picked) |" in out
