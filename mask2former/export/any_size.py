"""A dynamic-size export's outer layer: any H x W in, through a graph traced for multiples of the padding step.

torch.export cannot prove facts such as "H padded up to a multiple of 32 is at least H" for a symbolic H, so the
model is traced for sizes that are multiples of its size divisibility (its own padding is then a no-op) and these
ONNX nodes around it do the padding: the image is padded bottom/right to the next multiple with PIXEL_MEAN (which
normalises to the 0 that PyTorch pads with), and the scores are cropped back to H x W. The numbers are
PyTorch's: pixels are x + 0 inside and 0 + mean outside, both exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..inference.onnx_model import INPUT_NAME, OUTPUT_NAME

_INNER_INPUT, _INNER_OUTPUT = "any_size.padded_image", "any_size.padded_scores"


def accept_any_size(model: onnx.ModelProto, step: int, pixel_mean: Sequence[float]) -> onnx.ModelProto:
    """`model` (input "image" with sides multiple of `step`, output "scores") made to take any size."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [_INNER_INPUT if name == INPUT_NAME else name for name in node.input]
        node.output[:] = [_INNER_OUTPUT if name == OUTPUT_NAME else name for name in node.output]
    constants = [
        numpy_helper.from_array(np.array([step], dtype=np.int64), "any_size.step"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "any_size.two"),
        numpy_helper.from_array(np.array([4], dtype=np.int64), "any_size.four"),
        numpy_helper.from_array(np.zeros(6, dtype=np.int64), "any_size.no_pads"),
        numpy_helper.from_array(np.zeros(2, dtype=np.int64), "any_size.starts"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "any_size.axes"),
        numpy_helper.from_array(np.asarray(pixel_mean, dtype=np.float32).reshape(1, -1, 1, 1), "any_size.mean"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "any_size.one"),
    ]
    graph.initializer.extend(constants)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    before = [
        helper.make_node("Shape", [INPUT_NAME], ["any_size.shape"]),
        helper.make_node("Slice", ["any_size.shape", "any_size.two", "any_size.four"], ["any_size.hw"]),
        helper.make_node("Mod", ["any_size.hw", "any_size.step"], ["any_size.rest"]),
        helper.make_node("Sub", ["any_size.step", "any_size.rest"], ["any_size.missing"]),
        helper.make_node("Mod", ["any_size.missing", "any_size.step"], ["any_size.pad_hw"]),
        helper.make_node("Concat", ["any_size.no_pads", "any_size.pad_hw"], ["any_size.pads"], axis=0),
        helper.make_node("Pad", [INPUT_NAME, "any_size.pads"], ["any_size.inside"]),
        helper.make_node("ConstantOfShape", ["any_size.shape"], ["any_size.zeros"], value=zero),
        helper.make_node("Pad", ["any_size.zeros", "any_size.pads", "any_size.one"], ["any_size.outside"]),
        helper.make_node("Mul", ["any_size.outside", "any_size.mean"], ["any_size.fill"]),
        helper.make_node("Add", ["any_size.inside", "any_size.fill"], [_INNER_INPUT]),
    ]
    after = [
        helper.make_node("Slice", [_INNER_OUTPUT, "any_size.starts", "any_size.hw", "any_size.axes"], [OUTPUT_NAME])
    ]
    nodes = [*before, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    _set_dims(graph.input[0], ["batch", "channels", "height", "width"], keep=(0, 1))
    _set_dims(graph.output[0], ["batch", "classes", "height", "width"], keep=(0, 1))
    return model


def _set_dims(value: onnx.ValueInfoProto, names: list[str], keep: tuple[int, ...]) -> None:
    """Name the symbolic dimensions of an input/output (the dims at `keep` stay as traced)."""
    for index, dim in enumerate(value.type.tensor_type.shape.dim):
        if index not in keep:
            dim.Clear()
            dim.dim_param = names[index]
