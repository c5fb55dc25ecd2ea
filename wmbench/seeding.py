"""Seeding: one master seed, named sub-streams, deterministic torch."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from wmbench.params import CLEAN_SEED_STRIDE


def derive_seed(seed: int, purpose: str) -> int:
    """A stable 31-bit seed for ``purpose`` (e.g. ``"split"``), independent of other purposes."""
    return (seed * 1_000_003 + zlib.crc32(purpose.encode())) % (2**31 - 1)


def clean_seeds(seed: int, count: int) -> list[int]:
    """The training seeds of run ``seed``'s ``count`` clean models: 1000 ``seed`` + 1 .. + ``count``.

    Disjoint across run seeds, so a grid over seeds calibrates every seed's
    threshold on its own clean models (``seed + 1 .. seed + N`` shared seeds
    2 and 3 between runs 0 and 1, the same models when the owner's data is
    the same); run seed 0 keeps 1 .. N.
    """
    if not 0 < count < CLEAN_SEED_STRIDE:
        raise ValueError(f"vanilla.seeds={count} must lie in 1..{CLEAN_SEED_STRIDE - 1}")
    return [CLEAN_SEED_STRIDE * seed + k for k in range(1, count + 1)]


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded for ``purpose``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels.

    Same seed, same machine, same numbers: warn-only determinism keeps
    operations without a deterministic kernel usable on GPU. cuBLAS is
    deterministic only with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``,
    PyTorch's reproducibility notes), read when CUDA starts, so it is set here,
    before any CUDA work, unless the caller already chose one.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build or re-initialise layers under ``seed`` on the CPU generator; the global random state is restored.

    Fresh weights (a new head, a discriminator, a scratch model) are then the
    same for a seed wherever they are made, and drawing them changes no other stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
