"""ONNX export of a classifier, checked against PyTorch before it is kept.

The file is one self-contained ``.onnx`` (weights inside, no external data)
whose batch dimension is dynamic. The check runs the file through ONNX's own
reference evaluator (``onnx.reference.ReferenceEvaluator``, no onnxruntime
needed) and compares logits and predicted labels with the PyTorch model.

Two things keep this quick without weakening it. Tracing a model takes seconds,
so a model whose architecture was already exported reuses that file's graph
with its own weights (:func:`with_weights`); the check then runs on the new file
as on a traced one. And the reference evaluator's MaxPool walks every output
pixel in Python when the stride is not 1 (most of the check's time on LeNet);
:class:`MaxPool` computes the same values with NumPy windows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.lib.stride_tricks import sliding_window_view
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool
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
    model: nn.Module, images: torch.Tensor, path: str | os.PathLike[str], *, tolerance: float, opset: int = 18,
    like: str | os.PathLike[str] | None = None,
) -> ExportCheck:
    """Export ``model`` to ``path`` as ONNX with a dynamic batch, after checking it on ``images``.

    ``images`` (N, C, H, W) in [0, 1] on the CPU. The file is written to a
    temporary name, validated with ``onnx.checker`` (full shape inference),
    run through the reference evaluator, and moved onto ``path`` only when the
    largest logit difference is at most ``tolerance`` and every predicted label
    agrees; otherwise :class:`ExportMismatchError` says by how much it failed.
    ``like``: a file this function wrote for a model of the same architecture,
    whose graph is reused with ``model``'s weights instead of tracing again; where
    the weights do not line up or that file fails the check, ``model`` is traced.
    """
    model = model.cpu().eval()
    if like is not None and (proto := with_weights(onnx.load(str(like)), model)) is not None:
        try:
            with atomic_path(path) as tmp:
                onnx.save(proto, str(tmp))
                return checked(tmp, path, model, images, tolerance)
        except ExportMismatchError:
            pass  # a weight the exporter folded into another constant: trace this model afresh
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
        return checked(tmp, path, model, images, tolerance)


def checked(
    tmp: Path, path: str | os.PathLike[str], model: nn.Module, images: torch.Tensor, tolerance: float
) -> ExportCheck:
    """:func:`check_onnx` on ``tmp``; :class:`ExportMismatchError` unless it is within ``tolerance``."""
    check = check_onnx(tmp, model, images)
    if check.max_abs_diff > tolerance or check.label_mismatches:
        raise ExportMismatchError(
            f"ONNX export of {Path(path).name} does not match PyTorch on {check.images} images: "
            f"max abs logit difference {check.max_abs_diff:.3g} (tolerance {tolerance:g}), "
            f"{check.label_mismatches} predicted labels differ"
        )
    return check


def with_weights(template: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto | None:
    """``template`` with each initializer named after one of ``model``'s state_dict entries set to that entry.

    The dynamo exporter names a weight's initializer after its state_dict key,
    so two models of one architecture export to the same graph with other
    initializer values. None when no initializer is named so, or one that is
    has another shape or dtype or keeps its values outside ``raw_data``: the
    caller then traces. A weight folded into a constant of another name would
    go unchanged; the check against PyTorch that follows catches that.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(template)
    state = model.state_dict()
    replaced = 0
    for initializer in proto.graph.initializer:
        tensor = state.get(initializer.name)
        if tensor is None:
            continue
        array = tensor.detach().cpu().numpy()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
        if (tuple(initializer.dims) != array.shape or dtype != array.dtype or not initializer.HasField("raw_data")
                or initializer.data_location != onnx.TensorProto.DEFAULT):
            return None
        initializer.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        replaced += 1
    return proto if replaced else None


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
    evaluator = ReferenceEvaluator(proto, new_ops=[MaxPool])
    onnx_logits = evaluator.run(None, {graph_input: images.numpy().astype(np.float32)})[0]
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


class MaxPool(ReferenceMaxPool):
    """ONNX MaxPool for the reference evaluator: 2-D float pooling by NumPy windows, the same values as ONNX's own.

    ONNX's reference takes a Python loop over every output pixel whenever a stride
    or dilation is not 1. Here the input is padded with -inf, every window is
    viewed at once and reduced with ``max``; a window that lies wholly in the
    padding gives 0, as the reference's does. Other cases (dilations, auto_pad,
    the Indices output, integers, NaN inputs) go to the reference unchanged.
    """

    def _max_pool(  # the reference's own signature
        self, x: np.ndarray, auto_pad: str | None, ceil_mode: int | None, dilations: list[int] | None,
        kernel_shape: list[int], pads: list[int] | None, storage_order: int | None, strides: list[int] | None,
    ) -> tuple[np.ndarray, ...]:
        plain = (
            x.ndim == 4 and len(self.output) == 1 and np.issubdtype(x.dtype, np.floating)
            and (auto_pad in (None, "", "NOTSET")) and (dilations is None or set(dilations) == {1})
            and not np.isnan(x).any()
        )
        if not plain:
            return super()._max_pool(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, storage_order, strides)
        pads = list(pads) if pads is not None else [0, 0, 0, 0]
        strides = list(strides) if strides is not None else [1, 1]
        sizes = [pooled_size(x.shape[2 + i], kernel_shape[i], strides[i], pads[i], pads[i + 2], bool(ceil_mode))
                 for i in range(2)]
        widths = [(pads[i], max(0, (sizes[i] - 1) * strides[i] + kernel_shape[i] - x.shape[2 + i] - pads[i]))
                  for i in range(2)]
        padded = np.pad(x, [(0, 0), (0, 0), *widths], constant_values=-np.inf)
        inside = np.pad(np.ones(x.shape[2:], dtype=bool), widths, constant_values=False)

        def pool(array: np.ndarray) -> np.ndarray:
            views = sliding_window_view(array, tuple(kernel_shape), axis=(-2, -1))
            return views[..., ::strides[0], ::strides[1], :, :][..., :sizes[0], :sizes[1], :, :].max(axis=(-2, -1))

        return (np.where(pool(inside), pool(padded), 0).astype(x.dtype),)


def pooled_size(size: int, kernel: int, stride: int, before: int, after: int, ceil_mode: bool) -> int:
    """Output length of a pooling window over ``size`` inputs, as the ONNX reference computes it."""
    span = size + before + after - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (pooled - 1) * stride >= size + before:  # the last window would start in the padding
        pooled -= 1
    return pooled
