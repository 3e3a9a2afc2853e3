"""A level correction of a model file (release.recalibrate): the output moved, nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from release.recalibrate import RecalibrationError, expected_after, shift_output


def graph_file(path: Path, with_shift: bool = True) -> Path:
    """y = expm1(x * target_scale + target_shift), as the network's log1p head exports it."""
    inits = [numpy_helper.from_array(np.array(1.5, np.float32), "target_scale")]
    nodes = [helper.make_node("Mul", ["x", "target_scale"], ["scaled"])]
    if with_shift:
        inits.append(numpy_helper.from_array(np.array(4.0, np.float32), "target_shift"))
        nodes.append(helper.make_node("Add", ["scaled", "target_shift"], ["moved"]))
    nodes += [
        helper.make_node("Exp", ["moved" if with_shift else "scaled"], ["e"]),
        helper.make_node("Sub", ["e", "one"], ["y"]),
    ]
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_shifted_file_multiplies_one_plus_the_prediction_by_the_factor_and_changes_nothing_else(tmp_path) -> None:
    source = graph_file(tmp_path / "model.onnx")
    shift_output(source, tmp_path / "shifted.onnx", np.log(1.5))
    x = np.linspace(-1, 1, 9).astype(np.float32)
    before, after = run(source, x), run(tmp_path / "shifted.onnx", x)
    assert np.allclose(after, expected_after(before.astype(np.float64), "log1p", np.log(1.5)), rtol=1e-5)
    assert np.allclose(expected_after(np.array([2.0]), "standardize", 0.5), [2.5])
    names = [t.name for t in onnx.load(str(tmp_path / "shifted.onnx")).graph.initializer]
    assert names == [t.name for t in onnx.load(str(source)).graph.initializer]


def test_a_file_without_a_target_shift_is_refused_by_name(tmp_path) -> None:
    source = graph_file(tmp_path / "plain.onnx", with_shift=False)
    with pytest.raises(RecalibrationError, match="plain.onnx: no `target_shift` initializer"):
        shift_output(source, tmp_path / "out.onnx", 0.2)
