"""A trigger set the model owner brings: an ``.npz`` or a folder of images with a labels file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_trigger_set(
    path: str | Path, image_shape: tuple[int, int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read the owner's trigger images as uint8 (N, C, H, W) and their watermark labels.

    ``.npz``: arrays ``images`` ((N, H, W), (N, C, H, W) or (N, H, W, C); uint8, or
    float in [0, 1]) and ``labels``. A folder: image files plus ``labels.csv`` with
    rows ``file,label``. Images must already have the dataset's size.
    """
    path = Path(path)
    if path.is_dir():
        images, labels = _read_folder(path)
    elif path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"trigger set {path} lacks arrays {sorted(missing)}; "
                    "save it with np.savez(path, images=..., labels=...)"
                )
            images, labels = archive["images"], archive["labels"]
    else:
        raise FileNotFoundError(
            f"trigger set {path} not found; give an .npz (images, labels) or a folder with labels.csv"
        )
    return _to_uint8_nchw(images, image_shape, path), _check_labels(labels, len(images), num_classes, path)


def _read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    table = folder / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{folder} has no labels.csv (rows: file,label)")
    images, labels = [], []
    with open(table, newline="") as handle:
        for row in csv.reader(handle):
            if not row or row[0].strip().lower() in ("file", "filename"):
                continue
            name, label = row[0].strip(), row[1].strip()
            image_path = folder / name
            if image_path.suffix.lower() not in IMAGE_SUFFIXES or not image_path.is_file():
                raise FileNotFoundError(f"{table}: image {name!r} not found or not an image file")
            images.append(np.asarray(Image.open(image_path)))
            labels.append(int(label))
    if not images:
        raise ValueError(f"{table} lists no images")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"trigger images in {folder} differ in shape: {sorted(shapes)}")
    return np.stack(images), np.asarray(labels)


def _to_uint8_nchw(images: np.ndarray, shape: tuple[int, int, int], source: Path) -> np.ndarray:
    channels, height, width = shape
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[2:] != (height, width):
        raise ValueError(
            f"trigger images in {source} have shape {images.shape}; this dataset needs {height}x{width} images"
        )
    if images.shape[1] != channels:
        if images.shape[1] == 3 and channels == 1:
            images = images.mean(axis=1, keepdims=True)
        elif images.shape[1] == 1 and channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:
            raise ValueError(f"trigger images in {source} have {images.shape[1]} channels; need {channels}")
    if np.issubdtype(images.dtype, np.floating):
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"float trigger images in {source} must lie in [0, 1]")
        images = np.round(images * 255)
    return np.clip(images, 0, 255).astype(np.uint8)


def _check_labels(labels: np.ndarray, count: int, num_classes: int, source: Path) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != count:
        raise ValueError(f"trigger set {source}: {count} images but {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"trigger labels in {source} must be integers in 0..{num_classes - 1}")
    return labels.astype(np.int64)
