"""The benchmark scripts' parts: settings, the reference loop, and one small WILD grid cell."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from bench import stage_speed, train_speed, wild_grid
from wmbench.models import create_model


def base_params() -> dict:
    return yaml.safe_load((wild_grid.ROOT / "params.yaml").read_text())


def test_set_dotted_refuses_a_key_params_yaml_lacks() -> None:
    params = base_params()
    with pytest.raises(SystemExit, match="no key 'removal.refit.learning_rate'; only existing keys"):
        wild_grid.set_dotted(params, "removal.refit.learning_rate", 0.1)
    with pytest.raises(SystemExit, match="no block 'remova'"):
        wild_grid.set_dotted(params, "remova.refit.lr", 0.1)


def test_cell_params_set_scheme_fraction_and_the_method_block_only() -> None:
    base = base_params()
    params = wild_grid.cell_params(base, "noise", 0.4, "refit", {"lr": 0.003})
    assert params["watermark"]["scheme"] == "noise"
    assert params["data"]["adversary_fraction"] == 0.4
    assert params["removal"]["refit"]["lr"] == 0.003
    params["removal"]["refit"].pop("lr"), params.pop("watermark"), params.pop("data")
    assert base == base_params()  # the base is not changed
    assert {k: v for k, v in base.items() if k not in ("watermark", "data")} | {"removal": None} == (
        params | {"removal": None})


def test_the_grid_is_table_ii() -> None:
    """3 schemes x 3 fractions x (REFIT at three lrs + WILD CE / JS / DN), Liu et al. Table II."""
    assert wild_grid.SCHEMES == ("content", "noise", "unrelated")
    assert wild_grid.FRACTIONS == (0.1, 0.2, 0.4)
    assert sorted(m for m, _ in wild_grid.CONFIGS.values()) == ["refit"] * 3 + ["wild_ce", "wild_dn", "wild_js"]


def test_reference_loop_trains_on_erased_copies_and_stops_at_max_images() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    model = create_model("lenet", in_channels=1, image_size=16, num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    seconds, seen = train_speed.reference(model, images, labels, torch.device("cpu"), 4, epochs=100, copies=2,
                                          max_images=30)
    assert seconds > 0
    assert seen == 36  # three batches of 4 images x (1 + 2 copies): the first count past 30
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_reference_settings_follow_each_stage_loop() -> None:
    params = base_params()
    assert stage_speed.reference_settings("embed", params) == (params["train"]["batch_size"], 0)
    wild = params["removal"]["wild_ce"]
    assert stage_speed.reference_settings("remove@wild_ce", params) == (wild["batch_size"], wild["copies"])
    assert stage_speed.reference_settings("remove@refit", params) == (params["removal"]["refit"]["batch_size"], 0)
    assert stage_speed.reference_settings("evaluate", params) is None
    assert stage_speed.reference_settings("reconstruct", params) is None


def test_one_wild_grid_cell_runs_the_pipeline_stages(tmp_path) -> None:
    base = base_params()
    base["device"] = "cpu"
    wild_grid.set_dotted(base, "train.epochs", 12)
    wild_grid.set_dotted(base, "removal.wild_ce.epochs", 2)
    rows = wild_grid.run_grid(base, tmp_path, ["content"], [0.2], ["wild_ce"])
    assert [r["run"] for r in rows] == ["prepare", "embed", "wild_ce"]
    embedded, removed = rows[1], rows[2]
    assert embedded["wm_acc"] >= 0.9
    assert removed["wm_acc"] < embedded["wm_acc"]
    adversary = json.loads((tmp_path / "content" / "0.2" / "wild_ce.json").read_text())["adversary_size"]
    assert removed["images"] == adversary * (1 + 10) * 2  # the adversary's set x (1 + copies) x epochs
    assert "| content | 20% | wild_ce |" in wild_grid.table(rows)


def test_grid_jobs_in_worker_processes_give_the_sequential_numbers(tmp_path) -> None:
    base = base_params()
    base["device"] = "cpu"
    wild_grid.set_dotted(base, "train.epochs", 5)
    wild_grid.set_dotted(base, "removal.wild_ce.epochs", 1)
    wild_grid.set_dotted(base, "removal.refit.epochs", 1)
    configs = ["refit lr 0.003", "wild_ce"]
    one = wild_grid.run_grid(base, tmp_path / "one", ["noise"], [0.1], configs, workers=1)
    two = wild_grid.run_grid(base, tmp_path / "two", ["noise"], [0.1], configs, workers=2)
    assert [r["run"] for r in two] == ["prepare", "embed", *configs]
    for a, b in zip(one[1:], two[1:], strict=True):
        assert (a["test_acc"], a["wm_acc"]) == (b["test_acc"], b["wm_acc"])


@pytest.mark.parametrize(("name", "precision", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 495.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 156.0),
    ("NVIDIA A10", "bf16", 125.0),
    ("Tesla T4", "bf16", None),
])
def test_peak_tflops_picks_the_most_specific_gpu_name(name, precision, peak) -> None:
    assert train_speed.peak_tflops(name, precision) == peak


def test_an_explicit_peak_wins_and_the_cpu_has_none() -> None:
    assert train_speed.run_peak(torch.device("cpu"), "bf16", None) is None
    assert train_speed.run_peak(torch.device("cpu"), "bf16", 12.5) == 12.5


def test_a_bad_setting_stops_the_grid_before_any_work(tmp_path) -> None:
    with pytest.raises(SystemExit, match="error: .*train.epochs"):
        wild_grid.main(["--set", "train.epochs=-3", "--keep", str(tmp_path)])
    assert not (tmp_path / "content").exists()


def test_stage_commands_resolve_every_dvc_yaml_variable() -> None:
    """The benchmark runs dvc.yaml's commands without DVC: nothing of ``${...}`` may be left in them."""
    from wmbench.removal import REMOVALS

    commands = stage_speed.stage_commands(wild_grid.ROOT / "dvc.yaml", REMOVALS.names())
    assert {"robustness", "remove@laundering", "export"} <= set(commands)
    assert not [word for argv in commands.values() for word in argv if "${" in word]
    assert commands["remove@laundering"][-2:] == ["--reconstruct", "artifacts/reconstruct"]
