"""Stage ``export``: ONNX of the watermarked model and every removed model, checked against PyTorch.

Each ``exports/<name>.onnx`` is checked on the first ``export.check_images``
test images plus as many trigger inputs, so the watermark's behaviour is
compared too. A file that disagrees with PyTorch fails the stage. Each
architecture is traced once; its other models reuse that graph with their own
weights (``wmbench.export.with_weights``) and are checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from stages.evaluate import find_models
from wmbench.checkpoint import load_checkpoint
from wmbench.export import export_onnx
from wmbench.files import write_json_atomic
from wmbench.prepared import Prepared, load_prepared
from wmbench.stage import (
    SETTINGS_HELP,
    Timer,
    run_settings,
    run_stage,
    stage_parser,
    start,
    write_settings,
    writing_outputs,
)


def exported_models(models: Path) -> dict[str, Path]:
    """Name -> checkpoint for the watermarked model and each ``models/removed/<method>.pt``."""
    return {name: path for name, path in find_models(models).items() if not name.startswith("vanilla_")}


def check_images(prepared: Prepared, count: int) -> torch.Tensor:
    """The first ``count`` test images and ``count`` trigger inputs, float in [0, 1] on the CPU."""
    device = torch.device("cpu")
    test, trigger = prepared.on("test", device), prepared.on("trigger", device)
    return torch.cat([test.images[:count], trigger.images[:count]])


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, "export")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's folder")
    parser.add_argument("--models", default="models",
                        help="folder with watermarked.pt and removed/<method>.pt (clean models are not exported)")
    parser.add_argument("--out", default="exports", help="folder for the .onnx files")
    parser.add_argument("--metrics", default="metrics/export.json",
                        help="per model: size, largest logit difference and label mismatches against PyTorch")
    parser.add_argument("--settings", help=SETTINGS_HELP)
    args = parser.parse_args(argv)
    params, _ = start(args.params, args.threads)
    settings = run_settings("export", params, torch.device("cpu"), export=params.export)
    prepared = load_prepared(args.prepared)
    timer = Timer()

    images = check_images(prepared, params.export.check_images)
    metrics: dict = {"tolerance": params.export.tolerance, "opset": params.export.opset, "threads": params.threads}
    traced: dict[str, Path] = {}  # architecture -> the first file exported for it, whose graph the rest reuse
    for name, path in exported_models(Path(args.models)).items():
        checkpoint = load_checkpoint(path)
        architecture = json.dumps([checkpoint.meta["arch"], checkpoint.meta["arch_kwargs"]], sort_keys=True)
        out = Path(args.out) / f"{name}.onnx"
        check = export_onnx(
            checkpoint.build_model(), images, out,
            tolerance=params.export.tolerance, opset=params.export.opset, like=traced.get(architecture),
        )
        traced.setdefault(architecture, out)
        metrics[name] = check.as_metrics()
        print(f"export: {name:<12} {check.bytes / 1024:.0f} KiB  max |dlogit| {check.max_abs_diff:.2e}  "
              f"label mismatches {check.label_mismatches}/{check.images}")
    metrics["time_s"] = timer.seconds
    with writing_outputs():
        write_json_atomic(args.metrics, metrics)
        write_settings(settings, args.metrics, args.settings)


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
