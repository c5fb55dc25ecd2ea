"""Optional speed settings: bf16 autocast and channels-last memory format (params ``precision``, ``channels_last``).

Both are off by default, and off they change nothing: ``fp32`` enters no
context and ``channels_last: false`` converts nothing, so results stay
bit-identical. A stage enters :func:`autocast` around its work; autocast is
a context, so it reaches every forward pass inside (training, evaluation,
removal methods, Neural Cleanse) with no change to them. Parameters,
optimizer state and gradients stay fp32; the loss reductions autocast keeps
in fp32 stay there; bf16 needs no grad scaler (fp32's exponent range).
Channels-last is a memory layout only: the same values, strided as
(N, H, W, C), which cuDNN's convolutions run faster on recent NVIDIA GPUs.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from wmbench.prepared import Prepared

PRECISIONS = ("fp32", "bf16")  # the values of the `precision` param


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The context forward passes run in: ``torch.autocast`` to bfloat16 for ``bf16``, nothing for ``fp32``.

    After the PyTorch AMP recipe (``torch.autocast``), with one difference:
    the recipe enters autocast around each forward pass, we enter it once
    around a whole stage, so its weight cache is off. The cache keeps the
    bf16 copy of each weight until the context exits; across optimizer
    steps every forward would see the first step's weights and the model
    would never learn. Without it each forward casts the current weights
    (what the per-step recipe does anyway). Backward passes run inside the
    context too, which changes nothing: each backward op takes its forward's
    dtype, and gradients of the fp32 parameters come back fp32.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")


def check_supported(precision: str, device: torch.device) -> None:
    """Fail before any work when the GPU cannot run ``precision`` natively (bf16 needs Ampere or newer)."""
    if precision != "bf16" or device.type != "cuda":
        return
    with torch.cuda.device(device):
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(
                f"precision='bf16' but {torch.cuda.get_device_name()} has no native bfloat16; use precision: fp32"
            )


def channels_last_model(model: nn.Module, enabled: bool) -> nn.Module:
    """``model`` with its 4-D weights in channels-last layout (in place) when ``enabled``; as is otherwise."""
    return model.to(memory_format=torch.channels_last) if enabled else model


def channels_last_prepared(prepared: Prepared, enabled: bool) -> Prepared:
    """``prepared`` whose image arrays are laid out (N, H, W, C) in memory when ``enabled``; as is otherwise.

    Shapes and values stay (N, C, H, W); only the strides change. Every
    :class:`~wmbench.training.DeviceData` made from it by ``prepared.on``
    keeps that layout (tensor conversion, ``.to`` and scaling preserve
    strides), and so do its shuffled batches (indexing preserves them), so
    one call at stage start reaches every batch the stage runs.
    """
    if not enabled:
        return prepared
    arrays = {split: (_channels_last_array(images), labels) for split, (images, labels) in prepared.arrays.items()}
    return Prepared(arrays, prepared.info)


def _channels_last_array(images: np.ndarray) -> np.ndarray:
    """The same (N, C, H, W) array, copied so that C varies fastest in memory."""
    if images.ndim != 4:
        return images
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
