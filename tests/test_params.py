import dataclasses

import pytest
import yaml

from tests.conftest import ROOT, small_params
from wmbench.params import ParamsError, load_params, parse_params


def test_project_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.name == "digits" and params.beta >= 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sed": 1}, r"unknown key 'sed'; did you mean 'seed'\?"),
        ({"train": {"epoch": 3}}, r"unknown key 'train.epoch'; did you mean 'epochs'\?"),
        ({"data": {"name": "digit"}}, r"data.name='digit' is unknown; did you mean 'digits'\?"),
        ({"data": {"adversary_fraction": 0}}, r"adversary_fraction=0.0 is outside \(0, 1\]"),
        ({"data": {"adversary_fraction": 1.5}}, r"adversary_fraction=1.5 is outside \(0, 1\]"),
        ({"data": {"adversary_holdout": 0.9}}, r"adversary_holdout=0.9 is outside \[0, 0.5\]"),
        ({"data": {"holdout_pool": 0.5}}, r"holdout_pool=0.5 is outside \[0, 0.5\); use e.g. 0.02"),
        ({"data": {"holdout_pool": 0.02, "adversary_holdout": 0}},
         r"holdout_pool=0.02 reserves images .* data.adversary_holdout is 0 \(no slice\)"),
        ({"robustness": {"budgets": [1]}}, r"robustness.budgets=\[1.0\]: give accuracy losses as fractions"),
        ({"robustness": {"budgets": 0.01}}, r"robustness.budgets must be a list"),
        ({"robustness": {"proxy": "regoin"}}, r"robustness.proxy='regoin'; valid: region, trigger, wide"),
        ({"robustness": {"proxy_area": 0.5}}, r"robustness.proxy_area=0.5 must be at least 1"),
        ({"robustness": {"proxy_steps": 0}}, r"robustness.proxy_steps=0 must be at least 1"),
        ({"robustness": {"proxy_multiple": 0.5}}, r"robustness.proxy_multiple=0.5 must be at least 1"),
        ({"robustness": {"proxy_search_steps": 0}}, r"robustness.proxy_search_steps=0 must be at least 1, e.g. 400"),
        ({"robustness": {"proxy_searches": 0}}, r"robustness.proxy_searches=0 must be at least 1, e.g. 4"),
        ({"robustness": {"compare": ["wid"]}}, r"robustness.compare=\['wid'\] names \['wid'\], not a retention proxy; "
                                                r"choose among \['trigger', 'region', 'wide'\]"),
        ({"train": {"epochs": "ten"}}, r"train.epochs='ten' is a str; expected int"),
        ({"train": {"lr": -1}}, r"train.lr=-1.0 must be positive"),
        ({"train": {"optimizer": "adamw"}}, r"train.optimizer='adamw'; valid: rmsprop, adam, sgd"),
        ({"model": {"arch": "resnet50"}}, r"model.arch='resnet50' is unknown.*valid: lenet, resnet18"),
        ({"watermark": {"scheme": "nosie"}}, r"did you mean 'noise'"),
        ({"watermark": {"content": {"txt": "A"}}}, r"unknown key 'watermark.content.txt'; did you mean 'text'"),
        ({"watermark": {"noise": {"std": "big"}}}, r"watermark.noise.std='big' is a str; expected float"),
        ({"device": "gpu"}, r"device='gpu'; valid: auto, cpu, cuda, cuda:N"),
        ({"reconstruct": {"epoch": 3}}, r"unknown key 'reconstruct.epoch'; did you mean 'epochs'\?"),
        ({"reconstruct": {"steps": 300}}, r"reconstruct.steps was renamed; use reconstruct.epochs"),
        ({"removal": {"laundering": {"mask_share": 1.0}}}, r"removal.laundering: mask_share=1.0 is outside \[0, 1\)"),
        ({"removal": {"refit": {"lr": "0.1"}}}, r"removal.refit.lr='0.1' is a str; expected float"),
        ({"removal": {"prune": {"ratio": 1.0}}}, r"removal.prune: ratio=1.0 is outside \[0, 1\)"),
        ({"removal": {"laundering": {"reconstruct": {}}}}, r"`reconstruct` is a top-level key"),
    ],
)
def test_bad_param_fails_naming_key_and_fix(overrides, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(overrides)


def test_params_file_repeats_the_documented_defaults():
    """params.yaml lists every key (so `dvc exp run -S` can set it) with the dataclasses' defaults."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = parse_params({"watermark": {"scheme": raw["watermark"]["scheme"]}})
    written = load_params(ROOT / "params.yaml")
    assert written.reconstruct == defaults.reconstruct
    assert written.removal == defaults.removal
    for name, settings in written.removal.settings.items():
        listed = set(raw["removal"][name]) | {"beta", "reconstruct"}
        missing = {f.name for f in dataclasses.fields(settings)} - listed
        assert not missing, f"params.yaml lacks removal.{name}.{sorted(missing)}"


def test_params_file_with_bad_yaml_fails_clearly(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_params(path)


def test_small_params_round_trip(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params(**{"watermark.scheme": "noise"})))
    assert load_params(path).watermark.scheme_options == {"std": 0.3, "draw": "fixed", "source_classes": []}
