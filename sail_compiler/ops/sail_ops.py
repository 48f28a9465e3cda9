"""The SAIL operators: ``sail.quantize``, ``group_sums``, ``lut_gemv`` and ``dequantize``.

A quantized matmul (``sail.quant_matmul``, DESIGN.md section 3) splits into the three steps SAIL
performs, each an operator of its own so that passes and targets can place and schedule them::

    q   = sail.quantize(x)                   act_bits, act_group, placement  -> (xq, sx)
    xq  = q[0]                               int8 [..., K] (int16 when act_bits > 8)
    sx  = q[1]                               float32 [..., NB]
    S   = sail.lut_gemv(xq, packed, zero)    bits, act_bits, group_size, k, act_group, nbw,
                                             placement, output="sums", layer -> int32 [..., J, N]
    y   = sail.dequantize(S, sx, scale)      group_size, k, act_group, placement, layer
                                                                             -> float32 [..., N]

``act_group`` is A, the columns per activation scale (A = K: one per row;
:class:`~sail_compiler.quant.reference.ActBlocks`): ``NB = ceil(K / A)`` scales per row, and
``J`` sums per row and column, one per sum block (a weight group, split at activation-block
boundaries when A < g).

* ``sail.quantize``: dynamic symmetric quantization with one scale per row and block, exactly
  :func:`~sail_compiler.quant.reference.quantize_activations`
  (``sx = max|x[t, blk]| / (2**(b_a-1)-1)``, 1 where that is 0; ``xq = clip(nearbyint(x /
  sx))``). It does not depend on any weight, so one quantized activation serves every matmul
  that reads ``x`` with the same A (``ConvertPIMTypes`` shares it).
* ``sail.group_sums``: the exact int32 sums
  ``S[t, j, n] = sum_{k in j} (q[k, n] - z[grp(j), n]) * xq[t, k]``
  (:func:`~sail_compiler.quant.reference.block_sums`), computed by unpacking each code and
  multiplying: the integer matmul before ``LowerToLUTGemv`` chooses the table method.
* ``sail.lut_gemv``: the same sums computed by lookup tables as SAIL does (tables of weight sums
  over NBW weights, indexed by activation bit planes, shift-accumulated; DESIGN.md section 1).
  With ``output="float"`` it takes ``(xq, packed, zero, sx, scale)`` and fuses the
  dequantization: the sums never reach memory.
* ``sail.dequantize``: ``y[t, n] = sum_j (s[grp(j), n] * sx[t, blk(j)]) * float32(S[t, j,
  n])``, summed in order of j: the reference's float32 operation order.

``placement`` (``pim`` or ``host``) says where SAIL runs the step: inside the C-SRAM arrays or on
the core. It does not change any result; the pim-sim target reads it, llvm and c ignore it.
Weight operands use the layout of ``sail.quant_matmul`` (``packed`` uint8
``[ceil(K_pad * b / 8), N]``, ``scale`` float32 ``[G, N]``, ``zero`` int32 ``[G, N]``, with
``G = ceil(K / g)``, ``K_pad = G * g``); ``xq`` is not padded: columns ``k >= K`` count as 0.

Each operator is registered from Python with type inference (every static dimension and dtype is
checked against the attributes), purity and a legalization to TE kernels for the llvm target.
The NumPy references are :func:`reference_quantize`, :func:`reference_group_sums` (and, by table,
:mod:`sail_compiler.quant.lut`) and :func:`reference_dequantize`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..errors import OptionError, valid_choices
from ..options import PLACEMENTS
from ..quant.lut import check_nbw
from ..quant.packing import check_bits
from ..quant.reference import (
    ActBlocks,
    QuantizedWeight,
    block_sums,
    check_act_bits,
    combine_sums,
    quantize_activations,
)
from .quant_matmul import (
    act_blocks,
    check_packed_operands,
    dequantize_sums_te,
    max_abs_group_sum,
    quantize_activations_te,
    static_dim,
    unpack_code,
)

__all__ = [
    "DEQUANTIZE",
    "GROUP_SUMS",
    "LUT_GEMV",
    "PLACEMENTS",
    "QUANTIZE",
    "act_dtype",
    "check_nbw",
    "check_placement",
    "dequantize",
    "group_sums_op",
    "is_sail_op",
    "legalize_lut_gemv",
    "lut_gemv",
    "op_attrs",
    "quantize",
    "reference_dequantize",
    "reference_group_sums",
    "reference_quantize",
]

QUANTIZE = "sail.quantize"
GROUP_SUMS = "sail.group_sums"
LUT_GEMV = "sail.lut_gemv"
DEQUANTIZE = "sail.dequantize"

#: ``sail.lut_gemv`` outputs: int32 group sums, or float32 with the dequantization fused.
OUTPUTS = ("sums", "float")

#: TVM's ``kOpaque`` op pattern: FuseOps never fuses a kernel marked with it.
_OPAQUE = 8


def _i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


def act_dtype(act_bits: int) -> str:
    """dtype of quantized activations: int8 up to 8 bits, int16 up to 16."""
    return "int8" if check_act_bits(act_bits) <= 8 else "int16"


def check_placement(placement: Any) -> str:
    """``placement`` if it is ``pim`` or ``host``, else :class:`OptionError`."""
    if placement not in PLACEMENTS:
        raise OptionError(f"unknown placement {placement!r}; {valid_choices(PLACEMENTS)}")
    return str(placement)


def _check_weight_attrs(bits: int, act_bits: int, group_size: int, k: int,
                        act_group: int | None) -> ActBlocks:
    check_bits(bits, "weight bits")
    check_act_bits(act_bits)
    if int(group_size) < 1 or int(k) < 1:
        raise ValueError(f"group_size and k must be >= 1, got {group_size}, {k}")
    if max_abs_group_sum(bits, group_size, act_bits) > 2**31 - 1:
        raise OptionError(f"group sums of {bits}-bit weights, {act_bits}-bit activations and "
                          f"groups of {group_size} can overflow int32; use smaller groups")
    return ActBlocks(int(k), int(group_size), int(k) if act_group is None else int(act_group))


# ---------------------------------------------------------------------------------------------
# Call constructors


def _call(name: str, args: list[relax.Expr], attrs: dict[str, Any]) -> relax.Call:
    return relax.Call(tvm.ir.Op.get(name), args, attrs)


def _check_act_group(act_group: int) -> int:
    if isinstance(act_group, bool) or not isinstance(act_group, int | np.integer) \
            or act_group < 1:
        raise OptionError(f"act_group must be a positive integer (columns per activation "
                          f"scale), got {act_group!r}")
    return int(act_group)


def quantize(x: relax.Expr, *, act_bits: int = 8, act_group: int, placement: str = "host"
             ) -> relax.Call:
    """``sail.quantize(x)`` -> ``(xq, sx)`` (module docstring); ``act_group`` >= K is one scale
    per row."""
    return _call(QUANTIZE, [x], {"act_bits": check_act_bits(act_bits),
                                 "act_group": _check_act_group(act_group),
                                 "placement": check_placement(placement)})


def group_sums_op(xq: relax.Expr, packed: relax.Expr, zero: relax.Expr, *, bits: int,
                  act_bits: int, group_size: int, k: int, act_group: int | None = None,
                  layer: str = "") -> relax.Call:
    """``sail.group_sums(xq, packed, zero)`` -> int32 ``[..., J, N]`` (module docstring);
    ``act_group`` None is one scale per row."""
    blocks = _check_weight_attrs(bits, act_bits, group_size, k, act_group)
    attrs = {"bits": int(bits), "act_bits": int(act_bits), "group_size": int(group_size),
             "k": int(k), "act_group": blocks.act_group, "layer": layer}
    return _call(GROUP_SUMS, [xq, packed, zero], attrs)


def lut_gemv(xq: relax.Expr, packed: relax.Expr, zero: relax.Expr, *, bits: int, act_bits: int,
             group_size: int, k: int, act_group: int | None = None, nbw: int = 4,
             placement: str = "pim", sx: relax.Expr | None = None,
             scale: relax.Expr | None = None, layer: str = "") -> relax.Call:
    """``sail.lut_gemv``: int32 sums ``[..., J, N]``, or float32 ``[..., N]`` when ``sx`` and
    ``scale`` are given (the dequantization fused; ``output="float"``)."""
    blocks = _check_weight_attrs(bits, act_bits, group_size, k, act_group)
    if (sx is None) != (scale is None):
        raise ValueError("sail.lut_gemv fuses the dequantization only with both sx and scale")
    fused = sx is not None
    attrs = {"bits": int(bits), "act_bits": int(act_bits), "group_size": int(group_size),
             "k": int(k), "act_group": blocks.act_group, "nbw": check_nbw(nbw),
             "placement": check_placement(placement), "output": "float" if fused else "sums",
             "layer": layer}
    args = [xq, packed, zero, sx, scale] if fused else [xq, packed, zero]
    return _call(LUT_GEMV, args, attrs)


def dequantize(sums: relax.Expr, sx: relax.Expr, scale: relax.Expr, *, group_size: int, k: int,
               act_group: int | None = None, placement: str = "pim",
               layer: str = "") -> relax.Call:
    """``sail.dequantize(S, sx, scale)`` -> float32 ``[..., N]`` (module docstring);
    ``act_group`` None is one scale per row."""
    if int(group_size) < 1 or int(k) < 1:
        raise ValueError(f"group_size and k must be >= 1, got {group_size}, {k}")
    blocks = ActBlocks(int(k), int(group_size), int(k) if act_group is None else int(act_group))
    return _call(DEQUANTIZE, [sums, sx, scale],
                 {"group_size": blocks.group_size, "k": blocks.k, "act_group": blocks.act_group,
                  "placement": check_placement(placement), "layer": layer})


# ---------------------------------------------------------------------------------------------
# Attribute access


def op_attrs(call: relax.Call) -> dict[str, Any]:
    """A sail call's attributes as plain Python values (ints and strings)."""
    out: dict[str, Any] = {}
    for key in call.attrs.keys():
        value = call.attrs[key]
        out[str(key)] = int(value) if isinstance(value, tvm.tirx.IntImm | int) else str(value)
    return out


def is_sail_op(expr: relax.Expr, *names: str) -> bool:
    """Whether ``expr`` calls one of the named operators."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name in names


# ---------------------------------------------------------------------------------------------
# Type inference


def _tensor_problems(names: tuple[str, ...], args: list[relax.Expr],
                     dtypes: tuple[str, ...]) -> list[str]:
    problems = []
    for name, arg, dtype in zip(names, args, dtypes, strict=True):
        ty = arg.ty
        if not isinstance(ty, relax.TensorType):
            problems.append(f"{name} must be a tensor, got {ty}")
        elif str(ty.dtype) != dtype:
            problems.append(f"{name} must be {dtype}, got {ty.dtype}")
    return problems


def _fail(op: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{op}: " + "; ".join(problems))


def _arity(op: str, call: relax.Call, *counts: int) -> None:
    if len(call.args) not in counts:
        raise ValueError(f"{op} takes {' or '.join(map(str, counts))} operands, "
                         f"got {len(call.args)}")


def _n_blocks(depth: tirx.PrimExpr, act_group: int) -> tirx.PrimExpr:
    """``ceil(K / A)`` activation scales per row (1 when A >= K)."""
    static = static_dim(depth)
    if static is not None:
        return _i64(-(-static // act_group))
    return tirx.floordiv(depth + act_group - 1, act_group)


def _infer_quantize(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TupleType:
    _arity(QUANTIZE, call, 1)
    act_bits = int(call.attrs["act_bits"])
    check_act_bits(act_bits)
    act_group = _check_act_group(int(call.attrs["act_group"]))
    check_placement(str(call.attrs["placement"]))
    _fail(QUANTIZE, _tensor_problems(("x",), list(call.args), ("float32",)))
    ty = call.args[0].ty
    if ty.ndim == 0:
        _fail(QUANTIZE, ["x must have at least one axis"])
    dtype = act_dtype(act_bits)
    if ty.shape is None:
        return relax.TupleType([relax.TensorType(dtype=dtype, ndim=ty.ndim),
                                relax.TensorType(dtype="float32", ndim=ty.ndim)])
    shape = list(ty.shape)
    return relax.TupleType([relax.TensorType(shape, dtype),
                            relax.TensorType([*shape[:-1], _n_blocks(shape[-1], act_group)],
                                             "float32")])


def _weight_attrs(call: relax.Call) -> tuple[int, int, ActBlocks]:
    """``(bits, act_bits, blocks)`` of a group_sums or lut_gemv call, checked."""
    bits, act_bits = int(call.attrs["bits"]), int(call.attrs["act_bits"])
    group_size, k = int(call.attrs["group_size"]), int(call.attrs["k"])
    blocks = _check_weight_attrs(bits, act_bits, group_size, k, act_blocks(call).act_group)
    return bits, act_bits, blocks


def _sx_problems(sx: relax.Expr, lead: list[Any] | None, blocks: ActBlocks) -> list[str]:
    """``sx`` must be ``[*lead, n_blocks]``."""
    ty = sx.ty
    if ty.shape is None or lead is None:
        return []
    problems = _lead_problems("sx", relax.TensorType(list(ty.shape)[:-1], "float32"), lead) \
        if len(ty.shape) == len(lead) + 1 else \
        [f"sx must have {len(lead) + 1} axes (the leading axes of xq and {blocks.n_blocks} "
         f"scales per row), got {len(ty.shape)}"]
    if not problems and static_dim(ty.shape[-1]) not in (None, blocks.n_blocks):
        problems.append(f"sx ends in {static_dim(ty.shape[-1])}, expected {blocks.n_blocks} "
                        f"scales per row "
                        f"(K={blocks.k}, act_group={blocks.act_group})")
    return problems


def _infer_int_gemv(op: str, call: relax.Call) -> tuple[relax.TensorType, Any, Any, ActBlocks]:
    """Checks shared by group_sums and lut_gemv; returns (xq type, lead dims, N, blocks)."""
    bits, act_bits, blocks = _weight_attrs(call)
    group_size, k = blocks.group_size, blocks.k
    xq, packed, zero = call.args[:3]
    _fail(op, _tensor_problems(("xq", "packed", "zero"), [xq, packed, zero],
                               (act_dtype(act_bits), "uint8", "int32")))
    x_ty = xq.ty
    problems, n_dim = check_packed_operands([packed.ty, zero.ty, zero.ty], bits, group_size, k)
    for name, ty in (("packed", packed.ty), ("zero", zero.ty)):
        if ty.ndim not in (-1, 2):
            problems.append(f"{name} must be 2-D, got {ty.ndim}-D")
    if x_ty.ndim == 0:
        problems.append("xq must have at least one axis")
    elif x_ty.shape is not None:
        x_k = static_dim(x_ty.shape[-1])
        if x_k is not None and x_k != k:
            problems.append(f"xq ends in {x_k}, expected k={k}")
    _fail(op, problems)
    lead = None if x_ty.shape is None else list(x_ty.shape)[:-1]
    return x_ty, lead, n_dim, blocks


def _infer_group_sums(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    _arity(GROUP_SUMS, call, 3)
    x_ty, lead, n_dim, blocks = _infer_int_gemv(GROUP_SUMS, call)
    if lead is None or n_dim is None:
        return relax.TensorType(dtype="int32", ndim=-1 if x_ty.ndim < 0 else x_ty.ndim + 1)
    return relax.TensorType([*lead, _i64(blocks.n_sums), n_dim], "int32")


def _lead_problems(name: str, ty: relax.TensorType, lead: list[Any] | None) -> list[str]:
    if ty.shape is None or lead is None:
        return []
    if len(ty.shape) != len(lead):
        return [f"{name} must have {len(lead)} axes (the leading axes of xq), got {len(ty.shape)}"]
    bad = [i for i, (a, b) in enumerate(zip(ty.shape, lead, strict=True))
           if static_dim(a) is not None and static_dim(b) is not None
           and static_dim(a) != static_dim(b)]
    return [f"{name} shape {list(ty.shape)} does not match the leading axes {lead}"] if bad else []


def _infer_lut_gemv(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    output = str(call.attrs["output"])
    if output not in OUTPUTS:
        raise OptionError(f"sail.lut_gemv output {output!r}; {valid_choices(OUTPUTS)}")
    check_nbw(int(call.attrs["nbw"]))
    check_placement(str(call.attrs["placement"]))
    _arity(LUT_GEMV, call, 5 if output == "float" else 3)
    x_ty, lead, n_dim, blocks = _infer_int_gemv(LUT_GEMV, call)
    if output == "sums":
        if lead is None or n_dim is None:
            return relax.TensorType(dtype="int32", ndim=-1 if x_ty.ndim < 0 else x_ty.ndim + 1)
        return relax.TensorType([*lead, _i64(blocks.n_sums), n_dim], "int32")
    sx, scale = call.args[3:]
    problems = _tensor_problems(("sx", "scale"), [sx, scale], ("float32", "float32"))
    _fail(LUT_GEMV, problems)
    problems = _sx_problems(sx, lead, blocks)
    n_groups = -(-blocks.k // blocks.group_size)
    if scale.ty.shape is not None and static_dim(scale.ty.shape[0]) not in (None, n_groups):
        problems.append(f"scale has {scale.ty.shape[0]} rows, expected {n_groups}")
    _fail(LUT_GEMV, problems)
    if lead is None or n_dim is None:
        return relax.TensorType(dtype="float32", ndim=x_ty.ndim)
    return relax.TensorType([*lead, n_dim], "float32")


def _infer_dequantize(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    _arity(DEQUANTIZE, call, 3)
    check_placement(str(call.attrs["placement"]))
    blocks = act_blocks(call)
    sums, sx, scale = call.args
    _fail(DEQUANTIZE, _tensor_problems(("sums", "sx", "scale"), [sums, sx, scale],
                                       ("int32", "float32", "float32")))
    s_ty, scale_ty = sums.ty, scale.ty
    problems = []
    if s_ty.ndim not in (-1,) and s_ty.ndim < 2:
        problems.append(f"sums must be [..., groups, N], got {s_ty.ndim}-D")
    if scale_ty.ndim not in (-1, 2):
        problems.append(f"scale must be 2-D, got {scale_ty.ndim}-D")
    if s_ty.shape is not None and scale_ty.shape is not None and not problems:
        n_sums, n = (static_dim(d) for d in list(s_ty.shape)[-2:])
        n_groups, scale_n = (static_dim(d) for d in scale_ty.shape)
        if None not in (n, scale_n) and n != scale_n:
            problems.append(f"sums have {n} columns but scale has {scale_n}")
        for name, got, want in (("sums", n_sums, blocks.n_sums),
                                ("scale", n_groups, -(-blocks.k // blocks.group_size))):
            if got not in (None, want):
                problems.append(f"{name} has {got} groups, expected {want} for K={blocks.k}, "
                                f"group_size={blocks.group_size}, act_group={blocks.act_group}")
        problems += _sx_problems(sx, list(s_ty.shape)[:-2], blocks)
    _fail(DEQUANTIZE, problems)
    if s_ty.shape is None:
        return relax.TensorType(dtype="float32", ndim=-1 if s_ty.ndim < 0 else s_ty.ndim - 1)
    shape = list(s_ty.shape)
    return relax.TensorType([*shape[:-2], shape[-1]], "float32")


# ---------------------------------------------------------------------------------------------
# TE kernels and legalizations


def quantize_te(x: te.Tensor, *, act_bits: int, act_group: int) -> list[te.Tensor]:
    """``[xq, sx]``: the activation quantization with ``xq`` in :func:`act_dtype`."""
    xq, sx = quantize_activations_te(x, x.shape[-1], act_bits, out_dtype=act_dtype(act_bits),
                                     act_group=act_group)
    return [xq, sx]


def group_sums_te(xq: te.Tensor, packed: te.Tensor, zero: te.Tensor, *, bits: int,
                  group_size: int, k: int, act_group: int) -> te.Tensor:
    """``S int32[..., J, N]`` by unpacking and multiplying; ``xq`` columns ``>= k`` count 0."""
    blocks = ActBlocks(k, group_size, act_group)
    lead = list(xq.shape[:-1])
    cols = zero.shape[1]
    size, g = blocks.sum_size, blocks.group_size
    k_pad = -(-k // g) * g
    r = te.reduce_axis((_i64(0), _i64(size)), name="r")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *t, j, n = idx
        kk = j * size + r
        act = tirx.Select(kk < k, xq[(*t, tirx.min(kk, k - 1))].astype("int32"),
                          tirx.const(0, "int32"))
        grp = j if size == g else tirx.floordiv(j * size, g)
        code = unpack_code(packed, tirx.min(kk, k_pad - 1), n, bits)
        return te.sum((code - zero[grp, n]) * act, axis=r)

    return te.compute([*lead, _i64(blocks.n_sums), cols], body, name="group_sums")


def _legalize_quantize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return bb.call_te(quantize_te, call.args[0], act_bits=int(call.attrs["act_bits"]),
                      act_group=int(call.attrs["act_group"]), primfunc_name_hint="sail_quantize")


def _legalize_group_sums(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    bits, _, blocks = _weight_attrs(call)
    return bb.call_te(group_sums_te, *call.args, bits=bits, group_size=blocks.group_size,
                      k=blocks.k, act_group=blocks.act_group, primfunc_name_hint="sail_group_sums")


def legalize_lut_gemv(bb: relax.BlockBuilder, call: relax.Call, *,
                      fence: bool = True) -> relax.Expr:
    """``sail.lut_gemv`` -> ``R.call_tir`` of the table kernel (:func:`.lut_kernel.lut_gemv_te`).

    ``fence=False`` leaves out the ``llvm.arithmetic.fence`` of the fused dequantization, for
    code generators that do not know LLVM intrinsics (the ``c`` target compiles with
    ``-ffp-contract=off`` instead).
    """
    from .lut_kernel import lut_gemv_te

    bits, act_bits, blocks = _weight_attrs(call)
    fused = str(call.attrs["output"]) == "float"
    xq, packed, zero = call.args[:3]
    extra = {"sx": call.args[3], "scale": call.args[4]} if fused else {}
    return bb.call_te(lut_gemv_te, xq, packed, zero, bits=bits, group_size=blocks.group_size,
                      k=blocks.k, act_group=blocks.act_group, act_bits=act_bits,
                      nbw=int(call.attrs["nbw"]), fence=fence, **extra,
                      primfunc_name_hint="sail_lut_gemv",
                      primfunc_attrs={"op_pattern": _OPAQUE})


def legalize_dequantize(bb: relax.BlockBuilder, call: relax.Call, *,
                        fence: bool = True) -> relax.Expr:
    """``sail.dequantize`` -> ``R.call_tir`` of :func:`.quant_matmul.dequantize_sums_te`, with
    ``llvm.arithmetic.fence`` on each product (no FMA: the reference's rounding) unless
    ``fence=False`` (code generators without LLVM intrinsics)."""
    blocks = act_blocks(call)
    return bb.call_te(dequantize_sums_te, *call.args, k=blocks.k, group_size=blocks.group_size,
                      act_group=blocks.act_group, fence=fence,
                      primfunc_name_hint="sail_dequantize")


# ---------------------------------------------------------------------------------------------
# NumPy references


def reference_quantize(x: np.ndarray, act_bits: int = 8,
                       act_group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(xq, sx)`` of ``x [..., K]`` as ``sail.quantize`` gives them: ``xq`` in
    :func:`act_dtype`, ``sx`` float32 ``[..., ceil(K / A)]`` (``act_group`` None: one per row,
    ``[..., 1]``)."""
    x = np.asarray(x)
    k = x.shape[-1]
    xq, sx = quantize_activations(x.reshape(-1, k), act_bits, k if act_group is None
                                  else act_group)
    lead = x.shape[:-1]
    return xq.astype(act_dtype(act_bits)).reshape(x.shape), sx.reshape(*lead, -1)


def reference_group_sums(xq: np.ndarray, qw: QuantizedWeight,
                         act_group: int | None = None) -> np.ndarray:
    """int32 ``[..., J, N]`` sums of ``xq [..., K]`` (what group_sums and lut_gemv give; with
    ``act_group`` None, one per weight group)."""
    xq = np.asarray(xq)
    blocks = ActBlocks(qw.k, qw.group_size, qw.k if act_group is None else act_group)
    sums = block_sums(xq.reshape(-1, xq.shape[-1]), qw, blocks)
    return sums.reshape(*xq.shape[:-1], blocks.n_sums, qw.n)


def reference_dequantize(sums: np.ndarray, sx: np.ndarray, scale: np.ndarray,
                         blocks: ActBlocks | None = None) -> np.ndarray:
    """float32 ``[..., N]``: ``sum_j (s[grp(j)] * sx[blk(j)]) * float32(S[j])`` (the reference's
    order). ``blocks`` None: one sum per weight group and one scale per row."""
    sums = np.asarray(sums)
    lead = sums.shape[:-2]
    s = sums.reshape(-1, *sums.shape[-2:])
    if blocks is None:
        n_groups = s.shape[1]
        blocks = ActBlocks(n_groups, 1, n_groups)
    sx = np.asarray(sx, np.float32).reshape(s.shape[0], -1)
    y = combine_sums(s, sx, np.asarray(scale, np.float32), blocks)
    return y.reshape(*lead, s.shape[-1])


# ---------------------------------------------------------------------------------------------
# Registration


_SPECS = (
    (QUANTIZE, "activation quantization per row and block -> (xq, sx)",
     (("x", "float32 [..., K]"),),
     _infer_quantize, _legalize_quantize),
    (GROUP_SUMS, "exact int32 group sums of integer activations and packed weights",
     (("xq", "int8/int16 [..., K]"), ("packed", "uint8"), ("zero", "int32 [G, N]")),
     _infer_group_sums, _legalize_group_sums),
    (LUT_GEMV, "group sums (or fused float result) by lookup tables, as SAIL computes them",
     (("xq", "int8/int16 [..., K]"), ("packed", "uint8"), ("zero", "int32 [G, N]"),
      ("sx", "float32 [..., NB] (output=float)"), ("scale", "float32 [G, N] (output=float)")),
     _infer_lut_gemv, legalize_lut_gemv),
    (DEQUANTIZE, "int32 group sums -> float32 result",
     (("sums", "int32 [..., J, N]"), ("sx", "float32 [..., NB]"), ("scale", "float32 [G, N]")),
     _infer_dequantize, legalize_dequantize),
)


def _register() -> None:
    """Register the operators once per process."""
    names = tvm.ir.Op.list_op_names()
    for name, description, operands, infer, legalize in _SPECS:
        if name in names:
            continue
        tvm.ir._ffi_api.RegisterOp(name, description)
        op = tvm.ir.Op.get(name)
        op.set_num_inputs(len(operands))
        for arg, text in operands:
            op.add_argument(arg, "Tensor", text)
        tvm.ir.register_op_attr(name, "FInferType", infer)
        tvm.ir.register_op_attr(name, "FPurity", True)
        tvm.ir.register_op_attr(name, "FLegalize", legalize)


_register()
