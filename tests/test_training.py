import math

import pytest
import torch

from stages.embed import train_model
from wmbench.evaluate import Evaluator, calibrate_threshold
from wmbench.training import DeviceData, TrainingDivergedError, fit, make_optimizer


def test_embedding_learns_the_watermark_on_digits(watermarked):
    _, _, _, history = watermarked
    assert history[-1]["wm_acc"] >= 0.95
    assert history[-1]["test_acc"] >= 0.85
    assert history[0]["wm_acc"] < history[-1]["wm_acc"] or history[0]["wm_acc"] > 0.9


def test_clean_model_does_not_carry_the_watermark(watermarked):
    prepared, params, _, _ = watermarked
    _, history = train_model(prepared, params, torch.device("cpu"), seed=1, watermark=False)
    assert history[-1]["wm_acc"] <= 0.3
    assert history[-1]["test_acc"] >= 0.85


def test_same_seed_same_metrics(watermarked):
    prepared, params, model, history = watermarked
    again_model, again = train_model(prepared, params, torch.device("cpu"), seed=0, watermark=True)
    assert again == history
    for a, b in zip(model.state_dict().values(), again_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_evaluator_reports_test_and_watermark_accuracy(watermarked):
    prepared, _, model, history = watermarked
    scores = Evaluator(prepared.on("test", torch.device("cpu")), prepared.on("trigger", torch.device("cpu")))(model)
    assert scores == {"test_acc": history[-1]["test_acc"], "wm_acc": history[-1]["wm_acc"]}


def test_diverging_loss_stops_with_method_and_lr():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    data = DeviceData(torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long))

    def explode(model, x, y):
        return model(x).sum() * math.inf

    with pytest.raises(TrainingDivergedError, match="wild_js: the loss became .* at lr 0.5"):
        fit(model, data, make_optimizer("sgd", model.parameters(), 0.5), epochs=1, batch_size=4,
            generator=torch.Generator().manual_seed(0), loss_fn=explode, name="wild_js")


def test_threshold_is_the_highest_clean_rate():
    assert calibrate_threshold([0.01, 0.2, 0.07]) == 0.2
    with pytest.raises(ValueError, match="no clean-model"):
        calibrate_threshold([])
