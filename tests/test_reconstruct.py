"""Neural Cleanse reconstruction, the MAD outlier test, and the ``reconstruct`` stage."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from stages import plots as plots_stage
from stages import reconstruct as reconstruct_stage
from stages.embed import checkpoint_meta, train_model
from tests.conftest import write_params
from wmbench.checkpoint import save_checkpoint
from wmbench.files import load_arrays
from wmbench.params import ParamsError, load_params, parse_params
from wmbench.prepared import load_prepared
from wmbench.reconstruct import NeuralCleanseParams, load_reconstruction, mad_anomaly, neural_cleanse

CPU = torch.device("cpu")


def adversary_images(prepared) -> torch.Tensor:
    return prepared.on("adversary", CPU).images


def search(model, images, seed: int = 0, classes=None, **settings):
    params = dataclasses.replace(NeuralCleanseParams(), **settings)
    return neural_cleanse(model, images, params, torch.Generator().manual_seed(seed), classes=classes)


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """(params, report): Neural Cleanse with the default settings on a lenet with a planted 4x4 square, target 0."""
    from stages import prepare

    folder = tmp_path_factory.mktemp("square")
    path = write_params(folder, **{"watermark.scheme": "square"})
    prepare.main(["--params", str(path), "--out", str(folder / "prepared")])
    params, prepared = load_params(path), load_prepared(folder / "prepared")
    model, history = train_model(prepared, params, CPU, seed=0, watermark=True)
    found = search(model, adversary_images(prepared))
    assert history[-1]["wm_acc"] > 0.9
    assert found.attack_success[params.watermark.target] > 0.8
    return params, mad_anomaly(found.l1)


def test_planted_square_trigger_is_flagged_with_the_default_settings(square):
    params, report = square
    assert report.most_likely == params.watermark.target and int(report.rank[params.watermark.target]) == 1
    assert params.watermark.target in report.flagged


def test_content_watermark_class_has_the_largest_index(watermarked):
    prepared, params, model, _ = watermarked
    report = mad_anomaly(search(model, adversary_images(prepared), epoch_images=256).l1)
    assert report.most_likely == params.watermark.target
    assert report.anomaly_index.argmax() == params.watermark.target


def test_restarts_keep_each_class_smallest_successful_trigger(watermarked):
    prepared, _, model, _ = watermarked
    images = adversary_images(prepared)
    quick = {"epochs": 12, "epoch_images": 64, "patience": 2, "early_stop_patience": 3}
    first = search(model, images, seed=5, **quick)
    both = search(model, images, seed=5, restarts=2, **quick)
    assert torch.equal(search(model, images, seed=5, restarts=1, **quick).l1, first.l1)  # 1 = the reference
    succeeded = first.attack_success >= 0.9
    assert succeeded.any()
    assert (both.l1[succeeded] <= first.l1[succeeded] + 1e-4).all()  # never worse than the first start
    assert not torch.equal(both.l1, first.l1)  # the second start was a new draw and won somewhere
    assert both.epochs > first.epochs
    with pytest.raises(ValueError, match="restarts=0 must be at least 1"):
        NeuralCleanseParams(restarts=0)


def test_triggers_stay_in_range_and_model_untouched(watermarked):
    prepared, _, model, _ = watermarked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    found = search(model, adversary_images(prepared), epochs=3)
    assert found.masks.shape == (10, 1, 28, 28) and found.patterns.shape == (10, 1, 28, 28)
    for tensor in (found.masks, found.patterns):
        assert tensor.min() >= 0 and tensor.max() <= 1
    assert torch.allclose(found.l1, found.masks.flatten(1).sum(1))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stamped = found.stamp(adversary_images(prepared)[:4], 3)
    assert stamped.shape == (4, 1, 28, 28) and stamped.min() >= 0 and stamped.max() <= 1


def test_batched_search_equals_one_class_alone(watermarked):
    prepared, _, model, _ = watermarked
    images = adversary_images(prepared)
    together = search(model, images, seed=3, epochs=6)
    for k in (0, 7):
        alone = search(model, images, seed=3, epochs=6, classes=[k])
        torch.testing.assert_close(alone.masks[0], together.masks[k], atol=1e-3, rtol=0)
        torch.testing.assert_close(alone.patterns[0], together.patterns[k], atol=1e-3, rtol=0)
        assert alone.l1[0].item() == pytest.approx(together.l1[k].item(), abs=0.05)
        torch.testing.assert_close(alone.stamp(images[:2], k), together.stamp(images[:2], k), atol=1e-3, rtol=0)


def test_same_seed_same_triggers(watermarked):
    prepared, _, model, _ = watermarked
    first, second = (search(model, adversary_images(prepared), seed=5, epochs=2) for _ in range(2))
    assert torch.equal(first.masks, second.masks) and torch.equal(first.patterns, second.patterns)


def test_clean_model_stays_below_a_planted_trigger(watermarked, square):
    """MAD over 10 noisy norms flags a clean class now and then: on 8-epoch digits models
    about one search in four (largest index up to about 3.6, see the report of issue 3),
    as Neural Cleanse reports false positives too. What holds: at most one class stands
    out, and by far less than the planted square (index 5 and more)."""
    prepared, params, _, _ = watermarked
    clean, _ = train_model(prepared, params, CPU, seed=1, watermark=False)
    report = mad_anomaly(search(clean, adversary_images(prepared), epoch_images=256).l1)
    assert len(report.flagged) <= 1
    assert report.anomaly_index.max() < square[1].anomaly_index[square[0].watermark.target]


def test_mad_anomaly_on_hand_made_norms():
    # median 13.5; absolute deviations' median 2.5; class 0: 12.5 / (1.4826 * 2.5)
    l1 = torch.tensor([1.0, 10, 11, 12, 13, 14, 15, 16, 17, 18])
    report = mad_anomaly(l1)
    assert report.anomaly_index[0].item() == pytest.approx(12.5 / (1.4826 * 2.5), rel=1e-5)
    assert report.anomaly_index[1].item() == pytest.approx(3.5 / (1.4826 * 2.5), rel=1e-5)
    assert (report.anomaly_index[5:] == 0).all()  # above the median: not anomalous
    assert report.flagged == [0] and report.most_likely == 0 and report.least_likely == 9
    assert report.rank.tolist() == list(range(1, 11))


def test_mad_anomaly_without_outlier_flags_nothing_but_still_ranks():
    report = mad_anomaly(torch.tensor([50.0, 52, 48, 51, 49, 53, 47, 50, 46, 54]), threshold=2.0)
    assert report.flagged == []
    assert report.most_likely == 8 and report.least_likely == 9


def test_mad_anomaly_orders_flagged_by_index():
    report = mad_anomaly(torch.tensor([5.0, 50, 52, 48, 51, 1, 49, 53, 47, 50]))
    assert report.flagged == [5, 0] and report.most_likely == 5


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", 0, "epochs=0 must be at least 1"),
    ("attack_success_target", 1.5, "attack_success_target=1.5 is outside (0, 1]"),
    ("cost_multiplier", 1.0, "cost_multiplier=1.0 must exceed 1"),
])
def test_bad_settings_name_the_key(key, value, message):
    with pytest.raises(ParamsError, match=rf"reconstruct.*{message.replace('(', '.').replace(')', '.')}"):
        parse_params({"reconstruct": {key: value}})


def test_stage_writes_triggers_metrics_and_plot_input(watermarked, prepared_dir, tmp_path):
    prepared, params, model, _ = watermarked
    save_checkpoint(tmp_path / "watermarked.pt", model, checkpoint_meta(prepared, params, 0, "watermarked"))
    params_path = write_params(tmp_path, reconstruct={"epochs": 4})
    out, metrics_path = tmp_path / "artifacts", tmp_path / "reconstruct.json"
    reconstruct_stage.main(["--params", str(params_path), "--prepared", str(prepared_dir / "prepared"),
                            "--model", str(tmp_path / "watermarked.pt"), "--out", str(out),
                            "--metrics", str(metrics_path)])
    arrays = load_arrays(out / "triggers.npz")
    assert arrays["masks"].shape == (10, 28, 28) and arrays["patterns"].shape == (10, 1, 28, 28)
    assert arrays["masks"].dtype == np.float32 and arrays["patterns"].dtype == np.float32
    assert (out / "triggers.png").stat().st_size > 10_000
    metrics = json.loads(metrics_path.read_text())
    assert all("." not in key for key in metrics)
    assert not any(key.startswith(("l1_", "anomaly_", "attack_success_")) for key in metrics)  # in classes.csv
    assert set(metrics) >= {"flagged", "flagged_count", "most_likely", "least_likely", "target_detected",
                            "target_anomaly", "target_rank", "max_other_anomaly", "epochs", "time_s"}
    assert metrics["flagged_count"] == len(metrics["flagged"])
    rows = list(csv.DictReader((out / "classes.csv").open()))
    assert [float(r["anomaly"]) for r in rows if r["class"] == "0"] == [metrics["target_anomaly"]]
    assert [int(r["rank"]) for r in rows if r["class"] == "0"] == [metrics["target_rank"]]
    assert sorted(int(r["rank"]) for r in rows) == sorted(1 + sum(float(o["l1"]) < float(r["l1"]) for o in rows)
                                                          for r in rows)
    assert metrics["target_detected"] == (metrics["target_rank"] == 1 and 0 in metrics["flagged"])
    again = load_reconstruction(out / "triggers.npz", CPU)
    np.testing.assert_allclose(again.l1.numpy(), [float(r["l1"]) for r in rows], atol=1e-4)
    masks, patterns, anomaly, flagged = plots_stage.reconstruction(out, metrics_path)
    np.testing.assert_array_equal(masks, arrays["masks"])
    np.testing.assert_array_equal(patterns, arrays["patterns"])
    assert sorted(anomaly) == list(range(10))
    assert flagged == (metrics["most_likely"] if metrics["flagged"] else None)


def test_stage_help_runs_outside_dvc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reconstruct_stage.main(["--help"])
    assert exit_info.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_the_reconstruct_stage_never_searches_the_adversarys_held_out_slice():
    """The slice judges the removals, so the triggers Laundering retrains on and the proxies start from may not
    have seen it: the stage searches the images the removals train on."""
    import numpy as np

    from stages.reconstruct import training_images
    from wmbench.data import adversary_holdout_split
    from wmbench.params import parse_params
    from wmbench.prepared import Prepared

    labels = np.repeat(np.arange(10), 10)
    images = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 4, 4), dtype=np.uint8)
    prepared = Prepared({"adversary": (images, labels)}, {})
    params = parse_params({"seed": 3, "data": {"adversary_holdout": 0.2}})
    found = training_images(prepared, params, torch.device("cpu"))
    train, held = adversary_holdout_split(labels, 0.2, 3)
    seen = set(int(v) for v in (found[:, 0, 0, 0] * 255).round())
    assert len(found) == len(train) == 80 and seen == set(train.tolist()) and seen.isdisjoint(held.tolist())
