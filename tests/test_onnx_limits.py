"""ONNX glue operators that would create huge tensors, or whose attributes make no sense, are
refused with an error naming the node before anything is allocated (issue 15)."""
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import fastrnn
import fastrnn.onnx


def graph_model(nodes, inits, out_shape=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m.SerializeToString()


HUGE = {
    "Expand": ([helper.make_node("Expand", ["one", "shape"], ["big"], name="expand_bomb"),
                helper.make_node("Add", ["x", "big"], ["y"], name="add")],
               {"one": np.ones(1, np.float32), "shape": np.array([1 << 20, 1 << 20, 3], np.int64)}, "expand_bomb"),
    "Tile": ([helper.make_node("Tile", ["row", "reps"], ["big"], name="tile_bomb"),
              helper.make_node("Add", ["x", "big"], ["y"], name="add")],
             {"row": np.ones((1, 3), np.float32), "reps": np.array([1 << 40, 1], np.int64)}, "tile_bomb"),
    "Range": ([helper.make_node("Range", ["a", "b", "d"], ["r"], name="range_bomb"),
               helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
               helper.make_node("Add", ["x", "rf"], ["y"], name="add")],
              {"a": np.array(0, np.int64), "b": np.array(1 << 40, np.int64), "d": np.array(1, np.int64)},
              "range_bomb"),
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos_bomb"),
                         helper.make_node("Add", ["x", "big"], ["y"], name="add")],
                        {"shape": np.array([1 << 30, 1 << 30, 3], np.int64)}, "cos_bomb"),
    "broadcast Mul": ([helper.make_node("Mul", ["col", "row"], ["big"], name="mul_bomb"),
                       helper.make_node("Add", ["x", "big"], ["y"], name="add")],
                      {"col": np.ones((1 << 15, 1), np.float32), "row": np.ones((1, 1 << 15), np.float32)}, "mul_bomb"),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_huge_glue_tensors_are_refused_naming_the_node(case):
    nodes, inits, name = HUGE[case]
    data = graph_model(nodes, inits)
    t = time.process_time()  # CPU seconds of this process: a busy machine does not add to them
    with pytest.raises((fastrnn.ModelFormatError, ValueError), match=f"{name}.*(limit|elements)"):
        fastrnn.onnx.InferenceSession(data).run(None, {"x": np.zeros((2, 3), np.float32)})
    assert time.process_time() - t < 10  # refused before the work: computing it would take far longer


@pytest.mark.parametrize("attrs,words", [
    ({"num_outputs": 0}, "num_outputs"),
    ({"num_outputs": 5}, "num_outputs"),
    ({"axis": 7, "num_outputs": 2}, "axis"),
])
def test_split_attributes_are_validated(attrs, words):
    nodes = [helper.make_node("Split", ["c"], ["a", "b"], name="split_node", **attrs),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["x", "s"], ["y"])]
    data = graph_model(nodes, {"c": np.ones((2, 3), np.float32)})
    with pytest.raises((fastrnn.ModelFormatError, ValueError), match=f"split_node.*{words}"):
        fastrnn.onnx.InferenceSession(data).run(None, {"x": np.zeros((1, 3), np.float32)})


def test_split_sizes_must_add_up():
    nodes = [helper.make_node("Split", ["c", "sizes"], ["a", "b"], name="split_node"),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["x", "s"], ["y"])]
    data = graph_model(nodes, {"c": np.ones((4, 3), np.float32), "sizes": np.array([3, 3], np.int64)})
    with pytest.raises((fastrnn.ModelFormatError, ValueError), match="split_node.*adding up"):
        fastrnn.onnx.InferenceSession(data).run(None, {"x": np.zeros((1, 3), np.float32)})


def test_normal_sizes_still_run():
    nodes = [helper.make_node("Expand", ["one", "shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    data = graph_model(nodes, {"one": np.ones(1, np.float32), "shape": np.array([1, 3], np.int64)})
    out = fastrnn.onnx.InferenceSession(data).run(None, {"x": np.zeros((2, 3), np.float32)})[0]
    np.testing.assert_array_equal(out, np.ones((2, 3), np.float32))


@pytest.mark.parametrize("node,inits", [
    (helper.make_node("Slice", ["c", "st", "en", "ax", "step"], ["s"], name="bad_glue"),
     {"c": np.ones((2, 3), np.float32), "st": np.array([0]), "en": np.array([3]), "ax": np.array([1]),
      "step": np.array([0])}),
    (helper.make_node("Transpose", ["c"], ["s"], name="bad_glue", perm=[0, 0]), {"c": np.ones((2, 3), np.float32)}),
    (helper.make_node("Gather", ["c", "i"], ["s"], name="bad_glue", axis=5),
     {"c": np.ones((2, 3), np.float32), "i": np.array([0])}),
    (helper.make_node("Concat", ["c", "c"], ["s"], name="bad_glue", axis=9), {"c": np.ones((2, 3), np.float32)}),
])
def test_glue_ops_with_bad_attributes_name_the_node(node, inits):
    """Any glue op whose attributes make no sense: one error naming the node (never a
    ZeroDivisionError or a bare NumPy traceback)."""
    nodes = [node, helper.make_node("ReduceSum", ["s"], ["r"], keepdims=0),
             helper.make_node("Add", ["x", "r"], ["y"])]
    data = graph_model(nodes, {k: np.asarray(v, np.int64) if np.asarray(v).dtype.kind == "i" else v
                               for k, v in inits.items()})
    with pytest.raises((fastrnn.ModelFormatError, ValueError), match="bad_glue"):
        fastrnn.onnx.InferenceSession(data).run(None, {"x": np.zeros((1, 3), np.float32)})
