"""Every input of a run checked at once, before DVC touches any output (the ``check`` stage).

DVC deletes a stage's outputs before it runs the stage's command, so a value
that a stage refuses would already have cost that stage's previous results,
including metrics and plots that DVC does not cache. ``check`` runs first,
depends on the whole of params.yaml and on the owner's folder, and every other
stage depends on what it writes: a bad value stops ``dvc repro`` before any
other stage starts, and a key no stage reads (``-S +betta=10``) is refused like
any other unknown key, because the schema is the params dataclasses.

It writes three small records (:data:`RECORDS`) whose bytes change only when
what a later stage reads changes, so a valid change re-runs only the stages
that read it:

- ``params.json``: the same for every valid params.yaml; every stage depends on it;
- ``checkpoint.json``: path and SHA-256 of ``model.checkpoint``; ``embed`` depends on it;
- ``trigger_set.json``: path, size and SHA-256 of ``watermark.trigger_set``; ``prepare`` depends on it.

The owner's files must lie inside the owner folder (``owner/``), which the
``check`` stage lists as a DVC dependency: DVC cannot depend on a path that is
a parameter's value, so a file elsewhere could change unseen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmbench.checkpoint import load_state_dict, load_weights
from wmbench.data import load_dataset
from wmbench.device import resolve_device
from wmbench.files import write_json_atomic
from wmbench.models import create_model
from wmbench.params import Params, ParamsError, load_params
from wmbench.precision import check_supported
from wmbench.seeding import derive_seed
from wmbench.triggers import load_trigger_set
from wmbench.watermarks import build_watermark

RECORDS = ("params.json", "checkpoint.json", "trigger_set.json")  # file names under the check stage's folder


@dataclass
class CheckedInputs:
    """Validated params and the records later stages depend on (file name -> JSON object)."""

    params: Params
    records: dict[str, dict[str, Any]]


def check_inputs(params_path: str | Path = "params.yaml", owner: str | Path = "owner") -> CheckedInputs:
    """Check everything a stage could refuse, in the order a user would fix it; :class:`ParamsError` on the first.

    1. params.yaml: every key known to the params dataclasses (each removal
       method's own ``Params`` included), every value of the right type and range;
    2. ``device`` exists and runs ``precision``;
    3. the dataset loads (from ``data.root``), and the architecture and the
       watermark scheme can be built for its channels, image size and classes;
    4. ``model.checkpoint`` and ``watermark.trigger_set``, when given, lie inside
       ``owner`` and load: tensors only, the architecture's exact shapes, images
       of the dataset's size with labels that are classes.
    """
    params = load_params(params_path)
    check_supported(params.precision, resolve_device(params.device))
    with _naming("data.root", params.data.root):
        dataset = load_dataset(params.data.name, params.data.root, params.data.download)
    channels, size, _ = dataset.image_shape
    with _naming("model.arch", params.model.arch):
        model = create_model(params.model.arch, in_channels=channels, image_size=size,
                             num_classes=dataset.num_classes)
    build_watermark(
        params.watermark.scheme, params.watermark.scheme_options, target=params.watermark.target,
        image_shape=dataset.image_shape, num_classes=dataset.num_classes,
        seed=derive_seed(params.seed, "watermark"), size=params.watermark.size,
    )
    checkpoint: dict[str, Any] = {"path": params.model.checkpoint}
    if params.model.checkpoint:
        path = _owned("model.checkpoint", params.model.checkpoint, owner)
        with _naming("model.checkpoint", params.model.checkpoint):
            load_weights(model, load_state_dict(path), source=params.model.checkpoint)
        checkpoint["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    trigger_set: dict[str, Any] = {"path": params.watermark.trigger_set}
    if params.watermark.trigger_set:
        path = _owned("watermark.trigger_set", params.watermark.trigger_set, owner)
        with _naming("watermark.trigger_set", params.watermark.trigger_set):
            images, labels = load_trigger_set(path, dataset.image_shape, dataset.num_classes)
        trigger_set.update(images=len(labels), sha256=_arrays_sha256(images, labels))
    records = {
        "params.json": {"params": str(params_path), "valid": True},
        "checkpoint.json": checkpoint,
        "trigger_set.json": trigger_set,
    }
    return CheckedInputs(params, records)


def write_records(folder: str | Path, records: dict[str, dict[str, Any]]) -> None:
    """Write each record as ``folder/<name>`` (sorted-key JSON, atomically): the same inputs, the same bytes."""
    for name in RECORDS:
        write_json_atomic(Path(folder) / name, records[name])


def _owned(key: str, value: str, owner: str | Path) -> Path:
    """``value`` as a path inside ``owner``, or a :class:`ParamsError` that says how to put it there.

    A symbolic link in ``owner`` to a file elsewhere counts as inside: DVC follows it.
    """
    path, folder = Path(value), Path(owner)
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder)):
        raise ParamsError(
            f"{key}={value!r} is outside {folder}/, the folder DVC watches for your own files; "
            f"copy it there (cp -r {value} {folder}/) and set {key}={(folder / path.name).as_posix()}"
        )
    return path


@contextmanager
def _naming(key: str, value: str) -> Iterator[None]:
    """Turn a loader's ``ValueError``/``FileNotFoundError`` into a one-line :class:`ParamsError` naming ``key``."""
    try:
        yield
    except ParamsError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise ParamsError(f"{key}={value!r}: {' '.join(str(err).split())}") from None


def _arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the trigger set as the stages read it (uint8 NCHW images, int64 labels)."""
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
