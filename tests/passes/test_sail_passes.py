"""ConvertPIMTypes and LowerToLUTGemv on the example decoder: what they rewrite, what they share,
and that the rewritten model computes what the quantized model computed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from sail_compiler import CompileOptions, compile_model
from sail_compiler.errors import OptionError
from sail_compiler.lowering import build_pipeline, host_target, lowering_passes
from sail_compiler.ops.sail_ops import op_attrs
from sail_compiler.passes import ConvertPIMTypes, LowerToLUTGemv
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, generate_inputs


@pytest.fixture(scope="module", params=["row", 8], ids=["per-row", "blocks-of-8"])
def quantized(micro_decoder: Path,
              request: pytest.FixtureRequest) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """The micro decoder after the quantize stage (8 sail.quant_matmul) and two inputs, with one
    activation scale per row or per block of 8 (half a weight group)."""
    result = compile_model(micro_decoder, None,
                           CompileOptions(quant=QuantScheme(3, 16, False), emit="quantize",
                                          act_group_size=request.param))
    feeds = [generate_inputs(result.signature, InputPlan(seq_len=n, seed=n)) for n in (1, 6)]
    return result.module, [[f[s.name] for s in result.signature.inputs] for f in feeds]


def _sail_calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls: list[relax.Call] = []

    @relax.expr_functor.visitor
    class Collect(relax.PyExprVisitor):
        def visit_call_(self, call: relax.Call) -> None:
            if isinstance(call.op, tvm.ir.Op) and call.op.name.startswith("sail."):
                calls.append(call)
            super().visit_call_(call)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Collect().visit_expr(func)
    return calls


def _ops(mod: tvm.IRModule) -> Counter:
    """The quantized matmuls' operators (other sail ops, e.g. sail.attention, are not counted)."""
    return Counter(call.op.name for call in _sail_calls(mod)
                   if call.op.name != "sail.attention")


def _run(mod: tvm.IRModule, inputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    target = host_target()
    with target:
        lowered = tvm.transform.Sequential(lowering_passes(target))(mod)
    vm = relax.VirtualMachine(relax.build(lowered, target=target,
                                          relax_pipeline=build_pipeline(target)), tvm.cpu())
    out = []
    for args in inputs:
        result = vm["main"](*[tvm.runtime.tensor(a) for a in args])
        out.append(result.numpy() if hasattr(result, "numpy") else result[0].numpy())
    return out


def test_convert_pim_types_shares_one_quantization_per_activation(quantized: tuple) -> None:
    mod, inputs = quantized
    assert _ops(mod) == Counter({"sail.quant_matmul": 8})
    converter = ConvertPIMTypes()
    converted = converter(mod)
    ops = _ops(converted)
    # q/k/v share the normed input, gate/up share theirs: o, down and the LM head have their own
    assert ops == Counter({"sail.group_sums": 8, "sail.dequantize": 8, "sail.quantize": 5})
    assert converter.stats == {"matmuls": 8, "quantizations": 5}
    groups = {op_attrs(c)["act_group"] for c in _sail_calls(mod)
              if c.op.name == "sail.quant_matmul"}
    for call in _sail_calls(converted):
        if call.op.name in ("sail.quantize", "sail.dequantize"):
            assert op_attrs(call)["placement"] == "pim"
        if call.op.name.startswith(("sail.quantize", "sail.group_sums", "sail.dequantize")):
            assert op_attrs(call)["act_group"] in groups
    # the same numbers: both legalize to the reference's operations in the same order (the
    # unfenced quant_combine kernel may contract into FMAs: the contract's 1e-5)
    for before, after in zip(_run(mod, inputs), _run(converted, inputs), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_wide_activations_are_converted_on_the_host(micro_decoder: Path) -> None:
    result = compile_model(micro_decoder, None, CompileOptions(
        quant=QuantScheme(4, 16, False), act_bits=12, emit="sail"))
    placements = {op_attrs(c)["placement"] for c in _sail_calls(result.module)
                  if c.op.name in ("sail.quantize",)}
    assert placements == {"host"}
    # a host dequantization is fused into the table kernel
    ops = _ops(result.module)
    assert ops["sail.dequantize"] == 0 and ops["sail.lut_gemv"] == 8
    assert all(op_attrs(c)["output"] == "float" for c in _sail_calls(result.module)
               if c.op.name == "sail.lut_gemv")


@pytest.mark.parametrize("placement", ["pim", "host"])
def test_lower_to_lut_gemv_keeps_every_result(quantized: tuple, placement: str) -> None:
    mod, inputs = quantized
    lowering = LowerToLUTGemv(nbw=3)
    lowered = lowering(ConvertPIMTypes(placement)(mod))
    ops = _ops(lowered)
    assert ops["sail.group_sums"] == 0 and ops["sail.lut_gemv"] == 8
    assert ops["sail.dequantize"] == (8 if placement == "pim" else 0)
    assert lowering.stats == {"lowered": 8, "fused_dequantize": 0 if placement == "pim" else 8}
    assert {op_attrs(c)["nbw"] for c in _sail_calls(lowered)
            if c.op.name == "sail.lut_gemv"} == {3}
    for before, after in zip(_run(mod, inputs), _run(lowered, inputs), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_lower_to_lut_gemv_alone_lowers_quant_matmul(quantized: tuple) -> None:
    mod, inputs = quantized
    lowered = LowerToLUTGemv(nbw=8)(mod)
    assert _ops(lowered) == Counter({"sail.quantize": 8, "sail.lut_gemv": 8})
    for before, after in zip(_run(mod, inputs), _run(lowered, inputs), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


@pytest.mark.parametrize("nbw", [0, 9])
def test_bad_nbw_is_an_option_error(nbw: int) -> None:
    with pytest.raises(OptionError, match=r"1\.\.8"):
        LowerToLUTGemv(nbw=nbw)
    with pytest.raises(OptionError, match=r"1\.\.8"):
        CompileOptions(quant=QuantScheme(4, 32), nbw=nbw)


def test_bad_placement_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="auto, host, pim|auto, pim, host"):
        ConvertPIMTypes("gpu")


def test_no_sail_keeps_the_quantized_matmul(micro_decoder: Path) -> None:
    result = compile_model(micro_decoder, None, CompileOptions(
        quant=QuantScheme(4, 16, False), sail=False, emit="sail"))
    assert _ops(result.module) == Counter({"sail.quant_matmul": 8})


def test_per_block_scales_reach_every_sail_op(micro_decoder: Path) -> None:
    """--act-group-size 8 with groups of 16: every op carries A = 8 and sx has ceil(K / 8)
    scales per row; 'group' gives A = g = 16."""
    for spec, act_group in ((8, 8), ("group", 16)):
        result = compile_model(micro_decoder, None, CompileOptions(
            quant=QuantScheme(4, 16), act_group_size=spec, emit="sail", pim_types="host"))
        calls = [c for c in _sail_calls(result.module) if c.op.name != "sail.attention"]
        assert {c.op.name for c in calls} == {"sail.quantize", "sail.lut_gemv"}
        for call in calls:
            assert op_attrs(call)["act_group"] == act_group
            if call.op.name == "sail.lut_gemv":
                k = op_attrs(call)["k"]
                sx = call.args[3].ty
                assert int(sx.shape[-1]) == -(-k // act_group)


def test_act_group_that_does_not_nest_is_an_option_error(micro_decoder: Path) -> None:
    with pytest.raises(OptionError, match=r"--act-group-size 12 does not fit \d+ quantized "
                                          r"layer\(s\):\n  - model.*divisor of 16 "
                                          r"\(1, 2, 4, 8, 16\)"):
        compile_model(micro_decoder, None, CompileOptions(
            quant=QuantScheme(4, 16), act_group_size=12, emit="sail"))
    with pytest.raises(OptionError, match="positive integer, 'row'"):
        CompileOptions(quant=QuantScheme(4, 16), act_group_size=-8)
