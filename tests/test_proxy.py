"""What the adversary measures (wmbench.proxy) and the ``robustness`` stage that judges removals by it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from stages import robustness
from stages.embed import checkpoint_meta
from stages.prepare import make_watermark
from stages.remove import adversary_view
from tests.conftest import write_params
from wmbench.checkpoint import save_checkpoint
from wmbench.data import load_dataset
from wmbench.models import create_model
from wmbench.params import load_params
from wmbench.proxy import adversary_holdout, proxy_retention, suspected_class
from wmbench.reconstruct import Reconstruction, save_reconstruction
from wmbench.stage import run_stage

CPU = torch.device("cpu")


def true_trigger(params, label: int = 0, num_classes: int = 10) -> Reconstruction:
    """The owner's stamp written as a Neural Cleanse trigger (mask, pattern) in row ``label``; other rows blank."""
    stamp = make_watermark(load_dataset("digits"), params)
    blank, white = torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)
    mask = ((stamp.apply(blank) != 0) | (stamp.apply(white) != 1)).float()[0]
    masks = torch.zeros(num_classes, 1, 28, 28)
    patterns = torch.zeros(num_classes, 1, 28, 28)
    masks[label], patterns[label] = mask, stamp.apply(blank)[0]
    l1 = torch.full((num_classes,), 200.0)  # blank rows: far larger norms than the stamp (55 pixels)
    l1[label] = float(mask.sum())
    return Reconstruction(masks, patterns, l1, torch.zeros(num_classes))


def test_the_true_trigger_reads_as_retained_and_a_blank_one_does_not(watermarked):
    prepared, params, model, _ = watermarked
    holdout = adversary_holdout(*prepared.arrays["adversary"], 0.2, params.seed, CPU)
    found = true_trigger(params)
    assert suspected_class(found) == 0
    assert proxy_retention(model, found, 0, holdout) >= 0.9
    assert proxy_retention(model, found, 1, holdout) <= 0.2  # row 1 is an empty mask: the images unchanged


def test_the_held_out_slice_is_the_remove_stages_and_none_is_refused(watermarked):
    prepared, params, _, _ = watermarked
    params = copy.deepcopy(params)
    params.data.adversary_holdout = 0.2
    expected = adversary_view(prepared, params, CPU).evaluate.holdout
    held = adversary_holdout(*prepared.arrays["adversary"], 0.2, params.seed, CPU)
    assert torch.equal(held.images, expected.images) and torch.equal(held.labels, expected.labels)
    with pytest.raises(ValueError, match=r"data.adversary_holdout=0.0.*set it in \(0, 0.5\]"):
        adversary_holdout(*prepared.arrays["adversary"], 0.0, params.seed, CPU)


def test_stage_picks_on_the_adversarys_figures_and_writes_the_verdict(watermarked, prepared_dir, tmp_path):
    prepared, params, model, _ = watermarked
    models = tmp_path / "models"
    meta = checkpoint_meta(prepared, params, 0, "watermarked")
    save_checkpoint(models / "watermarked.pt", model, meta)
    save_checkpoint(models / "removed" / "finetune.pt", model, meta)  # a removal that changed nothing
    torch.manual_seed(0)
    untrained = create_model("lenet", **prepared.arch_kwargs())
    save_checkpoint(models / "removed" / "scratch.pt", untrained, meta)  # no mark, and no accuracy either
    save_reconstruction(tmp_path / "reconstruct" / "triggers.npz", true_trigger(params))
    (tmp_path / "calibration.json").write_text(json.dumps({"threshold": 0.1}))
    paths = {name: str(tmp_path / name) for name in ("r.json", "r.csv", "r.md", "f.png")}
    argv = ["--params", str(params_path := write_params(tmp_path)), "--prepared", str(prepared_dir / "prepared"),
            "--models", str(models), "--vanilla", str(tmp_path / "calibration.json"),
            "--reconstruct", str(tmp_path / "reconstruct"), "--metrics", paths["r.json"], "--plot", paths["r.csv"],
            "--report", paths["r.md"], "--frontier", paths["f.png"]]
    assert load_params(params_path).data.adversary_holdout == 0.2  # the default
    assert run_stage(robustness.main, argv) == 0
    metrics = json.loads((tmp_path / "r.json").read_text())
    attempts = metrics["attempts"]
    assert attempts["finetune"]["holdout_acc_drop"] == 0 and attempts["finetune"]["proxy_wm_acc"] >= 0.9
    assert attempts["scratch"]["holdout_acc_drop"] > 0.5  # an untrained net: out of every budget
    for key in ("within_0_5", "within_1", "within_2"):
        verdict = metrics["content"][key]
        assert verdict["method"] == "finetune" and verdict["removed"] is False and verdict["wm_acc"] >= 0.9
    assert "survives 1 point" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "r.csv").read_text().count("\n") == 3

    write_params(tmp_path, **{"data.adversary_holdout": 0.0})
    for path in paths.values():
        Path(path).unlink()
    assert run_stage(robustness.main, argv) != 0  # refused before any output
    assert not any(Path(path).exists() for path in paths.values())
