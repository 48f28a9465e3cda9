"""The input/output signature of a model: names, dtypes, (symbolic) dims and input roles.

The Relax function keeps only positions, so the artifact records the ONNX names, dtypes and dims
here; symbolic dims are strings (``"batch"``, ``"seq"``), fixed dims are ints.

The role of every input (what a generator, a token loop or a target feeds there) is decided here,
once, from the names exporters give (:func:`input_roles`), and travels with the signature (the
manifest, ``model.c``'s io specs): ``ids`` (the token ids), ``mask`` (attention mask),
``positions`` (position ids), ``past`` (a KV-cache input, with the index of its present output)
or ``other``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import ImportFailure, InputError

Dim = int | str

#: The roles of inputs (:attr:`TensorSpec.role`); outputs have the role ``other``.
ROLES = ("ids", "mask", "positions", "past", "other")
#: A past input ``past_key_values.<x>`` has the present output ``present.<x>``.
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: its ONNX name, NumPy dtype name, dims and, for index inputs, the
    exclusive upper bound of valid values (TVM's gather does not check it: out-of-range ids
    would read out of bounds); for inputs, the role (:data:`ROLES`) and, for a past, the index
    of its present among the outputs."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]
    index_bound: int | None = None  # integer inputs used as indices must lie in [0, bound)
    role: str = "other"
    present: int | None = None  # a past input: index of its present output (None: it has none)

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role
        assert self.present is None or self.role == "past", (self.name, self.role)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims),
                "index_bound": self.index_bound, "role": self.role, "present": self.present}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TensorSpec:
        return cls(obj["name"], obj["dtype"], tuple(obj["dims"]), obj.get("index_bound"),
                   obj.get("role", "other"), obj.get("present"))

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model, in the order of the ONNX graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelSignature:
        inputs = tuple(TensorSpec.from_json(t) for t in obj["inputs"])
        outputs = tuple(TensorSpec.from_json(t) for t in obj["outputs"])
        if any("role" not in t for t in obj["inputs"]):  # an artifact written before roles
            inputs = input_roles(inputs, outputs)
        return cls(inputs, outputs)

    def inputs_of(self, role: str) -> list[TensorSpec]:
        """The inputs of ``role`` (:data:`ROLES`), in order."""
        assert role in ROLES, role
        return [s for s in self.inputs if s.role == role]

    def input_of(self, role: str) -> TensorSpec | None:
        """The input of ``role`` when there is exactly one, else None."""
        specs = self.inputs_of(role)
        return specs[0] if len(specs) == 1 else None

    def kv_pairs(self) -> dict[str, str]:
        """``{past input: its present output}`` of every past input that has one."""
        return {s.name: self.outputs[s.present].name for s in self.inputs
                if s.present is not None}

    def context_of(self, inputs: dict[str, np.ndarray]) -> tuple[int, str] | None:
        """``(past + seq, which inputs give it)`` for a decoder's ``inputs``: seq from the
        token ids ``[batch, seq]``, past from the past inputs' past axis (:func:`past_axis`;
        0 without past inputs). None without such ids, or with pasts of different lengths
        (an encoder-decoder's encoder cache) or one whose past axis is not known."""
        ids = self.input_of("ids")
        x = inputs.get(ids.name) if ids is not None else None
        if x is None or len(ids.dims) != 2 or x.ndim != 2:
            return None
        seq = int(x.shape[1])
        pasts = [(s, past_axis(s)) for s in self.inputs_of("past")]
        if not pasts:
            return seq, f"{ids.name} has seq = {seq}"
        if any(axis is None for _, axis in pasts) or \
                len({s.dims[axis] for s, axis in pasts}) != 1:
            return None
        spec, axis = pasts[0]
        given = inputs.get(spec.name)
        if given is None or given.ndim != len(spec.dims):
            return None
        past = int(given.shape[axis])
        return past + seq, f"{spec.name} has past = {past}, {ids.name} seq = {seq}"

    def _mask_problem(self, inputs: dict[str, np.ndarray], checked: set[str]) -> str | None:
        """The attention mask ``[batch, past + seq]`` of a decoder with a KV cache must cover
        the past and the new tokens; its dim is often a name of its own (``past_plus_seq``,
        ``total_sequence_length``) that the per-name check cannot relate to the others."""
        mask = self.input_of("mask")
        x = inputs.get(mask.name) if mask is not None else None
        if x is None or x.ndim != 2 or len(mask.dims) != 2 or not self.inputs_of("past") or \
                not isinstance(mask.dims[1], str) or mask.dims[1] in checked:
            return None
        context = self.context_of(inputs)
        if context is None or context[0] == x.shape[1]:
            return None
        total, where = context
        return (f"{mask.name}: dim 1 is {x.shape[1]}, but it must be past + seq = {total} "
                f"({where})")

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, int]:
        """Validate named ``inputs`` against the signature; return the value of every symbolic dim.

        Raises
        ------
        InputError
            Missing or unknown names, wrong dtypes, ranks or fixed dims, inconsistent symbolic
            dims, or indices outside their table; every problem is listed.
        """
        problems = []
        expected = {s.name for s in self.inputs}
        missing = [n for n in expected if n not in inputs]
        unknown = [n for n in inputs if n not in expected]
        if missing:
            problems.append(f"missing input(s): {', '.join(sorted(missing))}")
        if unknown:
            problems.append(f"unknown input(s): {', '.join(sorted(unknown))}")
        dims: dict[str, int] = {}
        sums = {name: terms for name in self.symbolic_dims()
                if (terms := dim_sum(name, self.symbolic_dims())) is not None}
        for spec in self.inputs:
            if spec.name not in inputs:
                continue
            x = inputs[spec.name]
            if x.dtype != np.dtype(spec.dtype):
                problems.append(f"{spec.name}: dtype {x.dtype}, expected {spec.dtype}")
            if spec.index_bound is not None and x.size and (x.min() < 0 or
                                                            x.max() >= spec.index_bound):
                problems.append(f"{spec.name}: values must lie in [0, {spec.index_bound}), got "
                                f"[{x.min()}, {x.max()}]")
            if x.ndim != len(spec.dims):
                problems.append(f"{spec.name}: rank {x.ndim}, expected {len(spec.dims)} "
                                f"({spec.describe()})")
                continue
            for axis, (dim, size) in enumerate(zip(spec.dims, x.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    problems.append(f"{spec.name}: dim {axis} is {size}, expected {dim}")
                elif isinstance(dim, str) and dim not in sums:
                    if dims.setdefault(dim, size) != size:
                        problems.append(f"{spec.name}: dim {axis} ('{dim}') is {size}, but "
                                        f"another input has '{dim}' = {dims[dim]}")
        for spec in self.inputs:  # dims named by expressions, checked by their value
            x = inputs.get(spec.name)
            if x is None or x.ndim != len(spec.dims):
                continue
            for axis, (dim, size) in enumerate(zip(spec.dims, x.shape, strict=True)):
                if not isinstance(dim, str) or dim not in sums:
                    continue
                value = _evaluate(sums[dim], dims)
                if value is None:
                    dims.setdefault(dim, size)  # its terms come from no other input
                elif value != size:
                    values = ", ".join(f"{n} = {dims[n]}" for n, _ in sums[dim] if n)
                    problems.append(f"{spec.name}: dim {axis} ('{dim}') is {size}, but the "
                                    f"other inputs give {values}, so it must be {value}")
        if not problems:
            # a dim another input shares, or an expression of others, is checked already
            shared = {d for d in dims if sum(d in s.dims for s in self.inputs) > 1} | set(sums)
            mask = self._mask_problem(inputs, shared)
            problems += [mask] if mask else []
        if problems:
            raise InputError("inputs do not match the model: " + "; ".join(problems) +
                             f". The model takes: {self.describe_inputs()}")
        return dims

    def describe_inputs(self) -> str:
        """``name: dtype[dims]`` of every input, comma-separated."""
        return ", ".join(s.describe() for s in self.inputs)

    def symbolic_dims(self) -> list[str]:
        """Names of the symbolic dims of the inputs, in order of first appearance."""
        names: list[str] = []
        for spec in self.inputs:
            names += [d for d in spec.dims if isinstance(d, str) and d not in names]
        return names


def past_axis(spec: TensorSpec) -> int | None:
    """The growing axis of a past input: its one symbolic dim besides the batch (dim 0), else
    None."""
    symbolic = [d for d, size in enumerate(spec.dims) if d > 0 and isinstance(size, str)]
    return symbolic[0] if len(symbolic) == 1 else None


#: A dim name that is a sum of other dims and integers: ``past + seq``, ``past_len + 1``.
_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[0-9]+$")


def dim_sum(name: str, dims: list[str]) -> list[tuple[str, int]] | None:
    """The terms of a dim ``name`` that exporters write as an expression of other dims.

    Returns ``[(dim, sign), ...]`` with ``dim == ""`` for an integer term whose value is ``sign``,
    or None when ``name`` is a plain name or uses anything but ``+``, ``-``, other dims of
    ``dims`` and integers (such a name stays an independent dim, as before).
    """
    try:
        tree = ast.parse(name, mode="eval").body
    except SyntaxError:
        return None
    terms: list[tuple[str, int]] = []

    def walk(node: ast.expr, sign: int) -> bool:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            return walk(node.left, sign) and walk(node.right,
                                                  -sign if isinstance(node.op, ast.Sub) else sign)
        if isinstance(node, ast.Name) and node.id in dims and node.id != name:
            terms.append((node.id, sign))
            return True
        if isinstance(node, ast.Constant) and type(node.value) is int:
            terms.append(("", sign * node.value))
            return True
        return False

    # Each term split on the operators must be a bare name or integer, as TVM's importer
    # (parse_shape_name, no parentheses) reads the same name: the check then agrees with it.
    if not isinstance(tree, ast.BinOp) or not walk(tree, 1) or not all(
            _TERM.match(t.strip()) for t in re.split(r"[+-]", name)):
        return None
    return terms


def _evaluate(terms: list[tuple[str, int]], dims: dict[str, int]) -> int | None:
    if any(n and n not in dims for n, _ in terms):
        return None
    return sum(dims[n] * sign if n else sign for n, sign in terms)


def _tensor_type(value: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    """The tensor type of a tensor or optional-tensor value (TVM imports an optional tensor
    as the tensor); any other kind of value is refused."""
    kind = value.type.WhichOneof("value")
    if kind == "optional_type" and \
            value.type.optional_type.elem_type.WhichOneof("value") == "tensor_type":
        return value.type.optional_type.elem_type.tensor_type
    if kind != "tensor_type" or not value.type.tensor_type.elem_type:
        raise ImportFailure(
            f"graph input or output '{value.name}' is a {kind or 'value of unknown type'}, not "
            "a tensor with an element type: sail compiles models whose inputs and outputs are "
            "tensors (or optional tensors); give it a tensor type or export without it")
    return value.type.tensor_type


def _spec(value: onnx.ValueInfoProto, bound: int | None = None) -> TensorSpec:
    ttype = _tensor_type(value)
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    dims: list[Dim] = []
    for i, dim in enumerate(ttype.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:  # -1 means unknown to some exporters
            dims.append(int(dim.dim_value))
        elif dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype, tuple(dims), bound)


def signature_of(model: onnx.ModelProto) -> ModelSignature:
    """The graph inputs (initializers excluded) and outputs of ``model``, with the inputs'
    roles (:func:`input_roles`)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v, index_bound(model, v.name)) for v in model.graph.input
                   if v.name not in initializers)
    outputs = tuple(_spec(v) for v in model.graph.output)
    return ModelSignature(input_roles(inputs, outputs), outputs)


def _name_role(name: str) -> str:
    """The role a name says, the first that matches: ``mask``, ``position``, ``ids``,
    ``past`` / ``cache``, else other."""
    low = name.lower()
    if "mask" in low:
        return "mask"
    if "position" in low:
        return "positions"
    if "ids" in low:
        return "ids"
    if "past" in low or "cache" in low:
        return "past"
    return "other"


def input_roles(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
                ) -> tuple[TensorSpec, ...]:
    """``inputs`` with their roles, from the names Hugging Face, optimum and onnxruntime-genai
    exports give.

    * ``mask``: a name containing ``mask``; ``positions``: ``position``;
    * ``ids``: the token ids: ``input_ids``, else every name containing ``ids`` (several of them
      and no ``input_ids``: the token ids are ambiguous, and the tools that need them say so);
      with ``input_ids``, other ids (BERT's ``token_type_ids``) are ``other``;
    * ``past``: a name containing ``past`` or ``cache``; ``past_key_values.<x>`` has the present
      output ``present.<x>`` when the model has it;
    * ``other``: anything else.
    """
    roles = [_name_role(s.name) for s in inputs]
    has_input_ids = any(s.name == "input_ids" for s in inputs)
    presents = {s.name: j for j, s in enumerate(outputs)}
    specs = []
    for spec, role in zip(inputs, roles, strict=True):
        if role == "ids" and has_input_ids and spec.name != "input_ids":
            role = "other"
        present = None
        if role == "past" and spec.name.startswith(PAST_PREFIX):
            present = presents.get(PRESENT_PREFIX + spec.name.removeprefix(PAST_PREFIX))
        specs.append(dataclasses.replace(spec, role=role, present=present))
    return tuple(specs)


# Ops that pass index values through unchanged (only their shape or dtype changes).
_VALUE_PRESERVING = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity")


def index_bound(model: onnx.ModelProto, name: str) -> int | None:
    """Rows of the constant table that a ``Gather`` indexes with input ``name`` (e.g. the
    vocabulary of an embedding), following value-preserving ops such as ``Reshape``; None if the
    input feeds no such Gather. With several tables, the smallest bound."""
    tables = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    bounds = []
    frontier, seen = [name], {name}
    while frontier:
        value = frontier.pop()
        for node in consumers.get(value, []):
            if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == value:
                table = tables.get(node.input[0])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if table is not None and len(table.dims) > axis:
                    bounds.append(int(table.dims[axis]))
            elif node.op_type in _VALUE_PRESERVING and node.input[0] == value:
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
    return min(bounds) if bounds else None


def position_table_rows(model: onnx.ModelProto) -> int | None:
    """Rows of the smallest constant table a ``Gather`` indexes with the output of a ``Range``
    (positions computed inside the graph, ``Range(past, past + seq)``, as rotary caches are
    indexed): past + seq must not exceed them. None if the model has no such table."""
    bounds = [bound for node in model.graph.node if node.op_type == "Range"
              and (bound := index_bound(model, node.output[0])) is not None]
    return min(bounds) if bounds else None


def context_length(model: onnx.ModelProto) -> int | None:
    """The longest past + seq a decoder accepts, when the model says: the rows of its position
    tables (constant tables a ``Gather`` indexes with the ``position_ids`` input or with the
    output of a ``Range``, :func:`position_table_rows`), else ``max_position_embeddings`` of a
    ``config`` JSON in the model's metadata. None if neither is there."""
    bounds = []
    if any(i.name == "position_ids" for i in model.graph.input):
        bound = index_bound(model, "position_ids")
        if bound is not None:
            bounds.append(bound)
    rows = position_table_rows(model)
    if rows is not None:
        bounds.append(rows)
    if bounds:
        return min(bounds)
    for prop in model.metadata_props:
        if prop.key == "config":
            try:
                value = json.loads(prop.value).get("max_position_embeddings")
            except (json.JSONDecodeError, AttributeError):
                return None
            return value if isinstance(value, int) and value > 0 else None
    return None
