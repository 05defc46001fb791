"""The ONNX checks a TensorRT build relies on: the parser's operator list, unsupported operators found anywhere in
a graph (subgraphs, local functions, custom domains), and check_onnx on a real BFFN export and on bad graphs."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from engines.errors import EngineError
from engines.onnx_check import OPS_FILE, check_onnx, op_counts, tensorrt_supported_ops, unsupported_tensorrt_ops

CORE_OPS = {"Conv", "ConvTranspose", "Relu", "Sigmoid", "Resize", "MatMul", "Gemm", "Softmax", "Add", "Mul", "Concat",
            "Reshape", "Transpose", "Slice", "MaxPool", "GlobalAveragePool", "BatchNormalization",
            "LayerNormalization", "Einsum", "Split", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast", "If", "Loop"}
# Marked N in onnx-tensorrt's docs/operators.md for TensorRT 10.
UNSUPPORTED = {"Unique", "Det", "SequenceAt", "SequenceConstruct", "StringNormalizer", "DynamicQuantizeLinear",
               "ConvInteger", "MatMulInteger", "QLinearConv", "BitShift", "MaxUnpool", "Compress", "Optional", "DFT"}


def _value(name: str, shape, dtype=TensorProto.FLOAT):
    return oh.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, functions=(), extra_opsets=()):
    graph = oh.make_graph(nodes, "g", inputs, outputs)
    opsets = [oh.make_opsetid("", 17), *(oh.make_opsetid(d, 1) for d in extra_opsets)]
    return oh.make_model(graph, opset_imports=opsets, functions=list(functions))


@pytest.fixture
def bad_model():
    """Valid ONNX (it passes the checker and strict shape inference) that TensorRT cannot parse: an unsupported
    operator and a custom-domain operator."""
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu0"),
             oh.make_node("Det", ["r"], ["y"], name="det0"),
             oh.make_node("FancyOp", ["x"], ["z"], name="fancy0", domain="com.example")]
    return _model(nodes, [_value("x", [2, 3, 3])], [_value("y", [2]), _value("z", [2, 3, 3])],
                  extra_opsets=["com.example"])


def test_the_list_loads_with_core_ops_and_without_unsupported_ones():
    ops = tensorrt_supported_ops()
    assert len(ops) > 120
    assert CORE_OPS <= ops
    assert not UNSUPPORTED & ops
    assert all(op.isidentifier() for op in ops), "comments or table debris leaked into the list"
    header = OPS_FILE.read_text().splitlines()[:12]
    assert any("onnx/onnx-tensorrt" in line and "docs/operators.md" in line for line in header)
    assert any("TensorRT 10" in line for line in header)


def test_unsupported_ops_are_found_in_subgraphs_functions_and_custom_domains():
    then_branch = oh.make_graph([oh.make_node("Det", ["x"], ["t"], name="det_in_if")], "then", [],
                                [_value("t", [2])])
    else_branch = oh.make_graph([oh.make_node("ReduceSum", ["x"], ["e"], name="sum_in_else", keepdims=0)], "else",
                                [], [_value("e", [2])])
    body = oh.make_graph(
        [oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Unique", ["state_in"], ["state_out"], name="unique_in_loop")],
        "body", [_value("i", [], TensorProto.INT64), _value("cond_in", [], TensorProto.BOOL), _value("state_in", None)],
        [_value("cond_out", [], TensorProto.BOOL), _value("state_out", None)])
    function = oh.make_function("local.fn", "Square", ["a"], ["b"], [oh.make_node("Unique", ["a"], ["b"])],
                                [oh.make_opsetid("", 17)])
    nodes = [
        oh.make_node("If", ["cond"], ["if_out"], name="if0", then_branch=then_branch, else_branch=else_branch),
        oh.make_node("Loop", ["trip", "cond", "x"], ["loop_out"], name="loop0", body=body),
        oh.make_node("Square", ["x"], ["sq"], name="call0", domain="local.fn"),
        oh.make_node("FancyOp", ["x"], ["f"], name="fancy0", domain="com.example"),
        oh.make_node("Relu", ["x"], ["r"], name="relu0"),
    ]
    model = _model(nodes, [_value("cond", [], TensorProto.BOOL), _value("trip", [], TensorProto.INT64),
                           _value("x", [2, 3, 3])],
                   [_value(n, None) for n in ("if_out", "loop_out", "sq", "f", "r")], functions=[function],
                   extra_opsets=["local.fn", "com.example"])
    assert unsupported_tensorrt_ops(model) == {"Det": 1, "Unique": 2, "com.example::FancyOp": 1}
    counts = op_counts(model)
    assert counts["ReduceSum"] == 1 and counts["Identity"] == 1 and "local.fn::Square" not in counts


def test_unsupported_ops_of_a_saved_file(bad_model, tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(bad_model, str(path))
    assert unsupported_tensorrt_ops(path) == {"Det": 1, "com.example::FancyOp": 1}
    assert unsupported_tensorrt_ops(str(path)) == {"Det": 1, "com.example::FancyOp": 1}
    with pytest.raises(FileNotFoundError, match="engines export"):
        unsupported_tensorrt_ops(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_a_real_bffn_export_passes(untrained_bffn, tmp_path, one_torch_thread):
    from engines.export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
    from engines.weights import resolve_weights

    path = export_onnx(resolve_weights(untrained_bffn), tmp_path / "bffn.onnx", tile=64)
    report = check_onnx(path)
    assert report["opset"] == OPSET
    assert report["unsupported_tensorrt_ops"] == {} and report["tensorrt_restrictions"] == []
    assert {"Conv", "Resize", "Softmax", "MatMul"} <= set(report["ops"])
    assert report["inputs"] == [{"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 1, 64, 64]}]
    assert [o["name"] for o in report["outputs"]] == [OUTPUT_NAME]
    assert report["outputs"][0]["shape"][0] == "batch"
    assert report["min_tensorrt"] == "10.0"


def test_a_graph_with_unsupported_ops_is_refused_by_name(bad_model, tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(bad_model, str(path))
    with pytest.raises(EngineError) as caught:
        check_onnx(path)
    message = str(caught.value)
    assert "Det ×1 (e.g. det0)" in message and "com.example::FancyOp" in message
    assert "opset" in message and "plugin" in message
    report = check_onnx(path, tensorrt=False)  # fine for ONNX Runtime's checks
    assert report["unsupported_tensorrt_ops"] == {"Det": 1, "com.example::FancyOp": 1}
    assert report["ops"] == {"Det": 1, "Relu": 1, "com.example::FancyOp": 1}


def test_unsupported_attributes_and_opsets_are_refused(tmp_path):
    roi = oh.make_tensor("roi", TensorProto.FLOAT, [0], [])
    scales = oh.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    resize = oh.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up0", mode="cubic")
    graph = oh.make_graph([resize], "g", [_value("x", [1, 1, 4, 4])], [_value("y", [1, 1, 8, 8])],
                          initializer=[roi, scales])
    path = tmp_path / "cubic.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    with pytest.raises(EngineError, match="Resize node up0: mode 'cubic'"):
        check_onnx(path)
    assert check_onnx(path, tensorrt=False)["unsupported_tensorrt_ops"] == {}

    old = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [_value("x", [2])],
                                      [_value("y", [2])]), opset_imports=[oh.make_opsetid("", 7)])
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(EngineError, match="opset 7 is outside 9..20"):
        check_onnx(tmp_path / "old.onnx")


def test_an_invalid_or_missing_file_is_explained(tmp_path):
    broken = _model([oh.make_node("Relu", ["nowhere"], ["y"])], [_value("x", [2])], [_value("y", [2])])
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(EngineError, match="not a valid ONNX model.*engines export"):
        check_onnx(tmp_path / "broken.onnx")
    with pytest.raises(FileNotFoundError, match="engines export"):
        check_onnx(tmp_path / "absent.onnx")
