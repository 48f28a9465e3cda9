"""``QuantizeWeights``: quantize the constant weights of matmuls into ``sail.quant_matmul``.

Rewrites every ``R.matmul(x, W)`` whose ``W`` is a 2-D float32 constant ``[K, N]`` (N >= 1),
``x`` a float32 tensor and the result float32, into ``sail.quant_matmul(x, packed, scale, zero)``
(:mod:`sail_compiler.ops.quant_matmul`) with constants from
:func:`~sail_compiler.quant.reference.quantize_weights_rtn` and
:func:`~sail_compiler.quant.packing.pack_bits`. The result is the reference semantics of
DESIGN.md section 3 (activations quantized at run time to ``act_bits``, one scale per row and
block of ``act_group`` consecutive k, resolved per layer by
:meth:`~sail_compiler.quant.reference.ActBlocks.resolve`).

Leaves alone: matmuls of two activations, weights that are not constants (e.g. already lifted to
parameters), constants that are not 2-D float32, other dtypes of ``x`` or of the result, and
every other operator (``Gemm`` arrives here as ``matmul`` after ``FoldConstant`` has folded its
transpose; a weight that is still behind a ``permute_dims`` is not a constant and is left alone).

Layer names. The frontend names every initializer's constant after it, in its span
(``sail.init:<name>``; ``sail.init.T:<name>`` for the transpose
:class:`~sail_compiler.passes.FoldWeightTransposes` folds from one, see
:func:`~sail_compiler.quant.plan.weight_ref`). Standalone, each rewritable matmul is labelled
``matmul.<i>``, ``i`` counting from 0 in the order the pass meets them (functions by name,
bindings in order). The compiler driver passes ``layers``, a table from that name
(:func:`~sail_compiler.quant.plan.layer_ref`) to the ONNX layer name and its already-quantized
weight (chosen by the plan, a calibrated method, or imported pre-quantized), so the IR and the
reports carry ONNX names; a matmul whose weight constant carries a name in the table uses that
entry (``None``: keep it float). Any other (an unnamed constant: one the graph computed, e.g. a
weight behind a ``Transpose`` node the importer evaluated, or a constant made by a pass other
than ``FoldWeightTransposes``; such a weight is no layer of the plan either) falls back to
``scheme`` under its ``matmul.<i>`` label. ``skip`` holds
``fnmatch`` patterns matched against the label and the name. A pattern that matches nothing is
an error, so a typo fails loudly instead of silently quantizing the layer. Every rewritten call
carries its name in the ``layer`` attribute.

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
from ..ops.quant_matmul import (
    max_abs_group_sum,
    name_weight_ref,
    quant_matmul,
    weight_constants,
    weight_ref_of,
)
from ..quant.methods import quantize_weight
from ..quant.reference import (
    ACT_GROUP_ROW,
    ActBlocks,
    PackedWeight,
    QuantizedWeight,
    check_act_bits,
    check_act_group_size,
)
from ..quant.scheme import QuantScheme
from ._common import applied_entry, constant_array, rewrite_relax_functions

#: ``{layer_ref: (layer name, quantized weight or None to keep the layer float)}``
LayerTable = dict[str, tuple[str, QuantizedWeight | PackedWeight | None]]

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
    weights = constant_array(w)
    if weights.shape[0] < 1 or weights.shape[1] < 1:
        return None
    return weights


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, scheme: QuantScheme | None, skip: tuple[str, ...],
                 act_bits: int, layers: LayerTable | None, method: str,
                 act_group: int | str, constants: dict[str, np.ndarray]) -> None:
        super().__init__(mod)
        self.constants = constants
        self.replaced: dict[str, int] = {}
        self.scheme, self.skip, self.act_bits = scheme, skip, act_bits
        self.act_group = act_group
        self.layers, self.method = layers, method
        self.labels: list[str] = []
        self.names: list[str] = []
        self.applied: list[dict[str, object]] = []
        self.problems: list[str] = []

    def visit_generic_const_(self, const: tvm.ir.GenericConst) -> relax.Expr:
        key = weight_ref_of(const) if self.constants else None
        if key is None or key not in self.constants:
            return const
        self.replaced[key] = self.replaced.get(key, 0) + 1
        return name_weight_ref(relax.const(self.constants[key]), key)

    def _skipped(self, *names: str) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for p in self.skip for n in names)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        weights = _weight_of(call)
        if weights is None:
            return call
        label = f"matmul.{len(self.labels)}"
        self.labels.append(label)
        ref = weight_ref_of(call.args[1])
        entry = self.layers.get(ref) if self.layers is not None and ref is not None else None
        name = entry[0] if entry is not None else label
        self.names.append(name)
        if self._skipped(label, name) or (entry is not None and entry[1] is None):
            return call
        k, n = weights.shape
        if entry is not None:
            qw = entry[1]
        elif self.scheme is None:
            return call
        else:
            g = self.scheme.group_size_for(k)
            if max_abs_group_sum(self.scheme.bits, g, self.act_bits) <= _INT32_MAX:
                try:
                    qw = quantize_weight(weights, self.scheme, self.method)
                except SailError as err:
                    self.problems.append(f"{name} (weight [{k}, {n}]): {err}")
                    return call
            else:
                qw = None
        if qw is None or max_abs_group_sum(qw.bits, qw.group_size, self.act_bits) > _INT32_MAX:
            bits = qw.bits if qw is not None else self.scheme.bits
            g = qw.group_size if qw is not None else self.scheme.group_size_for(k)
            self.problems.append(f"{name} (K={k}): a group of {g} with {bits}-bit weights and "
                                 f"{self.act_bits}-bit activations can overflow int32; use "
                                 "smaller groups or fewer activation bits")
            return call
        assert qw.k == k and qw.n == n, (name, qw.k, qw.n, weights.shape)
        try:
            blocks = ActBlocks.resolve(self.act_group, qw.k, qw.group_size)
        except OptionError as err:
            self.problems.append(f"{name}: {err}")
            return call
        self.applied.append(applied_entry(name, qw))
        return quant_matmul(call.args[0], *weight_constants(qw, name), bits=qw.bits,
                            group_size=qw.group_size, k=qw.k, act_bits=self.act_bits,
                            act_group=blocks.act_group, layer=name)


@tvm.transform.module_pass(opt_level=0, name="QuantizeWeights")
class QuantizeWeights:
    """Rewrite ``matmul(x, W_const)`` into ``sail.quant_matmul`` with ``W`` quantized.

    Parameters
    ----------
    scheme
        Bits, group size along K, symmetric or with zero points, for matmuls not in ``layers``
        (None: leave those float).
    skip
        ``fnmatch`` patterns of layer names or ``matmul.<i>`` labels to leave in float (module
        docstring); every pattern must match at least one.
    act_bits
        Activation width b_a (2..16) the rewritten matmuls quantize their inputs to.
    act_group
        Consecutive k per activation scale: a positive integer nested with each layer's weight
        group size, ``"group"`` or ``"row"`` (:class:`~sail_compiler.quant.reference.ActBlocks`).
    layers
        The driver's table of ONNX layers by the name their weight constant carries (module
        docstring).
    method
        How ``scheme`` quantizes weights not in ``layers``: ``rtn`` or ``search`` (``gptq``
        needs calibration data, which only the driver has).
    constants
        ``{weight_ref(initializer): new value}``: named constants to replace (the new one keeps
        the name), each of which must occur exactly once (``--awq`` folds its per-channel scales
        into norm weights this way, see :mod:`sail_compiler.quant.awq`).

    Attributes
    ----------
    applied
        After a run: one dict per rewritten matmul (``layer``, ``bits``, ``group_size``,
        ``symmetric``, ``k``, ``n``).

    Raises
    ------
    OptionError
        At construction: ``act_bits`` or ``act_group`` is out of range. When run: a ``skip``
        pattern matches no matmul, a scheme whose group sums could overflow int32, or an
        ``act_group`` that does not nest with a layer's groups (all such matmuls listed).
    SailError
        When run: weights hold inf or nan (all such matmuls listed).
    """

    def __init__(self, scheme: QuantScheme | None = None, skip: tuple[str, ...] = (),
                 act_bits: int = 8, layers: LayerTable | None = None,
                 method: str = "rtn", act_group: int | str = ACT_GROUP_ROW,
                 constants: dict[str, np.ndarray] | None = None) -> None:
        if scheme is None and layers is None:
            raise OptionError("QuantizeWeights needs a scheme (e.g. QuantScheme.parse('w4g128')) "
                              "or a table of quantized layers")
        if scheme is not None and not isinstance(scheme, QuantScheme):
            raise OptionError(f"scheme must be a QuantScheme, got {type(scheme).__name__}; "
                              "build one with QuantScheme.parse('w4g128')")
        if method == "gptq":
            raise OptionError("gptq needs calibration activations; use the compiler driver "
                              "(sail compile --method gptq) or pass quantized layers")
        self.scheme, self.method, self.layers = scheme, method, layers
        self.skip = tuple(skip)
        self.act_bits = check_act_bits(act_bits)
        self.act_group = check_act_group_size(act_group)
        self.applied: list[dict[str, object]] = []
        self.constants = dict(constants or {})

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self.scheme, self.skip, self.act_bits, self.layers,
                             self.method, self.act_group, self.constants)
        rewritten = rewrite_relax_functions(rewriter, mod)
        wrong = {key: rewriter.replaced.get(key, 0) for key in self.constants
                 if rewriter.replaced.get(key, 0) != 1}
        if wrong:
            raise SailError(
                f"{len(wrong)} rescaled constant(s) were found {sorted(set(wrong.values()))} "
                "time(s) in the module instead of once, so the folded scales cannot be applied "
                "exactly; compile without --awq")
        known = rewriter.labels + rewriter.names
        unmatched = [p for p in self.skip
                     if not any(fnmatch.fnmatchcase(label, p) for label in known)]
        if unmatched:
            named = [n for n in rewriter.names if not n.startswith("matmul.")]
            raise OptionError(
                f"skip patterns {unmatched} match no matmul; patterns match the labels "
                f"matmul.0 .. matmul.{len(rewriter.labels) - 1}"
                + (f" and layer names such as {', '.join(named[:5])}" if named else "")
                if rewriter.labels else
                f"skip patterns {unmatched} match no matmul: the module has no matmul with a "
                "constant float32 weight")
        if rewriter.problems:
            options = any("overflow" in p or "activation group size" in p
                          for p in rewriter.problems)
            error = OptionError if options else SailError
            raise error(f"cannot quantize {len(rewriter.problems)} matmul weights:\n"
                        + "\n".join(f"  - {p}" for p in rewriter.problems))
        self.applied = rewriter.applied
        return rewritten
