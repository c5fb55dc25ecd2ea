"""scripts.wild_results names the architecture its plot shows from the models it ran on."""

from __future__ import annotations

import pytest
import yaml

from scripts.wild_results import FRACTION, Run, models_arch


def _cell(work, scheme, seed, arch):
    cell = work / scheme / f"seed{seed}" / f"{FRACTION:g}"
    cell.mkdir(parents=True)
    (cell / "params.yaml").write_text(yaml.safe_dump({"model": {"arch": arch}}))


def test_the_plot_names_the_work_folders_architecture(tmp_path):
    _cell(tmp_path, "square", 0, "zhang_mnist")
    _cell(tmp_path, "noise", 1, "zhang_mnist")
    runs = [Run("square", 0, "wild_js", (("beta", 1.0),)), Run("square", 0, "wild_ce", (("beta", 0.1),)),
            Run("noise", 1, "wild_js", (("beta", 0.0),))]
    assert models_arch(tmp_path, runs) == "zhang_mnist"


def test_a_work_folder_mixing_architectures_is_refused(tmp_path):
    _cell(tmp_path, "square", 0, "lenet")
    _cell(tmp_path, "square", 1, "zhang_mnist")
    runs = [Run("square", 0, "wild_js", (("beta", 1.0),)), Run("square", 1, "wild_js", (("beta", 1.0),))]
    with pytest.raises(SystemExit, match=r"mixes architectures \['lenet', 'zhang_mnist'\]; use one folder"):
        models_arch(tmp_path, runs)
