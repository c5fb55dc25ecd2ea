"""Stage ``plots``: the figures people look at, as PNGs under ``plots/``.

Writes a fixed set of files, so ``dvc.yaml`` can declare them; a figure whose
inputs another stage has not made yet says so instead of failing:

- ``removal_curves.png``: accuracy and retention per epoch, one panel per
  ``plots/remove/<method>.csv`` found (WILD Fig. 6);
- ``accuracy_vs_retention.png``: every model in ``metrics/summary.json``;
- ``watermark_examples.png``: every registered scheme's triggers (WILD Fig. 5);
- ``reconstruction.png``: Neural Cleanse masks, patterns and anomaly indices;
- ``vanilla_threshold.png``: clean models' watermark rate per epoch (Aiken et al., Fig. 5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmbench import plotting
from wmbench.files import load_arrays, read_csv, read_json
from wmbench.params import Params
from wmbench.prepared import Prepared, load_prepared
from wmbench.seeding import derive_seed, generator
from wmbench.stage import Timer, run_stage, stage_parser, start
from wmbench.watermarks import WATERMARKS, StampWatermark, build_watermark

FIGURES = (
    "removal_curves.png", "accuracy_vs_retention.png", "watermark_examples.png",
    "reconstruction.png", "vanilla_threshold.png",
)
EXAMPLES = 6  # images per scheme in watermark_examples.png


def removal_curves(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Method -> per-epoch records, from every ``<folder>/<method>.csv``."""
    return {path.stem: read_csv(path) for path in sorted(folder.glob("*.csv"))}


def model_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-model rows of ``metrics/summary.json`` (its other keys are scalars)."""
    return {name: row for name, row in summary.items() if isinstance(row, dict)}


def watermark_examples(
    prepared: Prepared, params: Params
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A few clean test images and each registered scheme's triggers, with the params' options.

    Stamp schemes stamp the same clean images, so a column compares schemes;
    schemes whose triggers are whole images draw their own.
    """
    images, labels = (torch.as_tensor(a) for a in prepared.arrays["test"])
    keep = torch.nonzero(labels != params.watermark.target).flatten()[:EXAMPLES]
    clean, clean_labels = images[keep].float() / 255, labels[keep]
    examples = {}
    for scheme in WATERMARKS.names():
        watermark = build_watermark(
            scheme, params.watermark.options.get(scheme, {}), target=params.watermark.target,
            image_shape=prepared.image_shape, num_classes=prepared.num_classes,
            seed=derive_seed(params.seed, "watermark"), size=EXAMPLES,
        )
        if isinstance(watermark, StampWatermark):
            triggers = watermark.apply(clean)
            trigger_labels = torch.full((len(clean),), params.watermark.target)
        else:
            triggers, trigger_labels = watermark.verification_set(
                clean, clean_labels, generator(params.seed, "plot-examples")
            )
        examples[scheme] = (triggers.numpy(), trigger_labels.numpy())
    return (clean.numpy(), clean_labels.numpy()), examples


def reconstruction(folder: Path, metrics: Path | None = None) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                     dict[int, float], Any]:
    """Masks (K, H, W), patterns (K, C, H, W), anomaly index per class, flagged class.

    Reads ``<folder>/classes.csv`` (``class``, ``anomaly``, ``flagged``: the
    flagged class drawn is the flagged one with the highest index) and the
    ``.npz`` files under ``folder``: either arrays ``masks`` / ``patterns`` with
    a leading class axis, or one file per class (class number in the file name)
    holding ``mask`` / ``pattern``. Without ``classes.csv`` (older layouts) the
    indices and the flagged class come from ``metrics``: ``anomaly_<k>`` keys and
    ``most_likely`` when the ``flagged`` list is not empty, or an int ``flagged``.
    The stage reads only the folder, so a metrics file holding a time is no
    dependency of the plots.
    """
    anomaly: dict[int, float] = {}
    flagged: Any = None
    if (folder / "classes.csv").is_file():
        rows = read_csv(folder / "classes.csv")
        anomaly = {int(row["class"]): float(row["anomaly"]) for row in rows}
        marked = [int(row["class"]) for row in rows if str(row["flagged"]) == "True"]
        flagged = max(marked, key=anomaly.__getitem__) if marked else None
    elif metrics is not None and metrics.is_file():
        scores = read_json(metrics)
        anomaly = {int(m[1]): float(v) for k, v in scores.items() if (m := re.fullmatch(r"anomaly_(\d+)", k))}
        flagged = scores.get("flagged")
        if isinstance(flagged, list):
            flagged = scores.get("most_likely") if flagged else None
        flagged = flagged if isinstance(flagged, int) and not isinstance(flagged, bool) else None
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    masks: dict[int, np.ndarray] = {}
    patterns: dict[int, np.ndarray] = {}
    for path in files:
        arrays = load_arrays(path)
        if "masks" in arrays:
            masks.update(enumerate(arrays["masks"]))
            patterns.update(enumerate(arrays.get("patterns", [])))
        elif "mask" in arrays and (number := re.search(r"(\d+)", path.stem)):
            masks[int(number[1])] = arrays["mask"]
            if "pattern" in arrays:
                patterns[int(number[1])] = arrays["pattern"]
    if not masks:
        return None, None, anomaly, flagged
    stacked = np.stack([np.asarray(masks[k], dtype=np.float32).reshape(masks[k].shape[-2:]) for k in sorted(masks)])
    pattern = np.stack([patterns[k] for k in sorted(masks)]) if len(patterns) == len(masks) else None
    return stacked, pattern, anomaly, flagged


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "plots")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--summary", default="metrics/summary.json", help="the evaluate stage's table")
    parser.add_argument("--vanilla-metrics", default="models/vanilla/calibration.json",
                        help="the clean models' threshold (or metrics/vanilla.json)")
    parser.add_argument("--vanilla-plot", default="plots/vanilla.csv", help="the clean models' per-epoch curves")
    parser.add_argument("--removal-plots", default="plots/remove", help="folder of <method>.csv curves")
    parser.add_argument("--reconstruct", default="artifacts/reconstruct",
                        help="folder of Neural Cleanse .npz and classes.csv (anomaly index per class)")
    parser.add_argument("--reconstruct-metrics", default="",
                        help="older layouts without classes.csv: the metrics with anomaly_<k> and the flagged class "
                             "(default: none)")
    parser.add_argument("--out", default="plots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    params, _ = start(args.params, args.threads)
    prepared = load_prepared(args.prepared)
    threshold = float(read_json(args.vanilla_metrics)["threshold"])
    out = Path(args.out)
    timer = Timer()

    curves = removal_curves(Path(args.removal_plots))
    plotting.plot_removal_curves(curves, threshold, out / "removal_curves.png")
    plotting.plot_accuracy_vs_retention(model_rows(read_json(args.summary)), threshold,
                                        out / "accuracy_vs_retention.png")
    clean, examples = watermark_examples(prepared, params)
    plotting.plot_watermark_examples(clean, examples, out / "watermark_examples.png")
    older = Path(args.reconstruct_metrics) if args.reconstruct_metrics else None
    masks, patterns, anomaly, flagged = reconstruction(Path(args.reconstruct), older)
    plotting.plot_reconstruction(masks, patterns, anomaly, out / "reconstruction.png", flagged=flagged)
    plotting.plot_vanilla_threshold(read_csv(args.vanilla_plot), threshold, out / "vanilla_threshold.png")
    print(f"plots: {len(FIGURES)} figures in {out}/ ({len(curves)} removal methods) in {timer.seconds:.1f}s")


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
