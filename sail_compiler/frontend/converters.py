"""Overrides of TVM's ONNX converters that keep symbolic shapes symbolic.

``torch.onnx.export`` output of Hugging Face decoders computes shapes at run time:
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``past + seq`` with ``Add``,
``Range`` over the sequence for positions and the causal mask, ``Expand`` to
``[batch, 1, seq, past + seq]``, and ``Equal``/``Where`` pairs that replace ``-1`` in a
target shape. TVM 0.27's ONNX frontend folds the static part of such chains, but with
symbolic batch, sequence and past lengths it loses them: values turn into opaque
tensors, ``tensor_to_shape`` invents fresh dimension variables, and the first binary op
between ``seq``-shaped and fresh-shaped tensors no longer type-checks.

The overrides below represent a shape value the way Relax itself does:

* a 1-D int64 shape vector is a :class:`tvm.relax.ShapeExpr` whose entries are int64
  ``PrimExpr`` (``batch``, ``past + seq``, ``16``);
* a 0-D int64 scalar (``Gather(shape, 2)``) is an int64 ``PrimExpr``;
* fully static values are folded to constants, as the stock frontend does.

A symbolic value is turned into an int64 tensor only where an operator really needs a
tensor. What each override does and why:

``ONNXGraphImporter._construct_nodes`` (the graph walker)
    The stock walker raises "cannot handle ShapeExpr inputs" whenever a shape value
    reaches an operator outside a fixed list. The replacement walks the nodes itself:
    operators overridden here receive symbolic values as they are; every other node gets
    its symbolic inputs materialized as int64 tensors (``shape_to_tensor``) and is then
    handed to the stock walker one node at a time (so ``If`` and multi-output nodes keep
    the stock handling). It also records every input dimension variable as
    non-negative in an arithmetic analyzer, which the comparisons below rely on.
    Before an elementwise broadcasting op it reconciles symbolic dimensions that must
    be equal but cannot be proven so (a mask declared ``[batch, total]`` added to a
    ``[seq, past + seq]`` bias): the bare-variable side is ``match_cast`` to the other,
    a run-time check, instead of letting Relax type the result with an unknown shape.
``Add``, ``Sub``, ``Mul``, ``Div``, ``Max``, ``Min``
    Elementwise int64 arithmetic on shape values with ONNX broadcasting (``past + 1``,
    ``[b, s] * [1, 1]``), simplified with the analyzer. ``Div`` is truncating division
    like ONNX integer ``Div`` (floor division once both sides are provably
    non-negative, which simplifies better). The stock converters turn these into
    tensor ops or hand ``PrimExpr`` objects to NumPy.
``Equal``
    The stock converter compares shape entries by *structural* equality, so
    ``seq == 1`` folds to ``False`` although it is true when ``seq`` is 1 at run time.
    Here an entry folds only when the analyzer proves it equal or proves it different
    (``batch == -1`` is provably false: dimensions are non-negative). An unprovable
    scalar comparison stays a boolean ``PrimExpr``; an unprovable vector comparison
    becomes a run-time tensor comparison.
``Where``
    Selects between shape values entry by entry when the condition is known, and with a
    ``Select`` expression when it is a symbolic scalar, so the ``Where(Equal(shape, -1),
    1, shape)`` idiom keeps the shape symbolic.
``Reshape``
    Reshaping a shape vector to ``[-1]``/``[n]`` (or a scalar to ``[1]``, or a length-1
    vector to ``[]``) keeps it symbolic. Reshaping a tensor to a symbolic target resolves
    ``0`` (copy the input dimension) and ``-1`` (the remaining element count) with
    symbolic arithmetic, so the output type keeps the real dimensions instead of fresh
    variables.
``Range``
    ``relax.op.arange`` with symbolic bounds: ``Range(past, past + seq, 1)`` has type
    ``(seq,)``; the stock converter computes the length as a tensor and binds it to a
    fresh variable, after which the position ids no longer match ``seq``.
``Expand``
    Per-dimension ONNX broadcasting over symbolic dimensions: a 1 on either side takes
    the other side, a static size wins over a symbolic one, provably equal dimensions
    are kept, and otherwise the output is ``Select(d == 1, t, d)``. (The stock converter
    needs the input shape to be static when the target is a constant.)
``Concat``
    Shape vectors (and small int64 constants) concatenate to a shape vector; when a
    run-time int64 tensor is among the inputs, every shape vector is materialized first
    (the stock converter would hand the ShapeExpr itself to ``relax.op.concat``).
``ConstantOfShape``
    Any rank of target shape, static or symbolic (the stock converter mishandles a
    constant empty shape: it broadcasts the 1-element value to rank 0 and fails).
``Gather``, ``Unsqueeze``, ``Cast``, ``Shape``
    Small completions: gathering several entries of a shape vector gives a shape
    vector; ``Unsqueeze(scalar, [-1])`` is handled like ``[0]``; ``Cast`` of a shape value
    to int64 is the identity and to anything else goes through an int64 tensor (never a
    float ``PrimExpr``); ``Shape`` of a tensor whose rank is known but whose dimensions
    are not binds them to fresh (non-negative) variables instead of returning an opaque
    ``shape_of`` call.
``Slice``
    A shape vector sliced with constant bounds stays a shape vector. For a tensor with
    symbolic starts/ends the stock converter sets ``assume_inbound=True`` without
    clamping, so ``x[m:INT64_MAX]`` is typed ``(9223372036854775807 - m, ...)``. Here
    each bound is normalized and clamped to ``[0, dim]`` symbolically (positive steps
    only; others go to the stock converter), and the clamping simplifies away when the
    analyzer can prove it redundant.

Every override falls back to the stock converter (with symbolic inputs materialized as
tensors) when its inputs are not shape values. :func:`patched_converters` installs all
of them for the duration of one import and restores the stock classes afterwards; it
refuses to run on another TVM version, since it replaces internals.

:func:`preprocess` is the ModelProto clean-up that goes with it: ONNX shape inference,
then onnxruntime's basic graph optimization (constant folding and redundant-node
elimination, which keeps symbolic dimensions symbolic and the graph pure ``ai.onnx``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import tvm
from tvm import relax, sym, tirx
from tvm.relax.frontend.onnx import onnx_frontend as _frontend

from ..external_data import initializer_bytes
from .genai import GroupQueryAttentionConverter

__all__ = ["EXPECTED_TVM_VERSION", "patched_converters", "preprocess"]

#: The TVM release whose frontend internals these overrides were written against.
EXPECTED_TVM_VERSION = "0.27.0.post1"

_INT64 = "int64"
# Largest vector folded as a shape value; bigger int64 constants stay tensors.
_MAX_SHAPE_LEN = 16
# Ops whose overridden converter takes symbolic inputs as they are. Identity is
# shape-agnostic and needs no override.
_SYMBOLIC_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Equal",
        "Where",
        "Reshape",
        "Range",
        "Expand",
        "Gather",
        "Unsqueeze",
        "Cast",
        "Shape",
        "Slice",
        "ConstantOfShape",
        "Concat",
        "Identity",
    }
)
# Elementwise ops with multidirectional broadcasting (see _unify_broadcast_dims).
_BROADCAST_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Mod",
        "Where",
        "And",
        "Or",
        "Xor",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "Max",
        "Min",
        "Sum",
        "Mean",
    }
)
# Stock converters that already accept a ShapeExpr input (scalars are still materialized).
_STOCK_SHAPE_OPS = frozenset({"Squeeze", "CastLike", "Resize"})

PrimExpr = Any  # tvm.ir.PrimExpr; kept loose for type checkers without TVM stubs
Converter = Callable[..., Any]


# --------------------------------------------------------------------------------------
# Import-time state
# --------------------------------------------------------------------------------------


@dataclass
class _ImportState:
    """Arithmetic context of the import in progress.

    Attributes
    ----------
    analyzer : tvm.sym.Analyzer
        Simplifier/prover that knows every dimension variable is non-negative.
    known_vars : set
        Variables already registered with the analyzer.
    """

    analyzer: sym.Analyzer = field(default_factory=sym.Analyzer)
    known_vars: set = field(default_factory=set)

    def register(self, expr: PrimExpr) -> None:
        """Record every variable of a dimension expression as non-negative."""
        for var in tirx.analysis.undefined_vars(expr):
            if var not in self.known_vars:
                self.known_vars.add(var)
                self.analyzer.update(
                    var, sym.ConstIntBound(0, sym.ConstIntBound.POS_INF), override=True
                )

    def simplify(self, expr: PrimExpr) -> PrimExpr:
        """Simplify an integer expression."""
        return self.analyzer.simplify(expr)

    def prove(self, cond: PrimExpr) -> bool:
        """Whether ``cond`` holds for every admissible value of the variables."""
        return bool(self.analyzer.can_prove(cond))


_STATE = _ImportState()


# --------------------------------------------------------------------------------------
# Symbolic values
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sym:
    """An int64 (or boolean) value of rank 0 or 1, entry by entry.

    Attributes
    ----------
    values : tuple
        The entries (one for a scalar): int64 ``PrimExpr``, or for conditions Python
        ``bool`` (known) and boolean ``PrimExpr`` (unknown).
    rank : int
        0 for a scalar, 1 for a vector.
    """

    values: tuple
    rank: int

    @property
    def is_static(self) -> bool:
        """All entries are integer constants."""
        return all(isinstance(v, tirx.IntImm) for v in self.values)


def _prim_dtype(expr: PrimExpr) -> str:
    """The dtype string of a ``PrimExpr``."""
    return str(getattr(expr, "dtype", None) or expr.ty)


def _imm(value: int, dtype: str = _INT64) -> tirx.IntImm:
    """An integer immediate."""
    return tirx.IntImm(dtype, int(value))


def _is_shape_typed(value: Any) -> bool:
    """A Relax expression of ``ShapeType`` (ShapeExpr, shape var or ``shape_of`` call)."""
    return isinstance(value, relax.Expr) and isinstance(getattr(value, "ty", None), relax.ShapeType)


def _is_symbolic_input(value: Any) -> bool:
    """A shape-typed value or a ``PrimExpr`` scalar: things most converters reject."""
    return value is not None and (_is_shape_typed(value) or tvm.ir.is_prim_expr(value))


def _to_sym(value: Any, allow_bool: bool = False) -> _Sym | None:
    """View an importer value as a symbolic shape value, if it is one.

    Parameters
    ----------
    value : Any
        A value from the importer's node table.
    allow_bool : bool
        Also accept boolean constants and boolean ``PrimExpr`` (conditions).

    Returns
    -------
    _Sym or None
        ``None`` when the value is a tensor, not int64 (or bool), too large or of rank > 1.
    """
    if isinstance(value, relax.ShapeExpr):
        return _Sym(tuple(value.values), 1)
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        dtypes = (np.int64, np.bool_) if allow_bool else (np.int64,)
        if array.dtype not in dtypes or array.ndim > 1 or array.size > _MAX_SHAPE_LEN:
            return None
        if array.dtype == np.bool_:
            entries = tuple(bool(v) for v in array.reshape(-1))
        else:
            entries = tuple(_imm(v) for v in array.reshape(-1))
        return _Sym(entries, array.ndim)
    if tvm.ir.is_prim_expr(value):
        dtype = _prim_dtype(value)
        if dtype == _INT64 or (dtype == "bool" and allow_bool):
            return _Sym((value,), 0)
    return None


def _from_sym(values: Sequence[PrimExpr], rank: int) -> Any:
    """Build the importer value for int64 entries: a constant, a PrimExpr or a ShapeExpr."""
    values = [_STATE.simplify(v) for v in values]
    if all(isinstance(v, tirx.IntImm) for v in values):
        array = np.array([int(v.value) for v in values], dtype=np.int64)
        return relax.const(array.reshape(()) if rank == 0 else array, _INT64)
    if rank == 0:
        return values[0]
    return relax.ShapeExpr(values)


def _broadcast(*syms: _Sym) -> tuple[list[list[PrimExpr]], int]:
    """ONNX broadcasting of rank-0/1 values; returns the aligned entries and the rank."""
    length = max(len(s.values) for s in syms)
    rank = max(s.rank for s in syms)
    aligned = []
    for s in syms:
        if len(s.values) == length:
            aligned.append(list(s.values))
        elif len(s.values) == 1:
            aligned.append(list(s.values) * length)
        else:
            raise ValueError(f"cannot broadcast shape values of lengths {len(s.values)}, {length}")
    return aligned, rank


def _materialize(bb: relax.BlockBuilder, value: Any) -> Any:
    """Turn a symbolic value into a tensor (int64, or bool for a boolean scalar)."""
    if _is_shape_typed(value):
        return bb.normalize(relax.op.shape_to_tensor(value))
    if tvm.ir.is_prim_expr(value):
        dtype = _prim_dtype(value)
        if dtype == "bool":
            as_int = tirx.Select(value, _imm(1), _imm(0))
            return bb.normalize(relax.op.astype(_materialize(bb, as_int), "bool"))
        if not dtype.startswith(("int", "uint")):
            raise TypeError(f"cannot turn a {dtype} PrimExpr into a tensor: {value}")
        wide = value if dtype == _INT64 else tirx.Cast(_INT64, value)
        vector = bb.normalize(relax.op.shape_to_tensor(relax.ShapeExpr([wide])))
        scalar = bb.normalize(relax.op.reshape(vector, relax.ShapeExpr([])))
        return scalar if dtype == _INT64 else bb.normalize(relax.op.astype(scalar, dtype))
    return value


def _materialize_all(bb: relax.BlockBuilder, inputs: Sequence[Any]) -> Any:
    """An ``onnx_input`` list with every symbolic entry materialized."""
    return _frontend.onnx_input([None if v is None else _materialize(bb, v) for v in inputs])


def _const_ints(value: Any) -> list[int] | None:
    """The entries of a small integer constant, or None."""
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        if array.dtype.kind in "iu" and array.ndim <= 1:
            return [int(v) for v in array.reshape(-1)]
    return None


def _known_shape(value: Any) -> list[PrimExpr] | None:
    """The static-rank shape of a tensor value, entries possibly symbolic."""
    ty = getattr(value, "ty", None)
    if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        return list(ty.shape.values)
    return None


def _int_truediv(lhs: PrimExpr, rhs: PrimExpr) -> PrimExpr:
    """ONNX integer ``Div`` (truncation); floor division when provably equivalent."""
    zero = _imm(0)
    if _STATE.prove(tirx.GE(lhs, zero)) and _STATE.prove(tirx.GT(rhs, zero)):
        return tirx.floordiv(lhs, rhs)
    return tirx.truncdiv(lhs, rhs)


# --------------------------------------------------------------------------------------
# Converter overrides. Each takes the stock (bound) converter first.
# --------------------------------------------------------------------------------------


def _elementwise(fn: Callable[[PrimExpr, PrimExpr], PrimExpr]) -> Converter:
    """Build an override for a binary/variadic integer op on shape values."""

    def convert(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
        syms = [_to_sym(v) for v in inputs]
        if all(s is not None for s in syms) and any(_is_symbolic_input(v) for v in inputs):
            aligned, rank = _broadcast(*syms)
            return _from_sym(
                [functools.reduce(fn, entries) for entries in zip(*aligned, strict=True)], rank
            )
        return stock(bb, _materialize_all(bb, inputs), attr, params)

    return convert


def _equal(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Equal`` that folds only provable comparisons."""
    lhs, rhs = _to_sym(inputs[0]), _to_sym(inputs[1])
    if lhs is None or rhs is None or not any(_is_symbolic_input(v) for v in inputs):
        return stock(bb, _materialize_all(bb, inputs), attr, params)
    (left, right), rank = _broadcast(lhs, rhs)
    decided: list[bool] = []
    for a, b in zip(left, right, strict=True):
        a, b = _STATE.simplify(a), _STATE.simplify(b)
        if _STATE.prove(tirx.EQ(a, b)):
            decided.append(True)
        elif _STATE.prove(tirx.NE(a, b)):
            decided.append(False)
        elif rank == 0:
            return tirx.EQ(a, b)
        else:
            return relax.op.equal(_materialize(bb, inputs[0]), _materialize(bb, inputs[1]))
    array = np.array(decided, dtype=bool)
    return relax.const(array.reshape(()) if rank == 0 else array, "bool")


def _where(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Where`` over shape values with a known or symbolic-scalar condition."""
    cond = _to_sym(inputs[0], allow_bool=True)
    then, other = _to_sym(inputs[1]), _to_sym(inputs[2])
    if cond is not None and then is not None and other is not None:
        if any(_is_symbolic_input(v) for v in inputs):
            (conds, xs, ys), rank = _broadcast(cond, then, other)
            out = []
            for c, x, y in zip(conds, xs, ys, strict=True):
                if isinstance(c, bool):
                    out.append(x if c else y)
                else:
                    out.append(tirx.Select(c, x, y))
            return _from_sym(out, rank)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _reshape(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Reshape`` that keeps shape vectors symbolic and resolves symbolic targets."""
    data, target = inputs[0], inputs[1]
    allowzero = bool(attr.get("allowzero", 0))
    data_sym = _to_sym(data)
    target_ints = _const_ints(target)
    if data_sym is not None and not data_sym.is_static and target_ints is not None:
        count = len(data_sym.values)
        if target_ints == [] and count == 1:
            return _from_sym(data_sym.values, 0)
        if len(target_ints) == 1 and target_ints[0] in (-1, count):
            return _from_sym(data_sym.values, 1)
    target_sym = _to_sym(target)
    data_shape = _known_shape(data)
    zeros_in_range = target_sym is not None and all(
        i < len(data_shape or [])
        for i, d in enumerate(target_sym.values)
        if isinstance(d, tirx.IntImm) and d.value == 0
    )
    if (
        data_sym is None
        and data_shape is not None
        and target_sym is not None
        and target_sym.rank == 1
        and (allowzero or zeros_in_range)
    ):
        dims: list[PrimExpr | None] = []
        for i, dim in enumerate(target_sym.values):
            if isinstance(dim, tirx.IntImm) and dim.value == 0 and not allowzero:
                dims.append(data_shape[i])
            elif isinstance(dim, tirx.IntImm) and dim.value == -1:
                dims.append(None)
            else:
                dims.append(dim)
        # (PrimExpr overloads ==, so look for the -1 slots by identity.)
        unknown = [i for i, d in enumerate(dims) if d is None]
        if len(unknown) == 1:
            total = functools.reduce(lambda a, b: a * b, data_shape, _imm(1))
            rest = [d for d in dims if d is not None]
            known = functools.reduce(lambda a, b: a * b, rest, _imm(1))
            dims[unknown[0]] = tirx.floordiv(total, known)
        if not any(d is None for d in dims):
            return relax.op.reshape(data, relax.ShapeExpr([_STATE.simplify(d) for d in dims]))
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _range(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Range`` with symbolic int64 bounds via ``relax.op.arange``."""
    syms = [_to_sym(v) for v in inputs]
    if all(s is not None and s.rank == 0 for s in syms) and not all(s.is_static for s in syms):
        dtypes = {
            str(v.value.dtype) if isinstance(v, tvm.ir.GenericConst) else _prim_dtype(v)
            for v in inputs
        }
        if dtypes == {_INT64}:
            start, limit, delta = (_STATE.simplify(s.values[0]) for s in syms)
            return relax.op.arange(start, limit, delta, _INT64)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _expand(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Expand`` with per-dimension broadcasting over symbolic dimensions."""
    data, target = inputs[0], inputs[1]
    data_shape = _known_shape(data)
    target_sym = _to_sym(target)
    if data_shape is None or target_sym is None or target_sym.rank != 1:
        return stock(bb, _materialize_all(bb, inputs), attr, params)
    rank = max(len(data_shape), len(target_sym.values))
    padded = [_imm(1)] * (rank - len(data_shape)) + data_shape
    wanted = [_imm(1)] * (rank - len(target_sym.values)) + list(target_sym.values)
    out = []
    for have, want in zip(padded, wanted, strict=True):
        if isinstance(want, tirx.IntImm) and want.value in (1, -1):
            out.append(have)
        elif isinstance(have, tirx.IntImm) and have.value == 1:
            out.append(want)
        elif isinstance(want, tirx.IntImm):  # static, not 1: have must be 1 or equal
            out.append(want)
        elif isinstance(have, tirx.IntImm) or _STATE.prove(tirx.EQ(have, want)):
            out.append(have)
        else:
            out.append(tirx.Select(tirx.EQ(have, _imm(1)), want, have))
    out = [_STATE.simplify(d) for d in out]
    if len(out) == len(data_shape) and all(
        _STATE.prove(tirx.EQ(a, b)) for a, b in zip(out, data_shape, strict=True)
    ):
        return data
    return relax.op.broadcast_to(data, relax.ShapeExpr(out))


def _gather(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Gather`` of constant indices from a shape vector."""
    data, indices = inputs[0], inputs[1]
    index_list = _const_ints(indices)
    if isinstance(data, relax.ShapeExpr) and index_list is not None:
        values = list(data.values)
        picked = [values[i + len(values) if i < 0 else i] for i in index_list]
        rank = indices.value.numpy().ndim
        return _from_sym(picked, rank)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _unsqueeze(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Unsqueeze`` of a symbolic scalar to a length-1 shape vector."""
    data = inputs[0]
    axes = _const_ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    if axes is None:
        axes = list(attr.get("axes", [])) or None
    data_sym = _to_sym(data)
    if data_sym is not None and data_sym.rank == 0 and axes in ([0], [-1]):
        return _from_sym(data_sym.values, 1)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _cast(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Cast`` of shape values: identity to int64, through a tensor otherwise."""
    data = inputs[0]
    to_dtype = _frontend.get_type(attr["to"])
    if _to_sym(data) is not None and not isinstance(data, tvm.ir.GenericConst):
        if to_dtype == _INT64:
            return data if _is_shape_typed(data) else _to_sym(data).values[0]
        return relax.op.astype(_materialize(bb, data), to_dtype)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _shape(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Shape`` that never returns an opaque ``shape_of`` when the rank is known."""
    data = inputs[0]
    ty = getattr(data, "ty", None)
    if (
        isinstance(ty, relax.TensorType)
        and not isinstance(ty.shape, relax.ShapeExpr)
        and ty.ndim >= 0
    ):
        dims = [tirx.Var(f"dim_{i}", _INT64) for i in range(ty.ndim)]
        for dim in dims:
            _STATE.register(dim)
        shape = bb.emit(relax.op.shape_of(data))
        bb.match_cast(shape, relax.ShapeType(dims))
        values = dims
    elif isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        values = list(ty.shape.values)
    else:
        return stock(bb, inputs, attr, params)
    start = attr.get("start", 0)
    end = attr.get("end", None)
    return relax.ShapeExpr(values[start:end])


def _slice(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Slice`` of a tensor with symbolic bounds, clamped symbolically."""
    data = inputs[0]
    params_ints = [None if v is None else _const_ints(v) for v in inputs[1:5]]
    if isinstance(data, relax.ShapeExpr) and None not in params_ints[:2]:
        if all(inputs[i] is None or params_ints[i - 1] is not None for i in (3, 4)):
            start, end = params_ints[0][0], params_ints[1][0]
            step = params_ints[3][0] if params_ints[3] is not None else 1
            return _from_sym(list(data.values)[start:end:step], 1)
    data_shape = _known_shape(data)
    syms = [None if v is None else _to_sym(v) for v in inputs[1:5]]
    starts, ends = syms[0], syms[1]
    if (
        data_shape is None
        or starts is None
        or ends is None
        or (starts.is_static and ends.is_static)
        or any(inputs[i] is not None and syms[i - 1] is None for i in (3, 4))
    ):
        return stock(bb, _materialize_all(bb, inputs), attr, params)
    count = len(starts.values)
    axes_ints = _const_ints(inputs[3]) if inputs[3] is not None else list(range(count))
    step_ints = _const_ints(inputs[4]) if inputs[4] is not None else [1] * count
    if axes_ints is None or step_ints is None or any(s <= 0 for s in step_ints):
        return stock(bb, _materialize_all(bb, inputs), attr, params)
    ndim = len(data_shape)
    axes = [a + ndim if a < 0 else a for a in axes_ints]
    zero = _imm(0)

    def clamp(bound: PrimExpr, dim: PrimExpr) -> PrimExpr:
        if isinstance(bound, tirx.IntImm):
            value = int(bound.value)
            if value < 0:
                bound = dim + value
            elif value >= 2**62:  # INT64_MAX-style "to the end"
                return dim
        else:
            bound = tirx.Select(tirx.LT(bound, zero), bound + dim, bound)
        return _STATE.simplify(tirx.min(tirx.max(bound, zero), dim))

    begins = [clamp(b, data_shape[a]) for b, a in zip(starts.values, axes, strict=True)]
    finals = [clamp(e, data_shape[a]) for e, a in zip(ends.values, axes, strict=True)]
    return relax.op.strided_slice(
        data, axes, begins, finals, [_imm(s) for s in step_ints], assume_inbound=True
    )


def _concat(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``Concat`` of shape vectors stays a shape vector; mixed with tensors, a tensor."""
    syms = [_to_sym(v) for v in inputs]
    if all(s is not None and s.rank == 1 for s in syms) and any(
        _is_symbolic_input(v) for v in inputs
    ):
        return _from_sym([v for s in syms for v in s.values], 1)
    return stock(bb, _materialize_all(bb, inputs), attr, params)


def _constant_of_shape(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``ConstantOfShape`` for any rank of static or symbolic target shape."""
    target = _to_sym(inputs[0])
    if target is None or target.rank != 1:
        return stock(bb, _materialize_all(bb, inputs), attr, params)
    proto = attr.get("value")
    fill = _frontend.get_numpy(proto).reshape(()) if proto is not None else np.float32(0)
    fill = np.asarray(fill)
    if target.is_static:
        shape = [int(v.value) for v in target.values]
        return relax.const(np.full(shape, fill, dtype=fill.dtype), str(fill.dtype))
    return relax.op.full(relax.ShapeExpr(list(target.values)), relax.const(fill, str(fill.dtype)))


# Every _impl_vN of these converter classes is replaced.
def _and(stock: Converter, bb: relax.BlockBuilder, inputs, attr, params) -> Any:
    """``And`` of two bool tensors as a product of uint8 values: TVM's LLVM codegen emits an
    ``and`` of an ``i1`` and an ``i8`` vector (an invalid module) when it vectorizes
    ``logical_and`` over a bool constant at fixed shapes (the legacy exporter's causal mask)."""
    lhs, rhs = inputs
    if not all(isinstance(x, relax.Expr) and isinstance(x.ty, relax.TensorType)
               and str(x.ty.dtype) == "bool" for x in (lhs, rhs)):
        return stock(bb, inputs, attr, params)
    product = relax.op.multiply(relax.op.astype(lhs, "uint8"), relax.op.astype(rhs, "uint8"))
    return relax.op.astype(product, "bool")


def _non_max_suppression(stock: Converter, bb: relax.BlockBuilder, inputs, attr,
                         params) -> Any:
    """``NonMaxSuppression`` only where TVM 0.27's converter is safe and right: it segfaults the
    process (the struct info of ``all_class_non_max_suppression``) when boxes or scores have a
    symbolic dim, and it replaces a ``max_output_boxes_per_class``, ``iou_threshold`` or
    ``score_threshold`` that is not a constant with a default (0, 0.5, 0.0): a wrong answer.
    Both are refused with what to fix."""
    boxes, scores = inputs[0], inputs[1]
    for name, value in (("boxes", boxes), ("scores", scores)):
        shape = _known_shape(value)
        if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
            raise ValueError(f"NonMaxSuppression needs fixed {name} dims (TVM's converter "
                             f"crashes on symbolic ones); {name} has shape "
                             f"{'unknown' if shape is None else [str(d) for d in shape]}")
    for index, name in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"),
                        (4, "score_threshold")):
        value = inputs[index] if len(inputs) > index else None
        if value is None or isinstance(value, tvm.ir.GenericConst):
            continue
        if isinstance(value, relax.Var) and value.name in params[1]:
            continue
        raise ValueError(f"NonMaxSuppression's {name} is not a constant (TVM's converter "
                         f"would use a default in its place); make it an initializer")
    return stock(bb, inputs, attr, params)


_OVERRIDES: dict[str, Converter] = {
    "And": _and,
    "Add": _elementwise(lambda a, b: a + b),
    "Sub": _elementwise(lambda a, b: a - b),
    "Mul": _elementwise(lambda a, b: a * b),
    "Div": _elementwise(_int_truediv),
    "Max": _elementwise(tirx.max),
    "Min": _elementwise(tirx.min),
    "Equal": _equal,
    "Where": _where,
    "Reshape": _reshape,
    "Range": _range,
    "Expand": _expand,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Cast": _cast,
    "Shape": _shape,
    "Slice": _slice,
    "ConstantOfShape": _constant_of_shape,
    "Concat": _concat,
    "NonMaxSuppression": _non_max_suppression,
}


# --------------------------------------------------------------------------------------
# Graph walker
# --------------------------------------------------------------------------------------


def _unify_broadcast_dims(importer: Any, node: onnx.NodeProto) -> None:
    """Make the tensor inputs of a broadcasting op agree on unprovably-equal dims.

    A graph input may declare a dimension under its own name that the graph needs to be
    equal to a computed one (an attention mask ``[batch, total]`` added to a causal bias
    ``[seq, past + seq]``). Relax cannot prove ``total == past + seq`` and types the sum
    with an unknown shape, which breaks every later shape computation. For each aligned
    dimension where one input has a bare variable and another a different, not provably
    equal, symbolic dimension (static sizes are left alone), the variable's tensor is
    ``match_cast`` to the other dimension (preferring a compound expression over a bare
    variable). The cast is a run-time check, so a model that really broadcasts a
    length-1 value there fails loudly instead of computing garbage. The cast value
    replaces the input for all later consumers.
    """
    names = [n for n in dict.fromkeys(node.input) if n]
    shapes = {}
    for name in names:
        value = importer._nodes[name]
        shape = _known_shape(value)
        if shape is not None and not isinstance(value, tvm.ir.GenericConst):
            shapes[name] = shape
    if len(shapes) < 2:
        return
    rank = max(len(shape) for shape in shapes.values())
    new_shapes = {name: list(shape) for name, shape in shapes.items()}
    for back in range(1, rank + 1):
        dims = {n: s[-back] for n, s in shapes.items() if len(s) >= back}
        candidates = [d for d in dims.values() if not _is_one(d)]
        if len(candidates) < 2 or any(isinstance(d, tirx.IntImm) for d in candidates):
            continue  # nothing to unify, or a static size Relax already checks
        compound = [d for d in candidates if not isinstance(d, tirx.Var)]
        target = compound[0] if compound else candidates[0]
        for name, dim in dims.items():
            if isinstance(dim, tirx.Var) and not _STATE.prove(tirx.EQ(dim, target)):
                new_shapes[name][-back] = target
    for name, shape in new_shapes.items():
        if any(a is not b for a, b in zip(shape, shapes[name], strict=True)):
            value = importer._nodes[name]
            ty = relax.TensorType(shape, value.ty.dtype)
            importer._nodes[name] = importer.bb.match_cast(value, ty)


def _is_one(dim: PrimExpr) -> bool:
    """Whether a dimension is the constant 1."""
    return isinstance(dim, tirx.IntImm) and int(dim.value) == 1


@dataclass
class _OneNode:
    """A stand-in GraphProto holding one node, for the stock walker."""

    node: list


def _make_walker(stock_walk: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """Build the replacement for ``ONNXGraphImporter._construct_nodes``."""

    def construct_nodes(importer: Any, graph: onnx.GraphProto) -> None:
        """Convert ``graph``'s nodes in order into ``importer``'s node table."""
        global _STATE
        _STATE = _ImportState()
        for value in importer._inputs.values():
            for dim in _known_shape(value) or []:
                _STATE.register(dim)
        tensors: dict[str, Any] = {}  # materialized inputs, by ONNX value name
        for node in graph.node:
            if node.op_type in _BROADCAST_OPS:
                _unify_broadcast_dims(importer, node)
            values = [importer._nodes[name] if name else None for name in node.input]
            if node.op_type in _SYMBOLIC_OPS and len(node.output) == 1:
                attr = importer._parse_attr(node.attribute)
                attr["tvm_custom"] = {"name": node.name, "num_outputs": 1}
                result = importer._convert_operator(
                    node.op_type, _frontend.onnx_input(values), attr, importer.opset
                )
                importer._nodes[node.output[0]] = result
                continue
            swapped: dict[str, Any] = {}
            for name, value in zip(node.input, values, strict=True):
                if not name or name in swapped or not _is_symbolic_input(value):
                    continue
                if node.op_type in _STOCK_SHAPE_OPS and _is_shape_typed(value):
                    continue
                if name not in tensors:
                    tensors[name] = _materialize(importer.bb, value)
                swapped[name] = value
                importer._nodes[name] = tensors[name]
            try:
                stock_walk(importer, _OneNode([node]))
            finally:
                for name, value in swapped.items():
                    importer._nodes[name] = value

    return construct_nodes


# --------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------


#: Converters of ops stock TVM lacks (onnxruntime contrib ops, checked before import).
_EXTRA_CONVERTERS = {"GroupQueryAttention": GroupQueryAttentionConverter}


def _check_version() -> None:
    """Refuse to patch a TVM whose frontend internals may differ."""
    if tvm.__version__ != EXPECTED_TVM_VERSION:
        raise RuntimeError(
            f"sail_compiler's ONNX converter overrides require apache-tvm=="
            f"{EXPECTED_TVM_VERSION}, found {tvm.__version__}"
        )


def _install() -> list[tuple[type, str, Any]]:
    """Install every override; return what is needed to undo it."""
    undo: list[tuple[type, str, Any]] = []

    def replace(owner: type, name: str, new: Any) -> None:
        undo.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, new)

    for op_name, override in _OVERRIDES.items():
        cls = getattr(_frontend, op_name)
        for method_name in sorted(n for n in dir(cls) if n.startswith("_impl_v")):
            stock = getattr(cls, method_name)  # bound to cls

            def impl(
                klass: type,
                bb: relax.BlockBuilder,
                inputs: Any,
                attr: dict,
                params: Any,
                _stock: Converter = stock,
                _override: Converter = override,
            ) -> Any:
                return _override(_stock, bb, inputs, attr, params)

            replace(cls, method_name, classmethod(impl))
    importer = _frontend.ONNXGraphImporter
    replace(importer, "_construct_nodes", _make_walker(importer._construct_nodes))
    stock_map = _frontend._get_convert_map
    replace(_frontend, "_get_convert_map", lambda: {**stock_map(), **_EXTRA_CONVERTERS})
    return undo


def _uninstall(undo: list[tuple[type, str, Any]]) -> None:
    """Restore what :func:`_install` replaced, newest first."""
    for owner, name, original in reversed(undo):
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


_DEPTH = 0


@contextlib.contextmanager
def patched_converters() -> Iterator[None]:
    """Install the overrides for the duration of one from_onnx call, restoring the originals after.

    Yields
    ------
    None
        While the context is active, ``tvm.relax.frontend.onnx.from_onnx`` uses the
        overrides described in this module's docstring. Nested use is allowed (the outer
        context owns the installation).

    Raises
    ------
    RuntimeError
        If the installed TVM is not :data:`EXPECTED_TVM_VERSION`.
    """
    global _DEPTH
    _check_version()
    undo = _install() if _DEPTH == 0 else []
    _DEPTH += 1
    try:
        yield
    finally:
        _DEPTH -= 1
        if undo:
            _uninstall(undo)


# --------------------------------------------------------------------------------------
# ModelProto preprocessing
# --------------------------------------------------------------------------------------

_ORT_MAX_BYTES = 1 << 30  # stay well below protobuf's 2 GB serialization limit


def skips_preprocessing(model: onnx.ModelProto) -> bool:
    """Whether :func:`preprocess` returns the model as it is: its initializers (in memory or
    external) pass 1 GB."""
    # (ByteSize() itself fails above 2 GB; the initializers are nearly all of the size.)
    return initializer_bytes(model) > _ORT_MAX_BYTES


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference plus onnxruntime's basic graph optimization, on a copy.

    Onnxruntime's basic level folds constants (static parts of shape chains, constant
    ``Shape`` results), removes identities and merges duplicated subexpressions while
    keeping symbolic dimensions symbolic. The result is used only if every node stays in
    the ``ai.onnx`` domain; onnxruntime's extra opset imports are dropped. Without
    onnxruntime only shape inference is applied; models over 1 GB are returned as they are.

    Parameters
    ----------
    model : onnx.ModelProto
        The model. It is not modified.

    Returns
    -------
    onnx.ModelProto
        A new, equivalent model.
    """
    if skips_preprocessing(model):
        # Both steps serialize the model, which protobuf cannot do above 2 GB; the converter
        # overrides import such models without them.
        return model
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a test dependency
        return inferred
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(
                inferred.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # any onnxruntime failure means "skip this step"
            warnings.warn(
                f"onnxruntime could not optimize the model ({err}); skipped", stacklevel=2
            )
            return inferred
        optimized = onnx.load(options.optimized_model_filepath)
    kept_domains = {"", "ai.onnx"} | {node.domain for node in model.graph.node}
    if any(node.domain not in kept_domains for node in optimized.graph.node):
        warnings.warn(
            "onnxruntime introduced non-ai.onnx nodes; optimization skipped", stacklevel=2
        )
        return inferred
    used = {opset.domain for opset in optimized.opset_import if opset.domain in kept_domains}
    kept = [opset for opset in optimized.opset_import if opset.domain in used]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized
