"""FuseOpsAndTIR: ``FuseOps`` and ``FuseTIR`` with TVM 0.27's duplicate scalar params removed.

:class:`DropRedefinedScalarParams` runs between the two; if TVM still fails inside them the
module stays unfused (slower, correct). Runs after ``AnnotateTIROpPattern`` and before
:class:`~.schedule_llvm.ScheduleLLVM` in :func:`~.pipeline.lowering_passes`.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, tirx

from ..errors import tvm_message

__all__ = ["DropRedefinedScalarParams", "FuseOpsAndTIR"]

logger = logging.getLogger(__name__)


def _scalar_params_also_in_shapes(func: relax.Function) -> list[int]:
    """Indices of ``func``'s scalar (``PrimType``) params that an ``R.Shape([...])`` param of
    ``func`` also defines (in 0.27 a scalar param is its own TIR variable)."""
    in_shapes = [v for param in func.params if isinstance(param.ty, relax.ShapeType)
                 and param.ty.values is not None for v in param.ty.values]
    return [index for index, param in enumerate(func.params)
            if isinstance(param.ty, tvm.ir.PrimType) and isinstance(param, tirx.Var)
            and any(param.same_as(v) for v in in_shapes)]


@relax.expr_functor.mutator
class _CallArgDropper(relax.PyExprMutator):
    """Give the named functions new signatures and drop the matching arguments of their calls.

    ``replaced`` maps a function name to ``(new function, indices of the dropped params)``; the
    module given must not hold the old functions any more (their names are reused).
    """

    def __init__(self, mod: tvm.ir.IRModule,
                 replaced: dict[str, tuple[relax.Function, list[int]]]) -> None:
        super().__init__(mod)
        self.drops = {name: (self.builder_.add_func(func, name), dropped)
                      for name, (func, dropped) in replaced.items()}

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = self.visit_expr_post_order(call)
        callee = call.op
        if isinstance(callee, tvm.ir.GlobalVar) and callee.name_hint in self.drops:
            new_gvar, dropped = self.drops[callee.name_hint]
            args = [a for i, a in enumerate(call.args) if i not in dropped]
            return relax.Call(new_gvar, args, call.attrs, call.ty_args)
        return call


@tvm.transform.module_pass(opt_level=0, name="DropRedefinedScalarParams")
class DropRedefinedScalarParams:
    """Remove the symbolic-variable params that TVM's ``RemoveUnusedParameters`` adds twice.

    ``FuseTIR`` first runs ``ExpandTupleArguments`` and ``RemoveUnusedParameters``. The latter
    gives a primitive function one ``R.Shape([v])`` param for each symbolic variable it uses
    that no tensor param's shape defines, without counting scalar (``PrimType``) params, which
    in 0.27 are TIR variables themselves. A group with a scalar param ``t`` (``FuseOps`` lifts
    the ``R.prim_value(t)`` argument of ``shape_to_tensor``'s legalization into one) then has
    ``t`` twice, and ``FuseTIR`` builds a PrimFunc with a duplicate parameter, which its
    ``RenewDefs`` rejects ("VarRemapGet(source) == nullptr"). Run between ``FuseOps`` and
    ``FuseTIR``: it runs the two TVM passes and drops each shape param whose variables an
    earlier param defines, with the matching argument of every call; ``FuseTIR``'s own run of
    them then finds nothing to change.
    """

    def transform_module(  # noqa: D102
        self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
    ) -> tvm.ir.IRModule:
        mod = tvm.transform.Sequential([relax.transform.ExpandTupleArguments(),
                                        relax.transform.RemoveUnusedParameters()])(mod)
        replaced: dict[str, tuple[relax.Function, list[int]]] = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function) or func.attrs is None \
                    or "Primitive" not in func.attrs:
                continue
            dropped = _scalar_params_also_in_shapes(func)
            if dropped:
                params = [p for i, p in enumerate(func.params) if i not in dropped]
                replaced[gvar.name_hint] = (
                    relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs,
                                   func.span), dropped)
        if not replaced:
            return mod
        kept = tvm.IRModule({gvar: func for gvar, func in mod.functions_items()
                             if gvar.name_hint not in replaced}, attrs=mod.attrs)
        dropper = _CallArgDropper(kept, replaced)
        for gvar, func in kept.functions_items():
            if isinstance(func, relax.Function) and (func.attrs is None
                                                     or "Primitive" not in func.attrs):
                dropper.builder_.update_func(gvar, dropper.visit_expr(func))
        return dropper.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="FuseOpsAndTIR")
class FuseOpsAndTIR:
    """``FuseOps``, :class:`DropRedefinedScalarParams`, ``FuseTIR``; if TVM still fails inside
    them, the module stays unfused.

    Without :class:`DropRedefinedScalarParams`, TVM 0.27's ``FuseTIR`` aborted on every Hugging
    Face KV export (``RenewDefs``: "VarRemapGet(source) == nullptr"). Unfused kernels are
    slower but correct, so a remaining failure is logged and compilation goes on.
    """

    def transform_module(  # noqa: D102
        self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
    ) -> tvm.ir.IRModule:
        try:
            return tvm.transform.Sequential(
                [relax.transform.FuseOps(), DropRedefinedScalarParams(),
                 relax.transform.FuseTIR()])(mod)
        except tvm.error.InternalError as err:
            logger.warning("operator fusion failed in TVM (%s); compiling unfused",
                           tvm_message(err))
            return mod
