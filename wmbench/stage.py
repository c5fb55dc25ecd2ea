"""What every stage script shares: argument parsing, seeding, device, timing, error exit."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from wmbench.device import resolve_device
from wmbench.params import Params, ParamsError, load_params
from wmbench.precision import check_supported
from wmbench.seeding import seed_everything


def stage_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the ``--params`` every stage takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def start(params_path: str) -> tuple[Params, torch.device]:
    """Validate params, seed everything, pick the device and check it runs ``precision``: all before any work."""
    params = load_params(params_path)
    seed_everything(params.seed)
    device = resolve_device(params.device)
    check_supported(params.precision, device)
    return params, device


def run_stage(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a user error (bad params, missing file) prints one line and exits 2."""
    try:
        main(argv)
    except (ParamsError, FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


class Timer:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
