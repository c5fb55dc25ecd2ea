"""Every script and benchmark prints its help: argparse formats each help string only then."""

from __future__ import annotations

import importlib
import sys

import pytest

MODULES = ("scripts.aiken_results", "scripts.wild_results", "scripts.sweep", "scripts.rmsprop_probe",
           "scripts.holdout_error", "scripts.proxy_probe", "scripts.laundering_probe", "bench.wild_grid",
           "bench.stage_speed", "bench.train_speed", "bench.threads", "bench.reconstruct_speed", "stages.grid",
           "stages.verdict")


@pytest.mark.parametrize("name", MODULES)
def test_help_prints_and_exits_cleanly(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(name).main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["scripts.holdout_error", "scripts.proxy_probe", "scripts.laundering_probe"])
def test_probes_name_the_run_that_leaves_the_models(name, tmp_path):
    """A probe on an experiment folder without models stops before any work, naming the command that makes them."""
    with pytest.raises(SystemExit, match=r"work/seed7 is missing: run `dvc repro` in .* listing 7"):
        importlib.import_module(name).main(["--experiment", str(tmp_path), "--seeds", "7", "--out",
                                            str(tmp_path / "out.csv")])
    assert not (tmp_path / "out.csv").exists()
