"""The adversary's share of the training data, stratified by class."""

from __future__ import annotations

import numpy as np


def adversary_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels``, at least one per class.

    The adversary holds a small part of the owner's training data (Aiken et al.,
    Sec. 3; Liu et al., WILD, Sec. IV-A): a subset of the owner's set, not a
    disjoint one. Per class, ``round(fraction * n_class)`` images, at least one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"data.adversary_fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    picks = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(len(members), max(1, round(fraction * len(members))))
        picks.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picks))
