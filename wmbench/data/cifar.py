"""CIFAR-10 from torchvision's python-batches layout, read without trusting pickle."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from wmbench.data.base import DATASETS, Dataset

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other class is refused."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (images (N, 3, 32, 32) uint8, labels int64)."""
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {err}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected (N, 3072) data and N labels, got {data.shape}, {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


@DATASETS.register("cifar10")
def load_cifar10(root: Path, download: bool) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images in 10 classes."""
    folder = root / FOLDER
    if download and not folder.is_dir():
        import torchvision.datasets as tvd

        tvd.CIFAR10(str(root), train=True, download=True)
    missing = [n for n in [*TRAIN_BATCHES, TEST_BATCH] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {missing} not found in {folder}; set data.download: true "
            "or unpack cifar-10-python.tar.gz under data.root"
        )
    parts = [read_batch(folder / n) for n in TRAIN_BATCHES]
    test_images, test_labels = read_batch(folder / TEST_BATCH)
    return Dataset(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        test_images,
        test_labels,
        num_classes=10,
    )
