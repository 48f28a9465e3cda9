"""Checks run on an ONNX file before import.

Every problem found is collected and reported at once in one :class:`ModelCheckError`: a missing
or unreadable file, missing or truncated external-data files, onnxruntime quantized weights SAIL
cannot represent, nodes whose op TVM's importer (with our overrides) cannot convert, unsupported
element types, and what ``onnx.checker`` rejects. Nothing here writes to disk.

Between the file checks and the op and type checks, :func:`load_checked` rewrites onnxruntime's
quantized matmuls (``com.microsoft.MatMulNBits``, ``DequantizeLinear -> MatMul`` with int4/int8
weights) into float MatMuls (:mod:`.prequantized`); the op and type checks then see the rewritten
model.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import ModelCheckError
from ..external_data import external_tensors
from .converters import skips_preprocessing
from .genai import GENAI_OPS, is_genai_model, rewrite_genai
from .prequantized import REWRITTEN_OPS, PrequantizedLayer, rewrite_or_report

# The default ONNX domain, under both of its spellings.
DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops the TVM importer handles outside its converter table.
_DIRECTLY_HANDLED = {"If", "Constant"}

_CHECKER_MAX_BYTES = 1 << 30  # onnx.checker serializes an in-memory model (protobuf: < 2 GB)

_FIX_UNSUPPORTED = (
    "export the model with standard ai.onnx ops (e.g. torch.onnx.export without onnxruntime's "
    "transformers optimizer), or open an issue naming the op"
)


def supported_op_types() -> set[str]:
    """ai.onnx op types the importer can convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map()) | _DIRECTLY_HANDLED


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including those of subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _nodes(sub)


def unsupported_nodes(model: onnx.ModelProto,
                      handled: Collection[tuple[str, str]] = ()) -> list[str]:
    """One line per node that cannot be imported: op type, domain and node name.

    Nodes whose ``(domain, op_type)`` is in ``handled`` are skipped (the rewrite of quantized
    matmuls reports its own).
    """
    supported = supported_op_types()
    problems = []
    for index, node in enumerate(_nodes(model.graph)):
        name = node.name or f"#{index} (unnamed)"
        if (node.domain, node.op_type) in handled:
            continue
        if node.domain not in DEFAULT_DOMAINS:
            problems.append(f"unsupported op {node.domain}.{node.op_type} at node '{name}'")
        elif node.op_type not in supported:
            problems.append(f"unsupported op {node.op_type} at node '{name}'")
    return problems


# Element types TVM computes with correctly here. Sub-byte and 8-bit float types (float8*, int4,
# int2, float4) import but run with wrong values; strings and complex do not import.
SUPPORTED_TYPES = frozenset(getattr(onnx.TensorProto, n) for n in (
    "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8",
    "UINT16", "UINT32", "UINT64", "BOOL"))


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def dtype_problems(model: onnx.ModelProto, skip: Collection[str] = ()) -> list[str]:
    """One line per value, constant or Cast whose element type is not supported.

    Values and initializers named in ``skip`` are not checked (the rewrite of quantized matmuls
    reports on the tensors it reads).
    """
    problems = []
    graph = model.graph
    values = [("input", v) for v in graph.input] + [("output", v) for v in graph.output] + [
        ("value", v) for v in graph.value_info]
    for kind, value in values:
        elem = value.type.tensor_type.elem_type
        if value.name in skip:
            continue
        if value.type.HasField("tensor_type") and elem and elem not in SUPPORTED_TYPES:
            problems.append(f"unsupported tensor type {_type_name(elem)} of {kind} "
                            f"'{value.name}'")
    for tensor in graph.initializer:
        if tensor.name not in skip and tensor.data_type not in SUPPORTED_TYPES:
            problems.append(f"unsupported tensor type {_type_name(tensor.data_type)} of "
                            f"initializer '{tensor.name}'")
    for index, node in enumerate(_nodes(graph)):
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i not in SUPPORTED_TYPES:
                problems.append(f"unsupported tensor type {_type_name(attr.i)} as the target "
                                f"of Cast node '{node.name or index}'")
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type not in SUPPORTED_TYPES:
                problems.append(f"unsupported tensor type {_type_name(attr.t.data_type)} in "
                                f"{node.op_type} node '{node.name or index}'")
    if problems:
        supported = ", ".join(sorted(_type_name(t).lower() for t in SUPPORTED_TYPES))
        problems.append(f"supported tensor types: {supported}; convert the model's values to "
                        "one of them (e.g. dequantize float8/int4 weights to float16/float32)")
    return problems


#: Element types stored several to a byte (their data is not dims x itemsize bytes).
_PACKED_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in
                          ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                          if hasattr(onnx.TensorProto, name))


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Tensors stored as external data: initializers and Constant values, subgraphs included."""
    graphs = [model.graph] + [a.g for n in _nodes(model.graph) for a in n.attribute
                              if a.type == onnx.AttributeProto.GRAPH]
    for graph in graphs:
        yield from graph.initializer
    for node in _nodes(model.graph):
        yield from (a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)


def _external_data_problems(model: onnx.ModelProto, base_dir: Path) -> list[str]:
    problems = []
    sizes: dict[Path, int] = {}
    for tensor in _tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = base_dir / info.location
        if location not in sizes:
            sizes[location] = location.stat().st_size if location.is_file() else -1
        size = sizes[location]
        if size < 0:
            problems.append(f"external data file '{info.location}' of tensor '{tensor.name}' "
                            f"not found next to the model (looked in {base_dir}); copy it there")
            continue
        offset = info.offset or 0
        need = _data_bytes(tensor)
        length = info.length if info.length is not None else need
        if need is not None and length != need:
            problems.append(f"external data of tensor '{tensor.name}' in '{info.location}' has "
                            f"length {length}, its shape and type need {need} bytes; re-export "
                            "the model")
        elif offset + (length or 0) > size:
            problems.append(f"external data file '{info.location}' is truncated: tensor "
                            f"'{tensor.name}' needs bytes {offset}..{offset + (length or 0)}, "
                            f"the file has {size}; re-copy or re-export it")
    return problems


def _data_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes of a tensor's data from its dims and type (None for strings and sub-byte
    types, which the type check refuses anyway)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in _PACKED_TYPES or tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize


#: Ops whose rewrite before import reads their tensors (the model's data is then loaded).
_REWRITE_READS_DATA = frozenset({"MatMulNBits", "DequantizeLinear", "GatherBlockQuantized"})


def can_map_external(model: onnx.ModelProto) -> bool:
    """Whether the model's external data can stay in its files through import
    (:class:`~sail_compiler.external_data.ExternalData`).

    True when the initializers are too large for the preprocessing (which serializes the model,
    :func:`.converters.preprocess`) and nothing before import reads tensor data: no quantized
    ops to rewrite, and every external tensor is a main-graph initializer of a NumPy type.
    """
    mapped, servable = external_tensors(model)
    return bool(mapped) and servable and skips_preprocessing(model) \
        and not is_genai_model(model) \
        and not any(n.op_type in _REWRITE_READS_DATA for n in _nodes(model.graph))


def load_checked(path: str | os.PathLike[str],
                 prequantized: dict[str, PrequantizedLayer] | None = None,
                 map_external: bool = False) -> onnx.ModelProto:
    """Load an ONNX model with its external data after checking it.

    onnxruntime's quantized matmuls are rewritten into float MatMuls whose weights are the
    dequantized codes (:func:`.prequantized.rewrite_prequantized`), always: the rewritten model
    computes what onnxruntime computes with ``accuracy_level=0``.

    With ``map_external`` and a model :func:`can_map_external` accepts, the external data is
    checked (present, long enough) but not loaded: the initializers keep their external
    references, for :class:`~sail_compiler.external_data.ExternalData`.

    Parameters
    ----------
    path
        The ``.onnx`` file; external-data files are looked up relative to its folder.
    prequantized
        If given, filled with the rewritten layers: new float initializer name ->
        :class:`~.prequantized.PrequantizedLayer` (its node and :class:`QuantizedWeight`).
    map_external
        Leave large external data in its files when possible (see above).

    Returns
    -------
    onnx.ModelProto
        The (rewritten) model with all tensor data in memory, or with external references.

    Raises
    ------
    ModelCheckError
        Listing every problem found.
    """
    p = Path(path)
    if not p.exists():
        raise ModelCheckError(str(p), ["file not found; give the path of an existing .onnx file"])
    if not p.is_file():
        raise ModelCheckError(str(p), ["not a file; give the path of the .onnx file itself"])
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as err:  # protobuf raises several types for corrupt input
        raise ModelCheckError(str(p), [
            f"not a readable ONNX protobuf ({type(err).__name__}: {err}); the file is corrupt, "
            "truncated or not ONNX: re-export it"]) from err
    problems: list[str] = []
    if len(model.graph.node) == 0:
        problems.append("the graph has no nodes (is this an ONNX model? re-export it)")
    problems += _external_data_problems(model, p.parent)
    handled: Collection[tuple[str, str]] = ()
    genai_rewritten = False
    claimed: Collection[str] = ()
    layers: dict[str, PrequantizedLayer] = {}
    keep_external = map_external and not problems and can_map_external(model)
    if not problems and not keep_external:
        # The rewrite reads the quantized tensors, so their data must be in memory.
        external_data_helper.load_external_data_for_model(model, str(p.parent))
        genai = rewrite_genai(model)
        problems += genai.problems
        genai_rewritten = is_genai_model(model) or bool(genai.layers) or genai.rewrote
        rewrite = rewrite_or_report(model)
        problems += rewrite.problems
        handled, layers = REWRITTEN_OPS | GENAI_OPS, {**genai.layers, **rewrite.layers}
        if rewrite.problems:  # the quantized tensors are still there, already reported
            claimed = rewrite.claimed
    problems += dtype_problems(model, skip=claimed)
    unsupported = unsupported_nodes(model, handled=handled)
    problems += unsupported
    if unsupported:
        problems.append(f"fix for unsupported ops: {_FIX_UNSUPPORTED}")
    if not problems:
        try:
            if genai_rewritten:
                # the builder writes ai.onnx ops the checker does not know: check the rewritten
                # model instead when it can be serialized (under 2 GB)
                if sum(len(t.raw_data) for t in model.graph.initializer) < _CHECKER_MAX_BYTES:
                    onnx.checker.check_model(model)
            else:
                # The path form handles external data and models over 2 GB.
                onnx.checker.check_model(str(p))
        except Exception as err:
            problems.append(f"onnx.checker rejects the model: {str(err).strip().splitlines()[0]}")
    if problems:
        raise ModelCheckError(str(p), problems)
    if prequantized is not None:
        prequantized.update(layers)
    return model
