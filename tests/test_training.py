import math
import re

import pytest
import torch

from stages.embed import check_not_collapsed, train_model
from tests.conftest import write_params
from wmbench.evaluate import Evaluator, calibrate_threshold
from wmbench.training import (
    COLLAPSED_SHARE,
    DeviceData,
    TrainingDivergedError,
    fit,
    majority_class,
    make_optimizer,
)


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


def test_majority_class_counts_predictions():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    torch.nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    data = DeviceData(torch.rand(10, 1, 2, 2), torch.arange(10) % 5)
    assert majority_class(model, data, batch_size=3) == (3, 1.0)


def test_collapsed_clean_model_is_refused_before_anything_is_written(prepared_dir, tmp_path, capsys):
    """RMSprop at lr 0.5 kills lenet's ReLUs on digits: every test image lands in one class, so the model's
    trigger rate would set a meaningless ownership threshold; the vanilla stage stops and writes nothing."""
    from stages import vanilla
    from wmbench.stage import run_stage

    params = write_params(tmp_path, **{"train.lr": 0.5, "train.epochs": 2, "vanilla.seeds": 1})
    outputs = {"--models": tmp_path / "models", "--metrics": tmp_path / "vanilla.json",
               "--plot": tmp_path / "vanilla.csv"}
    argv = ["--params", str(params), "--prepared", str(prepared_dir / "prepared")]
    argv += [str(item) for pair in outputs.items() for item in pair]
    assert run_stage(vanilla.main, argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"the clean lenet model \(training seed 1\) puts \d+% of the test images in class \d", err)
    assert "Lower train.lr (now 0.5)" in err and "nothing was written" in err
    assert not any(path.exists() for path in outputs.values())


def test_collapse_check_passes_a_trained_model(watermarked):
    prepared, params, model, _ = watermarked
    check_not_collapsed(model, prepared.on("test", torch.device("cpu")), params, 0, "watermarked")
    assert majority_class(model, prepared.on("test", torch.device("cpu")))[1] < COLLAPSED_SHARE
