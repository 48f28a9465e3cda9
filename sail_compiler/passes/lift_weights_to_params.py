"""``LiftWeightsToParams``: turn large constants of ``main`` into trailing parameters.

TVM embeds every constant in the VM executable; past 2 GB of weights the exported library comes
out truncated and loading it crashes (seen with a 1.1B-parameter model: a 106 MB ``model.so``
for 4.4 GB of weights, then a segfault in ``Module::LoadFromFile``). The llvm target therefore
runs this pass last, just before ``relax.build``: every constant of at least ``min_bytes`` in
``main`` becomes a new parameter after the model inputs (one parameter per weight buffer, however
many constants view it), and the values stay in the module: ``main``'s ``"params"`` attribute
lists them in parameter order (TVM's own convention for the values of trailing parameters, as
its ONNX importer's ``keep_params_in_input``). The target's build takes them out with
:func:`detach_weights`, writes them to the artifact's weight file and passes them at run time,
so the build needs nothing but the module. ``num_input`` keeps counting the model inputs only.

Leaves small constants (scalars, shape vectors) inline, and other functions alone. Runs after
all lowering (constants must be constants while passes fold and repack them).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

#: The attribute of ``main`` holding the lifted weights (TVM's name for it).
PARAMS_ATTR = "params"


def _has_params(func: relax.Function) -> bool:
    return func.attrs is not None and PARAMS_ATTR in func.attrs


@relax.expr_functor.mutator
class _Lifter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, min_bytes: int, first: int) -> None:
        super().__init__(mod)
        self.min_bytes = min_bytes
        self.first = first
        self.params: list[relax.Var] = []
        self.values: list[tvm.runtime.Tensor] = []
        self._lifted: dict[int, relax.Var] = {}

    def visit_generic_const_(self, const: tvm.ir.GenericConst) -> relax.Expr:
        value = const.value
        nbytes = int(np.prod(value.shape)) * np.dtype(str(value.dtype)).itemsize
        if nbytes < self.min_bytes:
            return const
        # storage, not identity: constants that view one buffer (a weight two layers share)
        # become one parameter
        key = value.data_ptr()
        if key not in self._lifted:
            var = relax.Var(f"weight_{self.first + len(self.params)}", const.ty)
            self._lifted[key] = var
            self.params.append(var)
            self.values.append(value)
        return self._lifted[key]


@tvm.transform.module_pass(opt_level=0, name="LiftWeightsToParams")
class LiftWeightsToParams:
    """Lift constants of ``main`` with at least ``min_bytes`` bytes into parameters.

    Parameters
    ----------
    min_bytes
        Smallest constant (in bytes) to lift.
    """

    def __init__(self, min_bytes: int = 4096) -> None:
        self.min_bytes = min_bytes

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        gvar = mod.get_global_var("main")
        func = mod["main"]
        earlier = list(func.attrs[PARAMS_ATTR]) if _has_params(func) else []
        lifter = _Lifter(mod, self.min_bytes, len(earlier))
        body = lifter.visit_expr(func.body)
        new_func = relax.Function([*func.params, *lifter.params], body, func.ret_ty,
                                  func.is_pure, func.attrs, func.span)
        if lifter.values:  # after the values of an earlier run's parameters, if any
            new_func = new_func.with_attr(PARAMS_ATTR, [*earlier, *lifter.values])
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        out[gvar] = new_func
        return out


def detach_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``mod`` without the weights :class:`LiftWeightsToParams` left in ``main``'s ``"params"``
    attribute, and those weights in parameter order (none if it lifted nothing).

    Unlike ``tvm.relax.frontend.detach_params``, keeps the module's attributes.
    """
    func = mod["main"]
    if not _has_params(func):
        return mod, []
    weights = [np.asarray(value.numpy()) for value in func.attrs[PARAMS_ATTR]]
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out[mod.get_global_var("main")] = func.without_attr(PARAMS_ATTR)
    return out, weights
