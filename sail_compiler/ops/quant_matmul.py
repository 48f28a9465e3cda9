"""``sail.quant_matmul``: ``x @ W`` with ``W`` quantized in groups along K (DESIGN.md section 3).

Operands and attributes::

    y = sail.quant_matmul(x, packed, scale, zero, bits=b, group_size=g, k=K, act_bits=b_a,
                          act_group=A)

    x       float32 [..., K]                 activations; leading dims may be symbolic
    packed  uint8   [ceil(K_pad * b / 8), N] codes q[K_pad, N] packed along K
                                              (``quant.packing``: little-endian bit streams)
    scale   float32 [n_groups, N]
    zero    int32   [n_groups, N]            zero points; 2**(b-1) everywhere if symmetric
    y       float32 [..., N]

with ``n_groups = ceil(K / g)`` and ``K_pad = n_groups * g``. The operator computes exactly
:func:`sail_compiler.quant.reference.quantized_matmul`: activation quantization with one scale
per row and block of A consecutive k (``act_group``, :class:`~sail_compiler.quant.reference.
ActBlocks`; A = K: one per row): ``sx = max|x[t, blk]| / (2**(b_a-1) - 1)`` in float32 with IEEE
division, 1 where that is 0; ``xq = clip(nearbyint(x / sx))``; int32 sums ``S[t, j, n] = sum_k
(q - z) * xq`` over the J sum blocks (the weight groups, split at activation-block boundaries
when A < g; padding rows k >= K meet a zero activation), and ``y = sum_j (s[grp(j)] *
sx[blk(j)]) * float32(S[j])`` accumulated in order of j, the reference's order of operations.
The caller guarantees that no group sum overflows int32 (:func:`max_abs_group_sum` bounds
them).

The operator is registered from Python with type inference (``FInferType``), purity and a
legalization (``FLegalize``) to two TE kernels via ``R.call_tir``: the int32 group sums
``S[..., n_groups, N]`` (activation quantization included), then their float combination. The
sums are materialized so that ``sail verify`` can check them, exactly, on the real activations of
a model (:class:`~sail_compiler.passes.ExposeGroupSums`). Its attributes live in the call's
``DictAttrs``; ``layer`` (optional) names the ONNX layer. TVMScript prints it as
``T.Call("sail.quant_matmul", [...], attrs={...})``: TVM 0.27's printer uses the
``R.<name>(...)`` form only for ops named ``relax.*``.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax, te, tirx

from ..errors import SailError
from ..quant.packing import check_bits, packed_length
from ..quant.plan import INITIALIZER_PREFIX, TRANSPOSED_PREFIX
from ..quant.reference import ActBlocks, PackedWeight, QuantizedWeight, check_act_bits

__all__ = [
    "OP_NAME",
    "act_blocks",
    "attrs_dict",
    "group_sums_te",
    "is_quant_matmul",
    "max_abs_group_sum",
    "emit_quant_matmul",
    "quant_combine_te",
    "quant_group_sums_te",
    "quant_matmul",
    "quant_matmul_te",
    "quantize_activations_te",
    "WEIGHT_OPERANDS",
    "constant_name",
    "name_constant",
    "name_weight_ref",
    "weight_ref_of",
    "weight_constants",
]

#: The operands :func:`weight_constants` makes, in its order: the names of the constants.
WEIGHT_OPERANDS = ("packed", "scale", "zero")
#: How a weight constant's span starts (:func:`name_constant`).
_NAME_PREFIX = "sail.weight:"

#: The registered name; targets recognise the operator by it.
OP_NAME = "sail.quant_matmul"

_INT32_MAX = 2**31 - 1
_ATTR_NAMES = ("bits", "group_size", "k", "act_bits", "act_group")


def _i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


def _check_attrs(bits: int, group_size: int, k: int, act_bits: int,
                 act_group: int | None = None) -> tuple[int, int, int, int, int]:
    """Validated attributes as Python ints; ``act_group`` None (or above K) becomes K.

    Raises
    ------
    OptionError
        ``bits`` outside 1..8, ``act_bits`` outside 2..16, or ``act_group`` does not nest with
        ``group_size`` (:class:`~sail_compiler.quant.reference.ActBlocks`).
    ValueError
        ``group_size``, ``k`` or ``act_group`` below 1.
    """
    bits, act_bits = check_bits(bits, "weight bits"), check_act_bits(act_bits)
    if int(group_size) < 1 or int(k) < 1:
        raise ValueError(f"{OP_NAME}: group_size and k must be >= 1, got {group_size}, {k}")
    blocks = ActBlocks(int(k), int(group_size), int(k) if act_group is None else int(act_group))
    return bits, int(group_size), int(k), act_bits, blocks.act_group


def act_blocks(call: relax.Call) -> ActBlocks:
    """The :class:`~sail_compiler.quant.reference.ActBlocks` of a call with ``k``,
    ``group_size`` and ``act_group`` attributes (without ``act_group``: one block per row)."""
    k = int(call.attrs["k"])
    act_group = int(call.attrs["act_group"]) if "act_group" in call.attrs else k
    return ActBlocks(k, int(call.attrs["group_size"]), act_group)


def max_abs_group_sum(bits: int, group_size: int, act_bits: int) -> int:
    """Largest possible ``|S|`` of one group: ``g * (2**b - 1) * (2**(b_a-1) - 1)``.

    ``|q - z| <= 2**b - 1`` and ``|xq| <= 2**(b_a-1) - 1``; the operator needs this to fit in
    int32.
    """
    return group_size * ((1 << bits) - 1) * ((1 << (act_bits - 1)) - 1)


def quant_matmul(x: relax.Expr, packed: relax.Expr, scale: relax.Expr, zero: relax.Expr, *,
                 bits: int, group_size: int, k: int, act_bits: int = 8,
                 act_group: int | None = None, layer: str = "") -> relax.Call:
    """Build a ``sail.quant_matmul`` call (see the module docstring for shapes and dtypes).

    Parameters
    ----------
    x, packed, scale, zero
        The operands.
    bits
        Weight code width b, 1..8.
    group_size
        Rows g of one group along K.
    k
        The original reduction length K (``x.shape[-1]``).
    act_bits
        Activation width b_a, 2..16.
    act_group
        Rows A per activation scale (module docstring); None: one scale per row (A = K).
    layer
        The layer's name (the ONNX node), for dumps and reports; not part of the semantics.

    Returns
    -------
    relax.Call
        The call; its type is inferred when a ``BlockBuilder`` normalizes it.

    Raises
    ------
    OptionError, ValueError
        An attribute is out of range.
    """
    bits, group_size, k, act_bits, act_group = _check_attrs(bits, group_size, k, act_bits,
                                                           act_group)
    attrs = {"bits": bits, "group_size": group_size, "k": k, "act_bits": act_bits,
             "act_group": act_group}
    if layer:
        attrs["layer"] = layer
    return relax.Call(tvm.ir.Op.get(OP_NAME), [x, packed, scale, zero], attrs)


def _attrs_of(call: relax.Call) -> tuple[int, int, int, int, int]:
    return _check_attrs(*(int(call.attrs[name]) for name in _ATTR_NAMES if name in call.attrs))


def static_dim(dim: tirx.PrimExpr) -> int | None:
    """``dim`` as an int when it is a constant, else None."""
    return int(dim) if isinstance(dim, tirx.IntImm) else None


def check_packed_operands(tys: list[relax.Type], bits: int, group_size: int,
                          k: int) -> tuple[list[str], tirx.PrimExpr | None]:
    """Check the static rows and columns of ``(packed, scale, zero)`` types against the attrs.

    Returns the problems found and the shared column count (N) when any operand's shape is
    known. Used by every operator that takes a quantized weight in this layout.
    """
    n_groups = -(-k // group_size)
    want = {"packed": packed_length(n_groups * group_size, bits), "scale": n_groups,
            "zero": n_groups}
    problems: list[str] = []
    n = None
    for name, ty in zip(("packed", "scale", "zero"), tys, strict=True):
        if ty.shape is None:
            continue
        rows, cols = (static_dim(d) for d in ty.shape)
        if rows is not None and rows != want[name]:
            problems.append(f"{name} has {rows} rows, expected {want[name]} for k={k}, "
                            f"group_size={group_size}, bits={bits}")
        if cols is not None:
            if n is not None and cols != n:
                problems.append(f"{name} has {cols} columns, expected {n}")
            n = cols if n is None else n
    n_dim = next((ty.shape[1] for ty in tys if ty.shape is not None), None)
    return problems, n_dim


def _infer_type(call: relax.Call, _bb: relax.BlockBuilder) -> relax.TensorType:
    """``float32[..., N]``; checks dtypes, ranks and every static dimension against the attrs."""
    bits, group_size, k, _, _ = _attrs_of(call)
    if len(call.args) != 4:
        raise ValueError(f"{OP_NAME} takes 4 operands (x, packed, scale, zero), "
                         f"got {len(call.args)}")
    tys = [arg.ty for arg in call.args]
    names = ("x", "packed", "scale", "zero")
    problems = []
    for name, ty, dtype in zip(names, tys, ("float32", "uint8", "float32", "int32"), strict=True):
        if not isinstance(ty, relax.TensorType):
            problems.append(f"{name} must be a tensor, got {ty}")
        elif str(ty.dtype) != dtype:
            problems.append(f"{name} must be {dtype}, got {ty.dtype}")
        elif name != "x" and ty.ndim not in (-1, 2):
            problems.append(f"{name} must be 2-D, got {ty.ndim}-D")
    if problems:
        raise ValueError(f"{OP_NAME}: " + "; ".join(problems))
    x_ty = tys[0]
    problems, n_dim = check_packed_operands(tys[1:], bits, group_size, k)
    if x_ty.shape is not None and x_ty.ndim >= 1:
        x_k = static_dim(x_ty.shape[-1])
        if x_k is not None and x_k != k:
            problems.append(f"x ends in {x_k}, expected k={k}")
    elif x_ty.ndim == 0:
        problems.append("x must have at least one axis")
    if problems:
        raise ValueError(f"{OP_NAME}: " + "; ".join(problems))
    if x_ty.shape is None or n_dim is None:
        return relax.TensorType(dtype="float32", ndim=x_ty.ndim)
    return relax.TensorType([*list(x_ty.shape)[:-1], n_dim], "float32")


def unpack_code(packed: te.Tensor, row: tirx.PrimExpr, col: tirx.PrimExpr, bits: int,
                dtype: str = "int32") -> tirx.PrimExpr:
    """Code ``q[row, col]`` in ``dtype`` (int16 or wider) from the little-endian bit stream of
    column ``col``.

    A code straddling two bytes uses bits ``shift .. shift + b - 1 <= 14`` of their 16-bit
    concatenation, so int16 never reads its sign bit. (Kernels with int16 tables ask for int16:
    computing in int32 and narrowing cost LLVM pack and permute instructions per entry.)
    """
    bit = row * bits
    byte = tirx.floordiv(bit, 8)
    word = packed[byte, col].astype(dtype)
    if 8 % bits:  # a code may straddle two bytes; the last byte has no successor
        n_bytes = packed.shape[0]
        nxt = tirx.if_then_else(byte + 1 < n_bytes, packed[tirx.min(byte + 1, n_bytes - 1), col],
                                tirx.const(0, "uint8"))
        word = word | (nxt.astype(dtype) << tirx.const(8, dtype))
    shift = tirx.floormod(bit, 8).astype(dtype)
    return (word >> shift) & tirx.const((1 << bits) - 1, dtype)


def quantize_activations_te(x: te.Tensor, k_padded: int | tirx.PrimExpr, act_bits: int,
                            out_dtype: str = "int32",
                            act_group: int | None = None) -> tuple[te.Tensor, te.Tensor]:
    """TE stages ``(xq [..., k_padded], sx float32[..., n_blocks])`` of the reference's
    activation step, one scale per row and block of ``act_group`` columns (None: per row,
    ``n_blocks = 1``).

    ``xq`` (``out_dtype``, wide enough for ``act_bits``) is 0 in the padding columns
    ``K .. k_padded - 1``.
    """
    lead, depth = list(x.shape[:-1]), x.shape[-1]
    qmax = (1 << (act_bits - 1)) - 1
    static = static_dim(depth)
    size = depth if act_group is None or (static is not None and act_group >= static) \
        else _i64(act_group)
    n_blocks = _i64(1) if size is depth else tirx.floordiv(depth + size - 1, size)
    r = te.reduce_axis((_i64(0), size), name="r")
    # a partial last block reads past K: those columns count as 0
    partial = size is not depth and (static is None or static % int(size))

    def absmax(*idx: tirx.Var) -> tirx.PrimExpr:
        *t, blk = idx
        kk = blk * size + r
        value = tirx.abs(x[(*t, tirx.min(kk, depth - 1) if partial else kk)])
        if partial:
            value = tirx.Select(kk < depth, value, tirx.const(0, "float32"))
        return te.max(value, axis=r)

    amax = te.compute([*lead, n_blocks], absmax, name="act_absmax")

    def scale(*idx: tirx.Var) -> tirx.PrimExpr:
        raw = amax[idx] / tirx.const(qmax, "float32")  # IEEE division, as the reference
        return tirx.Select(raw == tirx.const(0, "float32"), tirx.const(1, "float32"), raw)

    sx = te.compute([*lead, n_blocks], scale, name="act_scale")

    def quantize(*idx: tirx.Var) -> tirx.PrimExpr:
        *t, kk = idx
        safe_k = tirx.min(kk, depth - 1)
        blk = _i64(0) if size is depth else tirx.floordiv(safe_k, size)
        rounded = tirx.nearbyint(x[(*t, safe_k)] / sx[(*t, blk)])
        clipped = tirx.max(tirx.min(rounded, tirx.const(qmax, "float32")),
                           tirx.const(-qmax, "float32"))
        return tirx.Select(kk < depth, clipped.astype(out_dtype), tirx.const(0, out_dtype))

    width = _i64(k_padded) if isinstance(k_padded, int) else k_padded
    xq = te.compute([*lead, width], quantize, name="act_quantized")
    return xq, sx


def group_sums_te(xq: te.Tensor, packed: te.Tensor, zero: te.Tensor, bits: int,
                  blocks: ActBlocks) -> te.Tensor:
    """TE stage ``S int32[..., J, N] = sum_{k in j} (q[k, n] - z[grp(j), n]) * xq[..., k]`` over
    the sum blocks j of ``blocks``.

    ``xq`` is ``int32[..., >= J * B]``, 0 past K; codes are unpacked from ``packed`` on the fly
    (rows past ``K_pad`` read the last row: their activation is 0).
    """
    lead = list(xq.shape[:-1])
    cols = zero.shape[1]
    size, g = blocks.sum_size, blocks.group_size
    k_pad = -(-blocks.k // g) * g
    r = te.reduce_axis((_i64(0), _i64(size)), name="r")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *t, j, n = idx
        kk = j * size + r
        row = tirx.min(kk, k_pad - 1) if blocks.n_sums * size > k_pad else kk
        code = unpack_code(packed, row, n, bits)
        return te.sum((code - zero[_group_index(j, blocks), n]) * xq[(*t, kk)], axis=r)

    return te.compute([*lead, _i64(blocks.n_sums), cols], body, name="group_sums")


def _group_index(j: tirx.PrimExpr, blocks: ActBlocks) -> tirx.PrimExpr:
    """The weight group of sum block ``j``: ``j * B // g``."""
    if blocks.sum_size == blocks.group_size:
        return j
    return tirx.floordiv(j * blocks.sum_size, blocks.group_size)


def sx_index(sx: te.Tensor, t: list[tirx.PrimExpr], j: tirx.PrimExpr,
             blocks: ActBlocks) -> tirx.PrimExpr:
    """``sx[t, blk(j)]``, the activation scale of sum block ``j`` of row ``t``. An ``sx`` without
    the blocks axis (one scale per row) is read as ``sx[t]``."""
    if len(sx.shape) == len(t):
        return sx[tuple(t)]
    if blocks.per_row:
        return sx[(*t, _i64(0))]
    return sx[(*t, tirx.floordiv(j * blocks.sum_size, blocks.act_group))]


def scale_index(scale: te.Tensor, j: tirx.PrimExpr, n: tirx.PrimExpr,
                blocks: ActBlocks) -> tirx.PrimExpr:
    """``s[grp(j), n]``, the weight scale of sum block ``j``."""
    return scale[_group_index(j, blocks), n]


def _sums_width(blocks: ActBlocks) -> int:
    """Columns of the padded activations the sums read: ``max(K_pad, J * B)``."""
    k_pad = -(-blocks.k // blocks.group_size) * blocks.group_size
    return max(k_pad, blocks.n_sums * blocks.sum_size)


def quant_group_sums_te(x: te.Tensor, packed: te.Tensor, zero: te.Tensor, *, bits: int,
                        group_size: int, k: int, act_bits: int,
                        act_group: int | None = None) -> te.Tensor:
    """First kernel of the operator: ``S int32[..., J, N]`` from float ``x`` (activation
    quantization, then exact sums per sum block)."""
    blocks = ActBlocks(k, group_size, k if act_group is None else act_group)
    xq, _ = quantize_activations_te(x, _sums_width(blocks), act_bits,
                                    act_group=blocks.act_group)
    return group_sums_te(xq, packed, zero, bits, blocks)


def quant_combine_te(x: te.Tensor, sums: te.Tensor, scale: te.Tensor, *, k: int,
                     act_bits: int, group_size: int | None = None,
                     act_group: int | None = None) -> te.Tensor:
    """Second kernel: ``y[..., n] = sum_j (s[grp(j), n] * sx[..., blk(j)]) *
    float32(S[..., j, n])``.

    ``sx`` is recomputed from ``x`` exactly as the first kernel computed it.
    """
    blocks = ActBlocks(k, k if group_size is None else group_size,
                       k if act_group is None else act_group)
    _, sx = quantize_activations_te(x, k, act_bits, act_group=blocks.act_group)
    return dequantize_sums_te(sums, sx, scale, k=k, group_size=blocks.group_size,
                              act_group=blocks.act_group, name="quant_matmul")


def dequantize_sums_te(sums: te.Tensor, sx: te.Tensor, scale: te.Tensor, *, k: int,
                       group_size: int, act_group: int, name: str = "dequantize",
                       fence: bool = False) -> te.Tensor:
    """``y[..., n] = sum_j (s[grp(j), n] * sx[..., blk(j)]) * float32(S[..., j, n])``, in order
    of j (the sum blocks of ``ActBlocks(k, group_size, act_group)``).

    The combination of :func:`quant_combine_te` and of ``sail.dequantize``. ``fence`` wraps each
    product in ``llvm.arithmetic.fence``: LLVM then cannot contract it with the sum into an FMA,
    and the result is the reference's bit for bit (llvm only; C has ``-ffp-contract=off``).
    """
    blocks = ActBlocks(k, group_size, act_group)
    lead = list(sums.shape[:-2])
    cols = scale.shape[1]
    j = te.reduce_axis((_i64(0), _i64(blocks.n_sums)), name="j")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *t, n = idx
        # (s * sx) * S, summed in order of j from 0: the reference's float32 operation order.
        term = (scale_index(scale, j, n, blocks) * sx_index(sx, t, j, blocks)) \
            * sums[(*t, j, n)].astype("float32")
        if fence:
            term = tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", term)
        return te.sum(term, axis=j)

    return te.compute([*lead, cols], body, name=name)


def quant_matmul_te(x: te.Tensor, packed: te.Tensor, scale: te.Tensor, zero: te.Tensor, *,
                    bits: int, group_size: int, k: int, act_bits: int,
                    act_group: int | None = None) -> te.Tensor:
    """The whole operator as one TE computation (the two kernels composed)."""
    sums = quant_group_sums_te(x, packed, zero, bits=bits, group_size=group_size, k=k,
                               act_bits=act_bits, act_group=act_group)
    return quant_combine_te(x, sums, scale, k=k, act_bits=act_bits, group_size=group_size,
                            act_group=act_group)


def emit_quant_matmul(bb: relax.BlockBuilder, call: relax.Call,
                      between: Callable[[relax.Expr], relax.Expr] | None = None,
                      after: Callable[[relax.Expr], relax.Expr] | None = None) -> relax.Expr:
    """Emit the operator's two kernels (:func:`quant_group_sums_te`, :func:`quant_combine_te`)
    as ``R.call_tir`` bindings into ``bb``; return the result expression.

    This is the legalization. ``between(sums)`` and ``after(y)``, when given, may wrap the group
    sums before the second kernel reads them and the result:
    :class:`~sail_compiler.passes.ExposeGroupSums` records them there, around the very kernels
    every build runs.
    """
    bits, group_size, k, act_bits, act_group = _attrs_of(call)
    x, packed, scale, zero = call.args
    sums = bb.emit(bb.call_te(quant_group_sums_te, x, packed, zero, bits=bits,
                              group_size=group_size, k=k, act_bits=act_bits,
                              act_group=act_group, primfunc_name_hint="quant_group_sums"))
    if between is not None:
        sums = bb.emit(between(sums))
    y = bb.call_te(quant_combine_te, x, sums, scale, k=k, act_bits=act_bits,
                   group_size=group_size, act_group=act_group,
                   primfunc_name_hint="quant_combine")
    if after is not None:
        y = after(bb.emit(y))
    return y


def _legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return emit_quant_matmul(bb, call)


def _register() -> None:
    """Register the operator and its attributes once per process."""
    if OP_NAME in tvm.ir.Op.list_op_names():
        return
    tvm.ir._ffi_api.RegisterOp(OP_NAME, "x @ W with W quantized in groups along K")
    op = tvm.ir.Op.get(OP_NAME)
    op.set_num_inputs(4)
    for name, description in zip(("x", "packed", "scale", "zero"),
                                 ("float32 [..., K]", "uint8 [ceil(K_pad*bits/8), N]",
                                  "float32 [n_groups, N]", "int32 [n_groups, N]"), strict=True):
        op.add_argument(name, "Tensor", description)
    tvm.ir.register_op_attr(OP_NAME, "FInferType", _infer_type)
    tvm.ir.register_op_attr(OP_NAME, "FPurity", True)
    tvm.ir.register_op_attr(OP_NAME, "FLegalize", _legalize)


def weight_constants(qw: QuantizedWeight | PackedWeight, layer: str = "",
                     ) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    """``(packed, scale, zero)`` of ``qw`` as constants, in the operand layout of every sail
    operator that takes a quantized weight (module docstring), each named after ``layer`` and
    its operand (:func:`name_constant`; unnamed for ``layer=""``). A :class:`PackedWeight`'s
    packed codes and scales become constants without a copy (the IR shares its 64-byte aligned
    arrays, so a large model's codes are held once)."""
    if isinstance(qw, PackedWeight):
        packed, scale = (tvm.runtime.from_dlpack(a) for a in (qw.packed(), qw.scale))
    else:
        packed, scale = tvm.runtime.tensor(qw.packed()), tvm.runtime.tensor(qw.scale)
    consts = (relax.const(packed), relax.const(scale), relax.const(qw.zero_points(), "int32"))
    if not layer:
        return consts
    named = (name_constant(c, layer, role) for c, role in zip(consts, WEIGHT_OPERANDS,
                                                                strict=True))
    return tuple(named)  # type: ignore[return-value]


def name_constant(const: tvm.ir.GenericConst, layer: str, operand: str) -> tvm.ir.GenericConst:
    """``const`` (the same data) named as ``operand`` of ``layer``, e.g. ``("model.layers.0.
    self_attn.k_proj", "packed")``.

    The name lives in the constant's span, whose source name is ``sail.weight:<layer>.<operand>``
    (TVM's frontends name IR nodes after their source layers the same way). Spans ride along
    with the constant through every pass that keeps it, are not printed by TVMScript and are
    ignored by structural equality, so naming changes no dump and no comparison. Targets read
    the name back with :func:`constant_name`: the IR itself says which layer a weight belongs
    to, with no table kept beside it.
    """
    if not layer or not operand or "." in operand:
        raise SailError(f"a weight constant needs a layer name and an operand name without "
                        f"a dot, got layer {layer!r}, operand {operand!r}")
    span = tvm.ir.Span(tvm.ir.SourceName(f"{_NAME_PREFIX}{layer}.{operand}"), 0, 0, 0, 0)
    return tvm.ir.GenericConst(const.value, const.ty, span)


def constant_name(const: tvm.ir.GenericConst) -> tuple[str, str] | None:
    """``(layer, operand)`` of a constant :func:`name_constant` named, else None."""
    span = const.span
    source = str(span.source_name.name) if span is not None else ""
    if not source.startswith(_NAME_PREFIX):
        return None
    layer, _, operand = source[len(_NAME_PREFIX):].rpartition(".")
    return layer, operand


def name_weight_ref(const: tvm.ir.GenericConst, ref: str) -> tvm.ir.GenericConst:
    """``const`` (the same data) carrying ``ref``, the name of the ONNX initializer it holds
    (:func:`~sail_compiler.quant.plan.weight_ref`: ``sail.init:<name>``, or
    ``sail.init.T:<name>`` for its transpose), in its span like :func:`name_constant`."""
    if not ref.startswith((INITIALIZER_PREFIX, TRANSPOSED_PREFIX)):
        raise SailError(f"not an initializer reference: {ref!r}")
    return tvm.ir.GenericConst(const.value, const.ty,
                               tvm.ir.Span(tvm.ir.SourceName(ref), 0, 0, 0, 0))


def weight_ref_of(const: tvm.ir.GenericConst) -> str | None:
    """The initializer reference :func:`name_weight_ref` gave ``const``, else None."""
    span = const.span
    source = str(span.source_name.name) if span is not None else ""
    return source if source.startswith((INITIALIZER_PREFIX, TRANSPOSED_PREFIX)) else None


def initializer_of(const: tvm.ir.GenericConst) -> str | None:
    """The ONNX initializer ``const`` holds (or the transpose of), from its
    :func:`weight_ref_of`, else None: the name messages give the user."""
    ref = weight_ref_of(const)
    return None if ref is None else ref.partition(":")[2]


def layer_name(call: relax.Call) -> str:
    """The ``layer`` attribute of a ``sail.quant_matmul`` call ("" when unnamed)."""
    return str(call.attrs["layer"]) if "layer" in call.attrs else ""


def attrs_dict(call: relax.Call) -> dict[str, int]:
    """The attributes of a ``sail.quant_matmul`` call as a dict of ints."""
    return dict(zip(_ATTR_NAMES, _attrs_of(call), strict=True))


def is_quant_matmul(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a call of ``sail.quant_matmul``."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == OP_NAME


_register()
