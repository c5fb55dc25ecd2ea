"""ONNX export: a tiny model's file matches PyTorch, keeps a dynamic batch, and a mismatch fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from wmbench.export import ExportMismatchError, MaxPool, export_onnx, with_weights
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


def test_reused_graph_with_other_weights_is_the_traced_file(tiny, tmp_path):
    """A second model of the architecture reuses the first file's graph and gets the bytes its own trace gives."""
    model, images = tiny
    torch.manual_seed(5)
    other = create_model("lenet", in_channels=1, image_size=28, num_classes=10).eval()
    export_onnx(model, images, tmp_path / "first.onnx", tolerance=1e-4)
    traced = export_onnx(other, images, tmp_path / "traced.onnx", tolerance=1e-4)
    reused = export_onnx(other, images, tmp_path / "reused.onnx", tolerance=1e-4, like=tmp_path / "first.onnx")
    assert (tmp_path / "reused.onnx").read_bytes() == (tmp_path / "traced.onnx").read_bytes()
    assert reused == traced


def test_no_reuse_across_architectures(tiny, tmp_path):
    """Weights that do not fit the file's initializers are not swapped in: the model is traced instead."""
    model, images = tiny
    export_onnx(model, images, tmp_path / "ten.onnx", tolerance=1e-4)
    torch.manual_seed(0)
    three = create_model("lenet", in_channels=1, image_size=28, num_classes=3).eval()
    assert with_weights(onnx.load(str(tmp_path / "ten.onnx")), three) is None
    check = export_onnx(three, images, tmp_path / "three.onnx", tolerance=1e-4, like=tmp_path / "ten.onnx")
    assert check.label_mismatches == 0
    assert onnx.load(str(tmp_path / "three.onnx")).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


@pytest.mark.parametrize(("kernel", "strides", "pads", "ceil_mode"), [
    ((2, 2), (2, 2), (0, 0, 0, 0), 0),
    ((3, 3), (2, 2), (1, 1, 1, 1), 0),
    ((3, 2), (3, 2), (1, 0, 0, 1), 1),
    ((2, 2), (2, 1), (0, 0, 1, 1), 1),
])
def test_max_pool_gives_the_reference_values(kernel, strides, pads, ceil_mode):
    """The evaluator's quick MaxPool equals ONNX's own, padding and ceil mode included."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), ceil_mode=ceil_mode)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    (expected,) = ReferenceEvaluator(proto).run(None, {"x": x})
    (quick,) = ReferenceEvaluator(proto, new_ops=[MaxPool]).run(None, {"x": x})
    assert quick.shape == expected.shape
    np.testing.assert_array_equal(quick, expected)
