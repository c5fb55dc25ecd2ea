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
    budgeted_trigger,
    proxy_retention,
    region_retention,
    strongest,
    suspected_class,
    trigger_region,
    wide_region,
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


def test_budgeted_trigger_keeps_to_its_budget_finds_the_mark_and_touches_no_weight(watermarked):
    prepared, params, model, _ = watermarked
    arrays = prepared.arrays["adversary"]
    holdout = adversary_holdout(*arrays, 0.2, params.seed, CPU)
    train = adversary_training_images(*arrays, 0.2, params.seed, CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 300 steps: after 150 the search had reached 78 % on an AVX2 CPU, 89 % after 300
    mask, pattern = budgeted_trigger(model, 20.0, 0, train, 300, generator(0, "wide"))
    assert mask.shape == (1, 28, 28) and pattern.shape == (1, 28, 28)
    assert float(mask.sum()) <= 20.0 + 1e-3 and float(mask.max()) <= 1
    others = holdout.images[holdout.labels != 0]
    with torch.no_grad():
        sent = (model((1 - mask) * others + mask * pattern).argmax(1) == 0).float().mean()
    assert sent >= 0.8  # the watermarked model answers a 20-pixel trigger for its target
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="L1 budget must be positive"):
        budgeted_trigger(model, 0.0, 0, train, 1, generator(0, "wide"))


def test_wide_region_is_multiple_times_the_region_where_the_budgeted_trigger_is_strongest(watermarked):
    """A reconstruction that found a part of the stamp (its left 20 pixels, as Neural Cleanse keeps the smallest
    trigger that suffices): the wide region is ``multiple x area`` times its support, and lies on the owner's
    stamp at well above chance."""
    prepared, params, model, _ = watermarked
    train = adversary_training_images(*prepared.arrays["adversary"], 0.2, params.seed, CPU)
    found = true_trigger(params)
    stamp = found.masks[0].clone()
    part = torch.zeros(stamp.numel())
    part[stamp.flatten().nonzero().flatten()[:20]] = 1  # the first 20 stamp pixels in reading order
    found.masks[0], found.l1[0] = part.view_as(stamp), 20.0
    region = wide_region(model, found, 0, train, 2.0, 2.0, 400, 2, generator(0, "wide"))
    assert region.shape == (1, 28, 28) and int(region.sum()) == 80
    chance = 80 * float(stamp.sum()) / stamp.numel()
    assert float((region * stamp).sum()) >= 2 * chance
    with pytest.raises(ValueError, match="proxy_multiple=0.5 must be at least 1"):
        wide_region(model, found, 0, train, 0.5, 2.0, 1, 1, generator(0, "wide"))
    with pytest.raises(ValueError, match="proxy_searches=0 must be at least 1"):
        wide_region(model, found, 0, train, 2.0, 2.0, 1, 0, generator(0, "wide"))
    ramp = torch.arange(12.0).view(1, 3, 4)
    assert strongest(ramp, 3).flatten().tolist() == [0] * 9 + [1] * 3


def blank_yardsticks(settings: RobustnessParams, holds_watermarked: bool = True) -> robustness.Yardsticks:
    """Yardsticks on two blank images and a half-grey reconstruction: for tests that stub the proxies out."""
    blank = DeviceData(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    found = Reconstruction(torch.full((10, 1, 28, 28), 0.5), torch.zeros(10, 1, 28, 28), torch.ones(10),
                           torch.zeros(10))
    return robustness.Yardsticks(blank.images, blank, found, 0, blank, blank, settings, seed=0,
                                 watermarked=torch.nn.Identity() if holds_watermarked else None)


@pytest.mark.parametrize("proxy", ["region", "trigger", "wide"])
def test_the_attempt_carries_the_proxy_robustness_proxy_names(proxy, monkeypatch):
    monkeypatch.setattr(robustness, "proxy_retention", lambda *args: 0.25)
    wide = torch.zeros(1, 28, 28)
    monkeypatch.setattr(robustness, "wide_region", lambda *args: wide)
    monkeypatch.setattr(robustness, "region_retention", lambda model, region, *args: 0.5 if region is wide else 0.75)
    monkeypatch.setattr(robustness, "accuracy", lambda *args: 0.5)
    yardsticks = blank_yardsticks(RobustnessParams(proxy=proxy, compare=["trigger", "region", "wide"]))
    figures = yardsticks.measure(torch.nn.Identity())
    assert figures["trigger_wm_acc"] == 0.25 and figures["region_wm_acc"] == 0.75 and figures["wide_wm_acc"] == 0.5
    assert figures["proxy_wm_acc"] == {"trigger": 0.25, "region": 0.75, "wide": 0.5}[proxy]


@pytest.mark.parametrize(("proxy", "compare", "measured"), [
    ("region", ["trigger"], ["trigger", "region"]),  # the default: no wide search
    ("region", [], ["region"]),
    ("wide", ["region"], ["region", "wide"]),
    ("trigger", ["wide", "trigger"], ["trigger", "wide"]),
])
def test_only_the_named_and_compared_proxies_are_measured(proxy, compare, measured, monkeypatch):
    calls = []
    monkeypatch.setattr(robustness, "proxy_retention", lambda *args: calls.append("trigger") or 0.25)
    monkeypatch.setattr(robustness, "wide_region", lambda *args: calls.append("search") or torch.zeros(1, 28, 28))
    monkeypatch.setattr(robustness, "region_retention", lambda *args: calls.append("pattern") or 0.75)
    monkeypatch.setattr(robustness, "accuracy", lambda *args: 0.5)
    yardsticks = blank_yardsticks(RobustnessParams(proxy=proxy, compare=compare))
    figures = yardsticks.measure(torch.nn.Identity())
    assert [key for key in ("trigger", "region", "wide") if f"{key}_wm_acc" in figures] == measured
    assert ("search" in calls) == ("wide" in measured)  # the costly search only where asked for
    assert calls.count("pattern") == len(set(measured) - {"trigger"})
    assert RobustnessParams().compare == ["trigger"]


def test_the_wide_proxy_needs_the_watermarked_model(monkeypatch):
    monkeypatch.setattr(robustness, "proxy_retention", lambda *args: 0.25)
    monkeypatch.setattr(robustness, "region_retention", lambda *args: 0.75)
    monkeypatch.setattr(robustness, "accuracy", lambda *args: 0.5)
    yardsticks = blank_yardsticks(RobustnessParams(proxy="wide"), holds_watermarked=False)
    with pytest.raises(ValueError, match="searches its region on the watermarked model"):
        yardsticks.measure(torch.nn.Identity())


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
