"""``ConvertPIMTypes``: place the activation quantization and output dequantization explicitly.

SAIL converts types inside memory (DESIGN.md section 1): activations are quantized to b_a-bit
integers before they index tables, and the int32 accumulators are dequantized after. This pass
makes both steps explicit operators (:mod:`sail_compiler.ops.sail_ops`) so that targets can place
and count them. Every ``sail.quant_matmul(x, packed, scale, zero)`` becomes::

    q  = sail.quantize(x)                       act_bits, act_group, placement
    S  = sail.group_sums(q[0], packed, zero)    bits, act_bits, group_size, k, act_group, layer
    y  = sail.dequantize(S, q[1], scale)        group_size, k, act_group, placement, layer

with the same results, bit for bit in the sums (the operators compute the reference's steps).

**Sharing.** The quantized activation depends on ``x``, ``act_bits`` and ``act_group`` only,
so one ``sail.quantize`` feeds every quantized matmul of the same ``x`` (and the same activation
blocks) within a dataflow block: the
q, k and v projections of an attention block, the gate and up projections of an MLP. ``stats``
counts matmuls and quantizations after the pass ran.

**Placement.** ``placement="auto"`` (the default) puts both conversions in memory (``pim``) when
the activations have at most 8 bits, the widest activation the SAIL data-feeding modules stream
bit-serially in this model of the machine (an assumption: the paper evaluates 8-bit activations);
wider activations are converted on the core (``host``). ``"pim"`` or ``"host"`` force one place.
The placement never changes a result; ``LowerToLUTGemv`` fuses a host dequantization into the
table kernel, and the pim-sim target charges each step where it is placed.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from ..ops.quant_matmul import attrs_dict, is_quant_matmul, layer_name
from ..ops.sail_ops import dequantize, group_sums_op, quantize
from ..options import resolve_placement
from ._common import rewrite_relax_functions


@relax.expr_functor.mutator
class _Converter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, placement: str) -> None:
        super().__init__(mod)
        self.placement = placement
        self.quantized: dict[tuple[Any, int, int], tuple[relax.Expr, relax.Expr]] = {}
        self.matmuls = 0
        self.quantizations = 0

    def visit_binding_block_(self, block: relax.BindingBlock) -> relax.BindingBlock:
        self.quantized = {}  # a dataflow var is not visible outside its block
        return super().visit_binding_block_(block)

    def visit_dataflow_block_(self, block: relax.DataflowBlock) -> relax.BindingBlock:
        self.quantized = {}
        return super().visit_dataflow_block_(block)

    def _quantized(self, x: relax.Expr, act_bits: int,
                   act_group: int) -> tuple[relax.Expr, relax.Expr]:
        key = (x if isinstance(x, relax.Var) else None, act_bits, act_group)
        if key[0] is not None and key in self.quantized:
            return self.quantized[key]
        where = resolve_placement(self.placement, act_bits)
        q = self.builder_.emit(quantize(x, act_bits=act_bits, act_group=act_group,
                                        placement=where))
        pair = (self.builder_.emit(relax.TupleGetItem(q, 0)),
                self.builder_.emit(relax.TupleGetItem(q, 1)))
        self.quantizations += 1
        if key[0] is not None:
            self.quantized[key] = pair
        return pair

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_quant_matmul(call):
            return call
        attrs = attrs_dict(call)
        x, packed, scale, zero = call.args
        xq, sx = self._quantized(x, attrs["act_bits"], attrs["act_group"])
        layer = layer_name(call)
        sums = self.builder_.emit(group_sums_op(xq, packed, zero, layer=layer, **attrs))
        self.matmuls += 1
        where = resolve_placement(self.placement, attrs["act_bits"])
        return dequantize(sums, sx, scale, group_size=attrs["group_size"], k=attrs["k"],
                          act_group=attrs["act_group"], placement=where, layer=layer)


@tvm.transform.module_pass(opt_level=0, name="ConvertPIMTypes")
class ConvertPIMTypes:
    """Explicit, shared activation quantization and output dequantization (module docstring).

    Parameters
    ----------
    placement
        ``auto`` (pim up to 8-bit activations, else host), ``pim`` or ``host``.
    """

    def __init__(self, placement: str = "auto") -> None:
        resolve_placement(placement, 8)  # validates
        self.placement = placement
        self.stats: dict[str, int] = {}

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        converter = _Converter(mod, self.placement)
        out = rewrite_relax_functions(converter, mod)
        self.stats = {"matmuls": converter.matmuls, "quantizations": converter.quantizations}
        return out
