"""REFIT: large-lr fine-tuning with EWC and optional unlabeled augmentation, as its authors and as WILD run it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.remove import adversary_view
from tests.conftest import small_params
from wmbench.params import ParamsError, parse_params
from wmbench.removal import create_removal
from wmbench.removal.refit import (
    CycledData,
    crop_and_flip,
    diagonal_fisher,
    ewc_coefficients,
    ewc_penalty,
    normalize_fisher,
)
from wmbench.training import DeviceData


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


def test_refit_halves_a_diverging_lr_until_the_loss_stays_finite(watermarked):
    prepared, params, model, _ = watermarked
    data = adversary_view(prepared, params, torch.device("cpu"))
    settings = dataclasses.replace(params.removal.settings["refit"], epochs=1, lr=1e4, divergence_retries=30)
    result = create_removal("refit", settings).remove(model, data)
    halvings = int(result.info["lr_halvings"])
    assert halvings >= 1 and result.info["lr_used"] == pytest.approx(1e4 / 2**halvings)
    assert result.history[0]["lr"] == pytest.approx(result.info["lr_used"])
    assert all(torch.isfinite(w).all() for w in result.model.state_dict().values())
    settings = dataclasses.replace(settings, divergence_retries=1)
    message = r"the loss became nan in epoch 1 at lr 5000; .*\(after halving it 1 times from 10000; raise removal"
    with pytest.raises(FloatingPointError, match=message):
        create_removal("refit", settings).remove(model, data)


def test_refit_refuses_more_unlabeled_images_than_there_are(watermarked):
    prepared, params, model, _ = watermarked
    data = adversary_view(prepared, params, torch.device("cpu"))
    settings = dataclasses.replace(params.removal.settings["refit"], unlabeled_count=len(data.unlabeled) + 1)
    with pytest.raises(ValueError, match=r"unlabeled_count=\d+ exceeds"):
        create_removal("refit", settings).remove(model, data)


@pytest.mark.parametrize(
    ("key", "value"),
    [("ewc_weight", -1.0), ("lr_decay", 0.0), ("unlabeled_count", -1), ("fisher_samples", 0), ("lr", -0.1),
     ("momentum", 1.0), ("weight_decay", -0.1), ("lr_decay_epochs", 0), ("random_crop", -1),
     ("divergence_retries", -1)],
)
def test_bad_refit_settings_name_the_key(key, value):
    with pytest.raises(ParamsError, match=rf"removal\.refit.*{key}={value}"):
        parse_params(small_params(removal={"refit": {key: value}}))


def test_sampled_fisher_ignores_the_given_labels_and_normalizes_to_one(watermarked):
    prepared, params, model, _ = watermarked
    data = adversary_view(prepared, params, torch.device("cpu")).adversary
    relabelled = DeviceData(data.images, (data.labels + 1) % 10)

    def fisher(images: DeviceData, labels: str) -> dict[str, torch.Tensor]:
        return diagonal_fisher(model, images, labels, torch.Generator().manual_seed(0))

    sampled, sampled_relabelled = fisher(data, "sampled"), fisher(relabelled, "sampled")
    given, given_relabelled = fisher(data, "given"), fisher(relabelled, "given")
    assert all(torch.equal(sampled[n], sampled_relabelled[n]) for n in sampled), "sampled labels read the data's"
    assert not all(torch.allclose(given[n], given_relabelled[n]) for n in given)
    assert not all(torch.allclose(sampled[n], given[n]) for n in given)

    normalized = normalize_fisher(sampled)
    largest = max(float(f.max()) for f in sampled.values())
    assert max(float(f.max()) for f in normalized.values()) == pytest.approx(1.0)
    assert all(torch.allclose(normalized[n], sampled[n] / largest) for n in sampled)


def test_ewc_clamp_caps_the_coefficient_so_an_sgd_step_never_overshoots():
    layer = nn.Linear(4, 3)
    reference = {name: p.detach().clone() for name, p in layer.named_parameters()}
    fisher = {name: torch.rand_like(p, generator=torch.Generator().manual_seed(1)) for name, p in reference.items()}
    lr, ewc_weight = 0.5, 100.0
    capped = ewc_coefficients(fisher, ewc_weight, lr, clamp=True)
    free = ewc_coefficients(fisher, ewc_weight, lr, clamp=False)
    assert max(float(c.max()) for c in capped.values()) == pytest.approx(1 / lr)
    assert all(torch.equal(free[n], ewc_weight * fisher[n]) for n in fisher)

    def one_step(coefficients: dict[str, torch.Tensor]) -> float:
        """Largest overshoot past the reference of one SGD step on the penalty alone, from reference + 1."""
        with torch.no_grad():
            for name, p in layer.named_parameters():
                p.copy_(reference[name] + 1)
        optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
        optimizer.zero_grad()
        (0.5 * ewc_penalty(layer, coefficients, reference)).backward()
        optimizer.step()
        return max(float((reference[n] - p.detach()).max()) for n, p in layer.named_parameters())

    assert one_step(capped) <= 1e-6
    assert one_step(free) > 1


def test_refit_variants_fill_the_optimizer_and_keep_what_is_set():
    authors = parse_params(small_params()).removal.settings["refit"]
    assert (authors.variant, authors.optimizer, authors.lr, authors.momentum, authors.weight_decay) == (
        "authors", "sgd", 0.05, 0.9, 5e-4)
    wild = parse_params(small_params(**{"removal.refit.variant": "wild"})).removal.settings["refit"]
    assert (wild.optimizer, wild.lr, wild.momentum, wild.weight_decay) == ("rmsprop", 0.005, 0.0, 0.0)
    swept = parse_params(small_params(**{"removal.refit.variant": "wild", "removal.refit.lr": 0.003}))
    assert (swept.removal.settings["refit"].optimizer, swept.removal.settings["refit"].lr) == ("rmsprop", 0.003)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optimizer", "adamw", r"removal\.refit\.optimizer='adamw'; valid: sgd, rmsprop, adam"),
        ("variant", "chen", r"removal\.refit\.variant='chen'; valid: authors, wild"),
        ("fisher_labels", "model", r"removal\.refit\.fisher_labels='model'; valid: sampled, given"),
        ("fisher_normalization", "sum", r"removal\.refit\.fisher_normalization='sum'; valid: max, none"),
        ("epoch_length", "full", r"removal\.refit\.epoch_length='full'; valid: owner, adversary"),
    ],
)
def test_unknown_refit_choices_list_the_valid_ones(key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(small_params(**{f"removal.refit.{key}": value}))


def test_cycled_data_shows_every_image_equally_often_in_an_epoch():
    data = CycledData(torch.arange(7.0)[:, None, None, None], torch.arange(7), length=30)
    seen = torch.cat([labels for _, labels in data.batches(8, torch.Generator().manual_seed(0))])
    assert len(data) == len(seen) == 30
    assert set(torch.bincount(seen, minlength=7).tolist()) <= {4, 5}


def test_crop_and_flip_shift_or_mirror_each_image_within_the_padding():
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(crop_and_flip(images, 0, False, torch.Generator()), images)
    padded = F.pad(images, (2, 2, 2, 2))
    cropped = crop_and_flip(images, 2, False, torch.Generator().manual_seed(1))
    assert cropped.shape == images.shape
    for i in range(len(images)):
        windows = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped[i], w) for w in windows)
    flipped = crop_and_flip(images, 0, True, torch.Generator().manual_seed(2))
    mirrored = [torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images, strict=True)]
    assert all(m or torch.equal(f, x) for m, f, x in zip(mirrored, flipped, images, strict=True))
    assert 0 < sum(mirrored) < len(images)


@pytest.fixture(scope="module")
def converged(prepared_dir):
    """(prepared, params, model): the pipeline's default embedding, 30 epochs, which fits the adversary's
    images (they are part of the owner's) to a loss near 0, unlike the shared 8-epoch ``watermarked``."""
    from stages.embed import train_model
    from wmbench.prepared import load_prepared

    params = parse_params(small_params(**{"train.epochs": 30}))
    prepared = load_prepared(prepared_dir / "prepared")
    model, _ = train_model(prepared, params, torch.device("cpu"), seed=0, watermark=True)
    return prepared, params, model


def test_refit_as_its_authors_run_it_removes_the_digits_watermark(converged):
    """SGD at a large lr on cropped, cycled adversary images, held back by EWC: retention falls, accuracy stays.

    Seed 0 ends at about 22 % retention on an AVX-512 machine; seeds 1-3 at 7-66 % (20 epochs). What it costs moves with
    the CPU's float sums: under 3 points on an AVX-512 machine, 5.3 (at 48 % retention) on an AVX2 one.
    """
    prepared, params, model = converged
    data = adversary_view(prepared, params, torch.device("cpu"))
    before = data.evaluate(model)
    settings = dataclasses.replace(params.removal.settings["refit"], epochs=20)
    assert settings.variant == "authors"
    torch.manual_seed(params.seed)
    after = create_removal("refit", settings).remove(model, data).history[-1]
    assert before["wm_acc"] >= 0.95
    assert after["wm_acc"] <= 0.75
    assert after["test_acc"] >= before["test_acc"] - 0.06
