"""Every registered removal method, through the shared interface and the ``remove`` stage."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from stages import remove
from stages.remove import adversary_view
from tests.conftest import ROOT, small_params, write_params
from wmbench.checkpoint import save_checkpoint
from wmbench.params import ParamsError, parse_params
from wmbench.prepared import save_prepared
from wmbench.removal import REMOVALS, create_removal
from wmbench.stage import run_stage

QUICK = {"epochs": 1, "rounds": 1, "epoch_images": 128, "pretrain_epochs": 1}  # whichever fields a method has


def quick(settings):
    """``settings`` cut to one short epoch / round, nested settings too."""
    changes = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name in QUICK:
            changes[field.name] = QUICK[field.name]
        elif dataclasses.is_dataclass(value):
            changes[field.name] = quick(value)
    return dataclasses.replace(settings, **changes)


@pytest.mark.parametrize("name", REMOVALS.names())
def test_method_returns_a_new_model_of_the_same_architecture(name, watermarked):
    prepared, params, model, _ = watermarked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = adversary_view(prepared, params, torch.device("cpu"))
    result = create_removal(name, quick(params.removal.settings[name])).remove(model, data)
    assert type(result.model) is type(model)
    assert result.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    assert result.history and {"epoch", "test_acc", "wm_acc"} <= set(result.history[-1])
    assert all(0 <= r["test_acc"] <= 1 and 0 <= r["wm_acc"] <= 1 for r in result.history)
    assert all("." not in key for key in result.info)


def test_unknown_removal_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown removal method 'finetun'; valid: .*finetune"):
        create_removal("finetun")


def test_unknown_removal_block_and_key_name_the_fix():
    message = r"removal.wild_cee: 'wild_cee' is not a removal method; did you mean 'wild_ce'"
    with pytest.raises(ParamsError, match=message):
        parse_params(small_params(**{"removal": {"wild_cee": {}}}))
    name = REMOVALS.names()[0]
    with pytest.raises(ParamsError, match=rf"unknown key 'removal.{name}.epoch'; did you mean 'epochs'"):
        parse_params(small_params(**{"removal": {name: {"epoch": 3}}}))


def test_beta_is_only_set_at_the_top_level():
    params = parse_params(small_params(beta=7.0))
    wild = [name for name in REMOVALS.names() if hasattr(params.removal.settings[name], "beta")]
    assert wild and all(params.removal.settings[name].beta == 7.0 for name in wild)
    with pytest.raises(ParamsError, match="`beta` is a top-level key"):
        parse_params(small_params(**{"removal": {wild[0]: {"beta": 2.0}}}))


def test_remove_stage_writes_checkpoint_metrics_and_curve(watermarked, tmp_path):
    prepared, _, model, _ = watermarked
    params = write_params(tmp_path, **{"removal.finetune.epochs": 2})
    prep = tmp_path / "prepared"
    save_prepared(prep, prepared)
    save_checkpoint(tmp_path / "watermarked.pt", model, {"arch": "lenet", "arch_kwargs": prepared.arch_kwargs()})
    code = run_stage(remove.main, ["--params", str(params), "--method", "finetune", "--prepared", str(prep),
                                   "--model", str(tmp_path / "watermarked.pt"), "--out", str(tmp_path / "ft.pt"),
                                   "--metrics", str(tmp_path / "ft.json"), "--plot", str(tmp_path / "ft.csv")])
    assert code == 0
    metrics = json.loads((tmp_path / "ft.json").read_text())
    assert {"test_acc", "wm_acc", "time_s", "seed", "adversary_size"} <= set(metrics)
    assert len((tmp_path / "ft.csv").read_text().splitlines()) == 1 + 2
    assert (tmp_path / "ft.pt").is_file()


def test_holdout_slice_is_never_trained_on_and_scored_in_metrics_and_curve(watermarked, tmp_path):
    prepared, _, model, _ = watermarked
    params = write_params(tmp_path, **{"removal.finetune.epochs": 2, "data.adversary_holdout": 0.2})
    view = adversary_view(prepared, parse_params(small_params(**{"data.adversary_holdout": 0.2})),
                          torch.device("cpu"))
    total = len(prepared.arrays["adversary"][1])
    assert len(view.adversary) + len(view.evaluate.holdout) == total
    assert abs(len(view.evaluate.holdout) - 0.2 * total) <= 10  # stratified rounding, 10 classes
    assert set(view.evaluate.holdout.labels.tolist()) == set(range(prepared.num_classes))
    prep = tmp_path / "prepared"
    save_prepared(prep, prepared)
    save_checkpoint(tmp_path / "watermarked.pt", model, {"arch": "lenet", "arch_kwargs": prepared.arch_kwargs()})
    code = run_stage(remove.main, ["--params", str(params), "--method", "finetune", "--prepared", str(prep),
                                   "--model", str(tmp_path / "watermarked.pt"), "--out", str(tmp_path / "ft.pt"),
                                   "--metrics", str(tmp_path / "ft.json"), "--plot", str(tmp_path / "ft.csv")])
    assert code == 0
    metrics = json.loads((tmp_path / "ft.json").read_text())
    assert metrics["adversary_size"] == len(view.adversary)
    assert 0.5 < metrics["holdout_acc_watermarked"] <= 1 and 0 <= metrics["holdout_acc"] <= 1
    assert "holdout_acc" in (tmp_path / "ft.csv").read_text().splitlines()[0]


def test_remove_stage_refuses_an_unknown_method_before_work(tmp_path, capsys):
    params = write_params(tmp_path)
    code = run_stage(remove.main, ["--params", str(params), "--method", "launder", "--prepared", str(tmp_path)])
    assert code == 2
    assert "unknown removal method 'launder'; valid:" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("dvc") is None, reason="dvc is not installed with this interpreter")
def test_setting_beta_reruns_only_the_wild_stages(tmp_path):
    """``dvc exp run -S beta=10``: ``dvc status`` names beta as changed for the WILD stages only.

    ``check`` reads the whole params.yaml by design (it validates every key), but
    its record does not change for a valid value, so nothing after it re-runs.
    """
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {"DVC_NO_ANALYTICS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    run = lambda *args: subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("\nbeta: ", "\nbeta: 10 #", 1))
    status = json.loads(run(sys.executable, "-m", "dvc", "status", "--json").stdout)
    reading_beta = sorted(
        stage for stage, changes in status.items()
        if any("beta" in json.dumps(change) for change in changes)
    )
    assert reading_beta == ["check", "remove@wild_ce", "remove@wild_dn", "remove@wild_js"]


def test_every_registered_method_has_a_remove_stage():
    """dvc.yaml's foreach and the registry name the same methods, so a new method cannot go unwired."""
    wiring = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]["removal_reads"]
    assert sorted(wiring) == REMOVALS.names()
    params = parse_params(small_params())
    for name, entry in wiring.items():
        extra = entry["params"]
        reads_it = extra in ("beta", "reconstruct")
        assert (entry["input"] == "artifacts/reconstruct") == REMOVALS.get(name).uses_reconstruction, name
        assert ("--reconstruct" in entry["args"]) == REMOVALS.get(name).uses_reconstruction, name
        assert not reads_it or hasattr(params.removal.settings[name], extra), f"{name} does not read {extra}"
