"""``wmbench``: the stage list, a mistyped command, each stage's own name, the methods, the results view."""

from __future__ import annotations

import json
import sys

import pytest

from wmbench import cli
from wmbench.removal import REMOVALS
from wmbench.results import experiment_rows, table


def test_help_lists_every_stage_with_a_line(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (*cli.STAGES, "methods", "results"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(maxsplit=1)[1]) > 20, line


def test_mistyped_command_is_named_with_a_suggestion(capsys):
    assert cli.main(["remov"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'remov'; did you mean 'remove'?" in err


@pytest.mark.parametrize("stage", cli.STAGES)
def test_stage_help_says_its_own_name(stage, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/wmbench", stage, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: wmbench {stage} ")


def test_methods_lists_every_method_with_its_defaults(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in REMOVALS.names():
        assert f"\n{name}: " in f"\n{out}"
    assert "lr                  0.001  (removal.wild_js.lr)" in out
    assert "beta                (top-level beta" in out


def experiment(name, params, wm_acc):
    summary = {"threshold": 0.1,
               "watermarked": {"test_acc": 0.98, "wm_acc": 1.0, "removed": False, "useful": True},
               "vanilla_seed1": {"test_acc": 0.97, "wm_acc": 0.02, "removed": True},
               "wild_js": {"test_acc": 0.95, "wm_acc": wm_acc, "removed": wm_acc <= 0.1, "useful": True},
               "scratch": {"test_acc": 0.90, "wm_acc": 0.02, "removed": True, "useful": False}}
    data = {"params": {"params.yaml": {"data": params}}, "metrics": {"metrics/summary.json": {"data": summary}}}
    return {"name": name, "revs": [{"rev": "abc", "name": name, "data": data, "error": None}]}


BASE = {"beta": 1.0, "data": {"adversary_fraction": 0.1}, "watermark": {"scheme": "content"}}
FAKE = [{"rev": "0123456789", "name": "main",
         "data": experiment("main", BASE, 0.3)["revs"][0]["data"],
         "experiments": [experiment("beta10", {**BASE, "beta": 10.0}, 0.05),
                         experiment("noise", {**BASE, "watermark": {"scheme": "noise"}}, 0.5),
                         {"revs": [{"rev": "dead", "data": {}, "error": {"msg": "failed"}}]}]}]


def test_results_one_row_per_experiment_with_changed_params_and_verdicts(tmp_path, capsys):
    rows = experiment_rows(FAKE)
    assert [(r["name"], r["changed"]) for r in rows] == [
        ("main", {}), ("beta10", {"beta": 10.0}), ("noise", {"watermark.scheme": "noise"})]
    text = table(rows)
    lines = text.splitlines()
    assert lines[0] == "| experiment | changed params | watermarked | wild_js | scratch |"
    assert "| beta10 | beta=10.0 | 98.0 / 100.0 kept | 95.0 / 5.0 removed | 90.0 / 2.0 removed, not useful |" in text
    (tmp_path / "exp.json").write_text(json.dumps(FAKE))
    assert cli.main(["results", "--json", str(tmp_path / "exp.json"), "--methods", "wild_js"]) == 0
    assert "| noise | watermark.scheme=noise | 95.0 / 50.0 kept |" in capsys.readouterr().out


def test_results_without_experiments_say_why(tmp_path, capsys):
    (tmp_path / "exp.json").write_text(json.dumps([{"rev": "workspace", "data": {}, "experiments": None}]))
    assert cli.main(["results", "--json", str(tmp_path / "exp.json")]) == 1
    assert "no experiment has metrics/summary.json" in capsys.readouterr().err
