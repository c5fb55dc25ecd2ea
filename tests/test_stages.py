import json
import math

import pytest

from stages import check, embed, evaluate, prepare, vanilla
from tests.conftest import write_params
from wmbench.stage import run_stage


def test_spine_stages_write_their_outputs(tmp_path):
    params = str(write_params(tmp_path, **{"train.epochs": 3, "vanilla.seeds": 2, "watermark.scheme": "square"}))
    prep, models = str(tmp_path / "prepared"), tmp_path / "models"
    assert run_stage(prepare.main, ["--params", params, "--out", prep]) == 0
    info = json.loads((tmp_path / "prepared" / "info.json").read_text())
    assert info["counts"]["trigger"] == 100 and min(info["adversary_per_class"]) >= 1
    assert "time_s" not in info  # every later stage depends on these bytes
    assert run_stage(embed.main, ["--params", params, "--prepared", prep,
                                  "--model", str(models / "watermarked.pt"),
                                  "--metrics", str(tmp_path / "embed.json"),
                                  "--plot", str(tmp_path / "embed.csv")]) == 0
    assert set(json.loads((tmp_path / "embed.json").read_text())) >= {"test_acc", "wm_acc", "time_s"}
    assert len((tmp_path / "embed.csv").read_text().splitlines()) == 1 + 3
    assert run_stage(vanilla.main, ["--params", params, "--prepared", prep, "--models", str(models / "vanilla"),
                                    "--metrics", str(tmp_path / "vanilla.json"),
                                    "--plot", str(tmp_path / "vanilla.csv")]) == 0
    calibration = json.loads((tmp_path / "vanilla.json").read_text())
    assert 0 <= calibration["threshold"] <= 1 and calibration["seeds"] == 2
    assert sorted(p.name for p in (models / "vanilla").iterdir()) == ["calibration.json", "seed1.pt", "seed2.pt"]
    timeless = json.loads((models / "vanilla" / "calibration.json").read_text())
    assert timeless == {k: v for k, v in calibration.items() if k != "time_s"}  # what evaluate and plots read
    assert run_stage(evaluate.main, ["--params", params, "--prepared", prep, "--models", str(models),
                                     "--vanilla", str(tmp_path / "vanilla.json"),
                                     "--metrics", str(tmp_path / "summary.json"),
                                     "--plot", str(tmp_path / "summary.csv")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"threshold", "watermarked", "vanilla_seed1", "vanilla_seed2"}
    assert all("." not in key for key in summary)
    assert summary["vanilla_seed1"]["removed"] is True
    assert summary["watermarked"]["p_value_log10"] == pytest.approx(math.log10(summary["watermarked"]["p_value"]),
                                                                     abs=1e-3)
    assert summary["threads"] == 1 and json.loads((tmp_path / "summary.settings.json").read_text())["threads"] == 1


def test_bad_params_fail_before_any_output(tmp_path, capsys):
    params = write_params(tmp_path, **{"data.adversary_fraction": 2.0})
    code = run_stage(prepare.main, ["--params", str(params), "--out", str(tmp_path / "prepared")])
    assert code == 2
    assert "data.adversary_fraction=2.0 is outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("module", [check, prepare, embed, vanilla, evaluate])
def test_stage_help_runs_outside_dvc(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_missing_prepared_data_names_the_stage_to_run(tmp_path, capsys):
    params = write_params(tmp_path)
    code = run_stage(embed.main, ["--params", str(params), "--prepared", str(tmp_path / "nothing")])
    assert code == 2 and "run `dvc repro prepare` first" in capsys.readouterr().err
