"""What every stage shares: help with defaults, threads, the settings record, Ctrl-C, progress lines."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from stages import check, embed, evaluate, export, plots, prepare, reconstruct, remove, robustness, vanilla
from stages.prepare import describe_counts
from tests.conftest import small_params, write_params
from wmbench.params import ParamsError, parse_params
from wmbench.progress import Progress
from wmbench.stage import (
    InterruptedAfterWriting,
    resolve_threads,
    run_settings,
    run_stage,
    set_threads,
    settings_path,
    writing_outputs,
)

STAGES = (check, prepare, embed, vanilla, reconstruct, remove, evaluate, robustness, plots, export)


@pytest.mark.parametrize("module", STAGES, ids=lambda m: m.__name__)
def test_every_flag_has_help_that_shows_its_default(module, monkeypatch, capsys):
    parsers = []
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: parsers.append(self) or original(self, *a, **k))
    with pytest.raises(SystemExit):
        module.main(["--help"])
    (parser,) = parsers
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert text, f"{action.option_strings} has no help"
        assert "default" in text or "required" in text, f"{action.option_strings}: {text}"
    assert f"stages.{module.__name__.split('.')[-1]}" in capsys.readouterr().out.splitlines()[0]


def test_ctrl_c_in_a_stage_writes_nothing_and_exits_130(prepared_dir, tmp_path, monkeypatch, capsys):
    # three epochs: after one, the float sums of an AVX2 CPU leave a model that sends 97 % of the test
    # set to one class, which embed refuses (collapsed), so the first run would not write anything
    params = str(write_params(tmp_path, **{"train.epochs": 3}))
    outputs = {"--model": tmp_path / "wm.pt", "--metrics": tmp_path / "embed.json", "--plot": tmp_path / "embed.csv"}
    argv = ["--params", params, "--prepared", str(prepared_dir / "prepared"),
            *[part for flag, path in outputs.items() for part in (flag, str(path))]]
    assert run_stage(embed.main, argv) == 0
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (*outputs.values(),
                                                                               tmp_path / "embed.settings.json")}
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embed, "fit", interrupted)
    assert run_stage(embed.main, argv) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted; nothing written"]
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before


def test_ctrl_c_while_writing_finishes_the_outputs_first(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job (nohup, `&`), else Python's default
    with pytest.raises(InterruptedAfterWriting), writing_outputs():
        os.kill(os.getpid(), signal.SIGINT)
        (tmp_path / "a").write_text("complete")
    assert (tmp_path / "a").read_text() == "complete"
    assert signal.getsignal(signal.SIGINT) is before


def test_threads_are_set_and_recorded(prepared_dir, tmp_path):
    params = str(write_params(tmp_path, **{"train.epochs": 3}))  # one epoch can collapse (the test above)
    before = torch.get_num_threads()
    try:
        assert run_stage(embed.main, ["--params", params, "--prepared", str(prepared_dir / "prepared"),
                                      "--model", str(tmp_path / "wm.pt"), "--metrics", str(tmp_path / "e.json"),
                                      "--plot", str(tmp_path / "e.csv"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "e.json").read_text())["threads"] == 2
    settings = json.loads((tmp_path / "e.settings.json").read_text())
    assert settings["threads"] == 2 and settings["train"]["epochs"] == 3 and settings["stage"] == "embed"
    assert {"seed", "device", "precision", "data", "model", "wmbench", "torch", "cpu"} <= set(settings)
    assert settings["cpu"].endswith(")") and "(" in settings["cpu"]  # model and torch's vector code


def test_threads_default_to_one_and_zero_means_every_core():
    assert parse_params(small_params()).threads == 1
    assert resolve_threads(0) == len(os.sched_getaffinity(0))
    assert resolve_threads(3) == 3
    with pytest.raises(ParamsError, match="threads=-1 must be >= 0"):
        parse_params(small_params(threads=-1))


def test_threads_limit_numpys_blas_whatever_the_environment_started_it_with():
    """The export check multiplies in NumPy; its pool must follow `threads`, not OMP_NUM_THREADS."""
    assert any(pool["user_api"] == "blas" for pool in threadpool_info())  # NumPy's OpenBLAS, loaded
    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=2, user_api="blas"):  # as a shell without OMP_NUM_THREADS leaves it
            for threads in (1, 2):
                assert set_threads(threads) == threads
                assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {threads}
    finally:
        torch.set_num_threads(before)


def test_settings_tell_two_wild_runs_apart_by_beta():
    records = [run_settings("remove@wild_js", params, method="wild_js", removal=params.removal.settings["wild_js"])
               for params in (parse_params(small_params(beta=0.0)), parse_params(small_params(beta=1.0)))]
    assert [r["removal"]["beta"] for r in records] == [0.0, 1.0]
    assert {k: v for k, v in records[0].items() if k != "removal"} == {
        k: v for k, v in records[1].items() if k != "removal"}
    laundering = run_settings("remove@laundering", parse_params(small_params()),
                              removal=parse_params(small_params()).removal.settings["laundering"])
    json.dumps(laundering, allow_nan=False)  # nested Neural Cleanse settings, no infinities


def test_settings_sit_beside_the_metrics():
    assert str(settings_path("metrics/remove/wild_js.json")) == "settings/remove/wild_js.json"
    assert str(settings_path("/tmp/run/embed.json")) == "/tmp/run/embed.settings.json"
    assert str(settings_path("metrics/embed.json", "elsewhere.json")) == "elsewhere.json"


def test_progress_off_a_terminal_logs_one_line_per_epoch_with_the_fields():
    stream = io.StringIO()
    progress = Progress(3, "embed", stream=stream, interval=0)
    for epoch in range(1, 4):
        progress.update({"epoch": epoch, "loss": 0.5, "test_acc": 0.9, "wm_acc": 1.0})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("embed: epoch 1/3  loss 0.500  test_acc 0.900  wm_acc 1.000  ")
    assert "left" in lines[0] and "left" not in lines[2]


def test_progress_throttles_but_always_reports_first_and_last():
    stream = io.StringIO()
    progress = Progress(100, "vanilla", stream=stream, interval=3600)
    for _ in range(40):  # a search that stops early: the last epoch run is still reported
        progress.update({"loss": 1.0})
    progress.close()
    assert [line.split("  ")[0] for line in stream.getvalue().splitlines()] == [
        "vanilla: epoch 1/100", "vanilla: epoch 40/100"]


def test_prepare_summary_says_what_each_count_is():
    text = describe_counts({"owner": 60000, "adversary": 6000, "test": 10000, "embedding": 6000, "trigger": 100},
                           "fashion_mnist", 0.1)
    assert "owner 60,000 training images; adversary 6,000 of those (10%, a subset of the owner's)" in text
    pooled = describe_counts({"owner": 58800, "adversary": 5880, "test": 10000, "embedding": 6000, "trigger": 100},
                             "fashion_mnist", 0.1, kept=1200, holdout=0.2)
    assert ("adversary 5,880 (10%, of those but its held-out 20%, images of its own drawn from 1,200 kept from the "
            "owner)") in pooled
