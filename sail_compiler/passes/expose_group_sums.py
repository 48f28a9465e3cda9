"""``ExposeGroupSums``: record every quantized matmul's activations, group sums and results.

Replaces each ``sail.quant_matmul`` call by its legalization
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
(which would otherwise legalize the same calls without the recording). ``layers`` lists the
recorded calls' ``layer`` attributes by index after the pass ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ..ops.quant_matmul import emit_quant_matmul, is_quant_matmul, layer_name
from ._common import rewrite_relax_functions

RECORD_FUNC = "sail.probe.record"
#: ``kind`` argument values
SUMS, RESULT = 0, 1

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

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
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

    def __init__(self) -> None:
        self.layers: list[str] = []

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        splicer = _Splicer(mod)
        rewritten = rewrite_relax_functions(splicer, mod)
        self.layers = splicer.layers
        return rewritten
