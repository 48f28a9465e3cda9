"""QuantizeWeights: structural rewrite, guards, errors, and numerics against the reference."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.script import relax as R

from sail_compiler import lowering
from sail_compiler.errors import OptionError, SailError
from sail_compiler.ops import quant_matmul
from sail_compiler.ops.quant_matmul import constant_name, is_quant_matmul, name_weight_ref
from sail_compiler.passes import QuantizeWeights
from sail_compiler.quant.plan import weight_ref
from sail_compiler.quant.reference import quantize_weights_rtn, quantized_matmul
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(11)
K, N = 100, 32
W4G32 = QuantScheme(4, 32)


def _matmul_module(*weights: np.ndarray, dtype: str = "float32") -> tvm.IRModule:
    """``main(x: [b, s, K])``: a chain ``x @ W0``, ``(x @ W0) @ W1``, ... of constant weights,
    the i-th named as the initializer ``w<i>`` would be at import."""
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([b, s, weights[0].shape[0]], dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for i, w in enumerate(weights):
                const = name_weight_ref(relax.const(w), weight_ref(f"w{i}"))
                y = bb.emit(relax.op.matmul(y, const))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _weight(k: int = K, n: int = N) -> np.ndarray:
    return RNG.standard_normal((k, n)).astype(np.float32)


def test_constant_weight_becomes_quant_matmul() -> None:
    w = _weight()
    qw = quantize_weights_rtn(w, W4G32)
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([b, s, K], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(quant_matmul(x, relax.const(qw.packed()), relax.const(qw.scale),
                                     relax.const(qw.zero_points(), "int32"), bits=4,
                                     group_size=32, k=K, act_bits=8, layer="matmul.0"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    expected = bb.get()
    tvm.ir.assert_structural_equal(QuantizeWeights(W4G32)(_matmul_module(w)), expected)


def test_does_not_fire_on_two_activations() -> None:
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(a: R.Tensor(("m", 64), "float32"), b: R.Tensor((64, 16), "float32")):
            with R.dataflow():
                y = R.matmul(a, b)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(QuantizeWeights(W4G32)(Module), Module)


@pytest.mark.parametrize("case", ["1-D weight", "float16"])
def test_does_not_fire_on_other_constants(case: str) -> None:
    if case == "1-D weight":
        x = relax.Var("x", relax.TensorType([2, K], "float32"))
        w = relax.const(RNG.standard_normal(K).astype(np.float32))
    else:
        x = relax.Var("x", relax.TensorType([2, K], "float16"))
        w = relax.const(_weight().astype(np.float16))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.matmul(x, w)))
    mod = bb.get()
    tvm.ir.assert_structural_equal(QuantizeWeights(W4G32)(mod), mod)


def _count_quant_matmuls(mod: tvm.IRModule) -> int:
    return mod.script().count('"sail.quant_matmul"')


def test_skip_by_label() -> None:
    mod = _matmul_module(_weight(), _weight(N, 16))
    assert _count_quant_matmuls(QuantizeWeights(W4G32)(mod)) == 2
    skipped = QuantizeWeights(W4G32, skip=("matmul.0",))(mod)
    assert _count_quant_matmuls(skipped) == 1
    assert "R.matmul(x," in skipped.script()


def test_layer_table_names_layers_supplies_weights_and_keeps_float() -> None:
    w0, w1, w2 = _weight(), _weight(N, 16), _weight(16, 8)
    q0 = quantize_weights_rtn(w0, QuantScheme(3, 16))
    table = {weight_ref("w0"): ("proj_in", q0), weight_ref("w1"): ("proj_mid", None)}
    # w2 is not in the table: without a scheme it stays float
    pass_ = QuantizeWeights(None, layers=table)
    mod = pass_(_matmul_module(w0, w1, w2))
    assert _count_quant_matmuls(mod) == 1
    assert '"layer": "proj_in"' in mod.script() and '"bits": 3' in mod.script()
    assert [a["layer"] for a in pass_.applied] == ["proj_in"]
    # with a scheme, the matmul outside the table is quantized under its label
    mod = QuantizeWeights(W4G32, layers=table)(_matmul_module(w0, w1, w2))
    assert _count_quant_matmuls(mod) == 2 and '"layer": "matmul.2"' in mod.script()
    # every weight constant is named after its layer and operand in the IR itself
    calls = [b.value for b in mod["main"].body.blocks[0].bindings
             if is_quant_matmul(b.value)]
    assert [[constant_name(a) for a in call.args[1:]] for call in calls] == [
        [(layer, "packed"), (layer, "scale"), (layer, "zero")]
        for layer in ("proj_in", "matmul.2")]
    assert constant_name(calls[0].args[0]) is None  # not a constant
    # skip patterns match names from the table too
    mod = QuantizeWeights(W4G32, skip=("proj_*",), layers=table)(_matmul_module(w0, w1, w2))
    assert _count_quant_matmuls(mod) == 1


def test_gptq_and_missing_scheme_are_rejected_standalone() -> None:
    with pytest.raises(OptionError, match="gptq needs calibration"):
        QuantizeWeights(W4G32, method="gptq")
    with pytest.raises(OptionError, match="needs a scheme"):
        QuantizeWeights()


def test_skip_pattern_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(OptionError, match=r"\['lm_head'\] match no matmul.*matmul.0 .. matmul.0"):
        QuantizeWeights(W4G32, skip=("lm_head",))(_matmul_module(_weight()))


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(OptionError, match="can overflow int32"):
        QuantizeWeights(QuantScheme(8, None), act_bits=16)(_matmul_module(_weight(300)))
    w = _weight()
    w[3, 4] = np.nan
    with pytest.raises(SailError, match=r"matmul.0 \(weight \[100, 32\]\).*non-finite"):
        QuantizeWeights(W4G32)(_matmul_module(w))
    with pytest.raises(OptionError, match="activation bits"):
        QuantizeWeights(W4G32, act_bits=1)
    with pytest.raises(OptionError, match="activation group size must be a positive integer"):
        QuantizeWeights(W4G32, act_group="block")
    # the second matmul (K = 32, one group) takes blocks of 24; the first does not
    with pytest.raises(OptionError, match=r"cannot quantize 1 matmul weights:\n  - matmul.0: "
                                          r"activation group size 24 does not fit weight groups "
                                          r"of 32 \(K = 100\).*1, 2, 4, 8, 16, 32"):
        QuantizeWeights(W4G32, act_group=24)(_matmul_module(_weight(), _weight(N, 16)))


@pytest.mark.parametrize(("act_group", "attr"), [("row", K), ("group", 32), (16, 16), (64, 64),
                                                 (1000, K)])
def test_act_group_is_resolved_per_layer(act_group: int | str, attr: int) -> None:
    mod = QuantizeWeights(W4G32, act_group=act_group)(_matmul_module(_weight()))
    calls = [b.value for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "sail.quant_matmul"]
    assert [int(c.attrs["act_group"]) for c in calls] == [attr]


@pytest.mark.parametrize("act_group", [16, 64, "group"])
def test_numerics_with_block_scales(act_group: int | str) -> None:
    weights = [_weight(), _weight(N, 16)]
    mod = QuantizeWeights(W4G32, act_group=act_group)(_matmul_module(*weights))
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})),
                              tvm.cpu())
    x = RNG.standard_normal((2, 5, K)).astype(np.float32)
    x[..., 9] *= 50  # an outlier channel
    want = x
    for w in weights:
        a = 32 if act_group == "group" else act_group
        want = quantized_matmul(want, quantize_weights_rtn(w, W4G32), 8, min(a, w.shape[0]))
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    # plain relax.build: LLVM may contract the combination into FMAs (the contract's 1e-5)
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def _reference(x: np.ndarray, weights: list[np.ndarray], scheme: QuantScheme) -> np.ndarray:
    for w in weights:
        x = quantized_matmul(x, quantize_weights_rtn(w, scheme))
    return x


@pytest.mark.parametrize("scheme", [QuantScheme(2, 32), QuantScheme(6, 64, True)], ids=str)
def test_numerics_symbolic_batch(scheme: QuantScheme) -> None:
    weights = [_weight(), _weight(N, 16)]
    mod = QuantizeWeights(scheme)(_matmul_module(*weights))
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})),
                              tvm.cpu())
    for lead in [(1, 1), (2, 5)]:
        x = RNG.standard_normal((*lead, K)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        want = _reference(x, weights, scheme)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
        np.testing.assert_array_equal(got, want)


@functools.cache
def _host() -> tvm.target.Target:
    return lowering.host_target()


def test_numerics_through_llvm_lowering() -> None:
    weights = [_weight(), _weight(N, 16)]
    mod = QuantizeWeights(W4G32)(_matmul_module(*weights))
    target = _host()
    for p in lowering.lowering_passes(target):
        mod = p(mod)
    ex = relax.build(mod, target=target, relax_pipeline=lowering.build_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for lead in [(1, 1), (3, 7)]:
        x = RNG.standard_normal((*lead, K)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(got, _reference(x, weights, W4G32), rtol=1e-5, atol=1e-6)
