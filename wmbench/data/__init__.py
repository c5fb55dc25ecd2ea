"""Datasets by name (``data.name``) and the adversary's stratified subset."""

from wmbench.data import cifar, digits, idx  # noqa: F401  (register)
from wmbench.data.base import DATASETS, Dataset, load_dataset
from wmbench.data.split import adversary_holdout_split, adversary_indices, holdout_indices, owner_adversary_split

__all__ = ["DATASETS", "Dataset", "adversary_holdout_split", "adversary_indices", "holdout_indices", "load_dataset",
           "owner_adversary_split"]
