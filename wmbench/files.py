"""Atomic output files: write beside the target, then ``os.replace`` into place.

A stage that is killed half-way leaves either the previous file or none, never
a truncated one.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically: the same object, the same bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (e.g. a markdown report) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a list of flat records as CSV (header = union of keys, in first-seen order)."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def save_arrays_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Save named arrays as an uncompressed ``.npz``, atomically (no pickled objects).

    The bytes depend only on the arrays: ``np.savez`` stamps every member with
    the zip format's fixed 1980-01-01 date, not the time of writing.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a ``.npz`` written by :func:`save_arrays_atomic`, refusing pickled objects."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv_atomic`; numbers come back as int or float."""
    with open(path, newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
