"""ONNX export of a classifier, checked against PyTorch before it is kept.

The file is one self-contained ``.onnx`` (weights inside, no external data)
whose batch dimension is dynamic. The check runs the file through ONNX's own
reference evaluator (``onnx.reference.ReferenceEvaluator``, no onnxruntime
needed) and compares logits and predicted labels with the PyTorch model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from wmbench.files import atomic_path

STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # metadata the dynamo exporter writes on each node


class ExportMismatchError(ValueError):
    """The ONNX file computes something else than the PyTorch model; nothing is written."""


@dataclass
class ExportCheck:
    """How closely the ONNX file matches PyTorch on the check images."""

    images: int  # how many inputs were compared
    max_abs_diff: float  # largest absolute difference of any logit
    label_mismatches: int  # inputs whose predicted class differs
    bytes: int  # size of the .onnx file

    def as_metrics(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "label_mismatches": self.label_mismatches,
            "bytes": self.bytes,
        }


def export_onnx(
    model: nn.Module, images: torch.Tensor, path: str | os.PathLike[str], *, tolerance: float, opset: int = 18
) -> ExportCheck:
    """Export ``model`` to ``path`` as ONNX with a dynamic batch, after checking it on ``images``.

    ``images`` (N, C, H, W) in [0, 1] on the CPU. The file is written to a
    temporary name, validated with ``onnx.checker`` (full shape inference),
    run through the reference evaluator, and moved onto ``path`` only when the
    largest logit difference is at most ``tolerance`` and every predicted label
    agrees; otherwise :class:`ExportMismatchError` says by how much it failed.
    """
    model = model.cpu().eval()
    example = images[:2]
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                dynamic_shapes=({0: batch},), verbose=False,
            )
        strip_stack_traces(tmp)
        check = check_onnx(tmp, model, images)
        if check.max_abs_diff > tolerance or check.label_mismatches:
            raise ExportMismatchError(
                f"ONNX export of {Path(path).name} does not match PyTorch on {check.images} images: "
                f"max abs logit difference {check.max_abs_diff:.3g} (tolerance {tolerance:g}), "
                f"{check.label_mismatches} predicted labels differ"
            )
    return check


def strip_stack_traces(path: str | os.PathLike[str]) -> None:
    """Drop the exporter's per-node Python stack traces, which name this machine's file paths.

    Without them the file is the same wherever the project is checked out, and
    shares no local paths; the node names and scopes the exporter records stay.
    """
    proto = onnx.load(str(path))
    nodes = list(proto.graph.node) + [node for function in proto.functions for node in function.node]
    for node in nodes:
        kept = [prop for prop in node.metadata_props if prop.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def check_onnx(path: str | os.PathLike[str], model: nn.Module, images: torch.Tensor) -> ExportCheck:
    """Validate the ONNX file and compare its logits on ``images`` with ``model``'s."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportMismatchError(f"the exported ONNX file is invalid: {err}") from None
    proto = onnx.load(str(path))
    (graph_input,) = [i.name for i in proto.graph.input]
    onnx_logits = ReferenceEvaluator(proto).run(None, {graph_input: images.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        torch_logits = model.cpu().eval()(images).numpy()
    if onnx_logits.shape != torch_logits.shape:
        raise ExportMismatchError(
            f"ONNX output shape {onnx_logits.shape} differs from PyTorch's {torch_logits.shape}"
        )
    return ExportCheck(
        images=len(images),
        max_abs_diff=float(np.abs(onnx_logits - torch_logits).max()),
        label_mismatches=int((onnx_logits.argmax(1) != torch_logits.argmax(1)).sum()),
        bytes=Path(path).stat().st_size,
    )
