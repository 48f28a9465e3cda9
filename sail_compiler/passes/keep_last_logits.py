"""``KeepLastLogits``: compute a model's logits output for the last sequence position only.

A decoder's prefill computes the LM head (for Gemma 3 270M, 640 x 262144: most of the weights)
for every prompt position, but generation reads only the last position's logits. For each field
of ``main``'s returned tuple that is a rank-3 ``[batch, seq, vocab]`` tensor computed by a
``R.matmul`` of a rank-3 hidden state with a rank-2 constant weight (the LM head), optionally
followed by per-position element-wise ops (a cast, ``tanh``, a scalar scale or offset: logit
soft-capping), this pass slices the hidden state's sequence axis to its last position before the
matmul, so the output becomes ``[batch, 1, vocab]``. The hidden state itself (the final norm) is
left as it is: slicing earlier would need proof that every op before the matmul is per-position.

Leaves alone every output that is not such a matmul (the KV cache's ``present.*`` tensors, a
hidden-state output, a matmul with a weight computed at run time) and every function but
``main``. Opt-in (``--logits last``): the driver runs it at the end of the ``import`` stage,
after :class:`WrapGatherIndices` and :class:`FuseAttention` and before any quantization, and
records the new dims in the artifact's signature; the consumers of "the last position's logits"
(``sail_generate``, ``Model.generate``, ``sail verify``) accept a sequence dim of 1.
"""

from __future__ import annotations

import tvm
from tvm import relax

_MATMUL = tvm.ir.Op.get("relax.matmul")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")
_UNARY = {tvm.ir.Op.get(f"relax.{name}") for name in ("astype", "tanh")}
_SCALAR_BINARY = {tvm.ir.Op.get(f"relax.{name}") for name in ("multiply", "divide", "add",
                                                               "subtract")}


def _rank(expr: relax.Expr) -> int | None:
    ty = expr.ty
    return ty.ndim if isinstance(ty, relax.TensorType) else None


def _is_weight(expr: relax.Expr) -> bool:
    """A rank-2 constant, possibly behind a transpose (``Gemm(transB=1)``, tied embeddings)."""
    if isinstance(expr, relax.Call) and expr.op.same_as(_PERMUTE):
        expr = expr.args[0]
    return isinstance(expr, tvm.ir.GenericConst) and _rank(expr) == 2


def _is_scalar_constant(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst) and _rank(expr) == 0


def _lm_head(var: relax.Var, bound: dict[relax.Var, relax.Expr]) -> relax.Call | None:
    """The LM-head matmul ``var`` is computed from through per-position ops, or None."""
    while True:
        value = bound.get(var)
        if isinstance(value, relax.Call) and value.op.same_as(_MATMUL):
            ok = _rank(value.args[0]) == 3 and _is_weight(value.args[1]) and _rank(value) == 3
            return value if ok else None
        if not isinstance(value, relax.Call):
            return None
        if value.op in _UNARY and isinstance(value.args[0], relax.Var):
            var = value.args[0]
        elif value.op in _SCALAR_BINARY and len(value.args) == 2:
            tensors = [a for a in value.args if not _is_scalar_constant(a)]
            if len(tensors) != 1 or not isinstance(tensors[0], relax.Var):
                return None
            var = tensors[0]
        else:
            return None


def _last_position(hidden: relax.Expr) -> relax.Expr:
    seq = hidden.ty.shape[1]
    return relax.op.strided_slice(hidden, axes=[1], begin=[seq - 1], end=[seq],
                                    assume_inbound=True)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, heads: list[relax.Call]) -> None:
        super().__init__(mod)
        self.heads = heads

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if any(call.same_as(h) for h in self.heads):
            hidden = self.visit_expr(call.args[0])
            weight = self.visit_expr(call.args[1])
            return relax.op.matmul(_last_position(hidden), weight, out_dtype=call.attrs.out_dtype)
        return super().visit_call_(call)


def find_lm_heads(func: relax.Function) -> dict[int, relax.Call]:
    """The LM-head matmul of every returned field of ``func`` that qualifies, by field index."""
    bound: dict[relax.Var, relax.Expr] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                bound[binding.var] = binding.value
    result = func.body.body
    # follow renames (a dataflow output) to the returned tuple or to the var of the single
    # output, not past it to the call that computes that output
    while isinstance(result, relax.Var) and isinstance(bound.get(result),
                                                         (relax.Var, relax.Tuple)):
        result = bound[result]
    fields = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    heads = {}
    for index, field in enumerate(fields):
        if isinstance(field, relax.Var):
            head = _lm_head(field, bound)
            if head is not None:
                heads[index] = head
    return heads


@tvm.transform.module_pass(opt_level=0, name="KeepLastLogits")
class KeepLastLogits:
    """Slice the LM head's input to the last sequence position (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        gvar = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
        if gvar is None or not isinstance(mod[gvar], relax.Function):
            return mod
        func = mod[gvar]
        heads = list(find_lm_heads(func).values())
        if not heads:
            return mod
        rewriter = _Rewriter(mod, heads)
        new = rewriter.visit_expr(func)
        # the declared return type still has the old seq dim: take the body's
        new = relax.Function(new.params, new.body, new.body.ty, new.is_pure, new.attrs,
                             new.span)
        rewriter.builder_.update_func(gvar, new)
        return rewriter.builder_.get()
