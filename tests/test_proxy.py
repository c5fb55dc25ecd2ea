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
from wmbench.params import RobustnessParams, load_params
from wmbench.proxy import (
    adversary_holdout,
    adversary_training_images,
    proxy_retention,
    region_retention,
    suspected_class,
    trigger_region,
)
from wmbench.reconstruct import Reconstruction, save_reconstruction
from wmbench.seeding import generator
from wmbench.stage import run_stage
from wmbench.training import DeviceData

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


def test_trigger_region_holds_the_support_and_grows_it_by_the_nearest_pixels():
    mask = torch.zeros(1, 28, 28)
    mask[0, 20:24, 20:24] = 0.9  # a 4x4 square (16 pixels)
    mask[0, 2, 2] = 0.01  # below the support's level: not counted
    region = trigger_region(mask, 2.0)
    assert region.sum() == 32 and bool((region[0, 20:24, 20:24] == 1).all())
    grown = region[0].nonzero()
    assert grown.min() >= 19 and grown.max() <= 24  # the extra 16 pixels touch the square
    assert trigger_region(mask, 1.0).sum() == 16
    with pytest.raises(ValueError, match="proxy_area=0.5 must be at least 1"):
        trigger_region(mask, 0.5)


def test_region_proxy_reads_the_marked_model_high_an_untrained_one_low_and_touches_neither(watermarked):
    """A pattern re-optimised around the trigger reads the watermarked model as marked and an untrained one as not;
    the model's weights, gradients and train/eval mode are as they were."""
    prepared, params, model, _ = watermarked
    arrays = prepared.arrays["adversary"]
    holdout = adversary_holdout(*arrays, 0.2, params.seed, CPU)
    train = adversary_training_images(*arrays, 0.2, params.seed, CPU)
    found = true_trigger(params)
    region = trigger_region(found.masks[0], 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.train()
    marked = region_retention(model, region, 0, train, holdout, 60, generator(0, "proxy"))
    assert marked >= 0.9 and model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(),
                                                                                      strict=True))
    torch.manual_seed(0)
    untrained = create_model("lenet", **prepared.arch_kwargs()).eval()
    assert region_retention(untrained, region, 0, train, holdout, 60, generator(0, "proxy")) < 0.5
    again = region_retention(model, region, 0, train, holdout, 60, generator(0, "proxy"))
    assert again == marked  # same seed, same figure


@pytest.mark.parametrize("proxy", ["region", "trigger"])
def test_the_attempt_carries_the_proxy_robustness_proxy_names(proxy, monkeypatch):
    monkeypatch.setattr(robustness, "proxy_retention", lambda *args: 0.25)
    monkeypatch.setattr(robustness, "region_retention", lambda *args: 0.75)
    monkeypatch.setattr(robustness, "accuracy", lambda *args: 0.5)
    blank = DeviceData(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    found = Reconstruction(torch.full((10, 1, 28, 28), 0.5), torch.zeros(10, 1, 28, 28), torch.ones(10),
                           torch.zeros(10))
    yardsticks = robustness.Yardsticks(blank.images, blank, found, 0, blank, blank, RobustnessParams(proxy=proxy),
                                       seed=0)
    figures = yardsticks.measure(torch.nn.Identity())
    assert figures["trigger_wm_acc"] == 0.25 and figures["region_wm_acc"] == 0.75
    assert figures["proxy_wm_acc"] == {"trigger": 0.25, "region": 0.75}[proxy]


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
    assert attempts["finetune"]["proxy_wm_acc"] == attempts["finetune"]["region_wm_acc"]  # the default proxy
    assert attempts["finetune"]["trigger_wm_acc"] >= 0.9
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
