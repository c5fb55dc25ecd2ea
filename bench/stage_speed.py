"""Time and memory of every pipeline stage, each in its own process, on a fresh copy of the pipeline.

Runs ``prepare``, ``embed``, ``vanilla``, ``reconstruct``, every
``remove@<method>``, ``evaluate`` and ``export`` in a temporary folder with
the project's params.yaml (device, precision and channels_last set from the
command line) and the commands ``dvc.yaml`` wires, but without DVC: each
stage's ``main()`` runs in a child process of this script, so the peak
memory is that stage's alone. Prints a markdown table:

- seconds: ``main()`` alone; "process s" adds interpreter start-up and imports.
- train s: time inside ``wmbench.training.fit`` less its per-epoch evaluation
  (the training steps alone; Neural Cleanse inside laundering, the pruning
  searches and set-up are outside it).
- images/s: images through the model per train second (per second of
  ``main()`` for reconstruct and evaluate): embed (owner + watermark samples) x
  epochs; vanilla owner x epochs x seeds; remove the adversary's images x
  training epochs, x (1 + copies) for WILD (clean + erased in one forward);
  reconstruct epochs x epoch_images x classes (an upper bound: stopped classes leave
  the batch); evaluate (test + trigger) x models. prepare and export: none.
- peak RSS: the child's ``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``.
- GFLOP/s: images/s x the model's forward FLOPs per image x 3 for training and
  reconstruct (forward and backward), x 1 for evaluate; "% of peak" against
  ``--peak-tflops``, or on a known NVIDIA GPU its datasheet peak for the
  precision (``bench.train_speed.peak_tflops``).
- vs reference: for each training stage, the same model trained in this run by
  ``bench.train_speed.reference`` (a DataLoader over PIL images, per-sample
  ``ToTensor`` and, for WILD, per-sample ``RandomErasing`` of every copy; fp32)
  on the prepared owner images with the stage's batch size, up to
  ``--reference-images`` images. The ratio is the stage's training images/s
  over the reference's.

    python -m bench.stage_speed                              # CPU, fp32
    python -m bench.stage_speed --device cuda --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from wmbench.stage import HelpFormatter

if TYPE_CHECKING:
    from wmbench.prepared import Prepared

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "embed", "vanilla", "reconstruct", "remove", "evaluate", "robustness", "export")


def stage_commands(dvc_yaml: Path, methods: list[str]) -> dict[str, list[str]]:
    """Stage name -> argv after ``python -m``, as ``dvc.yaml`` wires them (``remove`` once per method)."""
    pipeline = yaml.safe_load(dvc_yaml.read_text())
    stages = pipeline["stages"]
    reads = {key: value for block in pipeline.get("vars", []) for key, value in block.items()}["removal_reads"]
    commands = {}
    for name in STAGES:
        if name == "remove":
            template = stages[name]["do"]["cmd"]
            commands.update({f"remove@{m}": _module_argv(template.replace("${key}", m).replace(
                "${item.args}", reads[m]["args"])) for m in methods})
        else:
            commands[name] = _module_argv(stages[name]["cmd"])
    return commands


def _module_argv(cmd: str) -> list[str]:
    """``python -m stages.x --a b`` -> ``["stages.x", "--a", "b"]``."""
    words = shlex.split(cmd)
    if words[:2] != ["python", "-m"]:
        raise ValueError(f"expected `python -m stages.<name> ...` in dvc.yaml, got {cmd!r}")
    return words[2:]


def write_params(folder: Path, device: str, precision: str, channels_last: bool, threads: int | None = None) -> None:
    """The project's params.yaml with the speed-related keys set (``threads`` only when given)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device=device, precision=precision, channels_last=channels_last)
    if threads is not None:
        params["threads"] = threads
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_child(folder: Path, name: str, argv: list[str]) -> dict[str, Any]:
    """Run one stage in a child process in ``folder``; its report plus the process's wall seconds."""
    report = folder / "bench" / f"{name}.json"
    report.parent.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(folder / "bench" / f"{name}.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "bench.stage_speed", "--child", str(report), *argv],
                              cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (folder / "bench" / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{tail}")
    return {**json.loads(report.read_text()), "process_s": wall}


def time_training() -> dict[str, float]:
    """Make ``wmbench.training.fit`` add its seconds, less its per-epoch evaluation, to the returned clock.

    Must run before any stage or removal module is imported, since they bind
    ``fit`` by name. A benchmark-only patch: the stages themselves stay unaware.
    """
    import wmbench.training as training

    clock = {"train_s": 0.0}
    fit = training.fit

    def timed_fit(*args: Any, evaluate: Any = None, **kwargs: Any) -> Any:
        spent_evaluating = 0.0

        def timed_evaluate(model: Any) -> Any:
            nonlocal spent_evaluating
            start = time.perf_counter()
            result = evaluate(model)
            spent_evaluating += time.perf_counter() - start
            return result

        start = time.perf_counter()
        try:
            return fit(*args, evaluate=timed_evaluate if evaluate is not None else None, **kwargs)
        finally:
            clock["train_s"] += time.perf_counter() - start - spent_evaluating

    training.fit = timed_fit
    return clock


def child(report: str, module: str, argv: list[str]) -> None:
    """In the child: run ``module.main(argv)`` as the stage would, then write seconds and peak memory."""
    clock = time_training()
    import torch

    from wmbench.stage import run_stage

    main = importlib.import_module(module).main
    start = time.perf_counter()
    code = run_stage(main, argv)
    seconds = time.perf_counter() - start
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(report).write_text(json.dumps({"seconds": seconds, **clock, "rss_mib": rss, "cuda_mib": cuda}))
    raise SystemExit(code)


def images_processed(folder: Path, name: str, params: dict[str, Any]) -> int | None:
    """Images through the model in the stage's training (or scoring) passes; None where not meaningful."""
    info = json.loads((folder / "data/prepared/info.json").read_text())
    counts = info["counts"]
    if name == "embed":
        return (counts["owner"] + counts["embedding"]) * training_epochs(folder / "plots/embed.csv")
    if name == "vanilla":
        return counts["owner"] * training_epochs(folder / "plots/vanilla.csv")
    if name == "reconstruct":
        epochs = json.loads((folder / "metrics/reconstruct.json").read_text())["epochs"]
        return epochs * params["reconstruct"]["epoch_images"] * len(info["adversary_per_class"])
    if name.startswith("remove@"):
        method = name.split("@", 1)[1]
        metrics = json.loads((folder / f"metrics/remove/{method}.json").read_text())
        copies = (params["removal"].get(method) or {}).get("copies", 0)
        return removal_images(metrics, copies, folder / f"plots/remove/{method}.csv")
    if name == "evaluate":
        models = len([k for k, v in json.loads((folder / "metrics/summary.json").read_text()).items()
                      if isinstance(v, dict)])
        return (counts["test"] + counts["trigger"]) * models
    return None


def removal_images(metrics: dict[str, Any], copies: int, history_csv: Path) -> int:
    """Images through the model in a removal's training: the adversary's set x (1 + erased copies) x epochs."""
    return int(metrics["adversary_size"]) * (1 + copies) * training_epochs(history_csv)


def training_epochs(history_csv: Path) -> int:
    """Training epochs in a per-epoch history (all seeds / rounds); an ``epoch`` 0 record is no training."""
    with open(history_csv) as f:
        return sum(1 for row in csv.DictReader(f) if float(row["epoch"]) >= 1)


def reference_settings(name: str, params: dict[str, Any]) -> tuple[int, int] | None:
    """(batch size, erased copies per image) of a training stage's loop; None for the others."""
    if name in ("embed", "vanilla"):
        return params["train"]["batch_size"], 0
    if name.startswith("remove@"):
        block = params["removal"].get(name.split("@", 1)[1]) or {}
        return block.get("batch_size", params["train"]["batch_size"]), block.get("copies", 0)
    return None


def reference_rates(prepared: Prepared, names: list[str], params: dict[str, Any], device: str,
                    max_images: int) -> dict[str, float]:
    """Stage -> images/s of the plain DataLoader loop on the same model, batch size and copies."""
    import torch

    from bench.train_speed import reference
    from wmbench.device import resolve_device
    from wmbench.models import create_model

    images, labels = prepared.arrays["owner"]
    target = resolve_device(device)
    measured: dict[tuple[int, int], float] = {}
    rates = {}
    for name in names:
        settings = reference_settings(name, params)
        if settings is None:
            continue
        if settings not in measured:
            torch.manual_seed(0)
            model = create_model(params["model"]["arch"], **prepared.arch_kwargs()).to(target)
            seconds, seen = reference(model, images, labels, target, settings[0], epochs=10**6,
                                      copies=settings[1], max_images=max_images)
            measured[settings] = seen / seconds
        rates[name] = measured[settings]
    return rates


def forward_flops(prepared: Prepared, arch: str) -> int:
    """The model's forward FLOPs for one image of the prepared data (``torch.utils.flop_counter``)."""
    from bench.train_speed import flops_per_image
    from wmbench.models import create_model

    kwargs = prepared.arch_kwargs()
    return flops_per_image(create_model(arch, **kwargs), kwargs["in_channels"], kwargs["image_size"])


def table(rows: list[dict[str, Any]], cuda: bool, flops: int, peak_tflops: float | None) -> str:
    """The markdown table, one row per stage, then the total."""
    head = ("| stage | seconds | process s | train s | images/s | vs reference | GFLOP/s | % of peak | peak RSS MiB |"
            + (" peak CUDA MiB |" if cuda else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        trains = row["train_s"] > 0
        rate = row["images"] / (row["train_s"] if trains else row["seconds"]) if row["images"] else None
        achieved = rate * flops * (3 if trains or row["stage"] == "reconstruct" else 1) if rate else None
        cells = [
            row["stage"], f"{row['seconds']:.2f}", f"{row['process_s']:.2f}",
            f"{row['train_s']:.2f}" if trains else "-",
            f"{rate:,.0f}" if rate else "-",
            f"{rate / row['reference']:.2f}" if rate and row.get("reference") else "-",
            f"{achieved / 1e9:.1f}" if achieved else "-",
            f"{100 * achieved / (peak_tflops * 1e12):.2f}" if achieved and peak_tflops else "-",
            f"{row['rss_mib']:,.0f}",
        ] + ([f"{row['cuda_mib'] or 0:,.0f}"] if cuda else [])
        lines.append("| " + " | ".join(cells) + " |")
    total, process = sum(r["seconds"] for r in rows), sum(r["process_s"] for r in rows)
    lines.append(f"| **total** | {total:.2f} | {process:.2f} |" + " |" * (6 + cuda))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the params' precision")
    parser.add_argument("--channels-last", action="store_true", help="channels_last: true (default: false)")
    parser.add_argument("--threads", type=int, default=None,
                        help="each stage's CPU threads (params `threads`; 0 = every core); default: params.yaml's")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak for the achieved share (default: the GPU's datasheet figure)")
    parser.add_argument("--reference-images", type=int, default=20000,
                        help="images the reference loop trains on per batch-size setting")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()

    from wmbench.removal import REMOVALS

    with tempfile.TemporaryDirectory(prefix="wmbench-stages-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_params(folder, args.device, args.precision, args.channels_last, args.threads)
        params = yaml.safe_load((folder / "params.yaml").read_text())
        rows = []
        for name, argv in stage_commands(ROOT / "dvc.yaml", REMOVALS.names()).items():
            result = run_child(folder, name, argv)
            rows.append({"stage": name, **result, "images": images_processed(folder, name, params)})
            print(f"{name}: {result['seconds']:.1f}s", file=sys.stderr, flush=True)
        print("reference loops ...", file=sys.stderr, flush=True)
        from wmbench.prepared import load_prepared

        prepared = load_prepared(folder / "data/prepared")
        rates = reference_rates(prepared, [r["stage"] for r in rows], params, args.device, args.reference_images)
        for row in rows:
            row["reference"] = rates.get(row["stage"])
        flops = forward_flops(prepared, params["model"]["arch"])
    import torch

    print(f"device {args.device}, precision {args.precision}, channels_last {args.channels_last}, "
          f"threads {params.get('threads', 1)} per stage, torch {torch.__version__}, the project's params.yaml, "
          f"{params['model']['arch']} {flops / 1e6:.2f} MFLOP/image forward")
    from bench.train_speed import run_peak
    from wmbench.device import resolve_device

    peak = run_peak(resolve_device(args.device), args.precision, args.peak_tflops)
    print(table(rows, args.device != "cpu" and torch.cuda.is_available(), flops, peak))


if __name__ == "__main__":
    main()
