"""scikit-learn's bundled handwritten digits at 28x28: the offline default dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wmbench.data.base import DATASETS, Dataset

TEST_FRACTION = 0.25  # digits has no official test split; this fixed one stands in
SPLIT_SEED = 0  # the split is part of the dataset, the same for every experiment seed


@DATASETS.register("digits")
def load_digits(root: Path, download: bool) -> Dataset:
    """1,797 8x8 digits (UCI, via scikit-learn) upsampled bilinearly to 28x28 uint8.

    A fixed stratified 25% of them is the test set. ``root`` and ``download``
    are not used: the data ships inside scikit-learn.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    small = torch.from_numpy(bunch.images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return Dataset(images[train], labels[train], images[test], labels[test], num_classes=10)
