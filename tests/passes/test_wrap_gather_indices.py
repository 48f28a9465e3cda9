"""WrapGatherIndices: structural rewrite, guards, and numerics against NumPy."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from sail_compiler.passes import WrapGatherIndices


def test_fast_take_becomes_wrap() -> None:
    @tvm.script.ir_module
    class Before:
        @R.function
        def main(t: R.Tensor((10, 4), "float32"), i: R.Tensor(("n",), "int64")):
            with R.dataflow():
                y = R.take(t, i, axis=0)
                R.output(y)
            return y

    @tvm.script.ir_module
    class Expected:
        @R.function
        def main(t: R.Tensor((10, 4), "float32"), i: R.Tensor(("n",), "int64")):
            with R.dataflow():
                y = R.take(t, i, axis=0, mode="wrap")
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(WrapGatherIndices()(Before), Expected)


def test_does_not_fire_on_other_modes_or_ops() -> None:
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(t: R.Tensor((10, 4), "float32"), i: R.Tensor((3,), "int64")):
            with R.dataflow():
                y = R.take(t, i, axis=0, mode="clip")
                z = R.add(y, y)
                R.output(z)
            return z

    tvm.ir.assert_structural_equal(WrapGatherIndices()(Module), Module)


def test_numerics_match_numpy_for_valid_and_negative_indices() -> None:
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(t: R.Tensor((10, 4), "float32"), i: R.Tensor(("n",), "int64")):
            with R.dataflow():
                y = R.take(t, i, axis=0)
                R.output(y)
            return y

    ex = relax.build(WrapGatherIndices()(Module), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    idx = np.array([0, 9, -1, -10, 3], dtype=np.int64)  # ONNX allows [-n, n)
    out = vm["main"](tvm.runtime.tensor(table), tvm.runtime.tensor(idx)).numpy()
    np.testing.assert_array_equal(out, np.take(table, idx, axis=0))
    # Out of range: stays inside the table instead of reading past it.
    far = np.array([10, 25, -11], dtype=np.int64)
    out = vm["main"](tvm.runtime.tensor(table), tvm.runtime.tensor(far)).numpy()
    assert all(any(np.array_equal(row, t) for t in table) for row in out)
