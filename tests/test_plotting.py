"""The plots stage turns small hand-made CSV / JSON / npz inputs into non-empty PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from stages import plots as plots_stage
from wmbench.files import read_csv, save_arrays_atomic, write_csv_atomic, write_json_atomic
from wmbench.prepared import Prepared, save_prepared
from wmbench.watermarks import WATERMARKS


def fake_prepared(folder, n=12):
    rng = np.random.default_rng(0)
    split = (rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10)
    info = {"dataset": "digits", "image_shape": [1, 28, 28], "num_classes": 10, "scheme": "content", "target": 0}
    save_prepared(folder, Prepared({s: split for s in ("owner", "adversary", "test", "embedding", "trigger")}, info))


@pytest.fixture
def inputs(tmp_path):
    """Hand-made outputs of the earlier stages; removal and reconstruct inputs left to each test."""
    fake_prepared(tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    write_json_atomic(tmp_path / "vanilla.json", {"threshold": 0.05})
    write_csv_atomic(tmp_path / "vanilla.csv", [
        {"seed": s, "epoch": e, "loss": 1.0, "lr": 0.004, "test_acc": 0.9, "wm_acc": 0.01 * e * s}
        for s in (1, 2) for e in (1, 2, 3)
    ])
    write_json_atomic(tmp_path / "summary.json", {
        "threshold": 0.05, "alpha": 0.05,
        "watermarked": {"test_acc": 0.97, "wm_acc": 1.0, "removed": False},
        "vanilla_seed1": {"test_acc": 0.96, "wm_acc": 0.0, "removed": True},
        "finetune": {"test_acc": 0.95, "wm_acc": 0.4, "removed": False, "useful": True},
        "scratch": {"test_acc": 0.90, "wm_acc": 0.02, "removed": True, "useful": False},
        "time_s": 1.0,
    })
    (tmp_path / "remove").mkdir()
    return tmp_path


def run_plots(folder):
    plots_stage.main([
        "--params", str(folder / "params.yaml"), "--prepared", str(folder / "prepared"),
        "--summary", str(folder / "summary.json"), "--vanilla-metrics", str(folder / "vanilla.json"),
        "--vanilla-plot", str(folder / "vanilla.csv"), "--removal-plots", str(folder / "remove"),
        "--reconstruct", str(folder / "reconstruct"), "--reconstruct-metrics", str(folder / "reconstruct.json"),
        "--out", str(folder / "out"),
    ])
    return {name: imread(folder / "out" / name) for name in plots_stage.FIGURES}


def test_plots_stage_writes_every_figure_without_optional_inputs(inputs):
    images = run_plots(inputs)
    assert sorted(p.name for p in (inputs / "out").iterdir()) == sorted(plots_stage.FIGURES)
    for name, image in images.items():
        assert image.shape[0] > 100 and image.shape[1] > 300, name
        assert image.std() > 0, f"{name} is blank"


def test_plots_stage_draws_one_panel_per_removal_method(inputs):
    empty = run_plots(inputs)["removal_curves.png"]
    for method in ("finetune", "scratch", "wild_ce", "refit"):
        write_csv_atomic(inputs / "remove" / f"{method}.csv", [
            {"epoch": e, "loss": 1.0 / e, "lr": 0.001, "test_acc": 0.9, "wm_acc": 1.0 / e} for e in (1, 2, 3)
        ])
    drawn = run_plots(inputs)["removal_curves.png"]
    assert drawn.shape[0] > 2 * empty.shape[0]  # two rows of panels instead of a one-line note


@pytest.mark.parametrize("layout", ["stacked", "per_class"])
def test_plots_stage_reads_reconstruction_in_both_layouts(inputs, layout):
    rng = np.random.default_rng(1)
    masks, patterns = rng.random((10, 28, 28)), rng.random((10, 1, 28, 28))
    if layout == "stacked":
        save_arrays_atomic(inputs / "reconstruct" / "triggers.npz", masks=masks, patterns=patterns)
    else:
        for k in range(10):
            save_arrays_atomic(inputs / "reconstruct" / f"class_{k}.npz", mask=masks[k][None], pattern=patterns[k])
    write_json_atomic(inputs / "reconstruct.json", {f"anomaly_{k}": 0.3 * k for k in range(10)} | {"flagged": 9})
    loaded, loaded_patterns, anomaly, flagged = plots_stage.reconstruction(
        inputs / "reconstruct", inputs / "reconstruct.json"
    )
    np.testing.assert_allclose(loaded, masks, rtol=1e-6)
    np.testing.assert_allclose(loaded_patterns, patterns)
    assert anomaly[9] == pytest.approx(2.7) and flagged == 9
    assert run_plots(inputs)["reconstruction.png"].shape[0] > 400


def test_watermark_examples_cover_every_registered_scheme(inputs):
    from wmbench.params import parse_params
    from wmbench.prepared import load_prepared

    (clean, labels), examples = plots_stage.watermark_examples(load_prepared(inputs / "prepared"), parse_params({}))
    assert sorted(examples) == WATERMARKS.names()
    assert (labels != 0).all()
    for scheme, (images, targets) in examples.items():
        assert images.shape == (plots_stage.EXAMPLES, 1, 28, 28), scheme
        assert len(targets) == plots_stage.EXAMPLES
        assert images.min() >= 0 and images.max() <= 1
    assert not np.allclose(examples["content"][0], clean)


def test_read_csv_returns_numbers(tmp_path):
    write_csv_atomic(tmp_path / "a.csv", [{"epoch": 1, "wm_acc": 0.5, "model": "finetune"}])
    assert read_csv(tmp_path / "a.csv") == [{"epoch": 1, "wm_acc": 0.5, "model": "finetune"}]


def test_frontier_legend_puts_each_seeds_pick_on_its_own_line():
    """The frontier plot's legend: one line per seed's pick, a long setting broken after a ``+``."""
    from wmbench.plotting import _legend_name

    name = _legend_name("seed 0: laundering@conv_threshold=2+dense_threshold=4+epochs=24; seed 1: none")
    lines = name.split("\n")
    assert lines[0].startswith("seed 0: laundering@conv_threshold=2+") and lines[-1].strip() == "seed 1: none"
    assert all(len(line) <= 44 for line in lines) and "".join(s.strip() for s in lines[:-1]).endswith("epochs=24")
    assert _legend_name("finetune") == "finetune"
