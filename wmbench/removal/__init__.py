"""Watermark removal methods by name: ``REMOVALS.get("wild_js")``.

Every module in this package registers its methods with ``@REMOVALS.register``;
importing the package imports them all, which is the only thing it does.
"""

import importlib
import pkgutil

from wmbench.removal.base import (
    REMOVALS,
    Removal,
    RemovalData,
    RemovalResult,
    TrainingSettings,
    copy_model,
    create_removal,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "REMOVALS", "Removal", "RemovalData", "RemovalResult", "TrainingSettings", "copy_model", "create_removal",
]
