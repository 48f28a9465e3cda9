"""``LowerToLUTGemv``: integer matmuls become ``sail.lut_gemv`` (lookup tables, as SAIL computes).

Rewrites

* ``sail.group_sums(xq, packed, zero)`` (from :class:`~.ConvertPIMTypes`) into
  ``sail.lut_gemv(xq, packed, zero, nbw=NBW, output="sums")``: the same exact int32 sums,
  computed from tables of weight sums over NBW weights indexed by activation bit planes;
* a ``sail.dequantize`` placed on the ``host`` whose sums come from such a call and feed nothing
  else into one ``sail.lut_gemv(..., output="float")`` with the dequantization fused (the sums
  never reach memory); in-memory (``pim``) dequantizations stay separate operators, as SAIL
  runs them in the arrays (``fuse="all"`` fuses them too: what a CPU target wants, where the
  placement means nothing);
* a ``sail.quant_matmul(x, ...)`` left over (the pass used without ``ConvertPIMTypes``) into
  ``sail.quantize(x)`` (placement host) and a fused ``sail.lut_gemv``.

NBW (weights per table, 1..8, default 4) sets the table size 2**NBW: SAIL's trade-off between
table construction (2**NBW entries per NBW weights) and lookups (K / NBW per bit plane).
``placement`` marks where the lookups run (``pim`` by default: the C-SRAM arrays).
"""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import relax

from ..errors import OptionError
from ..ops.quant_matmul import attrs_dict, is_quant_matmul, layer_name
from ..ops.sail_ops import (
    DEQUANTIZE,
    GROUP_SUMS,
    LUT_GEMV,
    check_nbw,
    check_placement,
    is_sail_op,
    lut_gemv,
    op_attrs,
    quantize,
)
from ._common import rewrite_relax_functions

DEFAULT_NBW = 4


@relax.expr_functor.visitor
class _UseCounter(relax.PyExprVisitor):
    def __init__(self) -> None:
        super().__init__()
        self.uses: Counter = Counter()

    def visit_var_(self, var: relax.Var) -> None:
        self.uses[var] += 1

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:
        self.uses[var] += 1


def _weight_kwargs(attrs: dict) -> dict:
    return {key: attrs[key] for key in ("bits", "act_bits", "group_size", "k", "act_group")}


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, nbw: int, placement: str, uses: Counter,
                 fuse_all: bool) -> None:
        super().__init__(mod)
        self.nbw = nbw
        self.placement = placement
        self.fuse_all = fuse_all
        self.uses = uses
        self.lowered = 0
        self.fused = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        old_args = list(call.args)
        call = super().visit_call_(call)
        if is_sail_op(call, GROUP_SUMS):
            attrs = op_attrs(call)
            self.lowered += 1
            return lut_gemv(*call.args, nbw=self.nbw, placement=self.placement,
                            layer=attrs.get("layer", ""), **_weight_kwargs(attrs))
        if is_sail_op(call, DEQUANTIZE) and (self.fuse_all
                                             or op_attrs(call)["placement"] == "host"):
            sums, sx, scale = call.args
            bound = self.lookup_binding(sums) if isinstance(sums, relax.Var) else None
            if is_sail_op(bound, LUT_GEMV) and op_attrs(bound)["output"] == "sums" and \
                    self.uses[old_args[0]] == 1:
                attrs = op_attrs(bound)
                self.fused += 1
                return lut_gemv(*bound.args, nbw=attrs["nbw"], placement=attrs["placement"],
                                sx=sx, scale=scale, layer=attrs["layer"],
                                **_weight_kwargs(attrs))
            return call
        if is_quant_matmul(call):
            attrs = attrs_dict(call)
            x, packed, scale, zero = call.args
            q = self.builder_.emit(quantize(x, act_bits=attrs["act_bits"],
                                            act_group=attrs["act_group"], placement="host"))
            xq = self.builder_.emit(relax.TupleGetItem(q, 0))
            sx = self.builder_.emit(relax.TupleGetItem(q, 1))
            self.lowered += 1
            self.fused += 1
            return lut_gemv(xq, packed, zero, nbw=self.nbw, placement=self.placement, sx=sx,
                            scale=scale, layer=layer_name(call), **attrs)
        return call


@tvm.transform.module_pass(opt_level=0, name="LowerToLUTGemv")
class LowerToLUTGemv:
    """Quantized matmuls -> ``sail.lut_gemv`` with a chosen NBW (module docstring).

    Parameters
    ----------
    nbw
        Weights per lookup table, 1..8.
    placement
        Where the lookups run: ``pim`` (default) or ``host``.
    fuse
        Which dequantizations to fuse into the ``sail.lut_gemv`` that feeds them: ``host``
        (default: those placed on the host) or ``all``.
    """

    def __init__(self, nbw: int = DEFAULT_NBW, placement: str = "pim",
                 fuse: str = "host") -> None:
        self.nbw = check_nbw(nbw)
        self.placement = check_placement(placement)
        if fuse not in ("host", "all"):
            raise OptionError(f"fuse must be 'host' or 'all', not {fuse!r}")
        self.fuse_all = fuse == "all"
        self.stats: dict[str, int] = {}

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        counter = _UseCounter()
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                counter.visit_expr(func)
        lowerer = _Lowerer(mod, self.nbw, self.placement, counter.uses, self.fuse_all)
        out = rewrite_relax_functions(lowerer, mod)
        if lowerer.fused:  # the unfused sums bindings are dead now
            for gvar, func in list(out.functions_items()):
                if isinstance(func, relax.Function):
                    out[gvar] = relax.analysis.remove_all_unused(func)
        self.stats = {"lowered": lowerer.lowered, "fused_dequantize": lowerer.fused}
        return out
