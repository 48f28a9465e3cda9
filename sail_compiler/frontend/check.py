"""Checks run on an ONNX file before import.

Every problem found is collected and reported at once in one :class:`ModelCheckError`: a missing
or unreadable file, missing or truncated external-data files, nodes whose op TVM's importer (with
our overrides) cannot convert, and what ``onnx.checker`` rejects. Nothing here writes to disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import ModelCheckError

# The default ONNX domain, under both of its spellings.
DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops the TVM importer handles outside its converter table.
_DIRECTLY_HANDLED = {"If", "Constant"}

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


def unsupported_nodes(model: onnx.ModelProto) -> list[str]:
    """One line per node that cannot be imported: op type, domain and node name."""
    supported = supported_op_types()
    problems = []
    for index, node in enumerate(_nodes(model.graph)):
        name = node.name or f"#{index} (unnamed)"
        if node.domain not in DEFAULT_DOMAINS:
            problems.append(f"unsupported op {node.domain}.{node.op_type} at node '{name}'")
        elif node.op_type not in supported:
            problems.append(f"unsupported op {node.op_type} at node '{name}'")
    return problems


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
        length = info.length if info.length is not None else size - offset
        if offset + length > size:
            problems.append(f"external data file '{info.location}' is truncated: tensor "
                            f"'{tensor.name}' needs bytes {offset}..{offset + length}, the file "
                            f"has {size}; re-copy or re-export it")
    return problems


def load_checked(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model with its external data after checking it.

    Parameters
    ----------
    path
        The ``.onnx`` file; external-data files are looked up relative to its folder.

    Returns
    -------
    onnx.ModelProto
        The model with all tensor data in memory.

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
    unsupported = unsupported_nodes(model)
    problems += unsupported
    if unsupported:
        problems.append(f"fix for unsupported ops: {_FIX_UNSUPPORTED}")
    if not problems:
        try:
            # The path form handles external data and models over 2 GB.
            onnx.checker.check_model(str(p))
        except Exception as err:
            problems.append(f"onnx.checker rejects the model: {str(err).strip().splitlines()[0]}")
    if problems:
        raise ModelCheckError(str(p), problems)
    external_data_helper.load_external_data_for_model(model, str(p.parent))
    return model
