"""The pipeline's DVC contract, in a throw-away repository: nothing stale, nothing lost, nothing re-run for nothing.

The repository is this project's code, dvc.yaml and params.yaml (2 epochs, CPU),
run as far as ``embed`` (``check`` -> ``prepare`` -> ``embed``).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.conftest import ROOT, small_params
from wmbench.models import create_model

OUTPUTS = ("data", "models", "metrics", "plots", "settings")  # every folder a stage writes to, up to embed
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@t"}


def run(repo, *args):
    """Run a command in ``repo``; (exit code, stdout + stderr)."""
    done = subprocess.run(args, cwd=repo, env=ENV, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def dvc(repo, *args):
    return run(repo, sys.executable, "-m", "dvc", *args)


def hashes(repo, folders=OUTPUTS):
    """Path -> SHA-256 of every file under ``folders``."""
    return {str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted((repo / folder).rglob("*")) if path.is_file()}


def set_params(repo, **overrides):
    (repo / "params.yaml").write_text(yaml.safe_dump(small_params(**{"train.epochs": 2, **overrides})))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC repository of the project, reproduced up to ``embed``."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("wmbench", "stages", "owner"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    set_params(repo)
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "init"]):
        assert run(repo, *command)[0] == 0
    code, out = dvc(repo, "repro", "embed")
    assert code == 0, out
    return repo


@pytest.fixture
def restore(repo):
    """Put params.yaml and owner/ back as they were after the test."""
    params = (repo / "params.yaml").read_bytes()
    yield
    (repo / "params.yaml").write_bytes(params)
    for path in (repo / "owner").iterdir():
        if path.name != "README.md":
            path.unlink()


def own_checkpoint(repo, seed):
    """A lenet state dict for digits as ``owner/model.safetensors``."""
    torch.manual_seed(seed)
    model = create_model("lenet", in_channels=1, image_size=28, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(repo / "owner" / "model.safetensors"))


def test_refused_value_keeps_every_output(repo, restore):
    before = hashes(repo)
    set_params(repo, **{"train.epochs": "ten"})
    code, out = dvc(repo, "repro")
    assert code != 0 and "error: train.epochs='ten' is a str; expected int" in out
    assert "Running stage 'embed'" not in out
    assert hashes(repo) == before
    code, out = dvc(repo, "status")
    assert "check:" in out and "embed:" in out  # both stale: DVC tells the truth


def test_truncated_own_checkpoint_keeps_every_output(repo, restore):
    before = hashes(repo)
    own_checkpoint(repo, seed=1)
    path = repo / "owner" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    set_params(repo, **{"model.checkpoint": "owner/model.safetensors"})
    code, out = dvc(repo, "repro")
    assert code != 0 and "error: model.checkpoint='owner/model.safetensors': " in out
    assert hashes(repo) == before


def test_unread_key_added_with_plus_fails(repo, restore):
    before = hashes(repo)
    code, out = dvc(repo, "exp", "run", "-S", "+betta=10")
    assert code != 0 and "unknown key 'betta'; did you mean 'beta'?" in out
    assert hashes(repo) == before


def test_same_inputs_same_bytes(repo, restore):
    """A forced re-run rewrites nothing but wall-clock times; a valid change elsewhere re-runs nothing here."""
    before, metrics = hashes(repo), json.loads((repo / "metrics" / "embed.json").read_text())
    code, out = dvc(repo, "repro", "-f", "embed")
    assert code == 0 and "Running stage 'embed'" in out
    after = hashes(repo)
    assert {path for path in before if before[path] != after[path]} <= {"metrics/embed.json"}
    rerun = json.loads((repo / "metrics" / "embed.json").read_text())
    assert {**rerun, "time_s": 0} == {**metrics, "time_s": 0}

    set_params(repo, **{"vanilla.seeds": 3, "beta": 2.0})  # nothing up to embed reads them
    code, out = dvc(repo, "repro", "embed")
    assert code == 0 and "Running stage 'check'" in out
    assert "Stage 'prepare' didn't change" in out and "Stage 'embed' didn't change" in out


def test_changing_own_checkpoint_reruns_embed(repo, restore):
    own_checkpoint(repo, seed=1)
    set_params(repo, **{"model.checkpoint": "owner/model.safetensors"})
    assert dvc(repo, "repro", "embed")[0] == 0
    assert "up to date" in dvc(repo, "status", "--with-deps", "embed")[1]
    imported = hashes(repo, ["models"])["models/watermarked.pt"]

    own_checkpoint(repo, seed=2)  # the same path, other weights
    code, out = dvc(repo, "status", "--with-deps", "embed")
    assert "check:" in out and "modified:" in out and "owner" in out
    code, out = dvc(repo, "repro", "embed")
    assert code == 0 and "Running stage 'embed'" in out and "Stage 'prepare' didn't change" in out
    assert hashes(repo, ["models"])["models/watermarked.pt"] != imported  # the new weights, imported
    assert "up to date" in dvc(repo, "status", "--with-deps", "embed")[1]


def test_changing_own_trigger_set_reruns_prepare(repo, restore):
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    np.savez(repo / "owner" / "triggers.npz", images=images, labels=np.arange(12) % 10)
    set_params(repo, **{"watermark.trigger_set": "owner/triggers.npz"})
    assert dvc(repo, "repro", "prepare")[0] == 0
    assert "up to date" in dvc(repo, "status", "--with-deps", "prepare")[1]

    np.savez(repo / "owner" / "triggers.npz", images=255 - images, labels=np.arange(12) % 10)
    assert "owner" in dvc(repo, "status", "--with-deps", "prepare")[1]
    code, out = dvc(repo, "repro", "prepare")
    assert code == 0 and "Running stage 'prepare'" in out
    with np.load(repo / "data" / "prepared" / "trigger.npz") as saved:
        assert np.array_equal(saved["images"][:, 0], 255 - images)


def test_each_plot_is_declared_once_with_a_chart_per_method():
    """``dvc plots show``: every CSV drawn once, each removal method in its own titled chart, a line per seed."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    top = {next(iter(entry)): next(iter(entry.values())) for entry in pipeline["plots"]}
    assert len(top) == len(pipeline["plots"])
    stage_plots = [next(iter(p)) if isinstance(p, dict) else p for stage in pipeline["stages"].values()
                   for p in (stage.get("do", stage).get("plots") or [])]
    assert all(path.endswith(".png") for path in stage_plots), stage_plots  # the CSVs are drawn at the top only
    for method in pipeline["vars"][0]["removal_reads"]:
        assert top[f"plots/remove/{method}.csv"]["title"].startswith(f"{method} - "), method
    assert top["plots/vanilla.csv"]["template"] == "by_seed"
    template = json.loads((ROOT / ".dvc/plots/by_seed.json").read_text())
    assert template["encoding"]["color"]["field"] == "seed"
