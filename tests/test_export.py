"""ONNX export: a tiny model's file matches PyTorch, keeps a dynamic batch, and a mismatch fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from wmbench.export import ExportMismatchError, export_onnx
from wmbench.models import create_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, image_size=28, num_classes=10).eval()
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model, images


def test_export_tiny_model_matches_pytorch(tiny, tmp_path):
    model, images = tiny
    path = tmp_path / "tiny.onnx"
    check = export_onnx(model, images, path, tolerance=1e-4)
    assert check.images == 16 and check.label_mismatches == 0
    assert check.max_abs_diff <= 1e-4
    assert check.bytes == path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # single file, no temp left


def test_exported_file_names_no_local_path(tiny, tmp_path):
    """The file is the same wherever the project lives: no stack traces with this machine's paths."""
    model, images = tiny
    path = tmp_path / "tiny.onnx"
    export_onnx(model, images, path, tolerance=1e-4)
    text = path.read_bytes()
    assert b"stack_trace" not in text
    assert str(Path(__file__).resolve().parents[1]).encode() not in text


def test_export_batch_dimension_is_dynamic(tiny, tmp_path):
    model, images = tiny
    path = tmp_path / "tiny.onnx"
    export_onnx(model, images, path, tolerance=1e-4)
    proto = onnx.load(str(path))
    evaluator = ReferenceEvaluator(proto)
    name = proto.graph.input[0].name
    for n in (1, 5):
        x = torch.rand(n, 1, 28, 28)
        (logits,) = evaluator.run(None, {name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)


def test_export_over_tolerance_fails_and_writes_nothing(tiny, tmp_path):
    model, images = tiny
    path = tmp_path / "tiny.onnx"
    with pytest.raises(ExportMismatchError, match=r"max abs logit difference .* \(tolerance 1e-20\)"):
        export_onnx(model, images, path, tolerance=1e-20)
    assert list(tmp_path.iterdir()) == []
