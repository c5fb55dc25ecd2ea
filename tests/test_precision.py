"""The speed settings ``precision`` and ``channels_last``: off changes nothing, on keeps the results."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from stages.embed import train_model
from wmbench.evaluate import Evaluator
from wmbench.models import create_model
from wmbench.params import ParamsError, parse_params
from wmbench.precision import autocast, channels_last_model, channels_last_prepared
from wmbench.prepared import Prepared

CPU = torch.device("cpu")


def short(params, epochs: int, **top_level):
    """``params`` with ``epochs`` of training and top-level keys replaced."""
    return dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=epochs), **top_level)


def test_bf16_training_learns_the_task_and_the_watermark(watermarked):
    prepared, params, _, fp32_history = watermarked
    with autocast("bf16", CPU):
        _, history = train_model(prepared, params, CPU, seed=0, watermark=True)
    assert abs(history[-1]["test_acc"] - fp32_history[-1]["test_acc"]) < 0.04
    assert history[-1]["wm_acc"] > 0.9
    assert all(np.isfinite(record["loss"]) for record in history)


def test_bf16_context_sees_weights_changed_inside_it():
    """One context spans a stage's optimizer steps, so forwards must not reuse a cached cast of old weights."""
    torch.manual_seed(0)
    model, images = create_model("lenet", in_channels=1, image_size=28, num_classes=10), torch.rand(4, 1, 28, 28)
    with autocast("bf16", CPU):
        before = model(images)
        with torch.no_grad():
            model.classifier[-1].bias += 1.0
        after = model(images)
    assert before.dtype == torch.bfloat16
    torch.testing.assert_close(after.float(), before.float() + 1.0, rtol=0, atol=0.05)


def test_bf16_evaluation_agrees_with_fp32(watermarked):
    prepared, _, model, _ = watermarked
    evaluate = Evaluator(prepared.on("test", CPU), prepared.on("trigger", CPU))
    with autocast("bf16", CPU):
        low = evaluate(model)
    full = evaluate(model)
    assert low["test_acc"] == pytest.approx(full["test_acc"], abs=0.02)
    assert low["wm_acc"] == pytest.approx(full["wm_acc"], abs=0.03)


def test_fp32_and_contiguous_leave_training_bit_identical(watermarked):
    prepared, params, _, _ = watermarked
    params = short(params, 2)
    torch.manual_seed(0)
    _, plain = train_model(prepared, params, CPU, seed=3, watermark=True)
    with autocast("fp32", CPU):
        same = channels_last_prepared(prepared, False)
        _, wrapped = train_model(same, params, CPU, seed=3, watermark=True)
    assert same is prepared
    assert wrapped == plain


def test_channels_last_predicts_as_contiguous(watermarked):
    prepared, _, model, _ = watermarked
    formatted = channels_last_model(copy.deepcopy(model), True)
    images = channels_last_prepared(prepared, True).on("test", CPU).images
    with torch.no_grad():
        expected, got = model.eval()(prepared.on("test", CPU).images), formatted.eval()(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_channels_last_training_matches_contiguous(watermarked):
    """Same seed, same curve: conv kernels for the two layouts sum in another order, so the losses agree to
    rounding that two epochs amplify (1.2e-3 relative seen on one CPU), not bit for bit."""
    prepared, params, _, _ = watermarked
    params = short(params, 2)
    _, plain = train_model(prepared, params, CPU, seed=3, watermark=True)
    _, formatted = train_model(
        channels_last_prepared(prepared, True), dataclasses.replace(params, channels_last=True), CPU,
        seed=3, watermark=True,
    )
    for a, b in zip(plain, formatted, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.01)


@pytest.mark.parametrize("arch", ["lenet", "zhang_cifar", "resnet18"])
def test_channels_last_colour_batches_keep_layout_and_values(arch):
    """Three channels, where channels-last is a different layout: batches keep it, logits agree."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    prepared = Prepared({"test": (images, np.arange(16) % 10)}, {"image_shape": [3, 32, 32], "num_classes": 10})
    data = channels_last_prepared(prepared, True).on("test", CPU)
    batch, _ = next(data.batches(8, torch.Generator().manual_seed(0)))
    assert data.images.is_contiguous(memory_format=torch.channels_last) and not data.images.is_contiguous()
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(data.images, prepared.on("test", CPU).images)
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, image_size=32, num_classes=10).eval()
    formatted = channels_last_model(copy.deepcopy(model), True)
    with torch.no_grad():
        torch.testing.assert_close(formatted(data.images), model(prepared.on("test", CPU).images),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "fp16"}, r"precision='fp16'; valid: fp32, bf16"),
        ({"precision": "bfloat16"}, r"precision='bfloat16'; valid: fp32, bf16"),
        ({"channels_last": "yes"}, r"channels_last='yes' is a str; expected bool"),
    ],
)
def test_bad_speed_setting_names_the_key(overrides, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(overrides)


def test_speed_settings_default_off():
    params = parse_params({})
    assert (params.precision, params.channels_last) == ("fp32", False)
