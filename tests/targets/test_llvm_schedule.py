"""Scheduled llvm builds (the CPU lowering, ``sail_compiler.lowering``) against NumPy.

Every model is built once with symbolic dims and run at several shapes, including row counts
that are not multiples of the 4-row tile, ``M = 1`` (GEMV) and column counts that are not
multiples of the 16-column panel.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import from_onnx
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from sail_compiler import lowering
from sail_compiler.ops.quant_matmul import quantize_activations_te
from sail_compiler.quant.reference import quantize_activations

RNG = np.random.default_rng(1234)
RTOL, ATOL = 1e-4, 1e-4


@functools.cache
def _target() -> tvm.target.Target:
    return lowering.host_target()


def _lower(mod: tvm.IRModule) -> tvm.IRModule:
    for p in lowering.lowering_passes(_target()):
        mod = p(mod)
    return mod


def _build(mod: tvm.IRModule) -> tuple[relax.VirtualMachine, tvm.IRModule]:
    lowered = _lower(mod)
    target = _target()
    executable = relax.build(lowered, target=target, relax_pipeline=lowering.build_pipeline(target))
    return relax.VirtualMachine(executable, tvm.cpu()), lowered


def _run(vm: relax.VirtualMachine, *arrays: np.ndarray) -> np.ndarray:
    return vm["main"](*(tvm.runtime.tensor(a) for a in arrays)).numpy()


def _onnx_model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, list[int | str]]],
    output: tuple[str, list[int | str]],
    initializers: dict[str, np.ndarray],
) -> tvm.IRModule:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return from_onnx(model, keep_params_in_input=False)


def _prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {g.name_hint: f for g, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def _rand(*shape: int) -> np.ndarray:
    return (RNG.random(shape, dtype=np.float32) - 0.5).astype(np.float32)


# --------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------


def test_api_shapes() -> None:
    target = _target()
    assert target.kind.name == "llvm"
    assert int(lowering.host_target(3).attrs["num-cores"]) == 3
    passes = lowering.lowering_passes(target)
    assert all(isinstance(p, tvm.transform.Pass) for p in passes)
    names = [p.info.name for p in passes]
    assert "LegalizeOps" in names and "FuseOpsAndTIR" in names and names[-1] == "ScheduleLLVM"
    assert isinstance(lowering.build_pipeline(target), tvm.transform.Pass)


# --------------------------------------------------------------------------------------------
# Matmul with constant weights (packed panels) and symbolic batch / sequence
# --------------------------------------------------------------------------------------------

SHAPES = [(1, 1), (1, 5), (2, 3), (3, 7), (1, 16), (2, 9)]


@pytest.mark.parametrize("k,n", [(64, 48), (37, 32), (40, 50)])
def test_matmul_bias_relu_symbolic(k: int, n: int) -> None:
    w, b = _rand(k, n), _rand(n)
    mod = _onnx_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("Add", ["y", "B"], ["z"]),
            helper.make_node("Relu", ["z"], ["r"]),
        ],
        [("x", ["batch", "seq", k])],
        ("r", ["batch", "seq", n]),
        {"W": w, "B": b},
    )
    vm, lowered = _build(mod)
    funcs = _prim_funcs(lowered)
    matmul_funcs = [f for name, f in funcs.items() if "matmul" in name]
    assert matmul_funcs and all(f.attrs["tirx.is_scheduled"] for f in matmul_funcs)
    script = "\n".join(f.script() for f in matmul_funcs)
    assert "T.parallel" in script
    if n % lowering.PANEL == 0:
        assert "T.vectorized" in script
    for batch, seq in SHAPES:
        x = _rand(batch, seq, k)
        np.testing.assert_allclose(_run(vm, x), np.maximum(x @ w + b, 0), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rows", [1, 4, 6, 17])
def test_matmul_static_rows(rows: int) -> None:
    w = _rand(96, 64)
    mod = _onnx_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", [rows, 96])],
        ("y", [rows, 64]),
        {"W": w},
    )
    vm, _ = _build(mod)
    x = _rand(rows, 96)
    np.testing.assert_allclose(_run(vm, x), x @ w, rtol=RTOL, atol=ATOL)


def test_gemm_trans_b_and_silu_epilogue() -> None:
    # Gemm(transB) weights fold to [K, N]; x * sigmoid(x) reads the matmul output twice.
    w_t, b = _rand(32, 24), _rand(32)
    mod = _onnx_model(
        [
            helper.make_node("Gemm", ["x", "Wt", "B"], ["y"], transB=1),
            helper.make_node("Sigmoid", ["y"], ["s"]),
            helper.make_node("Mul", ["y", "s"], ["z"]),
        ],
        [("x", ["m", 24])],
        ("z", ["m", 32]),
        {"Wt": w_t, "B": b},
    )
    vm, _ = _build(mod)
    for m in (1, 3, 8, 13):
        x = _rand(m, 24)
        y = x @ w_t.T + b
        np.testing.assert_allclose(_run(vm, x), y / (1 + np.exp(-y)), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Attention: batched matmuls with symbolic dims, softmax
# --------------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_symbolic() -> None:
    d = 16
    scale = np.array(1 / np.sqrt(d), dtype=np.float32)
    mod = _onnx_model(
        [
            helper.make_node("MatMul", ["q", "k"], ["s"]),
            helper.make_node("Mul", ["s", "scale"], ["ss"]),
            helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["o"]),
        ],
        [("q", ["b", 2, "s", d]), ("k", ["b", 2, d, "t"]), ("v", ["b", 2, "t", d])],
        ("o", ["b", 2, "s", d]),
        {"scale": scale},
    )
    vm, _ = _build(mod)
    for b, s, t in [(1, 1, 1), (1, 1, 9), (2, 5, 5), (1, 7, 20), (2, 16, 32)]:
        q, k, v = _rand(b, 2, s, d), _rand(b, 2, d, t), _rand(b, 2, t, d)
        ref = _softmax(q @ k * scale) @ v
        np.testing.assert_allclose(_run(vm, q, k, v), ref, rtol=RTOL, atol=ATOL)


def test_softmax_symbolic() -> None:
    mod = _onnx_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [("x", ["batch", "seq", 100])],
        ("y", ["batch", "seq", 100]),
        {},
    )
    vm, lowered = _build(mod)
    assert all(f.attrs["tirx.is_scheduled"] for f in _prim_funcs(lowered).values())
    for batch, seq in SHAPES:
        x = _rand(batch, seq, 100) * 10
        np.testing.assert_allclose(_run(vm, x), _softmax(x), rtol=RTOL, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Reductions and elementwise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [["batch", "seq"], [1, 1], [2, "seq"]])
def test_rms_norm(shape: list[int | str]) -> None:
    hidden = 72
    w = _rand(hidden) + 1
    eps = np.array(1e-5, dtype=np.float32)
    mod = _onnx_model(
        [
            helper.make_node("Mul", ["x", "x"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
            helper.make_node("Add", ["ms", "eps"], ["mse"]),
            helper.make_node("Sqrt", ["mse"], ["rms"]),
            helper.make_node("Div", ["x", "rms"], ["xn"]),
            helper.make_node("Mul", ["xn", "w"], ["y"]),
        ],
        [("x", [*shape, hidden])],
        ("y", [*shape, hidden]),
        {"w": w, "eps": eps},
    )
    vm, _ = _build(mod)
    sizes = [(1, 1)] if shape == [1, 1] else [(2 if shape[0] == 2 else bb, s) for bb, s in SHAPES]
    for batch, seq in sizes:
        x = _rand(batch, seq, hidden)
        ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
        np.testing.assert_allclose(_run(vm, x), ref, rtol=RTOL, atol=ATOL)


def test_fused_elementwise_and_transpose() -> None:
    c = _rand(12)
    mod = _onnx_model(
        [
            helper.make_node("Add", ["x", "c"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["s"]),
            helper.make_node("Mul", ["a", "s"], ["m"]),
            helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Neg", ["t"], ["y"]),
        ],
        [("x", ["batch", "seq", 12])],
        ("y", ["batch", 12, "seq"]),
        {"c": c},
    )
    vm, lowered = _build(mod)
    assert all(f.attrs["tirx.is_scheduled"] for f in _prim_funcs(lowered).values())
    for batch, seq in SHAPES + [(2, 3000)]:
        x = _rand(batch, seq, 12)
        a = x + c
        ref = -(a / (1 + np.exp(-a))).transpose(0, 2, 1)
        np.testing.assert_allclose(_run(vm, x), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("act_group", [32, 48])  # 48: a partial last block of K = 200
def test_activation_quantizer_row_rule(act_group: int) -> None:
    """The activation quantizer (absmax per block, scales, codes: three blocks sharing only
    their row axes) gets the row rule, one parallel loop over rows with every block inside,
    and stays exactly the reference's quantization (codes and scales equal)."""
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = te.placeholder((batch, seq, tirx.IntImm("int64", 200)), "float32", name="x")
    xq, sx = quantize_activations_te(x, 208, 8, "int8", act_group)
    func = te.create_prim_func([x, xq, sx])
    schedule = lowering.ScheduleLLVM(_target())
    mod = schedule(tvm.IRModule({"main": func}))
    assert schedule.report == {"main": "rowwise"}
    body = mod["main"].body.block.body
    assert isinstance(body, tirx.For) and body.kind == tirx.ForKind.PARALLEL
    lib = tvm.tirx.build(mod, target=_target())
    for b, t in [(1, 1), (2, 7), (3, 33)]:
        xs = (_rand(b, t, 200) * np.where(RNG.random(200) < 0.05, 30, 1)).astype(np.float32)
        codes = tvm.runtime.tensor(np.zeros((b, t, 208), np.int8))
        scales = tvm.runtime.tensor(np.zeros((b, t, -(-200 // act_group)), np.float32))
        lib["main"](tvm.runtime.tensor(xs), codes, scales)
        want_q, want_s = quantize_activations(xs.reshape(-1, 200), 8, act_group)
        np.testing.assert_array_equal(codes.numpy()[..., :200].reshape(-1, 200), want_q)
        np.testing.assert_array_equal(codes.numpy()[..., 200:], 0)
        np.testing.assert_array_equal(scales.numpy().reshape(want_s.shape), want_s)


# --------------------------------------------------------------------------------------------
# User TIR the rules do not understand stays correct
# --------------------------------------------------------------------------------------------


@I.ir_module
class _PrefixSum:
    @T.prim_func(s_tir=True)
    def prefix_sum(a: T.handle, b: T.handle):
        n = T.int64()
        A = T.match_buffer(a, (n,), "float32")
        B = T.match_buffer(b, (n,), "float32")
        for i in range(n):
            with T.sblock("scan"):
                vi = T.axis.opaque(n, i)
                B[vi] = A[vi] + T.if_then_else(vi > T.int64(0), B[vi - T.int64(1)], T.float32(0))

    @R.function
    def main(x: R.Tensor(("n",), "float32")) -> R.Tensor(("n",), "float32"):
        n = T.int64()
        cls = _PrefixSum
        with R.dataflow():
            y = R.call_tir(cls.prefix_sum, (x,), out_ty=R.Tensor((n,), "float32"))
            z = R.add(y, y)
            R.output(z)
        return z


def test_unschedulable_tir_stays_correct() -> None:
    vm, _ = _build(_PrefixSum)
    for n in (1, 7, 100):
        x = _rand(n)
        np.testing.assert_allclose(_run(vm, x), 2 * np.cumsum(x), rtol=RTOL, atol=ATOL)
