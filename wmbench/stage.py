"""What every stage script shares: argument parsing, threads, seeding, device, settings, timing, error exit."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from wmbench import __version__
from wmbench.device import cpu_name, resolve_device
from wmbench.files import write_json_atomic
from wmbench.params import Params, ParamsError, load_params
from wmbench.precision import check_supported
from wmbench.seeding import seed_everything

INTERRUPTED = 130  # the shell's exit code for a process ended by Ctrl-C (128 + SIGINT)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and adds ``(default: ...)`` to every option that has one.

    An option whose default is computed (``None``) says so in its own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def program_name(name: str) -> str:
    """``wmbench <name>`` when run through the ``wmbench`` command, else ``python -m stages.<name>``."""
    return f"wmbench {name}" if Path(sys.argv[0]).name == "wmbench" else f"python -m stages.{name}"


def stage_parser(description: str, name: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser named after stage ``name``, with the ``--params`` and ``--threads`` every stage takes."""
    parser = argparse.ArgumentParser(prog=program_name(name) if name else None, description=description,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch, overriding params.yaml's `threads` (0 = every core this "
                             "process may use); default: the params file's value")
    return parser


def resolve_threads(threads: int) -> int:
    """``threads`` if positive, else every core this process may use (``0`` = auto)."""
    if threads > 0:
        return threads
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(cores))


def set_threads(threads: int) -> int:
    """Set torch's intra-op CPU threads and the BLAS pools already loaded (``0`` = every core); the count in use.

    NumPy's OpenBLAS sizes its pool from ``OMP_NUM_THREADS`` when it loads, and
    a matrix product's float sums depend on how it is split: ONNX's reference
    evaluator (the export check) multiplies with it, so without this limit the
    export stage's logit differences changed in their last bits with the shell's
    environment. Limited here, a stage's numbers follow ``threads`` alone.
    """
    count = resolve_threads(threads)
    torch.set_num_threads(count)
    threadpool_limits(limits=count, user_api="blas")  # NumPy is loaded: wmbench.seeding imports it
    return count


def start(params_path: str, threads: int | None = None) -> tuple[Params, torch.device]:
    """Validate params, set the threads, seed everything, pick the device and check it runs ``precision``.

    All before any work. ``threads`` (a ``--threads`` flag) overrides the params
    file; ``params.threads`` then holds the count in use, so it is what gets recorded.
    """
    params = load_params(params_path)
    params.threads = set_threads(params.threads if threads is None else threads)
    seed_everything(params.seed)
    device = resolve_device(params.device)
    check_supported(params.precision, device)
    return params, device


def run_settings(stage: str, params: Params, device: torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """What made a run: the settings shared by every stage plus the stage's own (``extra``), JSON-ready."""
    return {
        "stage": stage,
        "wmbench": __version__,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "seed": params.seed,
        "threads": params.threads,
        "device": str(device) if device is not None else params.device,
        "precision": params.precision,
        "channels_last": params.channels_last,
        "data": {"name": params.data.name, "adversary_fraction": params.data.adversary_fraction},
        "watermark": {"scheme": params.watermark.scheme, "target": params.watermark.target,
                      "trigger_set": params.watermark.trigger_set},
        "model": {"arch": params.model.arch, "checkpoint": params.model.checkpoint},
        **{key: _plain(value) for key, value in extra.items()},
    }


SETTINGS_HELP = ("what made the run (the stage's effective params, seed, threads, device, precision, data set, "
                 "version), not a metric; default: the metrics path with metrics/ as settings/ "
                 "(metrics/embed.json -> settings/embed.json), else <metrics name>.settings.json beside it")


def settings_path(metrics: str | os.PathLike[str], explicit: str | None = None) -> Path:
    """``explicit`` if given, else the metrics path with its ``metrics`` folder as ``settings``.

    ``metrics/remove/x.json`` -> ``settings/remove/x.json``; a metrics file
    outside a ``metrics`` folder gets ``<name>.settings.json`` beside it.
    """
    if explicit:
        return Path(explicit)
    parts = list(Path(metrics).parts)
    if "metrics" in parts[:-1]:
        index = len(parts) - 2 - parts[-2::-1].index("metrics")
        parts[index] = "settings"
        return Path(*parts)
    path = Path(metrics)
    return path.with_name(f"{path.stem}.settings.json")


def write_settings(
    settings: dict[str, Any], metrics: str | os.PathLike[str], explicit: str | None = None
) -> None:
    """Write ``settings`` beside the run's ``metrics`` (:func:`settings_path`; not a metric), and say so in one line."""
    path = settings_path(metrics, explicit)
    write_json_atomic(path, settings)
    shared = ("stage", "wmbench", "torch", "cpu", "data", "watermark", "model")
    own = {k: v for k, v in settings.items() if k not in shared}
    print(f"{settings['stage']}: settings {_inline(own)} -> {path}")


def _plain(value: Any) -> Any:
    """Dataclasses as dicts, infinities as strings (JSON has none)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def _inline(settings: dict[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            parts += [f"{key}.{k}={v}" for k, v in value.items() if not isinstance(v, dict)]
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class InterruptedAfterWriting(KeyboardInterrupt):
    """Ctrl-C arrived while the outputs were being written; they were finished first."""


@contextmanager
def writing_outputs() -> Iterator[None]:
    """Hold Ctrl-C while a stage writes its outputs, so they are all the old ones or all new.

    Each file is written to a temporary name and renamed (``wmbench.files``);
    this keeps a stage's several files together too. A Ctrl-C that came in
    meanwhile is raised afterwards as :class:`InterruptedAfterWriting`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise InterruptedAfterWriting


def run_stage(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error (bad params, missing file) prints one line and exits 2.

    Ctrl-C prints one line and exits 130: before the outputs are written it
    leaves every earlier output as it was (``interrupted; nothing written``).
    """
    try:
        main(argv)
    except (ParamsError, FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except InterruptedAfterWriting:
        print("interrupted; the outputs were written in full first", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return INTERRUPTED
    return 0


class Timer:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
