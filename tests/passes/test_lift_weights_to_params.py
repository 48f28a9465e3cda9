"""LiftWeightsToParams: large constants of ``main`` become trailing parameters whose values stay
in the module (``main``'s ``"params"`` attribute), and detach_weights takes them out again."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from sail_compiler.passes import LiftWeightsToParams
from sail_compiler.passes.lift_weights_to_params import detach_weights

RNG = np.random.default_rng(5)


def _module(*constants: relax.Expr) -> tvm.IRModule:
    """``main(x: [4, 32]) = ((x @ c0) @ c1) ...``."""
    x = relax.Var("x", relax.TensorType([4, 32], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x], attrs={"num_input": 1}):
        with bb.dataflow():
            y = x
            for c in constants:
                y = bb.emit(relax.op.matmul(y, c))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_weights_stay_in_the_module_one_parameter_per_buffer() -> None:
    big, other = (RNG.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    small = RNG.standard_normal((32, 4)).astype(np.float32)  # 512 bytes: stays inline
    shared = tvm.runtime.tensor(big)
    mod = LiftWeightsToParams()(_module(relax.const(shared), relax.const(shared),
                                        relax.const(other), relax.const(small)))
    main = mod["main"]
    assert [p.name for p in main.params] == ["x", "weight_0", "weight_1"]
    assert int(main.attrs["num_input"]) == 1
    lifted, weights = detach_weights(mod)
    assert "params" not in lifted["main"].attrs
    assert [p.name for p in lifted["main"].params] == ["x", "weight_0", "weight_1"]
    assert len(weights) == 2
    np.testing.assert_array_equal(weights[0], big)
    np.testing.assert_array_equal(weights[1], other)
    # a second run lifts what the first left (here: with a lower bound) after the first's
    again, weights = detach_weights(LiftWeightsToParams(min_bytes=64)(mod))
    assert [p.name for p in again["main"].params] == ["x", "weight_0", "weight_1",
                                                           "weight_2"]
    np.testing.assert_array_equal(weights[2], small)


def test_nothing_to_lift_leaves_no_attribute() -> None:
    small = RNG.standard_normal((32, 4)).astype(np.float32)
    mod = LiftWeightsToParams()(_module(relax.const(small)))
    assert "params" not in mod["main"].attrs
    same, weights = detach_weights(mod)
    assert same is mod and weights == []
