"""Checkpoints that rebuild their own model and never unpickle code.

A checkpoint is a ``torch.save`` of ``{"state_dict": tensors, "meta": JSON string}``.
Loading uses ``weights_only=True``, so a file from elsewhere cannot run code;
``meta`` holds the architecture name and its constructor kwargs, the seed and
the params that produced it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wmbench.files import atomic_path
from wmbench.models import create_model


@dataclass
class Checkpoint:
    """A loaded checkpoint: the weights and what built them."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def build_model(self) -> nn.Module:
        """Rebuild the architecture named in ``meta`` and load the weights into it."""
        model = create_model(self.meta["arch"], **self.meta["arch_kwargs"])
        load_weights(model, self.state_dict, source=self.meta.get("source", "checkpoint"))
        return model


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights plus ``meta`` (must contain ``arch`` and ``arch_kwargs``) atomically.

    The same weights and meta give the same bytes, wherever and whenever written.
    """
    missing = {"arch", "arch_kwargs"} - set(meta)
    if missing:
        raise ValueError(f"checkpoint meta lacks {sorted(missing)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # A file object, not a path: torch names the archive's root folder after a path
        # (here the random temporary name), but "archive" for a file object.
        torch.save({"state_dict": state, "meta": json.dumps(meta, sort_keys=True)}, handle)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a wmbench checkpoint with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    blob = load_tensors_file(path)
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise ValueError(
            f"{path} is not a wmbench checkpoint (expected keys 'state_dict' and 'meta')"
        )
    return Checkpoint(state_dict=blob["state_dict"], meta=json.loads(blob["meta"]))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from elsewhere: ``.safetensors``, a ``torch.save``d state dict, or a wmbench checkpoint.

    Never unpickles code: torch files load with ``weights_only=True``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _require_file(path)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    blob = load_tensors_file(path)
    if isinstance(blob, dict) and "state_dict" in blob and "meta" in blob:
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ValueError(
            f"{path} holds no state dict (a mapping of parameter names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return blob


def load_tensors_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with messages that name the problem and the fix."""
    _require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects, not only tensors"
        raise ValueError(
            f"refusing to load {path}: it holds {what}, and loading it could run code. "
            "Save a state dict instead: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {err}") from None


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run the stage that writes it or fix the path")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model``, naming missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshapen = sorted(
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or misshapen:
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {misshapen[:5]}; "
            "check model.arch and the dataset's classes and image size"
        )
    model.load_state_dict(state_dict)
