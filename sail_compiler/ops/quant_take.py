"""``sail.quant_take``: rows of an embedding table quantized in groups along its rows.

Operands and attributes::

    y = sail.quant_take(packed, scale, zero, indices, bits=b, group_size=g, k=D)

    packed   uint8        [ceil(D_pad * b / 8), V]  codes q[D_pad, V] packed along D
                                                     (``quant.packing``: little-endian bit streams)
    scale    float32      [n_groups, V]
    zero     int32        [n_groups, V]             zero points; 2**(b-1) everywhere if symmetric
    indices  int32|int64  [...]                     any rank; dims may be symbolic
    y        float32      [..., D]                  ``y[i..., :] = T[indices[i...] mod V, :]``

with ``n_groups = ceil(D / g)`` and ``D_pad = n_groups * g``. The table ``T[V, D]`` is stored as
the :class:`~sail_compiler.quant.reference.QuantizedWeight` of ``T^T`` (K = D, N = V): groups of
g consecutive elements of one row, packed along the row. The operands are therefore laid out
exactly as ``sail.quant_matmul``'s weight operands (:mod:`.quant_matmul`), so a model whose LM
head is the transposed embedding can hold one copy of the codes for both. The operator is a pure
dequantization: ``y[i..., d] = scale[d // g, v] * float32(q[d, v] - zero[d // g, v])`` with
``v = indices[i...]``, bit-identical to column ``v`` of
:func:`~sail_compiler.quant.reference.dequantize`.

Indices wrap modulo V (``v mod V`` in ``[0, V)``, so ``-1`` is the last row), as ``R.take(...,
mode="wrap")`` does after :class:`~sail_compiler.passes.WrapGatherIndices`: exact for every
index ONNX ``Gather`` allows (``[-V, V)``), and never outside the table for any other.

Registered from Python with type inference (``FInferType``), purity and a legalization
(``FLegalize``) to one TE kernel via ``R.call_tir`` that unpacks the codes of each gathered row on
the fly. A row of the table is a column of ``packed``: a gather reads ``ceil(D_pad * b / 8)``
bytes ``V`` apart (fine for the one lookup per token of a decoder; a layout for bulk gathers
would store rows contiguously instead). Attributes live in the call's ``DictAttrs``; ``layer``
(optional) names the ONNX table. TVMScript prints the call as
``T.Call("sail.quant_take", [...], attrs={...})``.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from ..quant.packing import check_bits
from .quant_matmul import check_packed_operands, unpack_code

__all__ = ["OP_NAME", "is_quant_take", "quant_take", "quant_take_te"]

#: The registered name; targets recognise the operator by it.
OP_NAME = "sail.quant_take"

_ATTR_NAMES = ("bits", "group_size", "k")
_OPERANDS = ("packed", "scale", "zero", "indices")
_INDEX_DTYPES = ("int32", "int64")


def _check_attrs(bits: int, group_size: int, k: int) -> tuple[int, int, int]:
    """Validated attributes as Python ints.

    Raises
    ------
    OptionError
        ``bits`` outside 1..8.
    ValueError
        ``group_size`` or ``k`` below 1.
    """
    bits = check_bits(bits, "table bits")
    if int(group_size) < 1 or int(k) < 1:
        raise ValueError(f"{OP_NAME}: group_size and k must be >= 1, got {group_size}, {k}")
    return bits, int(group_size), int(k)


def quant_take(packed: relax.Expr, scale: relax.Expr, zero: relax.Expr, indices: relax.Expr, *,
               bits: int, group_size: int, k: int, layer: str = "") -> relax.Call:
    """Build a ``sail.quant_take`` call (see the module docstring for shapes and dtypes).

    Parameters
    ----------
    packed, scale, zero
        The quantized table ``T^T``: uint8 codes packed along D, float32 scales, int32 zero
        points.
    indices
        int32 or int64 row indices of any shape.
    bits
        Code width b, 1..8.
    group_size
        Elements g of one row per group.
    k
        The row length D of the table.
    layer
        The table's name (the ONNX initializer or node), for dumps and reports; not part of the
        semantics.

    Returns
    -------
    relax.Call
        The call; its type is inferred when a ``BlockBuilder`` normalizes it.

    Raises
    ------
    OptionError, ValueError
        An attribute is out of range.
    """
    bits, group_size, k = _check_attrs(bits, group_size, k)
    attrs: dict[str, int | str] = {"bits": bits, "group_size": group_size, "k": k}
    if layer:
        attrs["layer"] = layer
    return relax.Call(tvm.ir.Op.get(OP_NAME), [packed, scale, zero, indices], attrs)


def _attrs_of(call: relax.Call) -> tuple[int, int, int]:
    return _check_attrs(*(int(call.attrs[name]) for name in _ATTR_NAMES))


def _infer_type(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    """``float32[*indices.shape, D]``; checks dtypes, ranks and static dims against the attrs."""
    bits, group_size, k = _attrs_of(call)
    if len(call.args) != 4:
        raise ValueError(f"{OP_NAME} takes 4 operands ({', '.join(_OPERANDS)}), "
                         f"got {len(call.args)}")
    tys = [arg.ty for arg in call.args]
    problems = []
    for name, ty, dtypes in zip(_OPERANDS, tys, (("uint8",), ("float32",), ("int32",),
                                                 _INDEX_DTYPES), strict=True):
        if not isinstance(ty, relax.TensorType):
            problems.append(f"{name} must be a tensor, got {ty}")
        elif str(ty.dtype) not in dtypes:
            problems.append(f"{name} must be {' or '.join(dtypes)}, got {ty.dtype}")
        elif name != "indices" and ty.ndim not in (-1, 2):
            problems.append(f"{name} must be 2-D, got {ty.ndim}-D")
    if problems:
        raise ValueError(f"{OP_NAME}: " + "; ".join(problems))
    problems, _ = check_packed_operands(tys[:3], bits, group_size, k)
    if problems:
        raise ValueError(f"{OP_NAME}: " + "; ".join(problems))
    indices_ty = tys[3]
    if indices_ty.shape is None:
        ndim = -1 if indices_ty.ndim < 0 else indices_ty.ndim + 1
        return relax.TensorType(dtype="float32", ndim=ndim)
    return relax.TensorType([*list(indices_ty.shape), tirx.const(k, "int64")], "float32")


def quant_take_te(packed: te.Tensor, scale: te.Tensor, zero: te.Tensor, indices: te.Tensor, *,
                  bits: int, group_size: int, k: int) -> te.Tensor:
    """The operator as one TE stage: ``y[..., d] = s[d // g, v] * float32(q[d, v] - z[d // g, v])``
    with ``v = indices[...] mod V`` and codes unpacked from ``packed`` on the fly."""
    vocab = packed.shape[1]

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *lead, d = idx
        # floormod is Python's modulo: the row R.take(mode="wrap") reads, for every index.
        row = tirx.floormod(indices[tuple(lead)].astype("int64"), vocab)
        grp = tirx.floordiv(d, group_size)
        code = unpack_code(packed, d, row, bits)
        # (q - z) in int32, converted exactly, times the scale: dequantize()'s float32 product.
        return scale[grp, row] * (code - zero[grp, row]).astype("float32")

    return te.compute([*indices.shape, tirx.const(k, "int64")], body, name="quant_take")


def _legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    bits, group_size, k = _attrs_of(call)
    return bb.call_te(quant_take_te, *call.args, bits=bits, group_size=group_size, k=k,
                      primfunc_name_hint="quant_take")


def _register() -> None:
    """Register the operator and its attributes once per process."""
    if OP_NAME in tvm.ir.Op.list_op_names():
        return
    tvm.ir._ffi_api.RegisterOp(OP_NAME, "rows of a table quantized in groups along its rows")
    op = tvm.ir.Op.get(OP_NAME)
    op.set_num_inputs(4)
    for name, description in zip(_OPERANDS, ("uint8 [ceil(D_pad*bits/8), V]",
                                             "float32 [n_groups, V]", "int32 [n_groups, V]",
                                             "int32 or int64 [...]"), strict=True):
        op.add_argument(name, "Tensor", description)
    tvm.ir.register_op_attr(OP_NAME, "FInferType", _infer_type)
    tvm.ir.register_op_attr(OP_NAME, "FPurity", True)
    tvm.ir.register_op_attr(OP_NAME, "FLegalize", _legalize)


def is_quant_take(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a call of ``sail.quant_take``."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == OP_NAME


_register()
