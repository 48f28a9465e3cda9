"""``QuantizeWeights``: quantize the constant weights of matmuls into ``sail.quant_matmul``.

Rewrites every ``R.matmul(x, W)`` whose ``W`` is a 2-D float32 constant ``[K, N]`` (N >= 1),
``x`` a float32 tensor and the result float32, into ``sail.quant_matmul(x, packed, scale, zero)``
(:mod:`sail_compiler.ops.quant_matmul`) with constants from
:func:`~sail_compiler.quant.reference.quantize_weights_rtn` and
:func:`~sail_compiler.quant.packing.pack_bits`. The result is the reference semantics of
DESIGN.md section 3 (activations quantized per row at run time to ``act_bits``).

Leaves alone: matmuls of two activations, weights that are not constants (e.g. already lifted to
parameters), constants that are not 2-D float32, other dtypes of ``x`` or of the result, and
every other operator (``Gemm`` arrives here as ``matmul`` after ``FoldConstant`` has folded its
transpose; a weight that is still behind a ``permute_dims`` is not a constant and is left alone).

Skipping. Relax keeps no ONNX node or initializer names, so the pass cannot skip a layer by its
ONNX name. Each rewritable matmul is labelled ``matmul.<i>``, ``i`` counting from 0 in the
order the pass meets them (functions by name, bindings in order), and ``skip`` holds
``fnmatch`` patterns against those labels (``"matmul.0"``, ``"matmul.1?"``). A pattern that
matches no label is an error, so a pattern written for ONNX names fails loudly instead of
silently quantizing the layer.

Runs in the ``quantize`` stage: after the import stage and ``FoldConstant`` (so folded weights
are constants), and before any pass that lifts weights to parameters or legalizes
(``LegalizeOps`` turns ``sail.quant_matmul`` into its TE kernel).
"""

from __future__ import annotations

import fnmatch

import numpy as np
import tvm
from tvm import relax

from ..errors import OptionError, SailError
from ..ops.quant_matmul import max_abs_group_sum, quant_matmul
from ..quant.reference import check_act_bits, quantize_weights_rtn
from ..quant.scheme import QuantScheme

_MATMUL = tvm.ir.Op.get("relax.matmul")

_INT32_MAX = 2**31 - 1


def _weight_of(call: relax.Call) -> np.ndarray | None:
    """The float32 ``[K, N]`` constant weight of a rewritable matmul, or None."""
    if not call.op.same_as(_MATMUL) or len(call.args) != 2:
        return None
    x, w = call.args
    tys = (x.ty, w.ty, call.ty)
    if not isinstance(w, tvm.ir.GenericConst) \
            or not all(isinstance(t, relax.TensorType) for t in tys) \
            or any(str(t.dtype) != "float32" for t in tys):
        return None
    if w.ty.ndim != 2 or x.ty.ndim < 1:
        return None
    weights = w.value.numpy()
    if weights.shape[0] < 1 or weights.shape[1] < 1:
        return None
    return weights


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, scheme: QuantScheme, skip: tuple[str, ...],
                 act_bits: int) -> None:
        super().__init__(mod)
        self.scheme, self.skip, self.act_bits = scheme, skip, act_bits
        self.labels: list[str] = []
        self.problems: list[str] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        weights = _weight_of(call)
        if weights is None:
            return call
        label = f"matmul.{len(self.labels)}"
        self.labels.append(label)
        if any(fnmatch.fnmatchcase(label, pattern) for pattern in self.skip):
            return call
        k, _ = weights.shape
        g = self.scheme.group_size_for(k)
        if max_abs_group_sum(self.scheme.bits, g, self.act_bits) > _INT32_MAX:
            self.problems.append(f"{label} (K={k}): a group of {g} with {self.scheme.bits}-bit "
                                 f"weights and {self.act_bits}-bit activations can overflow "
                                 "int32; use smaller groups or fewer activation bits")
            return call
        try:
            qw = quantize_weights_rtn(weights, self.scheme)
        except ValueError as err:
            self.problems.append(f"{label} (weight [{k}, {weights.shape[1]}]): {err}")
            return call
        return quant_matmul(call.args[0], relax.const(qw.packed()), relax.const(qw.scale),
                            relax.const(qw.zero_points(), "int32"), bits=qw.bits,
                            group_size=qw.group_size, k=qw.k, act_bits=self.act_bits)


@tvm.transform.module_pass(opt_level=0, name="QuantizeWeights")
class QuantizeWeights:
    """Rewrite ``matmul(x, W_const)`` into ``sail.quant_matmul`` with ``W`` quantized by ``scheme``.

    Parameters
    ----------
    scheme
        Bits, group size along K, symmetric or with zero points.
    skip
        ``fnmatch`` patterns of matmul labels ``matmul.<i>`` to leave in float (module
        docstring); every pattern must match at least one label.
    act_bits
        Activation width b_a (2..16) the rewritten matmuls quantize their inputs to.

    Raises
    ------
    OptionError
        At construction: ``act_bits`` is out of range. When run: a ``skip`` pattern matches no
        matmul, or a scheme whose group sums could overflow int32 (all such matmuls listed).
    SailError
        When run: weights hold inf or nan (all such matmuls listed).
    """

    def __init__(self, scheme: QuantScheme, skip: tuple[str, ...] = (),
                 act_bits: int = 8) -> None:
        if not isinstance(scheme, QuantScheme):
            raise OptionError(f"scheme must be a QuantScheme, got {type(scheme).__name__}; "
                              "build one with QuantScheme.parse('w4g128')")
        self.scheme = scheme
        self.skip = tuple(skip)
        self.act_bits = check_act_bits(act_bits)

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self.scheme, self.skip, self.act_bits)
        for gvar, func in sorted(mod.functions_items(), key=lambda item: item[0].name_hint):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        unmatched = [p for p in self.skip
                     if not any(fnmatch.fnmatchcase(label, p) for label in rewriter.labels)]
        if unmatched:
            raise OptionError(
                f"skip patterns {unmatched} match no matmul; patterns match the labels "
                f"matmul.0 .. matmul.{len(rewriter.labels) - 1} (ONNX names are not kept)"
                if rewriter.labels else
                f"skip patterns {unmatched} match no matmul: the module has no matmul with a "
                "constant float32 weight")
        if rewriter.problems:
            overflow = any("overflow" in p for p in rewriter.problems)
            error = OptionError if overflow else SailError
            raise error(f"cannot quantize {len(rewriter.problems)} matmul weights:\n"
                        + "\n".join(f"  - {p}" for p in rewriter.problems))
        return rewriter.builder_.get()
