"""Every script and benchmark prints its help: argparse formats each help string only then."""

from __future__ import annotations

import importlib
import sys

import pytest

MODULES = ("scripts.aiken_results", "scripts.wild_results", "scripts.sweep", "scripts.rmsprop_probe",
           "scripts.refit_probe", "scripts.holdout_error", "scripts.proxy_probe", "scripts.laundering_probe",
           "scripts.nc_probe", "scripts.refresh_probe", "scripts.judge_probe",
           "scripts.add_attempts", "scripts.wide_proxy_probe", "scripts.menu_cut_replay", "scripts.machine_compare",
           "scripts.verification_resolution", "bench.wild_grid",
           "bench.stage_speed", "bench.train_speed", "bench.threads", "bench.reconstruct_speed", "stages.grid",
           "stages.verdict")


@pytest.mark.parametrize("name", MODULES)
def test_help_prints_and_exits_cleanly(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(name).main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["scripts.holdout_error", "scripts.proxy_probe", "scripts.laundering_probe",
                                  "scripts.wide_proxy_probe", "scripts.verification_resolution"])
def test_probes_check_every_seed_before_any_work(name, tmp_path):
    """A probe stops before reading any cell when one seed's models are missing (seed 0's folder exists but is
    empty: reading it first would fail on its missing files instead), naming the command that makes them."""
    (tmp_path / "work" / "seed0").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"work/seed7 is missing: run `dvc repro` in .* listing 7"):
        importlib.import_module(name).main(["--experiment", str(tmp_path), "--seeds", "0", "7", "--out",
                                            str(tmp_path / "out.csv")])


@pytest.mark.parametrize(("name", "argv"), [("scripts.nc_probe", ["--seeds", "7"]),
                                             ("scripts.rmsprop_probe", ["--seed", "7"])])
def test_probes_of_the_committed_experiment_name_the_missing_run(name, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/fashion_mnist/work here
    with pytest.raises(SystemExit, match=r"experiments/fashion_mnist/work/seed7 is missing: run `dvc repro`"):
        importlib.import_module(name).main([*argv, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.csv")])


def test_refit_probe_names_the_command_that_makes_its_models(tmp_path):
    with pytest.raises(SystemExit, match=r"square/seed0/0.1/params.yaml is missing: run `python -m "
                                         r"scripts.aiken_results --models-only --seeds 0 --schemes square"):
        importlib.import_module("scripts.refit_probe").main(["--work", str(tmp_path), "--seeds", "0",
                                                             "--out", str(tmp_path / "out.csv")])


@pytest.mark.parametrize("name", sorted(importlib.import_module("scripts.refit_probe").VARIANTS))
def test_refit_probe_settings_are_valid_params(name, tmp_path):
    """Each probe setting names keys params.yaml has, with values REFIT accepts: a typo fails here, not after
    ten minutes of runs."""
    from pathlib import Path

    import yaml

    from bench.wild_grid import set_dotted
    from scripts.refit_probe import BASE, VARIANTS
    from wmbench.params import load_params

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    for key, value in BASE + VARIANTS[name]:
        set_dotted(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    refit = load_params(tmp_path / "params.yaml").removal.settings["refit"]
    for key, value in VARIANTS[name]:
        assert getattr(refit, key.rsplit(".", 1)[1]) == value
