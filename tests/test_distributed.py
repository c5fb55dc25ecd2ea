"""A grid on two machines with DVC's own mechanisms: two clones, a bare git remote, a folder as DVC remote.

Each clone runs its cell through ``scripts.sweep`` (``dvc exp run --queue`` and
``dvc queue start``), shares it with ``dvc exp push``, and one clone builds the
verdict across both seeds after ``dvc exp pull``: the commands README's "A grid
on several machines" gives, at one epoch per stage.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml

from tests.conftest import ROOT, small_params
from tests.test_dvc_contract import run

PYTHON = sys.executable


def tiny_params() -> dict:
    """The project's params at one epoch per removal and three for the owner's models, so a whole experiment takes
    seconds (after one or two epochs seed 2's clean model puts every digit in one class, which the stages refuse)."""
    params = small_params(**{"train.epochs": 3, "vanilla.seeds": 1, "reconstruct.epochs": 2})
    for method in params["removal"].values():
        if "epochs" in method:
            method["epochs"] = 1
    return params


def ok(cwd, *args):
    code, out = run(cwd, *args)
    assert code == 0, f"{' '.join(map(str, args))} failed:\n{out}"
    return out


@pytest.fixture(scope="module")
def remotes(tmp_path_factory):
    """A bare git repository holding the project at one commit, and an empty folder as DVC remote."""
    base = tmp_path_factory.mktemp("distributed")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("wmbench", "stages", "scripts", "owner", ".dvc/plots"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(ROOT / name, source / name)
    (source / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    ok(source, "git", "init", "-q", "-b", "main")
    ok(source, PYTHON, "-m", "dvc", "remote", "add", "-d", "store", str(base / "dvc-store"))
    ok(source, "git", "add", "-A")
    ok(source, "git", "commit", "-qm", "project")
    ok(base, "git", "clone", "-q", "--bare", str(source), str(base / "origin.git"))
    return base


def worker(base, name, seed):
    """Clone, run one cell of the grid, push it: what one machine (a SLURM array task, a CI runner) does."""
    clone = base / name
    ok(base, "git", "clone", "-q", str(base / "origin.git"), str(clone))
    ok(clone, PYTHON, "-m", "scripts.sweep", "--schemes", "content", "--fractions", "0.1", "--seeds", str(seed),
       "--prefix", "cell", "--target", "robustness", "--poll", "2", "--out", "sweep.md", "--verdict", "verdict.md")
    ok(clone, PYTHON, "-m", "dvc", "exp", "push", "origin", f"cell-content-0p1-s{seed}")
    return clone


def test_two_clones_share_their_cells_and_one_builds_the_verdict(remotes):
    first = worker(remotes, "machine-a", seed=0)
    worker(remotes, "machine-b", seed=1)
    listed = ok(first, PYTHON, "-m", "dvc", "exp", "list", "origin", "--name-only")
    assert {"cell-content-0p1-s0", "cell-content-0p1-s1"} <= set(listed.split())

    ok(first, PYTHON, "-m", "dvc", "exp", "pull", "origin", "cell-content-0p1-s1")
    ok(first, PYTHON, "-m", "scripts.sweep", "--table-only", "--prefix", "cell", "--out", "sweep.md",
       "--verdict", "verdict.md")
    verdict = json.loads((first / "verdict.json").read_text())
    assert verdict["fraction_0_1"]["content"]["within_1"]["seeds"] == 2  # seed 1's cell came from machine B
    assert (first / "verdict_content_0.1.png").stat().st_size > 0

    ref = ok(first, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
    (ref,) = [r for r in ref if r.endswith("/cell-content-0p1-s1")]
    lock = yaml.safe_load(ok(first, "git", "show", f"{ref}:dvc.lock"))
    (model,) = [out for out in lock["stages"]["embed"]["outs"] if out["path"] == "models/watermarked.pt"]
    assert yaml.safe_load(ok(first, "git", "show", f"{ref}:params.yaml"))["seed"] == 1
    md5 = model["md5"]
    assert (first / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # via the DVC remote
