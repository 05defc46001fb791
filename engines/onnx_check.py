"""Check an ONNX export before TensorRT sees it: a valid graph, complete shapes, and only operators that
TensorRT 10's ONNX parser imports (``engines/tensorrt_onnx_ops.txt``, taken from onnx-tensorrt's
``docs/operators.md``).

Catching an unsupported operator here, on any machine, is much cheaper than finding it on the station's GPU (here on
a one-node graph; ``engines build`` checks every exported network the same way)::

    >>> import tempfile
    >>> import onnx
    >>> from onnx import TensorProto, helper
    >>> x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1, 8, 8]) for n in "xy")
    >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "tiny.onnx"
    >>> onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    >>> unsupported_tensorrt_ops(path)
    {}
    >>> report = check_onnx(path)
    >>> report["opset"], report["ops"], report["inputs"][0]["shape"]
    (17, {'Relu': 1}, ['batch', 1, 8, 8])
    >>> folder.cleanup()
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Iterator

from engines.errors import EngineError, MissingFile

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")
DEFAULT_DOMAINS = ("", "ai.onnx")
# TensorRT 10.0's parser takes opsets 9 to 20, 10.15's 9 to 24 (docs/operators.md of each release).
TENSORRT_OPSETS = (9, 20)
# Documented restrictions ("Restrictions" column of docs/operators.md) that a vision network can hit.
RESIZE_MODES = ("nearest", "linear")
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")


@functools.lru_cache(maxsize=1)
def _op_table() -> dict[str, str]:
    """Operator → the first TensorRT release that imports it ("10.0" unless the list says later)."""
    table: dict[str, str] = {}
    for line in OPS_FILE.read_text(encoding="utf-8").splitlines():
        op, _, comment = line.partition("#")
        op = op.strip()
        if not op:
            continue
        since = comment.strip().removeprefix("since TensorRT ").strip() if "since TensorRT" in comment else "10.0"
        table[op] = since
    return table


def tensorrt_supported_ops() -> frozenset[str]:
    """The ONNX operators (default domain) that TensorRT 10's ONNX parser imports."""
    return frozenset(_op_table())


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file():
        raise MissingFile(f"no ONNX file at {path}; export one first with `engines export`")
    # Weights are not needed to read the graph, and may be large or kept in external files.
    return onnx.load(str(path), load_external_data=False)


def _op_name(node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _walk(nodes, functions: dict) -> Iterator:
    """Every node of ``nodes`` and of the subgraphs inside them (If branches, Loop and Scan bodies); calls of
    the model's local functions are skipped, their bodies being walked once on their own."""
    import onnx

    for node in nodes:
        if (node.domain, node.op_type) not in functions:
            yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g.node, functions)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk(sub.node, functions)


def iter_nodes(model) -> Iterator:
    """Every computing node of ``model``: the main graph, its subgraphs, and the bodies of its local functions
    (which TensorRT's parser inlines)."""
    functions = {(f.domain, f.name): f for f in model.functions}
    yield from _walk(model.graph.node, functions)
    for function in model.functions:
        yield from _walk(function.node, functions)


def op_counts(model_or_path) -> dict[str, int]:
    """How many nodes of each operator the model has (non-default domains as ``domain::Op``), sorted by name."""
    counts = Counter(_op_name(node) for node in iter_nodes(_load(model_or_path)))
    return dict(sorted(counts.items()))


def _unsupported_nodes(model) -> dict[str, list[str]]:
    supported = tensorrt_supported_ops()
    found: dict[str, list[str]] = {}
    for node in iter_nodes(model):
        name = _op_name(node)
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in supported:
            found.setdefault(name, []).append(node.name or "(unnamed)")
    return dict(sorted(found.items()))


def unsupported_tensorrt_ops(model_or_path) -> dict[str, int]:
    """Operator → node count for every node (subgraphs included) that TensorRT 10's ONNX parser does not import.
    Operators of other domains (``com.microsoft::FusedConv``, custom ops) count as unsupported: they would need
    a TensorRT plugin. An empty dict means the graph uses only supported operators."""
    return {op: len(nodes) for op, nodes in _unsupported_nodes(_load(model_or_path)).items()}


def _attr(node, name: str, default):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def tensorrt_restriction_problems(model_or_path) -> list[str]:
    """Nodes whose operator TensorRT supports, but not with these attributes (documented restrictions only)."""
    problems = []
    for node in iter_nodes(_load(model_or_path)):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.op_type in ("Resize", "Upsample"):
            mode = _attr(node, "mode", "nearest")
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: mode {mode!r} (TensorRT: {', '.join(RESIZE_MODES)})")
            ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if node.op_type == "Resize" and ctm not in RESIZE_COORDINATE_MODES:
                problems.append(f"{where}: coordinate_transformation_mode {ctm!r} "
                                f"(TensorRT: {', '.join(RESIZE_COORDINATE_MODES)})")
            if _attr(node, "antialias", 0):
                problems.append(f"{where}: antialias=1 (not supported by TensorRT)")
        elif node.op_type in ("MaxPool", "AveragePool", "LpPool"):
            dilations = _attr(node, "dilations", [])
            if any(d != 1 for d in dilations):
                problems.append(f"{where}: dilations {list(dilations)} (TensorRT: all ones)")
            if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
                problems.append(f"{where}: the Indices output (not supported by TensorRT)")
    return problems


def _value_info(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
             for d in tensor.shape.dim] if tensor.HasField("shape") else None
    try:
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError):  # no numpy equivalent (e.g. bfloat16 in older numpy): keep the ONNX name
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    return {"name": value.name, "dtype": dtype, "shape": shape}


def _sentence(exc: Exception) -> str:
    return " ".join(str(exc).split()).rstrip(".")


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise EngineError("the model imports no default-domain ONNX opset; export it again with `engines export`")


def check_onnx(path: str | Path, tensorrt: bool = True) -> dict:
    """Validate an ONNX file the way a TensorRT build needs it, and describe it.

    Runs ``onnx.checker.check_model(full_check=True)`` and strict shape inference; with ``tensorrt`` also
    refuses operators, opsets and attributes that TensorRT 10's ONNX parser does not take. Returns
    ``{"path", "opset", "ops", "inputs", "outputs", "min_tensorrt", "unsupported_tensorrt_ops",
    "tensorrt_restrictions"}``, where inputs and outputs are ``{"name", "dtype", "shape"}`` and a dynamic
    dimension is its name (``"batch"``).
    """
    import onnx

    path = Path(path)
    model = _load(path)
    try:
        # The path form also reads external weights and works for models over 2 GiB.
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"{path} is not a valid ONNX model: {_sentence(exc)}. Export it again with "
                          "`engines export`.") from exc
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise EngineError(f"shape inference fails on {path}: {_sentence(exc)}. Export it again with "
                          "`engines export`; if it still fails, change the layer named in the message.") from exc

    initializers = {init.name for init in model.graph.initializer}
    counts = op_counts(model)
    table = _op_table()
    used_since = [table[op] for op in counts if op in table]
    unsupported = _unsupported_nodes(model)
    restrictions = tensorrt_restriction_problems(model)
    report = {
        "path": str(path),
        "opset": _opset(model),
        "ops": counts,
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_value_info(v) for v in model.graph.output],
        "min_tensorrt": max(used_since, key=lambda v: tuple(int(p) for p in v.split("."))) if used_since else "10.0",
        "unsupported_tensorrt_ops": {op: len(nodes) for op, nodes in unsupported.items()},
        "tensorrt_restrictions": restrictions,
    }
    if tensorrt:
        _raise_for_tensorrt(path, report["opset"], unsupported, restrictions)
    return report


def _raise_for_tensorrt(path: Path, opset: int, unsupported: dict[str, list[str]], restrictions: list[str]) -> None:
    problems = []
    if unsupported:
        listed = "; ".join(f"{op} ×{len(nodes)} (e.g. {', '.join(nodes[:3])})" for op, nodes in unsupported.items())
        problems.append(f"operators TensorRT 10's ONNX parser does not support: {listed}")
    if restrictions:
        problems.append("attributes TensorRT does not support: " + "; ".join(restrictions))
    low, high = TENSORRT_OPSETS
    if not low <= opset <= high:
        problems.append(f"opset {opset} is outside {low}..{high}, the range every TensorRT 10 release takes")
    if problems:
        raise EngineError(
            f"{path} cannot be built with TensorRT: " + ". ".join(problems) + ". "
            f"Export with another opset (engines.export.OPSET; this graph has {opset}) so that the exporter writes "
            "supported operators, or change the layer that produces them (a custom or non-default-domain operator "
            f"needs a TensorRT plugin). The supported list is {OPS_FILE.name}; check_onnx(..., tensorrt=False) checks "
            "the graph alone, for ONNX Runtime.")
