"""``wmbench preset``: every preset valid on params.yaml, its ``-S`` arguments read back as DVC reads them."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
import yaml
from dvc.utils.hydra import apply_overrides, to_hydra_overrides

from tests.conftest import ROOT
from wmbench import cli
from wmbench.params import load_params
from wmbench.presets import PresetError, load_preset, parse_preset, preset_names

PRESETS = preset_names()


def printed_arguments(name: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What ``$(wmbench preset NAME)`` hands to ``dvc exp run``: stdout split into words, as the shell does."""
    assert cli.main(["preset", name]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "the arguments must be on one line"
    return out.split()


def overrides(words: list[str]) -> list[str]:
    """``["-S", "a=1", "-S", "b=2"]`` -> ``["a=1", "b=2"]``, checking every value follows a ``-S``."""
    assert words[::2] == ["-S"] * (len(words) // 2) and len(words) % 2 == 0, words
    return words[1::2]


def test_presets_include_each_papers_data_sets():
    assert {"fashion_mnist", "mnist", "cifar10_vgg16", "cifar10_resnet18"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_on_params_yaml_passes_validation(name, tmp_path, capsys):
    # The printed arguments go through DVC's own `-S` code onto a copy of params.yaml, then wmbench's checks.
    path = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(path, overrides(printed_arguments(name, capsys)))
    params = load_params(path)
    preset = load_preset(name)
    assert params.data.name == preset.settings["data.name"]
    assert params.model.arch == preset.settings["model.arch"]
    if "removal.laundering.layers" in preset.settings:
        assert params.removal.settings["laundering"].layers == preset.settings["removal.laundering.layers"]


@pytest.mark.parametrize("name", PRESETS)
def test_printed_arguments_read_back_as_the_file(name, capsys):
    words = printed_arguments(name, capsys)
    assert all(re.fullmatch(r"[A-Za-z0-9_./:=+-]+", word) for word in words), "one shell word each, no quoting"
    parsed = {o.key_or_group: o.value() for o in to_hydra_overrides(overrides(words))}
    settings = load_preset(name).settings
    assert parsed == settings
    assert {key: type(value) for key, value in parsed.items()} == {key: type(v) for key, v in settings.items()}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keys_exist_in_params_yaml(name):
    # `dvc exp run -S key=value` only sets keys params.yaml already has.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in load_preset(name).settings:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: {key} is not in params.yaml"
            node = node[part]
        assert not isinstance(node, dict), f"{name}: {key} is a section of params.yaml, not a value"


@pytest.mark.parametrize("name", PRESETS)
def test_gpu_presets_say_so_and_ask_for_cuda(name):
    preset = load_preset(name)
    needs_gpu = preset.settings["data.name"] == "cifar10"
    assert ("needs a GPU" in preset.description) == needs_gpu
    assert (preset.settings.get("device") == "cuda") == needs_gpu


def test_presets_set_the_same_keys():
    # dvc exp run writes -S into the workspace's params.yaml: the next preset must overwrite all of it.
    keys = {name: set(load_preset(name).settings) for name in PRESETS}
    assert all(k == keys["fashion_mnist"] for k in keys.values()), keys


def test_one_preset_after_another_keeps_nothing_of_the_first(tmp_path, capsys):
    path = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(path, overrides(printed_arguments("cifar10_resnet18", capsys)))
    apply_overrides(path, overrides(printed_arguments("fashion_mnist", capsys)))
    fresh = shutil.copy(ROOT / "params.yaml", tmp_path / "fresh.yaml")
    apply_overrides(fresh, overrides(printed_arguments("fashion_mnist", capsys)))
    assert load_params(path) == load_params(fresh)


def test_a_later_set_param_wins_over_the_preset(tmp_path, capsys):
    path = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(path, [*overrides(printed_arguments("fashion_mnist", capsys)), "train.epochs=1"])
    assert load_params(path).train.epochs == 1


def test_listing_has_each_preset_with_a_line(capsys):
    assert cli.main(["preset"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(maxsplit=1)[1]) > 20, line
    assert "dvc exp run $(wmbench preset NAME)" in out


def test_show_prints_the_file_with_its_sources(capsys):
    assert cli.main(["preset", "cifar10_resnet18", "--show"]) == 0
    out = capsys.readouterr().out
    assert "Aiken et al. Sec. 5" in out and "removal.laundering.layers: second_half" in out


def test_unknown_preset_fails_naming_the_presets(capsys):
    assert cli.main(["preset", "fashion_mnst"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing for $(...) to hand to dvc exp run"
    assert captured.err.count("\n") == 1
    assert "unknown preset 'fashion_mnst'; did you mean 'fashion_mnist'?" in captured.err
    assert f"(presets: {', '.join(PRESETS)};" in captured.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data.name: mnist\n", r"first line must be a comment"),
        ("# x\n- data.name\n", r"must map dotted params.yaml keys"),
        ("# x\ndata: {name: mnist}\n", r"data=\{'name': 'mnist'\}: a preset value must be"),
        ("# x\nData.Name: mnist\n", r"'Data.Name' is not a dotted params.yaml key"),
        ("# x\ndata.root: my data\n", r"data.root='my data': a preset value must be .* plain string"),
        ("# x\ndata.root: '10'\n", r"data.root='10'.*does not read as a number"),
        ("# x\ndata.root: null\n", r"data.root=None"),
    ],
)
def test_malformed_preset_is_refused_naming_the_key(text, message):
    with pytest.raises(PresetError, match=message):
        parse_preset("bad", text)


def test_presets_ship_with_the_package():
    # A normal (non-editable) install copies only declared package data next to the modules.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "*.yaml" in project["tool"]["setuptools"]["package-data"]["wmbench.presets"]
