"""``ExposeGroupSums``: record every quantized matmul's activations, group sums and results.

After the ``sail`` stage a quantized matmul is ``sail.quantize`` -> ``sail.lut_gemv`` (or
``sail.group_sums``) -> ``sail.dequantize``: the pass wraps the int32 sums and the dequantized
result in recording calls, with the float input of the ``sail.quantize`` that fed the sums as
``x``. A ``sail.lut_gemv`` with the dequantization fused is split into its sums form and a
``sail.dequantize`` first, so its sums can be recorded too (the probe build's outputs are still
compared with the artifact's). Without the ``sail`` stage (``--no-sail``), it replaces each
``sail.quant_matmul`` call by its legalization
(:func:`~sail_compiler.ops.quant_matmul.emit_quant_matmul`: the group-sum kernel, then the
combining kernel) with two recording calls spliced in::

    S  = R.call_tir(quant_group_sums, (x, packed, zero))
    S' = R.call_pure_packed("sail.probe.record", S, x, idx, kind=0)   # a copy of S
    y  = R.call_tir(quant_combine, (x, S', scale))
    y' = R.call_pure_packed("sail.probe.record", y, x, idx, kind=1)   # a copy of y

``sail.probe.record`` is a Python function (:func:`recording`) that stores NumPy copies of its
first two arguments and returns a fresh copy of the first (never an alias: memory planning
assumes a packed call returns new storage). The recorded values are what the compiled kernels
computed on the activations that really reach each layer in the compiled model, so
``sail verify`` can compare them with the NumPy reference: group sums exactly, results within
1e-5 (its ``ref_exact``). Every other binding is unchanged.

A probe build only runs in the process that registered the function: ``sail verify`` builds one
beside the artifact it reports on. Runs first in the ``lower`` stage, before ``LegalizeOps``
(which would otherwise legalize the same calls without the recording). ``main``'s
``"sail.probe_layers"`` attribute (:data:`PROBE_LAYERS_ATTR`) lists the recorded calls' ``layer``
attributes by record index, for the build to write into the manifest (:func:`probe_layers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ..errors import SailError
from ..ops.quant_matmul import emit_quant_matmul, is_quant_matmul, layer_name
from ..ops.sail_ops import (
    DEQUANTIZE,
    GROUP_SUMS,
    LUT_GEMV,
    QUANTIZE,
    dequantize,
    is_sail_op,
    lut_gemv,
    op_attrs,
)
from ._common import rewrite_relax_functions

RECORD_FUNC = "sail.probe.record"
#: ``kind`` argument values
SUMS, RESULT = 0, 1
#: The attribute of ``main`` listing the recorded layers by record index.
PROBE_LAYERS_ATTR = "sail.probe_layers"

_records: list[tuple[int, int, np.ndarray, np.ndarray]] | None = None


def _record(value: Any, x: Any, index: int, kind: int) -> Any:
    copy = value.numpy()
    if _records is not None:
        _records.append((int(index), int(kind), copy, x.numpy()))
    return tvm.runtime.tensor(copy)


tvm_ffi.register_global_func(RECORD_FUNC, _record, override=True)


@contextmanager
def recording() -> Iterator[list[tuple[int, int, np.ndarray, np.ndarray]]]:
    """Collect ``(layer index, kind, value, x)`` for every recording call run inside."""
    global _records
    previous, _records = _records, []
    try:
        yield _records
    finally:
        _records = previous


@relax.expr_functor.mutator
class _Splicer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.layers: list[str] = []

    def _record_call(self, value: relax.Expr, x: relax.Expr, index: int,
                     kind: int) -> relax.Expr:
        args = [value, x, relax.prim_value(index), relax.prim_value(kind)]
        return relax.call_pure_packed(RECORD_FUNC, *args, ty_args=value.ty)

    def _bound(self, expr: relax.Expr) -> relax.Expr | None:
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _float_input(self, xq: relax.Expr) -> relax.Expr:
        """The float ``x`` of the ``sail.quantize`` whose ``xq`` is ``xq``."""
        item = self._bound(xq)
        if isinstance(item, relax.TupleGetItem) and item.index == 0:
            q = self._bound(item.tuple_value)
            if is_sail_op(q, QUANTIZE):
                return q.args[0]
        raise SailError("ExposeGroupSums: a sail.lut_gemv/group_sums reads integer activations "
                        "that no sail.quantize in the same block produced; run ConvertPIMTypes "
                        "on the whole module")

    def _record_sums(self, call: relax.Call) -> relax.Expr:
        index = len(self.layers)
        attrs = op_attrs(call)
        self.layers.append(attrs.get("layer") or f"{call.op.name}.{index}")
        x = self._float_input(call.args[0])
        sums = self.builder_.emit(call)
        return self._record_call(sums, x, index, SUMS)

    def _record_result(self, call: relax.Call) -> relax.Expr:
        rec = self._bound(call.args[0])
        if not (isinstance(rec, relax.Call) and len(rec.args) == 5
                and isinstance(rec.args[0], relax.ExternFunc)
                and str(rec.args[0].global_symbol) == RECORD_FUNC):
            raise SailError("ExposeGroupSums: a sail.dequantize reads sums that were not "
                            "recorded; it must follow its sail.lut_gemv")
        _, _, x, index, _ = rec.args
        y = self.builder_.emit(call)
        return self._record_call(y, x, int(index.value) if hasattr(index, "value") else
                                 int(index), RESULT)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if is_sail_op(call, GROUP_SUMS) or (is_sail_op(call, LUT_GEMV)
                                            and op_attrs(call)["output"] == "sums"):
            return self._record_sums(call)
        if is_sail_op(call, DEQUANTIZE):
            return self._record_result(call)
        if is_sail_op(call, LUT_GEMV):  # fused: split, record both halves
            attrs = op_attrs(call)
            xq, packed, zero, sx, scale = call.args
            kwargs = {key: attrs[key] for key in ("bits", "act_bits", "group_size", "k",
                                                  "act_group", "nbw", "placement", "layer")}
            sums = self.builder_.emit(self._record_sums(lut_gemv(xq, packed, zero, **kwargs)))
            return self._record_result(self.builder_.normalize(
                dequantize(sums, sx, scale, group_size=attrs["group_size"], k=attrs["k"],
                           act_group=attrs["act_group"], placement="host",
                           layer=attrs["layer"])))
        if not is_quant_matmul(call):
            return call
        index = len(self.layers)
        self.layers.append(layer_name(call) or f"quant_matmul.{index}")
        x = call.args[0]
        return emit_quant_matmul(
            self.builder_, call,
            between=lambda sums: self._record_call(sums, x, index, SUMS),
            after=lambda y: self._record_call(y, x, index, RESULT))


@tvm.transform.module_pass(opt_level=0, name="ExposeGroupSums")
class ExposeGroupSums:
    """Splice recording calls around every quantized matmul's kernels (module docstring)."""

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        splicer = _Splicer(mod)
        rewritten = rewrite_relax_functions(splicer, mod)
        gvar = rewritten.get_global_var("main")
        rewritten[gvar] = rewritten[gvar].with_attr(PROBE_LAYERS_ATTR, splicer.layers)
        return rewritten


def probe_layers(mod: tvm.IRModule) -> list[str]:
    """The layer of each record index of a module :class:`ExposeGroupSums` rewrote.

    Raises
    ------
    SailError
        ``mod``'s ``main`` has no probe (the pass did not run on it).
    """
    attrs = mod["main"].attrs
    if attrs is None or PROBE_LAYERS_ATTR not in attrs:
        raise SailError("the module has no group-sum probe: ExposeGroupSums did not run on it")
    return [str(name) for name in attrs[PROBE_LAYERS_ATTR]]
