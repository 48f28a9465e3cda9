"""Helpers the passes share (not a pass)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..quant.reference import QuantizedWeight


def rewrite_relax_functions(mutator: relax.PyExprMutator, mod: tvm.IRModule) -> tvm.IRModule:
    """Visit every Relax function of ``mod`` with ``mutator``, in name order (so labels that count
    rewrites are reproducible), and return the rewritten module."""
    for gvar, func in sorted(mod.functions_items(), key=lambda item: item[0].name_hint):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def applied_entry(name: str, qw: QuantizedWeight) -> dict[str, Any]:
    """What a quantizing pass records in ``applied`` for one rewritten layer."""
    return {"layer": name, "bits": qw.bits, "group_size": qw.group_size,
            "symmetric": qw.symmetric, "k": qw.k, "n": qw.n}


def constant_array(const: tvm.ir.GenericConst) -> np.ndarray:
    """A NumPy view of a constant's data, not a copy (callers must not write to it).

    A constant that views a memory-mapped weight file (:mod:`sail_compiler.external_data`) is
    read only where its values are used.
    """
    return np.from_dlpack(const.value)
