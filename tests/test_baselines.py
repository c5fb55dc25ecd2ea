"""The baseline removal methods: finetune (FTAL), rtal, fineprune, prune, scratch."""

from __future__ import annotations

import copy

import pytest
import torch

from stages.remove import adversary_view
from tests.conftest import small_params
from wmbench.models import ARCHS, create_model
from wmbench.params import ParamsError, parse_params
from wmbench.pruning import channel_masks, last_conv, magnitude_masks, weight_sparsity
from wmbench.removal import RemovalData, RemovalResult, create_removal
from wmbench.removal.fineprune import FinepruneParams
from wmbench.removal.finetune import output_layer
from wmbench.removal.prune import PruneParams

BASELINES = ["finetune", "rtal", "fineprune", "prune", "scratch"]


@pytest.fixture(scope="module")
def view(watermarked) -> RemovalData:
    prepared, params, _, _ = watermarked
    return adversary_view(prepared, params, torch.device("cpu"))


@pytest.fixture(scope="module")
def results(watermarked, view) -> dict[str, tuple[RemovalResult, bool]]:
    """Each baseline run once with its defaults, and whether the input model came out unchanged."""
    _, _, model, _ = watermarked
    runs = {}
    for name in BASELINES:
        before = copy.deepcopy(model.state_dict())
        result = create_removal(name).remove(model, view)
        unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        runs[name] = (result, unchanged)
    return runs


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_keeps_architecture_and_input_model(name, watermarked, results):
    _, _, model, _ = watermarked
    result, unchanged = results[name]
    assert type(result.model) is type(model)
    assert {k: v.shape for k, v in result.model.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert unchanged, f"{name} changed the model it was given"


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_history_has_accuracies_every_epoch(name, results):
    result, _ = results[name]
    epochs = create_removal(name).params.epochs
    trained = [r for r in result.history if r["epoch"] >= 1]
    assert [r["epoch"] for r in trained] == list(range(1, epochs + 1))
    for record in result.history:
        assert 0 <= record["test_acc"] <= 1 and 0 <= record["wm_acc"] <= 1
        assert {"loss", "lr"} <= record.keys()
    assert all("." not in key for key in result.info)


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_weights(name, watermarked, view, results):
    _, _, model, _ = watermarked
    again = create_removal(name).remove(model, view)
    first, _ = results[name]
    assert again.history == first.history
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_finetune_keeps_test_accuracy_and_changes_weights(watermarked, view, results):
    _, _, model, _ = watermarked
    result, _ = results["finetune"]
    start = view.evaluate(model)["test_acc"]
    assert result.history[-1]["test_acc"] >= start - 0.05
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), result.model.parameters(), strict=True))


def test_rtal_trains_a_fresh_output_layer(watermarked, results):
    _, _, model, _ = watermarked
    result, _ = results["rtal"]
    old, new = output_layer(model), output_layer(result.model)
    assert not torch.allclose(old.weight, new.weight, atol=0.05)
    assert result.history[0]["test_acc"] < result.history[-1]["test_acc"]
    assert result.history[-1]["test_acc"] >= 0.8


def test_fineprune_silenced_channels_stay_zero(results):
    result, _ = results["fineprune"]
    _, conv, _, bn = last_conv(result.model)
    silent = [c for c in range(conv.out_channels) if not conv.weight[c].any()]
    assert len(silent) == result.info["channels_pruned"] > 0
    assert result.info["channels_ratio"] <= FinepruneParams().max_ratio
    if conv.bias is not None:
        assert not conv.bias[silent].any()
    if bn is not None:
        assert not bn.weight[silent].any() and not bn.bias[silent].any()


def test_fineprune_respects_accuracy_drop_on_adversary_data(watermarked, view):
    _, _, model, _ = watermarked
    strict = create_removal("fineprune", FinepruneParams(accuracy_drop=0.0, epochs=0)).remove(model, view)
    loose = create_removal("fineprune", FinepruneParams(accuracy_drop=1.0, epochs=0)).remove(model, view)
    channels = last_conv(model)[1].out_channels
    assert strict.info["channels_pruned"] <= loose.info["channels_pruned"] == int(0.9 * channels)
    assert [r["epoch"] for r in strict.history] == [0]


def test_prune_reaches_sparsity_and_pruned_weights_stay_zero(watermarked, results):
    _, _, model, _ = watermarked
    result, _ = results["prune"]
    ratio = PruneParams().ratio
    assert result.info["sparsity"] == pytest.approx(ratio, abs=1e-3)
    assert weight_sparsity(result.model) == result.info["sparsity"]
    masks = magnitude_masks(model, ratio)
    parameters = dict(result.model.named_parameters())
    for name, mask in masks.items():
        assert not parameters[name][mask == 0].any(), f"{name}: a pruned weight came back after fine-tuning"
    assert result.history[0]["epoch"] == 0 and result.history[0]["lr"] == 0.0


def test_magnitude_masks_prune_the_ratio_globally_or_per_layer():
    model = create_model("lenet", in_channels=1, image_size=28, num_classes=10)
    total = sum(m.numel() for m in magnitude_masks(model, 0.3).values())
    assert sum(int((m == 0).sum()) for m in magnitude_masks(model, 0.3).values()) == round(0.3 * total)
    for name, mask in magnitude_masks(model, 0.3, "layer").items():
        assert int((mask == 0).sum()) == round(0.3 * mask.numel()), name


def test_scratch_learns_the_task_but_not_the_watermark(watermarked, view, results):
    _, _, model, _ = watermarked
    result, _ = results["scratch"]
    final = result.history[-1]
    assert final["test_acc"] >= 0.6  # chance is 0.1
    assert final["wm_acc"] <= 0.3 < view.evaluate(model)["wm_acc"]
    assert result.info["adversary_acc"] >= 0.95


@pytest.mark.parametrize("arch", ARCHS.names())
def test_silenced_channels_output_zero_in_every_architecture(arch):
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, image_size=32, num_classes=10)
    _, conv, _, bn = last_conv(model)
    watched, seen = bn if bn is not None else conv, []
    handle = watched.register_forward_hook(lambda _m, _i, out: seen.append(out))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in channel_masks(model, [0, 2]).items():
            parameters[name].mul_(mask)
        model.train()(torch.rand(4, 3, 32, 32))
        model.eval()(torch.rand(4, 3, 32, 32))
    handle.remove()
    for out in seen:
        assert not out[:, [0, 2]].any() and out[:, 1].any()


@pytest.mark.parametrize(
    ("method", "key", "value", "message"),
    [
        ("prune", "ratio", 1.0, "ratio=1.0 is outside"),
        ("prune", "ratio", -0.1, "ratio=-0.1 is outside"),
        ("prune", "epochs", -1, "epochs=-1 must be >= 0"),
        ("fineprune", "max_ratio", 1.5, "max_ratio=1.5 is outside"),
        ("fineprune", "accuracy_drop", -0.01, "accuracy_drop=-0.01 is outside"),
        ("finetune", "epochs", -2, "epochs=-2 must be positive"),
        ("rtal", "lr", 0.0, "lr=0.0 must be positive"),
        ("scratch", "epochs", 0, "epochs=0 must be positive"),
    ],
)
def test_bad_baseline_params_name_the_key(method, key, value, message):
    raw = small_params()
    raw["removal"] = {method: {key: value}}
    with pytest.raises(ParamsError, match=f"removal.{method}: {message}"):
        parse_params(raw)
