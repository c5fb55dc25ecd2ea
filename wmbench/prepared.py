"""The ``prepare`` stage's output folder: the splits and trigger sets every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmbench.files import load_arrays, read_json, save_arrays_atomic, write_json_atomic
from wmbench.training import DeviceData

SPLITS = ("owner", "adversary", "test", "embedding", "trigger")


@dataclass
class Prepared:
    """The five sets as uint8 arrays, plus what describes them.

    owner: the owner's training split; adversary: the adversary's stratified
    subset of it; test: held-out test split; embedding: watermark samples mixed
    into the owner's training; trigger: the verification trigger set.
    """

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    info: dict[str, Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.info["image_shape"]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    def arch_kwargs(self) -> dict[str, int]:
        """Constructor arguments every architecture takes for this data."""
        c, h, _ = self.image_shape
        return {"in_channels": c, "image_size": h, "num_classes": self.num_classes}

    def on(self, split: str, device: torch.device) -> DeviceData:
        """One split on ``device``, scaled to [0, 1]."""
        images, labels = self.arrays[split]
        return DeviceData.from_arrays(images, labels, device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 array, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def save_prepared(folder: str | Path, prepared: Prepared) -> None:
    """One ``.npz`` per split plus ``info.json``, each written atomically."""
    folder = Path(folder)
    for split in SPLITS:
        images, labels = prepared.arrays[split]
        save_arrays_atomic(folder / f"{split}.npz", images=images, labels=labels)
    write_json_atomic(folder / "info.json", prepared.info)


def load_prepared(folder: str | Path) -> Prepared:
    """Read what :func:`save_prepared` wrote; names the stage to run when it is missing."""
    folder = Path(folder)
    if not (folder / "info.json").is_file():
        raise FileNotFoundError(f"{folder}/info.json not found; run `dvc repro prepare` first")
    arrays = {}
    for split in SPLITS:
        loaded = load_arrays(folder / f"{split}.npz")
        arrays[split] = (loaded["images"], loaded["labels"])
    return Prepared(arrays, read_json(folder / "info.json"))
