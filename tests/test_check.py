"""The ``check`` stage: every bad input refused up front, records that change only with what stages read."""

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from stages import check
from tests.conftest import ROOT, small_params
from wmbench.inputs import RECORDS
from wmbench.models import create_model
from wmbench.stage import run_stage

LENET = {"in_channels": 1, "image_size": 28, "num_classes": 10}


def run_check(folder, **overrides):
    """Write params with ``overrides`` (dotted keys; a leading ``+`` adds a key) and run the stage in ``folder``."""
    params = small_params(**{key.lstrip("+"): value for key, value in overrides.items()})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return run_stage(check.main, ["--params", str(folder / "params.yaml"), "--owner", str(folder / "owner"),
                                  "--out", str(folder / "checked")])


def records(folder):
    return {name: (folder / "checked" / name).read_bytes() for name in RECORDS}


@pytest.fixture
def owner(tmp_path):
    """An owner folder with a good checkpoint and trigger set, and bad ones beside them."""
    folder = tmp_path / "owner"
    folder.mkdir()
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in create_model("lenet", **LENET).state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    blob = (folder / "model.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    torch.save(create_model("lenet", **{**LENET, "num_classes": 11}).state_dict(), folder / "eleven.pt")
    torch.save(create_model("lenet", **LENET), folder / "module.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "triggers.npz", images=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
             labels=np.arange(12) % 10)
    np.savez(folder / "triggers32.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(3, np.int64))
    np.savez(tmp_path / "elsewhere.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.zeros(3, np.int64))
    return folder


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epochs": "ten"}, "train.epochs='ten' is a str; expected int"),
        ({"beta": -1}, "beta=-1.0 must be >= 0"),
        ({"data.adversary_fraction": 0}, "data.adversary_fraction=0.0 is outside (0, 1]"),
        ({"+betta": 10}, "unknown key 'betta'; did you mean 'beta'?"),
        ({"+removal.wild_js.bta": 1}, "unknown key 'removal.wild_js.bta'"),
        ({"watermark.target": 10}, "watermark.target 10 is not a class; use 0..9"),
        ({"data.name": "fashion_mnist", "data.root": "nowhere"}, "data.root='nowhere': no FashionMNIST IDX files"),
        ({"model.checkpoint": "owner/truncated.safetensors"}, "model.checkpoint='owner/truncated.safetensors': "),
        ({"model.checkpoint": "owner/eleven.pt"}, "shape mismatch"),
        ({"model.checkpoint": "owner/module.pt"}, "refusing to load"),
        ({"watermark.trigger_set": "owner/triggers32.npz"}, "this dataset needs 28x28 images"),
        ({"watermark.trigger_set": "elsewhere.npz"}, "is outside"),
    ],
)
def test_check_refuses_bad_input_and_keeps_its_records(tmp_path, owner, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)
    assert run_check(tmp_path) == 0
    before = records(tmp_path)
    capsys.readouterr()
    assert run_check(tmp_path, **overrides) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert records(tmp_path) == before


def test_check_records_stay_the_same_for_valid_changes(tmp_path, owner, monkeypatch):
    """A valid value no record depends on leaves the bytes alone, so DVC re-runs only the stages that read it."""
    monkeypatch.chdir(tmp_path)
    assert run_check(tmp_path) == 0
    before = records(tmp_path)
    assert run_check(tmp_path, beta=10.0, **{"train.epochs": 3, "removal.finetune.lr": 0.1}) == 0
    assert records(tmp_path) == before


def test_check_records_follow_the_content_of_own_files(tmp_path, owner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = {"model.checkpoint": "owner/model.safetensors", "watermark.trigger_set": "owner/triggers.npz"}
    assert run_check(tmp_path, **own) == 0
    first = records(tmp_path)
    assert len(yaml.safe_load(first["checkpoint.json"])["sha256"]) == 64
    assert yaml.safe_load(first["trigger_set.json"])["images"] == 12
    assert run_check(tmp_path, **own) == 0
    assert records(tmp_path) == first

    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in create_model("lenet", **LENET).state_dict().items()}
    save_file(state, str(owner / "model.safetensors"))
    assert run_check(tmp_path, **own) == 0
    second = records(tmp_path)
    assert second["checkpoint.json"] != first["checkpoint.json"]
    assert second["trigger_set.json"] == first["trigger_set.json"] and second["params.json"] == first["params.json"]


def test_own_file_may_be_a_link_in_the_owner_folder(tmp_path, owner, monkeypatch):
    """A large checkpoint kept elsewhere can be linked into owner/: DVC hashes what the link points to."""
    monkeypatch.chdir(tmp_path)
    (owner / "model.safetensors").rename(tmp_path / "kept_elsewhere.safetensors")
    (owner / "model.safetensors").symlink_to(tmp_path / "kept_elsewhere.safetensors")
    assert run_check(tmp_path, **{"model.checkpoint": "owner/model.safetensors"}) == 0


def test_every_param_is_read_by_a_stage():
    """params.yaml holds no key that only `check` reads: each leaf is under some stage's `params:` entry."""
    from dvc.repo import Repo

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    with Repo(str(ROOT)) as repo:
        read = {key for stage in repo.index.stages if stage.name != "check"
                for dep in stage.params for key in dep.params}
    unread = [leaf for leaf in leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
              if not any(leaf == key or leaf.startswith(f"{key}.") for key in read)]
    assert not unread, f"no stage in dvc.yaml reads {unread}"
