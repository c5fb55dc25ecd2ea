"""REFIT: large-lr fine-tuning with EWC and optional unlabeled augmentation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stages.remove import adversary_view
from tests.conftest import small_params
from wmbench.params import ParamsError, parse_params
from wmbench.removal import create_removal
from wmbench.removal.refit import diagonal_fisher, ewc_penalty


def test_ewc_penalty_is_zero_at_the_original_weights_and_positive_elsewhere(watermarked):
    prepared, params, model, _ = watermarked
    data = adversary_view(prepared, params, torch.device("cpu"))
    fisher = diagonal_fisher(model, data.adversary)
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert set(fisher) == set(reference)
    assert all(f.shape == reference[n].shape and (f >= 0).all() for n, f in fisher.items())
    assert sum(f.sum() for f in fisher.values()) > 0
    assert ewc_penalty(model, fisher, reference) == 0
    moved = {name: w + 0.01 for name, w in reference.items()}
    assert ewc_penalty(model, fisher, moved) > 0


def test_refit_returns_a_new_model_and_leaves_the_input_unchanged(watermarked):
    prepared, params, model, _ = watermarked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = adversary_view(prepared, params, torch.device("cpu"))
    settings = dataclasses.replace(params.removal.settings["refit"], epochs=3, unlabeled_count=50)
    result = create_removal("refit", settings).remove(model, data)
    assert type(result.model) is type(model) and result.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    assert not all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[1]["lr"] == pytest.approx(settings.lr * settings.lr_decay)
    assert result.info["train_size"] == len(data.adversary) + 50


def test_refit_refuses_more_unlabeled_images_than_there_are(watermarked):
    prepared, params, model, _ = watermarked
    data = adversary_view(prepared, params, torch.device("cpu"))
    settings = dataclasses.replace(params.removal.settings["refit"], unlabeled_count=len(data.unlabeled) + 1)
    with pytest.raises(ValueError, match=r"unlabeled_count=\d+ exceeds"):
        create_removal("refit", settings).remove(model, data)


@pytest.mark.parametrize(
    ("key", "value"),
    [("ewc_weight", -1.0), ("lr_decay", 0.0), ("unlabeled_count", -1), ("fisher_samples", 0), ("lr", -0.1)],
)
def test_bad_refit_settings_name_the_key(key, value):
    with pytest.raises(ParamsError, match=rf"removal\.refit.*{key}={value}"):
        parse_params(small_params(removal={"refit": {key: value}}))
