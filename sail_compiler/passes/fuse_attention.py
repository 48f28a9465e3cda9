"""``FuseAttention``: the attention the exporters write becomes one ``sail.attention``.

Rewrites ``matmul(softmax(logits, axis=-1), V)`` into :func:`~sail_compiler.ops.attention.
attention` when the logits are, from the inside out (each step optional unless noted):

* ``matmul(Q, Kt)`` (required), where ``Q`` and ``Kt`` may be scaled by scalar constants
  (``multiply`` / ``divide``: the scale on the query, on the key, or both, as torch's SDPA
  decomposition writes it) and ``Kt`` is the key transposed by ``permute_dims`` of its last two
  axes, with the heads repeated before or after the transpose;
* scaled by scalar constants (``multiply`` or ``divide``, on the scores);
* soft-capped: ``c * tanh(x / c)`` (``x * (1 / c)`` too);
* plus an additive float mask broadcastable to the scores, or masked by ``where(cond, x, fill)``
  / ``where(cond, fill, x)`` with ``fill`` ``-inf`` or ``finfo(float32).min`` (where adding the
  fill gives the fill, so the mask becomes ``where(cond, 0, fill)``, exactly).

Head repeats (``repeat_kv``) it sees through, on keys and values, 4-D ``[B, H, T, D]``:
``reshape(broadcast_to(expand_dims(k, 2), [B, Hkv, R, T, D]), [B, Hkv * R, T, D])`` (Expand, as
both torch exporters write it; also with ``tile`` or ``reshape`` instead of ``broadcast_to`` /
``expand_dims``), ``repeat(k, R, axis=1)`` (``repeat_interleave``) and, for one KV head,
``broadcast_to`` or ``tile`` along the heads. The generated decoders' grouped 5-D form
(``Q`` reshaped to ``[B, Hkv, R, S, D]`` against ``expand_dims(K, 2)``, scores
``[B, Hkv, R, S, T]``) is rewritten to 4-D around the operator: ``Q`` is taken from before its
reshape, the mask reshaped to 4-D, the result reshaped back to 5-D.

Left alone, unchanged and correct: anything else, e.g. a softmax over another axis, masks that
differ per group of heads in the 5-D form, a mask applied before the scaling, a scale that is
not a scalar constant, ``tile`` of several KV heads along the heads (head ``h`` would read
``h mod Hkv``, not ``h // R``), float types other than float32, and shapes it cannot prove
consistent. The replaced ``matmul``, ``softmax`` and head repeats are removed when nothing else
reads them.

Runs on the imported float graph, before quantization (it only needs the ``import`` stage) and
on every target: the llvm and pim-sim targets legalize the operator to TE kernels, the c target
to the runtime's ``sail_attention`` kernel. Nothing has to run after it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tvm
from tvm import relax, sym, tirx

from ..ops.attention import attention, dim_text
from ..ops.quant_matmul import static_dim
from ._common import rewrite_relax_functions

__all__ = ["FuseAttention"]

_F32_MIN = float(np.finfo(np.float32).min)


def _op(expr: relax.Expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        else None


def _shape(expr: relax.Expr) -> list[tirx.PrimExpr] | None:
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and ty.shape is not None and ty.dtype == "float32":
        return list(ty.shape)
    return None


def _is_one(dim: tirx.PrimExpr) -> bool:
    return isinstance(dim, tirx.IntImm) and int(dim.value) == 1


def _scalar_const(expr: relax.Expr) -> float | None:
    """The value of a float32 constant with one element, else None."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    value = expr.value.numpy()
    if value.size != 1 or value.dtype != np.float32:
        return None
    return float(value.reshape(()))


@dataclasses.dataclass
class _Scores:
    """What the logits peel down to."""

    matmul: relax.Call
    scale: float
    softcap: float


@dataclasses.dataclass
class _Operand:
    """A key or value with its repeats, transpose and scale peeled off."""

    base: relax.Expr
    repeat: int  # query heads per KV head seen in a 4-D head repeat (1: none seen)
    transposed: bool
    scale: float


@relax.expr_functor.mutator
class _Fuser(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.analyzer = sym.Analyzer()
        self.fused: list[str] = []
        self.emitted = False  # bindings emitted for a match that may then have failed

    # -- looking through variables --------------------------------------------------------

    def value(self, expr: relax.Expr) -> relax.Expr:
        """The expression bound to a variable (itself for parameters and non-variables)."""
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return expr
            expr = bound
        return expr

    def call(self, expr: relax.Expr, *names: str) -> relax.Call | None:
        """The call ``expr`` denotes if it is of one of ``names`` (same-dtype casts skipped)."""
        value = self.value(expr)
        while _op(value) == "relax.astype" and value.ty == value.args[0].ty:
            value = self.value(value.args[0])
        return value if _op(value) in names else None

    def eq(self, a: tirx.PrimExpr, b: tirx.PrimExpr) -> bool:
        return self.analyzer.can_prove_equal(a, b)

    def same_dims(self, a: list[tirx.PrimExpr], b: list[tirx.PrimExpr]) -> bool:
        return len(a) == len(b) and all(self.eq(x, y) for x, y in zip(a, b, strict=True))

    # -- peeling ------------------------------------------------------------------------------

    def scaled(self, expr: relax.Expr) -> tuple[relax.Expr, float] | None:
        """``(x, c)`` for ``x * c``, ``c * x`` or ``x / c`` with a scalar constant ``c`` that
        does not change the shape of ``x``."""
        call = self.call(expr, "relax.multiply", "relax.divide")
        if call is None:
            return None
        a, b = call.args
        pairs = [(a, b)] if _op(call) == "relax.divide" else [(a, b), (b, a)]
        for x, c in pairs:
            factor = _scalar_const(self.value(c))
            shape, out = _shape(x), _shape(call)
            if factor is not None and factor != 0.0 and shape is not None and out is not None \
                    and self.same_dims(shape, out):
                return x, (1.0 / factor if _op(call) == "relax.divide" else factor)
        return None

    def scores(self, expr: relax.Expr) -> _Scores | None:
        """Peel soft-capping and scales down to ``matmul(Q, Kt)``."""
        softcap = 0.0
        outer = self.scaled(expr)
        if outer is not None and self.call(outer[0], "relax.tanh") is not None:
            inner = self.scaled(self.call(outer[0], "relax.tanh").args[0])
            if inner is None or not math.isclose(outer[1] * inner[1], 1.0, rel_tol=1e-6):
                return None
            softcap, expr = outer[1], inner[0]
        scale = 1.0
        while (peeled := self.scaled(expr)) is not None:
            expr, scale = peeled[0], scale * peeled[1]
        matmul = self.call(expr, "relax.matmul")
        out_dtype = None if matmul is None else matmul.attrs.out_dtype
        if matmul is None or str(out_dtype or "float32") not in ("float32", "void"):
            return None
        return _Scores(matmul, scale, softcap)

    def head_repeat(self, expr: relax.Expr) -> tuple[relax.Expr, int] | None:
        """``(x, R)`` for 4-D ``expr[b, h] = x[b, h // R]`` written as a head repeat."""
        out = _shape(expr)
        if out is None or len(out) != 4:
            return None
        call = self.call(expr, "relax.reshape", "relax.repeat", "relax.broadcast_to",
                         "relax.tile")
        if call is None:
            return None
        name = _op(call)
        if name == "relax.repeat":
            x, axis, repeats = call.args[0], call.attrs.axis, int(call.attrs.repeats)
            return (x, repeats) if axis is not None and int(axis) % 4 == 1 and repeats > 1 \
                else None
        if name in ("relax.broadcast_to", "relax.tile"):  # one KV head, repeated
            x = call.args[0]
            shape = _shape(x)
            if shape is not None and len(shape) == 4 and _is_one(shape[1]) and \
                    static_dim(out[1]) and self.same_dims([shape[0], *shape[2:]],
                                                       [out[0], *out[2:]]):
                return x, static_dim(out[1])
            return None
        grouped = self.grouped_repeat(call.args[0])  # reshape of a 5-D repeat
        if grouped is None:
            return None
        x, repeats = grouped
        shape = _shape(x)
        if shape is not None and self.eq(out[1], shape[1] * repeats) and \
                self.same_dims([out[0], *out[2:]], [shape[0], *shape[2:]]):
            return x, repeats
        return None

    def grouped_repeat(self, expr: relax.Expr) -> tuple[relax.Expr, int] | None:
        """``(x, R)`` for 5-D ``expr[b, g, r] = x[b, g]`` (``x`` 4-D; ``R`` static)."""
        out = _shape(expr)
        call = self.call(expr, "relax.broadcast_to", "relax.tile")
        if out is None or len(out) != 5 or call is None or static_dim(out[2]) is None:
            return None
        if _op(call) == "relax.tile" and \
                [int(r) for r in call.attrs.repeats][-5:-2] not in ([1, 1, out[2]], [1, out[2]]):
            return None
        unit = self.unit_axis(call.args[0])
        if unit is None:
            return None
        shape = _shape(unit)
        if shape is None or not self.same_dims([out[0], out[1], *out[3:]], shape):
            return None
        return unit, static_dim(out[2])

    def unit_axis(self, expr: relax.Expr) -> relax.Expr | None:
        """``x`` for a 5-D ``expr`` that is 4-D ``x`` with a unit axis 2 inserted."""
        shape = _shape(expr)
        if shape is None or len(shape) != 5 or not _is_one(shape[2]):
            return None
        call = self.call(expr, "relax.expand_dims", "relax.reshape")
        if call is None:
            return None
        x = call.args[0]
        inner = _shape(x)
        if inner is None or len(inner) != 4:
            return None
        if _op(call) == "relax.expand_dims" and [int(a) % 5 for a in call.attrs.axis] != [2]:
            return None
        return x if self.same_dims(inner, [*shape[:2], *shape[3:]]) else None

    def transposed(self, expr: relax.Expr) -> relax.Expr | None:
        """``x`` with ``expr = x`` with its last two axes swapped, for ``expr`` a
        ``permute_dims`` of 4 or 5 axes: its input when the permutation is that swap, else a
        new ``permute_dims`` of the input (e.g. ``[0, 2, 1, 3]`` for keys ``[B, T, H, D]``
        transposed by ``[0, 2, 3, 1]``)."""
        call = self.call(expr, "relax.permute_dims")
        shape = _shape(expr)
        if call is None or shape is None or len(shape) not in (4, 5):
            return None
        ndim = len(shape)
        axes = call.attrs.axes
        perm = [int(a) % ndim for a in axes] if axes is not None else list(range(ndim))[::-1]
        untransposed = [*perm[:-2], perm[-1], perm[-2]]
        if untransposed == list(range(ndim)):
            return call.args[0]
        self.emitted = True
        return self.builder_.emit(relax.op.permute_dims(call.args[0], untransposed))

    def operand(self, expr: relax.Expr, *, key: bool) -> _Operand | None:
        """Peel a key (scales, one transpose, head repeats) or a value (head repeats) down to
        4-D; a 5-D operand (the grouped form) must lose its unit axis 2."""
        result = _Operand(expr, 1, False, 1.0)
        while True:
            e = result.base
            ndim = len(_shape(e) or [])
            peeled = self.scaled(e) if key else None
            if peeled is not None:
                result.base, result.scale = peeled[0], result.scale * peeled[1]
                continue
            swapped = self.transposed(e) if key and not result.transposed else None
            if swapped is not None:
                result.base, result.transposed = swapped, True
                continue
            if ndim == 5:
                grouped = self.grouped_repeat(e)
                unit = self.unit_axis(e) if grouped is None else grouped[0]
                if unit is None:
                    return None
                result.base = unit
                continue
            repeat = self.head_repeat(e) if result.repeat == 1 and ndim == 4 else None
            if repeat is not None:
                result.base, result.repeat = repeat
                continue
            break
        return result if ndim == 4 and result.transposed == key else None

    def mask(self, expr: relax.Expr, scores: list[tirx.PrimExpr]) -> relax.Expr | None:
        """The mask as the operator takes it (broadcast to 4-D scores), or None."""
        shape = _shape(expr)
        if shape is None or not 1 <= len(shape) <= len(scores):
            return None
        full = scores[len(scores) - len(shape):]
        if not all(_is_one(d) or self.eq(d, f) for d, f in zip(shape, full, strict=True)):
            return None
        if len(scores) == 4 or len(shape) <= 2 or (len(shape) == 3 and _is_one(shape[0])):
            return expr
        # 5-D scores [B, G, R, S, T]: the mask must be the same for every head
        groups = shape[-4:-2]
        if not all(_is_one(d) for d in groups):
            return None
        new_shape = [*shape[:-4], tirx.const(1, "int64"), *shape[-2:]]
        self.emitted = True
        return self.builder_.emit(relax.op.reshape(expr, new_shape))

    def logits(self, expr: relax.Expr) -> tuple[_Scores, relax.Expr | None] | None:
        """Peel the mask off the softmax input: ``(scores, mask or None)``."""
        add = self.call(expr, "relax.add")
        if add is not None:
            for x, m in (add.args, add.args[::-1]):
                found = self.scores(x)
                if found is not None and _shape(m) is not None:
                    return found, m
            return None
        where = self.call(expr, "relax.where")
        if where is not None:
            cond, a, b = where.args
            for x, fill, keep in ((a, b, True), (b, a, False)):
                value = _scalar_const(self.value(fill))
                found = self.scores(x)
                if found is None or value is None or not (value == -math.inf
                                                          or value <= _F32_MIN):
                    continue
                zero, fill_const = relax.const(0.0, "float32"), relax.const(value, "float32")
                mask = relax.op.where(cond, zero, fill_const) if keep else \
                    relax.op.where(cond, fill_const, zero)
                self.emitted = True
                return found, self.builder_.emit(mask)
            return None
        found = self.scores(expr)
        return None if found is None else (found, None)

    # -- the rewrite --------------------------------------------------------------------------

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = super().visit_call_(call)
        if _op(call) == "relax.matmul":
            fused = self.fuse(call)
            if fused is not None:
                return fused
        return call

    def fuse(self, matmul: relax.Call) -> relax.Expr | None:
        out = _shape(matmul)
        if out is None or len(out) not in (4, 5):
            return None
        probs, values = matmul.args
        softmax = self.call(probs, "relax.nn.softmax")
        if softmax is None or int(softmax.attrs.axis) % len(out) != len(out) - 1:
            return None
        found = self.logits(softmax.args[0])
        if found is None:
            return None
        scores, mask = found
        query, key = scores.matmul.args
        k = self.operand(key, key=True)
        v = self.operand(values, key=False)
        q_scale, q = 1.0, query
        while (peeled := self.scaled(q)) is not None:
            q, q_scale = peeled[0], q_scale * peeled[1]
        score_shape = _shape(scores.matmul)
        if k is None or v is None or score_shape is None or len(score_shape) != len(out):
            return None
        if len(out) == 5:
            q = self.ungroup_query(q)
            if q is None:
                return None
            while (peeled := self.scaled(q)) is not None:
                q, q_scale = peeled[0], q_scale * peeled[1]
        q_shape, k_shape, v_shape = _shape(q), _shape(k.base), _shape(v.base)
        if q_shape is None or len(q_shape) != 4 or k_shape is None or v_shape is None:
            return None
        b, hq, s, d = q_shape
        if not (self.same_dims(k_shape[:2], v_shape[:2]) and self.eq(k_shape[2], v_shape[2])
                and self.eq(k_shape[0], b) and self.eq(k_shape[3], d)):
            return None
        hkv = k_shape[1]
        if len(out) == 4:
            if not self.eq(hq, hkv * k.repeat) or not self.eq(hq, hkv * v.repeat):
                return None
        elif not self.eq(hq, hkv * out[2]) or k.repeat != 1 or v.repeat != 1:
            return None
        if mask is not None:
            mask = self.mask(mask, score_shape)
            if mask is None:
                return None
        scale = scores.scale * q_scale * k.scale
        call = attention(q, k.base, v.base, mask, scale=scale, softcap=scores.softcap)
        fused = self.builder_.normalize(call)
        want = [*out[:1], hq, *out[-2:]] if len(out) == 5 else out
        if not self.same_dims(list(fused.ty.shape), want):
            return None
        self.fused.append(f"{dim_text(hq)} query heads, {dim_text(hkv)} KV heads, scale {scale:g}" +
                          (f", softcap {scores.softcap:g}" if scores.softcap else "") +
                          ("" if mask is not None else ", no mask"))
        if len(out) == 4:
            return fused
        return relax.op.reshape(self.builder_.emit(fused), out)

    def ungroup_query(self, q: relax.Expr) -> relax.Expr | None:
        """4-D ``[B, G * R, S, D]`` queries of grouped 5-D ``q [B, G, R, S, D]``."""
        shape = _shape(q)
        if shape is None or len(shape) != 5:
            return None
        want = [shape[0], self.analyzer.simplify(shape[1] * shape[2]), *shape[3:]]
        source = self.call(q, "relax.reshape")
        if source is not None and _shape(source.args[0]) is not None and \
                self.same_dims(_shape(source.args[0]), want):
            return source.args[0]
        self.emitted = True
        return self.builder_.emit(relax.op.reshape(q, want))


@tvm.transform.module_pass(opt_level=0, name="FuseAttention")
class FuseAttention:
    """Attention subgraphs -> ``sail.attention`` (module docstring).

    ``fused`` lists one line per rewritten attention (heads, scale, soft-cap), in function-name
    and program order; the list object stays the same across runs (it is cleared and refilled),
    so it can be read after the pass ran inside a ``Sequential``.
    """

    def __init__(self) -> None:
        self.fused: list[str] = []

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:  # noqa: D102
        fuser = _Fuser(mod)
        out = rewrite_relax_functions(fuser, mod)
        self.fused.clear()
        self.fused.extend(fuser.fused)
        if fuser.fused or fuser.emitted:  # the replaced scores, softmax, repeats are dead now
            for gvar, func in list(out.functions_items()):
                if isinstance(func, relax.Function):
                    out[gvar] = relax.analysis.remove_all_unused(func)
        return out
