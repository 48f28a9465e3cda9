"""``sail.attention``: scaled dot-product attention over un-repeated grouped key/value heads.

Operands, attributes and result::

    y = sail.attention(q, k, v[, mask], scale=s, softcap=c)

    q     float32 [B, Hq, S, D]     queries
    k     float32 [B, Hkv, T, D]    keys, Hkv divides Hq
    v     float32 [B, Hkv, T, Dv]   values
    mask  float32, rank 1..4        additive, broadcast (right-aligned, NumPy rules) to
                                    [B, Hq, S, T]; each dim is 1 or the full dim
    y     float32 [B, Hq, S, Dv]

Query head ``h`` reads key/value head ``h // (Hq / Hkv)``: grouped-query attention as
Hugging Face's ``repeat_kv`` (``repeat_interleave`` along the heads) computes it, multi-query
attention for ``Hkv = 1``, multi-head for ``Hkv = Hq``, without materializing the repeated keys
and values. Per query row, in the order the exported graphs compute it::

    x[t] = (sum_d q[d] * k[t, d]) * s          the scores, scaled
    x[t] = c * tanh(x[t] / c)                  logit soft-capping, only if c > 0
    x[t] = x[t] + mask[t]                      the additive mask (causal, padding, window)
    p[t] = exp(x[t] - max x) / sum exp(x - max x)
    y    = sum_t p[t] * v[t]

The mask carries everything the exporters put into it (causal, padding and sliding-window
masks, usually 0 and ``finfo(float32).min``); it is computed by the graph and shared by every
layer. :class:`~sail_compiler.passes.FuseAttention` writes this operator from the attention the
exporters write (``matmul(q, permute(repeat(k)))``, scaling, mask, softmax, ``matmul(p,
repeat(v))``).

Registered from Python with type inference (dtypes, ranks, head counts and every provable dim),
purity and a legalization for the llvm target into four TE kernels that index the key/value
head as ``h // (Hq / Hkv)``: the scores, the elementwise scale / soft-cap / mask, TVM's own
softmax (``topi.nn.softmax``) and the probabilities times the values. The c target computes
the operator with the runtime kernel ``sail_attention.c`` instead. TVMScript prints the call as
``R.call... "sail.attention"`` with its attributes. The NumPy reference is
:func:`reference_attention`.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, sym, te, tirx, topi

from ..errors import OptionError, SailError
from .quant_matmul import static_dim

__all__ = ["OP_NAME", "attention", "attention_attrs", "dim_text", "is_attention",
           "reference_attention"]

#: The registered name; targets recognise the operator by it.
OP_NAME = "sail.attention"
_OPERANDS = ("q", "k", "v", "mask")


def _check_attrs(scale: float, softcap: float) -> tuple[float, float]:
    """``(scale, softcap)`` as float32-representable Python floats.

    Raises
    ------
    OptionError
        ``scale`` is not finite and nonzero, or ``softcap`` is negative or not finite.
    """
    scale, softcap = float(np.float32(scale)), float(np.float32(softcap))
    if not math.isfinite(scale) or scale == 0.0:
        raise OptionError(f"{OP_NAME}: scale must be finite and nonzero, got {scale}")
    if not math.isfinite(softcap) or softcap < 0.0:
        raise OptionError(f"{OP_NAME}: softcap must be finite and >= 0 (0: none), got {softcap}")
    return scale, softcap


def attention(q: relax.Expr, k: relax.Expr, v: relax.Expr, mask: relax.Expr | None = None, *,
              scale: float, softcap: float = 0.0) -> relax.Call:
    """Build a ``sail.attention`` call (module docstring: shapes, dtypes, semantics).

    Parameters
    ----------
    q, k, v
        float32 ``[B, Hq, S, D]``, ``[B, Hkv, T, D]``, ``[B, Hkv, T, Dv]``.
    mask
        Optional additive float32 mask broadcastable to ``[B, Hq, S, T]``.
    scale
        Multiplies the scores (rounded to float32).
    softcap
        ``c > 0``: the scaled scores become ``c * tanh(x / c)``; 0: no soft-capping.

    Returns
    -------
    relax.Call
        The call; its type is inferred when a ``BlockBuilder`` normalizes it.

    Raises
    ------
    OptionError
        ``scale`` or ``softcap`` is out of range.
    """
    scale, softcap = _check_attrs(scale, softcap)
    args = [q, k, v] if mask is None else [q, k, v, mask]
    return relax.Call(tvm.ir.Op.get(OP_NAME), args, {"scale": scale, "softcap": softcap})


def attention_attrs(call: relax.Call) -> tuple[float, float]:
    """``(scale, softcap)`` of a ``sail.attention`` call."""
    return _check_attrs(float(call.attrs["scale"]), float(call.attrs["softcap"]))


def is_attention(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a call of ``sail.attention``."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == OP_NAME


# ---------------------------------------------------------------------------------------------
# Type inference


def dim_text(dim: tirx.PrimExpr) -> str:
    """A dim as a message shows it: ``4``, ``seq``, ``past + seq``."""
    return str(static_dim(dim)) if static_dim(dim) is not None else str(dim)


def _infer_type(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    """``float32[B, Hq, S, Dv]``; every problem of the operands is reported at once."""
    attention_attrs(call)
    if len(call.args) not in (3, 4):
        raise SailError(f"{OP_NAME} takes 3 or 4 operands (q, k, v[, mask]), "
                        f"got {len(call.args)}")
    tys = [arg.ty for arg in call.args]
    problems = []
    for name, ty in zip(_OPERANDS, tys, strict=False):
        if not isinstance(ty, relax.TensorType):
            problems.append(f"{name} must be a tensor, got {ty}")
        elif str(ty.dtype) != "float32":
            problems.append(f"{name} must be float32, got {ty.dtype}")
        elif name != "mask" and ty.ndim != 4:
            problems.append(f"{name} must be 4-D, got {'unknown rank' if ty.ndim < 0 else ty.ndim}")
        elif name == "mask" and not 1 <= ty.ndim <= 4:
            problems.append(f"mask must have 1 to 4 dims, got {ty.ndim}")
        elif ty.shape is None:
            problems.append(f"{name} needs a known shape")
    if problems:
        raise SailError(f"{OP_NAME}: " + "; ".join(problems))
    analyzer = sym.Analyzer()
    (b, hq, s, d), (bk, hkv, t, dk), (bv, hv, tv, dv) = (list(ty.shape) for ty in tys[:3])

    def differ(x: tirx.PrimExpr, y: tirx.PrimExpr) -> bool:
        return not analyzer.can_prove_equal(x, y) and static_dim(x) is not None \
            and static_dim(y) is not None

    for what, x, y in (("batch of k", bk, b), ("batch of v", bv, b), ("head dim of k", dk, d),
                       ("heads of v", hv, hkv), ("length of v", tv, t)):
        if differ(x, y):
            problems.append(f"{what} is {dim_text(x)}, expected {dim_text(y)}")
    if static_dim(hq) is not None and static_dim(hkv) is not None and \
            (static_dim(hkv) < 1 or static_dim(hq) % static_dim(hkv)):
        problems.append(f"k has {dim_text(hkv)} heads, which must divide the {dim_text(hq)} query "
                        "heads")
    if len(tys) == 4:
        full = [b, hq, s, t]
        mask_shape = list(tys[3].shape)
        for axis, dim in enumerate(mask_shape):
            want = full[4 - len(mask_shape) + axis]
            if static_dim(dim) != 1 and not analyzer.can_prove_equal(dim, want):
                problems.append(f"mask dim {axis} is {dim_text(dim)}; it must be 1 or "
                                f"{dim_text(want)}")
    if problems:
        raise SailError(f"{OP_NAME}: " + "; ".join(problems))
    return relax.TensorType([b, hq, s, dv], "float32")


# ---------------------------------------------------------------------------------------------
# TE kernels and the legalization


def _zero() -> tirx.IntImm:
    return tirx.const(0, "int64")


def _kv_head(q: te.Tensor, kv: te.Tensor, h: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.floordiv(h, tirx.floordiv(q.shape[1], kv.shape[1]))


def scores_te(q: te.Tensor, k: te.Tensor) -> te.Tensor:
    """``x[b, h, s, t] = sum_d q[b, h, s, d] * k[b, h // R, t, d]`` (``R = Hq / Hkv``)."""
    d = te.reduce_axis((_zero(), q.shape[3]), name="d")
    return te.compute([*q.shape[:3], k.shape[2]],
                      lambda b, h, s, t: te.sum(q[b, h, s, d] * k[b, _kv_head(q, k, h), t, d],
                                                axis=d), name="attention_scores")


def logits_te(scores: te.Tensor, mask: te.Tensor | None, *, scale: float,
              softcap: float) -> te.Tensor:
    """The scores scaled, soft-capped (``softcap > 0``) and masked, elementwise."""

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        x = scores[idx] * tirx.const(scale, "float32")
        if softcap > 0.0:
            cap = tirx.const(softcap, "float32")
            x = tirx.tanh(x / cap) * cap
        if mask is not None:
            lead = len(idx) - len(mask.shape)
            at = [_zero() if static_dim(dim) == 1 else idx[lead + axis]
                  for axis, dim in enumerate(mask.shape)]
            x = x + mask[tuple(at)]
        return x

    return te.compute(scores.shape, body, name="attention_logits")


def weighted_values_te(p: te.Tensor, v: te.Tensor) -> te.Tensor:
    """``y[b, h, s, e] = sum_t p[b, h, s, t] * v[b, h // R, t, e]``."""
    t = te.reduce_axis((_zero(), v.shape[2]), name="t")
    return te.compute([*p.shape[:3], v.shape[3]],
                      lambda b, h, s, e: te.sum(p[b, h, s, t] * v[b, _kv_head(p, v, h), t, e],
                                                axis=t), name="attention_values")


def _legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Four kernels, each scheduled by the llvm target's rules like the ops they replace."""
    scale, softcap = attention_attrs(call)
    q, k, v = call.args[:3]
    mask = call.args[3] if len(call.args) == 4 else None
    scores = bb.emit(bb.call_te(scores_te, q, k, primfunc_name_hint="sail_attention_scores"))
    masked = [mask] if mask is not None else []
    logits = bb.emit(bb.call_te(
        lambda x, *m: logits_te(x, m[0] if m else None, scale=scale, softcap=softcap),
        scores, *masked, primfunc_name_hint="sail_attention_logits"))
    probs = bb.emit(bb.call_te(topi.nn.softmax, logits, -1,
                               primfunc_name_hint="sail_attention_softmax"))
    return bb.call_te(weighted_values_te, probs, v, primfunc_name_hint="sail_attention_values")


# ---------------------------------------------------------------------------------------------
# NumPy reference


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                        mask: np.ndarray | None = None, *, scale: float,
                        softcap: float = 0.0) -> np.ndarray:
    """float32 ``[B, Hq, S, Dv]``: the module docstring's formula in NumPy (float32 steps)."""
    q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    x = np.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(scale)
    if softcap > 0.0:
        cap = np.float32(softcap)
        x = np.tanh(x / cap) * cap
    if mask is not None:
        x = x + np.asarray(mask, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.matmul(e / e.sum(axis=-1, keepdims=True), v).astype(np.float32)


def _register() -> None:
    """Register the operator and its attributes once per process."""
    if OP_NAME in tvm.ir.Op.list_op_names():
        return
    tvm.ir._ffi_api.RegisterOp(OP_NAME, "scaled dot-product attention over grouped KV heads")
    op = tvm.ir.Op.get(OP_NAME)
    op.set_num_inputs(4)
    for name, description in zip(_OPERANDS, ("float32 [B, Hq, S, D]", "float32 [B, Hkv, T, D]",
                                             "float32 [B, Hkv, T, Dv]",
                                             "float32, broadcast to [B, Hq, S, T] (optional)"),
                                 strict=True):
        op.add_argument(name, "Tensor", description)
    tvm.ir.register_op_attr(OP_NAME, "FInferType", _infer_type)
    tvm.ir.register_op_attr(OP_NAME, "FPurity", True)
    tvm.ir.register_op_attr(OP_NAME, "FLegalize", _legalize)


_register()
