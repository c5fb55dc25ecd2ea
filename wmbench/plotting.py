"""The figures people look at, drawn headless: ``matplotlib.figure.Figure`` without pyplot.

Figures are built through the object API and saved by the Agg renderer, so no
display, no global backend switch and no pyplot state are involved.

Each ``plot_*`` function takes plain data (records, dicts, arrays) and writes
one PNG atomically; none reads files, so tests feed them hand-made inputs.
A figure whose inputs do not exist yet (no removal method run, no Neural
Cleanse artifacts) is still written, with a line saying which stage makes them:
the ``plots`` stage declares a fixed set of files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wmbench.files import atomic_path

Record = Mapping[str, Any]
NEURAL_CLEANSE_CUTOFF = 2.0  # anomaly index above which a class is flagged (Wang et al., Neural Cleanse)


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``figure`` as PNG atomically and close it."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def _placeholder(path: str | os.PathLike[str], title: str, message: str) -> None:
    figure = Figure(figsize=(6, 2.2))
    axes = figure.subplots()
    axes.axis("off")
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    save_figure(figure, path)


def _percent(values: Sequence[float]) -> list[float]:
    return [100 * float(v) for v in values]


def plot_removal_curves(
    curves: Mapping[str, Sequence[Record]], threshold: float, path: str | os.PathLike[str]
) -> None:
    """Test accuracy and watermark retention per epoch, one panel per removal method (WILD Fig. 6).

    ``curves`` maps a method name to its per-epoch records (``epoch``,
    ``test_acc``, ``wm_acc``), as in ``plots/remove/<method>.csv``. The dashed
    line is the clean-model threshold: retention below it counts as removed.
    """
    title = "Removal: test accuracy and watermark retention per epoch"
    if not curves:
        _placeholder(path, title, "No removal method has run yet:\nrun `dvc repro` (stages remove@<method>).")
        return
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    for axes, (method, records) in zip(grid.flat, sorted(curves.items()), strict=False):
        epochs = [int(r["epoch"]) for r in records]
        axes.plot(epochs, _percent([r["test_acc"] for r in records]), "o-", ms=3, label="test accuracy")
        axes.plot(epochs, _percent([r["wm_acc"] for r in records]), "s-", ms=3, label="watermark retention")
        axes.axhline(100 * threshold, color="grey", ls="--", lw=1, label=f"threshold {100 * threshold:.1f}%")
        axes.set_title(method)
        axes.set_xlabel("epoch")
        axes.set_ylim(-3, 103)
        axes.grid(alpha=0.3)
    for axes in grid[:, 0]:
        axes.set_ylabel("accuracy, retention (%)")
    for axes in list(grid.flat)[len(curves):]:
        axes.axis("off")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02), frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(figure, path)


def plot_accuracy_vs_retention(
    summary: Mapping[str, Record], threshold: float, path: str | os.PathLike[str]
) -> None:
    """Every model's test accuracy against its watermark retention, one point each.

    ``summary`` maps a model name to its row of ``metrics/summary.json``. The
    vertical dashed line is the clean-model threshold (left of it: removed),
    the horizontal dotted line the ``scratch`` model's accuracy (above it:
    worth stealing). Winners sit top left.
    """
    figure = Figure(figsize=(7.5, 5))
    axes = figure.subplots()
    scratch = summary.get("scratch", {}).get("test_acc")
    clean = [row for name, row in summary.items() if name.startswith("vanilla")]
    if clean:
        axes.scatter(_percent([r["wm_acc"] for r in clean]), _percent([r["test_acc"] for r in clean]),
                     marker="o", s=50, color="tab:grey", zorder=3, label="clean models (vanilla seeds)")
    for name, row in sorted(summary.items()):
        if name.startswith("vanilla"):
            continue
        if name == "watermarked":
            style = {"marker": "*", "s": 220, "color": "tab:red", "label": "watermarked model"}
        elif name == "scratch":
            style = {"marker": "D", "s": 60, "color": "black", "label": "scratch (adversary data only)"}
        else:
            won = row.get("removed") and row.get("useful", True)
            style = {"marker": "o", "s": 70, "color": "tab:green" if won else "tab:blue"}
        x, y = 100 * row["wm_acc"], 100 * row["test_acc"]
        axes.scatter([x], [y], zorder=3, edgecolor="white", linewidth=0.5, **style)
        right = x > 85  # label to the left of points near the right edge
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(-8 if right else 6, 4), fontsize=8,
                      ha="right" if right else "left")
    axes.axvline(100 * threshold, color="grey", ls="--", lw=1, label=f"ownership threshold {100 * threshold:.1f}%")
    if scratch is not None:
        axes.axhline(100 * scratch, color="black", ls=":", lw=1, label=f"scratch baseline {100 * scratch:.1f}%")
    if any(not name.startswith("vanilla") and name not in ("watermarked", "scratch") for name in summary):
        axes.scatter([], [], color="tab:green", label="method: removed and useful")
        axes.scatter([], [], color="tab:blue", label="method: not both")
    axes.set_xlabel("watermark retention (% of triggers classified as the watermark label)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_xlim(-4, 112)
    axes.margins(y=0.15)
    axes.set_title("Which removal methods win (top left: watermark gone, accuracy kept)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    save_figure(figure, path)


def plot_watermark_examples(
    clean: tuple[np.ndarray, np.ndarray],
    examples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
) -> None:
    """A row of clean test images, then one row per scheme of its trigger inputs (WILD Fig. 5).

    ``clean`` and each scheme's entry are (images (N, C, H, W) in [0, 1],
    labels); under each image is its label: the true one for clean images,
    the watermark label for triggers.
    """
    rows = [("clean", clean), *examples.items()]
    columns = max(len(images) for _, (images, _) in rows)
    figure = Figure(figsize=(1.25 * columns, 1.45 * len(rows)))
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, (name, (images, labels)) in zip(grid, rows, strict=True):
        for axes, image, label in zip(row, images, labels, strict=False):
            axes.imshow(_displayable(image), cmap="gray", vmin=0, vmax=1)
            axes.set_xlabel(f"label {int(label)}", fontsize=8, labelpad=2)
        for axes in row:
            axes.set_xticks([])
            axes.set_yticks([])
        row[0].set_ylabel(name, fontsize=10)
    figure.suptitle("Trigger inputs per watermark scheme (labels: true for clean, watermark label for triggers)",
                    fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def plot_reconstruction(
    masks: np.ndarray | None,
    patterns: np.ndarray | None,
    anomaly: Mapping[int, float],
    path: str | os.PathLike[str],
    flagged: int | None = None,
) -> None:
    """Neural Cleanse per class: the mask, the masked pattern, and the anomaly index by MAD.

    Aiken et al., Sec. 4 (after Wang et al., Neural Cleanse). ``masks`` (K, H, W)
    and ``patterns`` (K, C, H, W) in [0, 1]; ``anomaly`` maps a class to its
    anomaly index; ``flagged`` (or any class above the 2.0 cut-off) is drawn red.
    """
    title = "Neural Cleanse: reconstructed triggers per class"
    if masks is None and not anomaly:
        _placeholder(path, title, "No reconstruction yet: run `dvc repro reconstruct`.")
        return
    classes = len(masks) if masks is not None else len(anomaly)
    has_images = masks is not None
    figure = Figure(figsize=(max(8.0, 1.1 * classes), 5.6 if has_images else 3.0))
    rows = 3 if has_images else 1
    spec = figure.add_gridspec(rows, classes, height_ratios=[1, 1, 1.6][-rows:])
    if has_images:
        for k in range(classes):
            top, middle = figure.add_subplot(spec[0, k]), figure.add_subplot(spec[1, k])
            top.imshow(masks[k], cmap="magma", vmin=0, vmax=1)
            shown = masks[k][None] * patterns[k] if patterns is not None else masks[k][None]
            middle.imshow(_displayable(shown), cmap="gray", vmin=0, vmax=1)
            top.set_title(f"class {k}", fontsize=9)
            for axes in (top, middle):
                axes.set_xticks([])
                axes.set_yticks([])
            if k == 0:
                top.set_ylabel("mask", fontsize=9)
                middle.set_ylabel("mask x pattern", fontsize=9)
    bars = figure.add_subplot(spec[rows - 1, :])
    ks = sorted(anomaly)
    values = [anomaly[k] for k in ks]
    colours = ["tab:red" if k == flagged or anomaly[k] > NEURAL_CLEANSE_CUTOFF else "tab:blue" for k in ks]
    bars.bar([str(k) for k in ks], values, color=colours)
    bars.axhline(NEURAL_CLEANSE_CUTOFF, color="grey", ls="--", lw=1, label="cut-off 2.0 (flagged above)")
    bars.set_xlabel("class")
    bars.set_ylabel("anomaly index (MAD units)")
    bars.legend(fontsize=8, loc="upper right")
    bars.grid(alpha=0.3, axis="y")
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_vanilla_threshold(rows: Sequence[Record], threshold: float, path: str | os.PathLike[str]) -> None:
    """Clean models' watermark rate per epoch, one line per seed, with the threshold (Aiken et al., Fig. 5).

    ``rows`` are ``plots/vanilla.csv`` records (``seed``, ``epoch``, ``wm_acc``);
    the threshold is the highest rate any of them reached.
    """
    figure = Figure(figsize=(7.5, 4))
    axes = figure.subplots()
    for seed in sorted({int(r["seed"]) for r in rows}):
        mine = [r for r in rows if int(r["seed"]) == seed]
        axes.plot([int(r["epoch"]) for r in mine], _percent([r["wm_acc"] for r in mine]), "o-", ms=3,
                  label=f"clean model, seed {seed}")
    axes.axhline(100 * threshold, color="tab:red", ls="--", lw=1.2,
                 label=f"ownership threshold {100 * threshold:.1f}% (max over seeds and epochs)")
    axes.set_xlabel("epoch")
    axes.set_ylabel("triggers classified as watermark label (%)")
    axes.set_ylim(bottom=0, top=max(5.0, 100 * threshold * 1.6))
    axes.set_title("Clean models' watermark rate per epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def _legend_name(label: str, width: int = 40) -> str:
    """A pick's name for the legend: each seed's pick (``seed 0: a; seed 1: b``) on its own line, a long setting
    broken after its ``+`` into lines of about ``width`` characters."""
    lines = []
    for part in label.split("; "):
        line = ""
        for piece in part.replace("+", "+\0").split("\0"):
            if line and len(line) + len(piece) > width:
                lines.append(line)
                line = "  " + piece
            else:
                line += piece
        lines.append(line)
    return "\n  ".join(lines)


def plot_robustness_frontier(
    curves: Mapping[str, Sequence[tuple[float, float, str]]],
    picks: Mapping[float, tuple[float, float, str] | None],
    threshold: float,
    path: str | os.PathLike[str],
    title: str = "What each removal costs and leaves",
    threshold_label: str = "ownership threshold",
) -> None:
    """Retention against test-accuracy loss, one line per method (its settings no other beats on both).

    ``curves``: :func:`wmbench.robustness.frontier`'s (drop, wm_acc, setting)
    per method; ``picks``: per budget, the adversary's pick as (mean drop,
    mean wm_acc, label) or None. Budgets are vertical lines, the ownership
    threshold a horizontal one (``threshold_label`` names it: over several
    seeds, the highest seed's): a pick below it and left of its budget
    removes the watermark within that budget.
    """
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for method, points in curves.items():
        axes.plot([100 * p[0] for p in points], [100 * p[1] for p in points], "o-", ms=5, label=method)
    for budget in picks:
        axes.axvline(100 * budget, color="grey", ls=":", lw=1)
        axes.annotate(f"{100 * budget:g} pt", (100 * budget, 102), fontsize=7, ha="center", color="grey")
    budgets_of: dict[tuple[float, float, str], list[float]] = {}  # one circle and label per distinct pick
    for budget, pick in picks.items():
        if pick is not None:
            budgets_of.setdefault(pick, []).append(budget)
    # the picks' names go in the legend (one box, nothing to overlap): variant names are too long for the points
    for rank, ((drop, wm, label), budgets) in enumerate(budgets_of.items()):
        within = ", ".join(f"{100 * b:g}" for b in sorted(budgets))
        axes.scatter([100 * drop], [100 * wm], s=180, facecolors="none", edgecolors="black", zorder=4,
                     label=f"pick {rank + 1}, within {within} pt:\n  " + _legend_name(label))
        axes.annotate(f"pick {rank + 1}", (100 * drop, 100 * wm), textcoords="offset points",
                      xytext=(10, -3), fontsize=7, ha="left")
    axes.axhline(100 * threshold, color="tab:red", ls="--", lw=1.2,
                 label=f"{threshold_label} {100 * threshold:.1f}%")
    axes.set_xlabel("test accuracy lost (points)")
    axes.set_ylabel("watermark retention (%)")
    axes.set_ylim(-4, 108)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    save_figure(figure, path)


def _displayable(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) for one channel, (H, W, 3) for colour, clipped to [0, 1]."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    return image
