"""``WrapGatherIndices``: make every ``relax.take`` safe against out-of-range indices.

The ONNX importer turns ``Gather`` into ``R.take(..., mode="fast")``, whose legalization reads
memory at whatever index it is given: an out-of-range token id, or a position past the end of a
rotary table, reads out of bounds or crashes the process. This pass rewrites ``mode="fast"`` to
``mode="wrap"``, which is exact for every index ONNX allows (``[-n, n)``; negative indices count
from the end) and stays inside the table for any other. ``sail run`` still rejects out-of-range
token ids before they reach the model (see :mod:`sail_compiler.artifact`); indices computed
inside the graph (a position past the end of a rotary table) are refused at run time, not
wrapped: by the checking kernel the llvm and pim-sim lowering put before every ``take``
(:mod:`sail_compiler.lowering.checked_take`) and by the c runtime before each gather kernel.

Leaves every other call, and ``take`` in another mode, alone. Runs in the ``import`` stage,
before any legalization.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ._common import rewrite_relax_functions

_TAKE = tvm.ir.Op.get("relax.take")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op.same_as(_TAKE) and str(call.attrs.mode) == "fast":
            return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="wrap")
        return call


@tvm.transform.module_pass(opt_level=0, name="WrapGatherIndices")
class WrapGatherIndices:
    """Rewrite ``R.take(..., mode="fast")`` to ``mode="wrap"`` in every Relax function."""

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_relax_functions(_Rewriter(mod), mod)
