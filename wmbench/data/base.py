"""The dataset registry and the in-memory form every loader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from wmbench.registry import Registry


@dataclass
class Dataset:
    """A train/test split as uint8 images (N, C, H, W) and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)


class Loader(Protocol):
    def __call__(self, root: Path, download: bool) -> Dataset: ...


DATASETS: Registry[Loader] = Registry("dataset")


def load_dataset(name: str, root: str | Path = "data/raw", download: bool = False) -> Dataset:
    """Load the dataset registered as ``name`` from ``root`` (downloads only if asked)."""
    return DATASETS.get(name)(Path(root), download)
