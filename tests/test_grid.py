"""The full-size experiments' stages on digits: ``grid`` (one seed's cells in worker processes) and ``verdict``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, grid_params
from wmbench.jobs import Job, longest_chains, run_jobs


def test_jobs_wait_for_what_they_need_and_report_progress(tmp_path):
    log = str(tmp_path / "log")
    lines: list[str] = []
    jobs = [Job("slow", "time:sleep", (0.5,), log, cost=1.0),
            Job("after slow", "time:sleep", (0.0,), log, cost=5.0, after=("slow",)),
            Job("other", "time:sleep", (0.0,), log, cost=1.0)]
    seconds = run_jobs(jobs, workers=2, say=lines.append)
    assert set(seconds) == {"slow", "after slow", "other"}
    finished = [line.split("] ")[1].split(" in ")[0] for line in lines]
    assert finished.index("slow") < finished.index("after slow")
    assert lines[-1].startswith("[3/3 done]") and "min left" in lines[-1]


def test_a_failing_job_stops_the_run_with_its_error(tmp_path):
    jobs = [Job("bad", "math:sqrt", (-1.0,), str(tmp_path / "log"))]
    with pytest.raises(ValueError, match="math domain"):
        run_jobs(jobs, workers=1, say=lambda line: None)


def test_a_job_waiting_for_an_unknown_one_is_refused_before_any_runs(tmp_path):
    with pytest.raises(ValueError, match="not in the list"):
        run_jobs([Job("a", "time:sleep", (0.0,), str(tmp_path / "log"), after=("b",))], workers=1)


def test_a_cheap_job_others_wait_for_starts_before_a_long_one(tmp_path):
    log = str(tmp_path / "log")
    jobs = [Job("long", "time:sleep", (0.0,), log, cost=10.0),
            Job("prepare", "time:sleep", (0.0,), log, cost=1.0),
            Job("train", "time:sleep", (0.0,), log, cost=20.0, after=("prepare",))]
    assert longest_chains(jobs) == {"long": 10.0, "prepare": 21.0, "train": 20.0}
    lines: list[str] = []
    run_jobs(jobs, workers=1, say=lines.append)
    assert [line.split("] ")[1].split(" in ")[0] for line in lines] == ["prepare", "train", "long"]


def test_jobs_waiting_for_each_other_are_refused_before_any_runs(tmp_path):
    log = str(tmp_path / "log")
    jobs = [Job("a", "time:sleep", (0.0,), log, after=("b",)), Job("b", "time:sleep", (0.0,), log, after=("a",)),
            Job("c", "time:sleep", (0.0,), log)]
    with pytest.raises(ValueError, match=r"\['a', 'b'\] wait for each other"):
        longest_chains(jobs)
    with pytest.raises(ValueError, match="wait for each other"):
        run_jobs(jobs, workers=1)
    assert not Path(log).exists()  # not even c ran


def test_a_long_chain_of_jobs_is_ordered_without_recursion():
    jobs = [Job(f"j{k}", "time:sleep", (0.0,), "log", cost=1.0, after=(f"j{k - 1}",) if k else ())
            for k in range(5000)]
    chains = longest_chains(jobs)
    assert chains["j0"] == 5000.0 and chains["j4999"] == 1.0


def test_variants_are_spelled_one_way_and_read_numbers_as_numbers():
    from stages.grid import parse_variants

    (variant,) = parse_variants("finetune@lr=1e-3+epochs=2")
    assert variant.name == "finetune@epochs=2+lr=0.001" and variant.overrides == (("epochs", 2), ("lr", 0.001))
    assert variant.settings() == [("removal.finetune.epochs", 2), ("removal.finetune.lr", 0.001)]
    assert parse_variants("wild_js@beta=10")[0].settings() == [("beta", 10)]


def test_variants_scale_their_cost_by_their_epochs(tmp_path):
    from stages.grid import Variant, check_variants, parse_variants

    base = yaml.safe_load(grid_params(tmp_path).read_text())
    scales = check_variants(base, [Variant("finetune"), *parse_variants("finetune@epochs=1,prune@epochs=0")])
    assert scales == {"finetune": 1.0, "finetune@epochs=1": 0.5, "prune@epochs=0": 0.1}


def test_the_verdict_reads_a_variant_as_a_setting_of_its_method():
    from stages.verdict import gather

    figures = {"holdout_acc_drop": 0.01, "proxy_wm_acc": 0.1, "test_acc_drop": 0.02, "wm_acc": 0.05,
               "test_acc": 0.9}
    cell = {"adversary_fraction": 0.1, "threshold": 0.1, "target_detected": True,
            "watermarked": {"test_acc": 0.92, "wm_acc": 1.0, "proxy_wm_acc": 1.0},
            "attempts": {"wild_js": figures, "wild_js@epochs=4": figures}}
    attempts, rows = gather([{"seed": 0, "cells": {"square": {"fraction_0_1": cell}}}])
    assert sorted((a.method, a.setting) for a in attempts[0.1]) == [("wild_js", ""), ("wild_js", "epochs=4")]
    assert {row["model"] for row in rows} == {"watermarked", "wild_js", "wild_js@epochs=4"}


def test_the_verdict_reports_how_far_the_held_out_slice_misjudged_each_method():
    from stages.verdict import yardstick_table

    def row(model, holdout, test, fraction=0.1):
        return {"model": model, "adversary_fraction": fraction, "holdout_acc_drop": holdout, "test_acc_drop": test}

    table = yardstick_table([row("watermarked", 0.0, 0.0), row("finetune", 0.01, 0.01),
                             row("laundering", 0.05, 0.02), row("laundering@epochs=4", 0.04, 0.02),
                             row("laundering", 0.10, 0.05, fraction=0.006)])
    lines = table.splitlines()
    assert lines[2] == "| 10% | finetune | 1.0 ± 0.0 | 1.0 ± 0.0 | 0.0 ± 0.0 | 1 |"
    assert lines[3] == "| 10% | laundering | 4.5 ± 0.5 | 2.0 ± 0.0 | 2.5 ± 0.5 | 2 |"  # variants pooled
    assert lines[4] == "| 0.6% | laundering | 10.0 ± 0.0 | 5.0 ± 0.0 | 5.0 ± 0.0 | 1 |"
    assert len(lines) == 5  # the watermarked model is no method


def test_grid_embeds_each_watermark_and_judges_every_removal(grid_run):
    cells = json.loads((grid_run / "cells" / "seed0.json").read_text())["cells"]
    assert set(cells) == {"content", "square"}
    for scheme in cells:
        cell = cells[scheme]["fraction_0_3"]
        assert cell["watermarked"]["wm_acc"] >= 0.9, f"{scheme} was not learned"
        assert set(cell["attempts"]) == {"finetune", "laundering", "scratch", "finetune@epochs=1+lr=0.001"}
        assert cell["holdout_size"] > 0 and 0 <= cell["threshold"] < 0.5
        # scratch never saw a trigger: it is below the threshold, the watermarked model is far above it
        assert cell["attempts"]["scratch"]["wm_acc"] <= cell["threshold"] < cell["watermarked"]["wm_acc"]


def test_a_variant_runs_its_method_at_its_own_settings(grid_run):
    cell = grid_run / "work" / "square" / "0.3"
    variant = yaml.safe_load((cell / "params@finetune@epochs=1+lr=0.001.yaml").read_text())
    plain = yaml.safe_load((cell / "params.yaml").read_text())
    assert variant["removal"]["finetune"]["epochs"] == 1 and variant["removal"]["finetune"]["lr"] == 0.001
    assert plain["removal"]["finetune"]["epochs"] == 2
    epochs = (cell / "remove" / "finetune@epochs=1+lr=0.001.csv").read_text().strip().splitlines()
    assert len(epochs) - 1 == 1  # one epoch row under the header
    # the verdict counts it as another setting of fine-tuning
    rows = (grid_run / "plots" / "attempts.csv").read_text()
    assert "finetune@epochs=1+lr=0.001" in rows


def test_grid_trains_one_clean_model_for_every_watermark(grid_run):
    settings = json.loads((grid_run / "settings.json").read_text())
    assert [name for name in settings["seconds"] if name.startswith("clean")] == ["clean 1"]
    for scheme in ("content", "square"):
        calibration = json.loads((grid_run / "work" / scheme / "0.3" / "models" / "vanilla" /
                                  "calibration.json").read_text())
        assert calibration["seeds"] == 1
    history = (grid_run / "work" / "clean" / "seed1.csv").read_text().splitlines()[0]
    assert "wm_acc@content-0.3" in history and "wm_acc@square-0.3" in history


def test_verdict_answers_every_watermark_at_every_budget(grid_run):
    metrics = json.loads((grid_run / "robustness.json").read_text())
    assert metrics["seeds"] == 1
    for scheme in ("content", "square"):
        for budget in ("within_0_5", "within_1", "within_2"):
            entry = metrics["fraction_0_3"][scheme][budget]
            assert {"method", "wm_acc", "test_acc_drop", "removed", "seeds"} <= set(entry)
    report = (grid_run / "report.md").read_text()
    assert "## Adversary fraction 0.3" in report and "beside the papers" in report
    assert (grid_run / "plots" / "frontier_square_0.3.png").stat().st_size > 0
    assert "Laundering Tab. 2" in report  # the content row is Laundering's protocol
    assert "held-out slice misjudged" in report and "| 30% | laundering |" in report
    assert "images of the adversary's own, from the 10 % of the training split kept from the owner" in report


def test_grid_owner_never_trains_on_the_adversarys_held_out_slice(grid_run):
    from wmbench.data import adversary_holdout_split
    from wmbench.prepared import load_prepared

    prepared = load_prepared(grid_run / "work" / "square" / "0.3" / "prepared")
    images, labels = prepared.arrays["adversary"]
    _, held = adversary_holdout_split(labels, 0.2, 0)
    owner = {image.tobytes() for image in prepared.arrays["owner"][0]}
    assert len(held) > 0 and not any(image.tobytes() in owner for image in images[held])


def test_verdict_names_the_seed_whose_grid_has_not_run(grid_run, tmp_path, capsys):
    from stages import verdict
    from wmbench.stage import run_stage

    (tmp_path / "grid.yaml").write_text("seeds: [0, 1]\n")
    code = run_stage(verdict.main, ["--params", str(grid_run / "params.yaml"), "--grid", str(tmp_path / "grid.yaml"),
                                    "--cells", str(grid_run / "cells"), "--metrics", str(tmp_path / "r.json"),
                                    "--report", str(tmp_path / "r.md"), "--plots", str(tmp_path / "plots")])
    assert code == 2 and "missing for [1]" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "finetune,no_such"], "no_such"),
    (["--fractions", "1.5"], "fractions lie in"),
    (["--variants", "finetune@no_such=1"], "no key 'removal.finetune.no_such'"),
    (["--variants", "finetune@beta=10"], "beta for WILD"),
    (["--variants", "finetune"], "names no setting"),
    (["--variants", "finetune@epochs=-1"], "--variants finetune@epochs=-1"),
    (["--variants", "finetune@lr=0.1+lr=0.2"], "sets lr twice"),
    (["--variants", "finetune@epochs=2"], "already runs finetune so"),
    (["--variants", "finetune@epochs=1+lr=0.1,finetune@lr=0.1+epochs=1"], "runs the same as"),
    (["--variants", "finetune@lr=0.1/2"], "letters, digits"),
    (["--exclude", "square@0.3"], "--exclude 'square@0.3' names no cell"),
    (["--exclude", "content@0.5"], "fraction in --fractions (0.3)"),
    (["--exclude", "content"], "write scheme@fraction"),
    (["--exclude", "content@0.3"], "leaves no cell to run"),
    (["--exclude", "content@0.1"], "clear grid.yaml's `exclude`"),
])
def test_grid_refuses_bad_input_before_any_work(tmp_path, capsys, args, message):
    from stages import grid
    from wmbench.stage import run_stage

    params = grid_params(tmp_path)
    argv = {"--params": str(params), "--seed": "0", "--schemes": "content", "--fractions": "0.3",
            "--methods": "finetune", "--work": str(tmp_path / "work"), "--metrics": str(tmp_path / "m.json")}
    argv.update(dict(zip(args[::2], args[1::2], strict=True)))
    code = run_stage(grid.main, [part for pair in argv.items() for part in pair])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "m.json").exists()


def test_grid_leaves_out_the_cells_it_is_told_to_and_keeps_the_rest(tmp_path):
    from stages.grid import excluded_cells, grid_cells

    schemes, fractions = ["square", "noise"], [0.1, 0.006]
    for spelling in (" noise@0.006, ", "noise @ 6e-3", "noise@0.0060,noise@0.006"):
        skipped = excluded_cells(spelling, schemes, fractions)
        assert skipped == {("noise", 0.006)}, spelling
        cells = grid_cells(schemes, fractions, skipped, tmp_path)
        assert [cell.name for cell in cells] == ["square-0.1", "square-0.006", "noise-0.1"]
    assert [c.name for c in grid_cells(["square"], fractions, excluded_cells("", ["square"], fractions), tmp_path)] \
        == ["square-0.1", "square-0.006"]


def test_the_experiment_passes_its_left_out_cells_to_every_seed():
    folder = ROOT / "experiments" / "fashion_mnist"
    grid_yaml = yaml.safe_load((folder / "grid.yaml").read_text())
    stage = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]["grid"]
    assert "--exclude=${exclude}" in stage["do"]["cmd"] and "exclude" in stage["do"]["params"][1]["grid.yaml"]
    from stages.grid import excluded_cells, grid_cells

    schemes, fractions = grid_yaml["schemes"].split(","), [float(f) for f in str(grid_yaml["fractions"]).split(",")]
    skipped = excluded_cells(grid_yaml["exclude"], schemes, fractions)
    kept = {cell.name for cell in grid_cells(schemes, fractions, skipped, Path("work"))}
    assert kept and not kept & {f"{scheme}-{fraction:g}" for scheme, fraction in skipped}
    assert " " not in grid_yaml["exclude"]  # dvc.yaml passes it unquoted


def test_grid_refuses_a_run_without_a_held_out_slice(tmp_path, capsys):
    from stages import grid
    from wmbench.stage import run_stage

    params = grid_params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["data"]["adversary_holdout"] = 0.0
    params.write_text(yaml.safe_dump(raw))
    code = run_stage(grid.main, ["--params", str(params), "--seed", "0", "--schemes", "content", "--fractions", "0.3",
                                 "--methods", "finetune", "--work", str(tmp_path / "w"), "--metrics",
                                 str(tmp_path / "m.json")])
    assert code == 2 and "adversary_holdout" in capsys.readouterr().err


def test_the_experiment_folder_is_a_complete_dvc_pipeline():
    folder = ROOT / "experiments" / "fashion_mnist"
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"grid", "verdict"}
    grid_yaml = yaml.safe_load((folder / "grid.yaml").read_text())
    assert len(grid_yaml["seeds"]) == 3 and {"square", "content"} <= set(grid_yaml["schemes"].split(","))
    from wmbench.params import load_params

    params = load_params(folder / "params.yaml")
    assert params.data.name == "fashion_mnist" and params.data.adversary_holdout > 0
