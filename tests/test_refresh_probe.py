"""scripts.refresh_probe: Laundering whose Step 3 re-searches the trigger; with no search it is Laundering."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from scripts import refresh_probe
from stages.remove import adversary_view
from tests.test_laundering import laundering
from wmbench import reconstruct
from wmbench.removal import REMOVALS, create_removal

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def registry_as_it_was(monkeypatch):
    """The probe registers its method in the process-wide registry (its workers need it); each test here
    leaves the registry as it found it, so other modules' tests see only the library's methods."""
    monkeypatch.setattr(REMOVALS, "_entries", dict(REMOVALS._entries))


def test_without_searches_it_is_laundering_to_the_last_bit(watermarked):
    prepared, params, model, _ = watermarked
    refresh_probe.register()
    refresh_probe.register()  # twice: a worker may import it again
    images = prepared.on("adversary", CPU).images
    settings = dataclasses.replace(laundering(params, epochs=2), epochs=2, distill_weight=0.5,
                                   retrain_triggers="flagged")
    found = reconstruct.neural_cleanse(model, images, settings.reconstruct, torch.Generator().manual_seed(0))
    plain = create_removal("laundering", settings).remove(model, adversary_view(prepared, params, CPU, found))
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    refreshed = REMOVALS.get(refresh_probe.NAME).Params(**fields, refresh_steps=0)
    probe = create_removal(refresh_probe.NAME, refreshed).remove(model, adversary_view(prepared, params, CPU, found))
    assert [r["test_acc"] for r in probe.history] == [r["test_acc"] for r in plain.history]
    assert all(torch.equal(v, probe.model.state_dict()[k]) for k, v in plain.model.state_dict().items())


def test_settings_it_cannot_honour_are_refused():
    refresh_probe.register()
    settings = REMOVALS.get(refresh_probe.NAME).Params
    for bad, message in (({"rounds": 2}, "one round"), ({"refresh_steps": -1}, "0 or more"),
                         ({"refresh_multiple": 0}, "positive")):
        with pytest.raises(ValueError, match=message):
            settings(**bad)


def test_the_kept_trigger_stays_within_its_budget_and_learns_to_send_images_to_its_class(watermarked):
    prepared, _, model, _ = watermarked
    images = prepared.on("adversary", CPU).images
    trigger = refresh_probe.RefreshedTrigger(label=3, budget=6.0, like=images)
    target = torch.full((len(images),), 3)
    before = F.cross_entropy(model.eval()(trigger.stamp(images)), target).item()
    for _ in range(2):  # the search goes on where it stopped
        trigger.search(model, images, 30, torch.Generator().manual_seed(1))
        assert float(trigger.mask().detach().sum()) <= 6.0 + 1e-4
    assert F.cross_entropy(model(trigger.stamp(images)), target).item() < before
    assert all(p.requires_grad for p in model.parameters())  # the model's weights were not left frozen


def test_the_probe_runs_on_a_grids_models_and_its_models_are_judged_beside_the_grids(grid_run, tmp_path, capsys):
    """refresh_probe then judge_probe on a one-seed digits grid laid out as the experiment folder."""
    from scripts import judge_probe

    experiment = tmp_path / "experiment"
    (experiment / "work").mkdir(parents=True)
    (experiment / "work" / "seed0").symlink_to(grid_run / "work")
    (experiment / "cells").mkdir()
    (experiment / "cells" / "seed0.json").symlink_to(grid_run / "cells" / "seed0.json")
    (experiment / "params.yaml").symlink_to(grid_run / "params.yaml")
    cell = ["--experiment", str(experiment), "--seeds", "0", "--schemes", "square", "--fractions", "0.3",
            "--jobs", "1"]
    variant = f"{refresh_probe.NAME}@epochs=1+refresh_steps=3+retrain_triggers=flagged"
    refresh_probe.main([*cell, "--work", str(tmp_path / "probe"), "--out", str(tmp_path / "probe.csv"),
                        "--variants", variant])
    assert (tmp_path / "probe" / "seed0" / "square" / "0.3" / variant / "model.pt").is_file()
    assert variant in (tmp_path / "probe.csv").read_text()
    assert refresh_probe.NAME not in REMOVALS  # main registered it for its run only
    capsys.readouterr()

    judge_probe.main([*cell, "--probe", str(tmp_path / "probe"), "--out", str(tmp_path / "judged.csv")])
    rows = list(csv.DictReader((tmp_path / "judged.csv").open()))
    assert {row["model"] for row in rows} == {"finetune", "laundering", "scratch", "finetune@epochs=1+lr=0.001",
                                              variant}
    assert [row["probe"] for row in rows if row["model"] == variant] == ["True"]
    assert all(0 <= float(row["proxy_wm_acc"]) <= 1 for row in rows)
    table = capsys.readouterr().out
    assert "| 30.0% | square | 1 |" in table and "with the probe's" in table
