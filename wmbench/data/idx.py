"""MNIST and Fashion-MNIST from IDX files (LeCun's format), gzip or plain."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from wmbench.data.base import DATASETS, Dataset

# IDX type codes (third magic byte) -> numpy dtype, big-endian as the format says.
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def parse_idx(raw: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode one IDX file's bytes into an array; errors name the file and the fault."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(
            f"{source} is not an IDX file: bad magic number {raw[:4].hex() or 'empty'} "
            "(expected 0000 then a type byte 08-0e)"
        )
    dims = raw[3]
    header = 4 + 4 * dims
    if dims == 0 or len(raw) < header:
        raise ValueError(f"{source}: IDX header promises {dims} dimensions but the file is too short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{source}: IDX header says shape {shape} ({expected} bytes) but the file has "
            f"{len(raw)} bytes; it is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping when the name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path}: {err}; the file is corrupt, fetch it again") from None
    return parse_idx(raw, str(path))


def find_idx_folder(root: Path, torchvision_name: str) -> Path | None:
    """The folder holding the four IDX files: ``root`` itself or torchvision's ``<Name>/raw``."""
    for folder in (root, root / torchvision_name / "raw", root / torchvision_name):
        if all(_find(folder, stem) for stem in FILES.values()):
            return folder
    return None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_dataset(root: Path, torchvision_name: str, hint: str) -> Dataset:
    """Load the four IDX files of an MNIST-layout dataset under ``root``."""
    folder = find_idx_folder(root, torchvision_name)
    if folder is None:
        raise FileNotFoundError(
            f"no {torchvision_name} IDX files ({', '.join(FILES.values())}, .gz or plain) in "
            f"{root} or {root / torchvision_name / 'raw'}; {hint}"
        )
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    return Dataset(
        arrays["train_images"][:, None].astype(np.uint8),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None].astype(np.uint8),
        arrays["test_labels"].astype(np.int64),
        num_classes=10,
    )


def _download(root: Path, name: str) -> None:
    import torchvision.datasets as tvd

    getattr(tvd, name)(str(root), train=True, download=True)
    getattr(tvd, name)(str(root), train=False, download=True)


@DATASETS.register("mnist")
def load_mnist(root: Path, download: bool) -> Dataset:
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 28x28 digits."""
    if download and find_idx_folder(root, "MNIST") is None:
        _download(root, "MNIST")
    return load_idx_dataset(root, "MNIST", "set data.download: true to fetch it")


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017); Debian's files work as they are.

    ``data.root: /usr/share/datasets/fashion-mnist`` after
    ``apt-get install dataset-fashion-mnist``.
    """
    if download and find_idx_folder(root, "FashionMNIST") is None:
        _download(root, "FashionMNIST")
    return load_idx_dataset(
        root,
        "FashionMNIST",
        "on Debian run `apt-get install dataset-fashion-mnist` and set "
        "data.root: /usr/share/datasets/fashion-mnist, or set data.download: true",
    )
