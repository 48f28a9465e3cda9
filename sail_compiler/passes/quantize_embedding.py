"""``QuantizeEmbedding``: quantize constant lookup tables of ``take`` into ``sail.quant_take``.

Rewrites every ``R.take(T, indices, axis=0)`` (or ``axis=-2``) whose table ``T`` is a 2-D
float32 constant ``[V, D]`` (V, D >= 1), whose indices are an int32 or int64 tensor of any rank
and whose mode is ``wrap`` or ``fast``, into ``sail.quant_take(packed, scale, zero, indices)``
(:mod:`sail_compiler.ops.quant_take`): the table is stored as the quantized ``T^T`` (K = D,
N = V, groups of g consecutive elements of a row), and the operator returns rows of its
dequantization, wrapping indices modulo V. For ``wrap`` (what
:class:`~sail_compiler.passes.WrapGatherIndices` leaves) that is the float path's behaviour for
every index; for ``fast`` it is the same for every valid index and stays inside the table for
the others, where ``fast`` reads out of bounds.

Leaves alone: tables that are not constants (e.g. already lifted to parameters), constants that
are not 2-D float32, ``take`` along another axis or in ``clip`` mode, other index dtypes, and
every other operator.

Which tables. An ONNX ``Gather`` on a constant becomes such a ``take`` whatever the table holds:
the token embedding, but also e.g. the rotary cos/sin tables of a Llama-style export. Standalone,
``scheme`` quantizes every one of them, labelled ``embedding.<i>`` with ``i`` counting from 0 in
the order the pass meets them (functions by name, bindings in order), by round to nearest
(:func:`~sail_compiler.quant.methods.quantize_weight` of ``T^T``, method ``rtn``). The compiler
driver passes ``layers`` instead: a table from the name the frontend gave the table's constant
(``sail.init:<initializer>``, :func:`~sail_compiler.quant.plan.layer_ref`) to the ONNX name and
its quantized ``T^T`` (``None``: keep the table float); a table whose constant carries no name
in ``layers`` (e.g. one the graph computed) falls back to ``scheme`` (None: stays float). Every
rewritten call carries its name in the ``layer`` attribute.

Runs in the ``quantize`` stage: after the import stage (``WrapGatherIndices``) and
``FoldConstant`` (so folded tables are constants), before any pass that lifts weights to
parameters or legalizes (``LegalizeOps`` turns ``sail.quant_take`` into its TE kernel). It is
independent of :class:`~sail_compiler.passes.QuantizeWeights`, which touches only matmuls.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..errors import OptionError, SailError
from ..ops.quant_matmul import weight_constants, weight_ref_of
from ..ops.quant_take import quant_take
from ..quant.methods import quantize_weight
from ..quant.reference import QuantizedWeight
from ..quant.scheme import QuantScheme
from ._common import applied_entry, constant_array, rewrite_relax_functions

#: ``{layer_ref of T[V, D]: (table name, quantized T^T or None to keep the table float)}``
LayerTable = dict[str, tuple[str, QuantizedWeight | None]]

_TAKE = tvm.ir.Op.get("relax.take")
_MODES = ("wrap", "fast")
_INDEX_DTYPES = ("int32", "int64")


def _table_of(call: relax.Call) -> np.ndarray | None:
    """The float32 ``[V, D]`` constant table of a rewritable ``take``, or None."""
    if not call.op.same_as(_TAKE) or len(call.args) != 2:
        return None
    table, indices = call.args
    # axis None flattens the table; -2 is axis 0 of a 2-D table.
    if not isinstance(table, tvm.ir.GenericConst) or call.attrs.axis not in (0, -2) \
            or str(call.attrs.mode) not in _MODES:
        return None
    tys = (table.ty, indices.ty, call.ty)
    if not all(isinstance(t, relax.TensorType) for t in tys) \
            or str(table.ty.dtype) != "float32" or str(call.ty.dtype) != "float32" \
            or str(indices.ty.dtype) not in _INDEX_DTYPES or table.ty.ndim != 2:
        return None
    values = constant_array(table)
    return values if values.shape[0] >= 1 and values.shape[1] >= 1 else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, scheme: QuantScheme | None,
                 layers: LayerTable | None) -> None:
        super().__init__(mod)
        self.scheme, self.layers = scheme, layers
        self.count = 0
        self.applied: list[dict[str, object]] = []
        self.problems: list[str] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        table = _table_of(call)
        if table is None:
            return call
        label = f"embedding.{self.count}"
        self.count += 1
        ref = weight_ref_of(call.args[0])
        entry = self.layers.get(ref) if self.layers is not None and ref is not None else None
        name = entry[0] if entry is not None else label
        vocab, dim = table.shape
        if entry is not None:
            qw = entry[1]
            if qw is None:
                return call
            if (qw.k, qw.n) != (dim, vocab):
                self.problems.append(f"{name} (table [{vocab}, {dim}]): the given quantized "
                                     f"table is [{qw.k}, {qw.n}], expected its transpose "
                                     f"[{dim}, {vocab}]")
                return call
        elif self.scheme is None:
            return call
        else:
            try:
                qw = quantize_weight(table.T, self.scheme, "rtn")
            except SailError as err:
                self.problems.append(f"{name} (table [{vocab}, {dim}]): {err}")
                return call
        self.applied.append(applied_entry(name, qw))
        return quant_take(*weight_constants(qw, name), call.args[1], bits=qw.bits,
                          group_size=qw.group_size, k=qw.k, layer=name)


@tvm.transform.module_pass(opt_level=0, name="QuantizeEmbedding")
class QuantizeEmbedding:
    """Rewrite ``take(T_const, indices, axis=0)`` into ``sail.quant_take`` with ``T`` quantized.

    Parameters
    ----------
    scheme
        Bits, group size along a row (D), symmetric or with zero points, for tables not in
        ``layers`` (None: leave those float). Quantized by round to nearest.
    layers
        The driver's table of quantized lookup tables by name (module docstring); each value
        is the quantized ``T^T`` (``k`` = D, ``n`` = V).

    Attributes
    ----------
    applied
        After a run: one dict per rewritten ``take`` (``layer``, ``bits``, ``group_size``,
        ``symmetric``, ``k`` = D, ``n`` = V).

    Raises
    ------
    OptionError
        At construction: neither ``scheme`` nor ``layers``, or ``scheme`` is not a
        :class:`QuantScheme`.
    SailError
        When run: a table holds inf or nan, or a quantized table in ``layers`` does not have the
        shape of its ``T^T`` (all such tables listed).
    """

    def __init__(self, scheme: QuantScheme | None = None,
                 layers: LayerTable | None = None) -> None:
        if scheme is None and layers is None:
            raise OptionError("QuantizeEmbedding needs a scheme (e.g. QuantScheme.parse('w4g32')) "
                              "or a table of quantized lookup tables")
        if scheme is not None and not isinstance(scheme, QuantScheme):
            raise OptionError(f"scheme must be a QuantScheme, got {type(scheme).__name__}; "
                              "build one with QuantScheme.parse('w4g32')")
        self.scheme, self.layers = scheme, layers
        self.applied: list[dict[str, object]] = []

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self.scheme, self.layers)
        rewritten = rewrite_relax_functions(rewriter, mod)
        if rewriter.problems:
            raise SailError(f"cannot quantize {len(rewriter.problems)} lookup tables:\n"
                            + "\n".join(f"  - {p}" for p in rewriter.problems))
        self.applied = rewriter.applied
        return rewritten
