"""``LiftWeightsToParams``: turn large constants of ``main`` into trailing parameters.

TVM embeds every constant in the VM executable; past 2 GB of weights the exported library comes
out truncated and loading it crashes (seen with a 1.1B-parameter model: a 106 MB ``model.so``
for 4.4 GB of weights, then a segfault in ``Module::LoadFromFile``). The llvm target therefore
runs this pass last, just before ``relax.build``: every constant of at least ``min_bytes`` in
``main`` becomes a new parameter after the model inputs (the same constant object once), and the
values are kept in :attr:`weights` in parameter order, to be written to the artifact's weight
file and passed at run time. ``num_input`` keeps counting the model inputs only.

Leaves small constants (scalars, shape vectors) inline, and other functions alone. Runs after
all lowering (constants must be constants while passes fold and repack them).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


@relax.expr_functor.mutator
class _Lifter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, min_bytes: int) -> None:
        super().__init__(mod)
        self.min_bytes = min_bytes
        self.params: list[relax.Var] = []
        self.values: list[np.ndarray] = []
        self._lifted: dict[int, relax.Var] = {}

    def visit_generic_const_(self, const: tvm.ir.GenericConst) -> relax.Expr:
        value = const.value
        nbytes = int(np.prod(value.shape)) * np.dtype(str(value.dtype)).itemsize
        if nbytes < self.min_bytes:
            return const
        key = value.data_ptr()  # one weight buffer, however many constants refer to it
        if key not in self._lifted:
            var = relax.Var(f"weight_{len(self.params)}", const.ty)
            self._lifted[key] = var
            self.params.append(var)
            self.values.append(value.numpy())
        return self._lifted[key]


@tvm.transform.module_pass(opt_level=0, name="LiftWeightsToParams")
class LiftWeightsToParams:
    """Lift constants of ``main`` with at least ``min_bytes`` bytes into parameters.

    Parameters
    ----------
    min_bytes
        Smallest constant (in bytes) to lift.

    Attributes
    ----------
    weights : list[np.ndarray]
        After the pass ran: the lifted values, in the order of the new parameters.
    """

    def __init__(self, min_bytes: int = 4096) -> None:
        self.min_bytes = min_bytes
        self.weights: list[np.ndarray] = []

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        lifter = _Lifter(mod, self.min_bytes)
        gvar = mod.get_global_var("main")
        func = mod["main"]
        body = lifter.visit_expr(func.body)
        new_func = relax.Function([*func.params, *lifter.params], body, func.ret_ty,
                                  func.is_pure, func.attrs, func.span)
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        out[gvar] = new_func
        self.weights = lifter.values
        return out
