"""WILD (wild_ce, wild_js, wild_dn) and the random erasing it trains on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stages.remove import adversary_view
from tests.conftest import small_params
from wmbench.augment import random_erasing
from wmbench.params import ParamsError, parse_params
from wmbench.removal import create_removal
from wmbench.removal.wild import WildParams, alignment_loss

WILD = ["wild_ce", "wild_js", "wild_dn"]


def erase(images: torch.Tensor, seed: int, **kwargs) -> torch.Tensor:
    return random_erasing(images, torch.Generator().manual_seed(seed), **kwargs)


def test_random_erasing_changes_one_rectangle_per_image_within_range():
    images = torch.full((64, 3, 28, 28), 0.123)
    before = images.clone()
    erased = erase(images, 0)
    assert torch.equal(images, before), "the input batch changed"
    assert erased.shape == images.shape and erased.dtype == images.dtype
    assert erased.min() >= 0 and erased.max() <= 1
    changed = (erased != images).any(1)  # (N, H, W)
    for mask in changed:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols), "every copy is erased at probability 1"
        box = torch.zeros_like(mask)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(mask, box), "the changed pixels are not one rectangle"
        assert mask.sum() <= 0.45 * 28 * 28  # at most 40% of the image, plus rounding


def test_random_erasing_is_deterministic_for_a_seed():
    images = torch.rand(16, 1, 28, 28)
    assert torch.equal(erase(images, 3), erase(images, 3))
    assert not torch.equal(erase(images, 3), erase(images, 4))


def test_random_erasing_at_probability_zero_keeps_images():
    images = torch.rand(8, 1, 28, 28)
    assert torch.equal(erase(images, 0, probability=0.0), images)


@pytest.mark.parametrize("kind", ["ce", "js"])
def test_alignment_is_zero_for_identical_features_and_positive_otherwise(kind):
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(6, 16, 5, 5, generator=generator) * 3
    other = torch.rand(6, 16, 5, 5, generator=generator) * 3
    assert alignment_loss(kind, clean, clean.clone()).abs() < 1e-6
    assert alignment_loss(kind, clean, other) > 1e-3
    assert alignment_loss(kind, clean, other) < (1 if kind == "js" else float("inf"))


def test_unknown_divergence_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: ce, js"):
        alignment_loss("kl", torch.rand(2, 4), torch.rand(2, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [("wild_js", "copies", 0), ("wild_ce", "lr", 0.0), ("wild_dn", "discriminator_lr", -1.0)],
)
def test_bad_wild_settings_name_the_key(name, key, value):
    with pytest.raises(ParamsError, match=rf"removal\.{name}.*{key}={value}"):
        parse_params(small_params(removal={name: {key: value}}))


def test_negative_beta_is_refused():
    with pytest.raises(ValueError, match="beta=-1.0 must be >= 0"):
        WildParams(beta=-1.0)


@pytest.mark.parametrize("name", WILD)
def test_wild_lowers_watermark_retention_and_keeps_accuracy(name, watermarked):
    prepared, params, model, _ = watermarked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = adversary_view(prepared, params, torch.device("cpu"))
    start = data.evaluate(model)
    settings = dataclasses.replace(params.removal.settings[name], epochs=5)  # wm_acc 1.0 -> ~0.3 by then
    result = create_removal(name, settings).remove(model, data)
    end = data.evaluate(result.model)
    assert type(result.model) is type(model) and result.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert end["wm_acc"] <= start["wm_acc"] - 0.4, (start, end)
    assert end["test_acc"] >= start["test_acc"] - 0.1, (start, end)
