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


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``labels`` to train on and to hold out: a stratified ``fraction`` kept aside.

    The adversary judges its settings (epochs, beta, lr, ...) on images it
    did not train on (``data.adversary_holdout``), never on the owner's test
    set. Per class, ``round(fraction * n_class)`` held out, at least one and
    never the class's last image; ``fraction`` 0 holds nothing out.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"data.adversary_holdout must be in [0, 1), got {fraction}")
    if fraction == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(rng.choice(members, size=take, replace=False))
    holdout = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), holdout), holdout


def adversary_holdout_split(labels: np.ndarray, fraction: float, run_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`holdout_indices` keyed by the run's seed: the one split every stage that reads the held-out slice
    shares (the removals train on the first part; ``robustness`` judges them on the second)."""
    from wmbench.seeding import derive_seed

    return holdout_indices(labels, fraction, derive_seed(run_seed, "adversary-holdout"))


def owner_adversary_split(labels: np.ndarray, fraction: float, holdout: float, pool: float,
                          run_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the training split of the owner's images and of the adversary's (its held-out slice included).

    ``pool`` 0: the owner trains on every image and the adversary holds a
    stratified ``fraction`` of them, its held-out slice too, so the owner's
    model has memorised the images the adversary judges by. ``pool`` > 0: a
    stratified ``pool`` share of the split, drawn with the run's seed alone (so
    every adversary fraction shares one owner), is kept from the owner; the
    adversary's share is drawn from the rest, and the positions
    :func:`adversary_holdout_split` will hold out are filled with pool images
    of the same class, the first of each class in the pool's order (so a
    smaller slice is part of a larger one). The adversary then trains on the
    same share of the owner's (smaller) set and judges on images of its own
    that the owner's model never saw: an unbiased estimate of what it costs.
    """
    from wmbench.seeding import derive_seed

    if pool == 0:
        return np.arange(len(labels)), adversary_indices(labels, fraction, derive_seed(run_seed, "split"))
    reserved = adversary_indices(labels, pool, derive_seed(run_seed, "holdout-pool"))
    owner = np.setdiff1d(np.arange(len(labels)), reserved)
    adversary = owner[adversary_indices(labels[owner], fraction, derive_seed(run_seed, "split"))]
    _, held = adversary_holdout_split(labels[adversary], holdout, run_seed)
    for cls in np.unique(labels[adversary][held]):
        slots = held[labels[adversary][held] == cls]
        spare = reserved[labels[reserved] == cls]
        if len(spare) < len(slots):
            raise ValueError(f"data.holdout_pool={pool} keeps {len(spare)} images of class {cls} from the owner, but "
                             f"the adversary's held-out slice needs {len(slots)}; raise data.holdout_pool to at least "
                             f"data.adversary_fraction x data.adversary_holdout ({fraction * holdout:g})")
        adversary[slots] = spare[: len(slots)]
    return owner, adversary
