"""The llvm and pim-sim legalization of ``relax.take``: indices checked against the table.

TVM legalizes ``take`` with the index wrapped (``mode="wrap"``, what
:class:`~sail_compiler.passes.WrapGatherIndices` makes of ONNX's ``Gather``) or unchecked
(``"fast"``). An index computed inside the graph, such as a position ``Range(past, past + seq)``
into a rotary table of ``max_positions`` rows, is then never checked: a context longer than the
table wrapped around to its first rows and gave a wrong answer without an error. Token ids are
checked before a run (their bound is in the signature), but computed indices cannot be.

:func:`legalize_checked_take` puts a small kernel before every ``take`` whose indices are not a
constant: it copies the indices (one int per token: nothing beside the per-step kernels) and
asserts that each lies in the valid range, ``[-rows, rows)`` for ``"wrap"`` (ONNX's negative
indices count from the end) and ``[0, rows)`` for ``"fast"``. A failed assertion ends the VM run
with an error naming the table and its rows, which :meth:`~sail_compiler.artifact.Artifact.run`
turns into an :class:`~sail_compiler.errors.InputError`; the ``take`` itself is TVM's
legalization, unchanged, on the checked copy. ``"clip"`` and ``"nan"`` are defined for every
index and are left alone. The kernel has no blocks and is marked opaque and scheduled, so
``FuseOps`` keeps it apart and the schedule rules skip it; a table whose rows are a symbolic dim
is passed to the kernel for its shape (the data is not read).

The c target does not use it: its runtime checks the indices of every gather kernel before the
call (``sail_rt_check_indices``), as TVM's C code generation of an assertion would need the TVM
runtime's error functions.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

from ..ops.quant_matmul import constant_name, initializer_of

__all__ = ["legalize_checked_take"]

_TAKE = tvm.ir.Op.get("relax.take")
#: ``relay::OpPatternKind::kOpaque``: FuseOps fuses nothing into or out of the kernel.
_OPAQUE = 8


def _table_name(table: relax.Expr) -> str:
    """The ONNX initializer (or layer operand) a constant table holds, else ``a table``."""
    if isinstance(table, tvm.ir.GenericConst):
        initializer = initializer_of(table)
        if initializer is not None:
            return initializer
        named = constant_name(table)
        if named is not None:
            return ".".join(named)
    return "a table"


def _check_kernel(index_ty: relax.TensorType, table_ty: relax.TensorType | None, rows: int,
                  axis: int, low_negative: bool, message: str) -> tirx.PrimFunc:
    """``checked = indices`` for every element, asserting ``low <= i < rows`` first.

    ``rows`` > 0 is the static number of rows; 0 reads it from ``table_ty``'s buffer (the
    table's ``axis``), whose parameter comes first then."""
    dtype = index_ty.dtype

    def fresh_shape(ty: relax.TensorType, prefix: str) -> list[tirx.PrimExpr]:
        return [tirx.IntImm("int64", int(d)) if isinstance(d, tirx.IntImm)
                else tirx.Var(f"{prefix}{k}", "int64") for k, d in enumerate(ty.shape)]

    shape = fresh_shape(index_ty, "n")
    indices = tirx.decl_buffer(shape, dtype, "indices")
    checked = tirx.decl_buffer(shape, dtype, "checked")
    params = [indices, checked]  # buffers are the parameters themselves in TVM 0.27
    if table_ty is not None:
        table = tirx.decl_buffer(fresh_shape(table_ty, "t"), table_ty.dtype, "table")
        params.insert(0, table)
        limit = table.shape[axis]
    else:
        limit = tirx.IntImm("int64", rows)
    loops = [tirx.Var(f"i{k}", "int64") for k in range(len(shape))]
    value = tirx.Cast("int64", tirx.BufferLoad(indices, loops))
    low = -limit if low_negative else tirx.IntImm("int64", 0)
    inside = tirx.And(tirx.LE(low, value), tirx.LT(value, limit))
    body: tirx.Stmt = tirx.SeqStmt([
        # The Python wrapper's parameters are named (kind, condition, ...), but it passes them
        # on in order to the FFI constructor, which takes (condition, kind, message parts).
        tirx.AssertStmt(inside, tvm.ir.StringImm("RuntimeError"), [tvm.ir.StringImm(message)]),
        tirx.BufferStore(checked, tirx.BufferLoad(indices, loops), loops)])
    for loop, extent in reversed(list(zip(loops, shape, strict=True))):
        body = tirx.For(loop, tirx.IntImm("int64", 0), extent, tirx.ForKind.SERIAL, body)
    # Relax's build passes (RewriteDataflowReshape) expect a root block around the body.
    body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
    func = tirx.PrimFunc(params, body)
    return func.with_attrs({"global_symbol": "check_indices", "tirx.noalias": True,
                            "op_pattern": _OPAQUE, "tirx.is_scheduled": True})


def legalize_checked_take(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``take(table, indices)`` after a kernel that checks ``indices`` (module docstring);
    TVM's own legalization when the indices are a constant, the mode defines every index, or
    the types are not known tensors."""
    legalize = call.op.get_attr("FLegalize")
    table, indices = call.args
    mode = str(call.attrs.mode)
    table_ty, index_ty = table.ty, indices.ty
    known = isinstance(table_ty, relax.TensorType) and isinstance(index_ty, relax.TensorType) \
        and table_ty.shape is not None and index_ty.shape is not None
    if mode not in ("wrap", "fast") or isinstance(indices, tvm.ir.GenericConst) or not known \
            or call.attrs.axis is None:
        return legalize(bb, call)
    axis = int(call.attrs.axis) % table_ty.ndim
    dim = table_ty.shape[axis]
    rows = int(dim) if isinstance(dim, tirx.IntImm) else 0
    name = _table_name(table)
    if rows:
        where = f"the {rows} rows of {name}, which takes " + \
            (f"{-rows} .. {rows - 1}" if mode == "wrap" else f"0 .. {rows - 1}")
    else:
        where = f"the rows of {name} (its dim {axis})"
    message = (f"a gather index is outside {where}: a position beyond what the model was "
               "exported for (a context longer than its position table) or an id past its "
               "vocabulary; shorten the context")
    kernel = _check_kernel(index_ty, None if rows else table_ty, rows, axis, mode == "wrap",
                           message)
    gvar = bb.add_func(kernel, "check_indices")
    args = [indices] if rows else [table, indices]
    checked = bb.emit(relax.call_tir(gvar, relax.Tuple(args), index_ty))
    return legalize(bb, relax.Call(_TAKE, [table, checked], call.attrs, call.ty_args, call.span))
