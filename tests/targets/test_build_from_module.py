"""The llvm and pim-sim targets' ``build(mod)`` depends on ``mod`` only (issue 20, item 3): a
module lowered by the compiler's own target object and built by a fresh one, which never lowered
anything, gives the artifact ``compile_model`` writes. Before, the targets kept what the build
needed on the object that ran the lowering (the lifted weights, pim-sim's program, llvm's probe
layers), so these builds wrote an empty ``weights.bin`` or failed. The c target's version of
this test is ``test_c_target.py::test_build_depends_on_the_module_only``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.errors import SailError
from sail_compiler.passes.expose_group_sums import probe_layers
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets import get_target
from sail_compiler.targets.pim.program import list_program
from sail_compiler.testing.decoders import DecoderConfig, make_decoder, save_model

#: One layer, but weights above LiftWeightsToParams's 4096 bytes (the embedding, the LM head).
_CONFIG = DecoderConfig(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2,
                        num_kv_heads=1, ffn_size=64, max_positions=32)
#: The files each target's build writes that must come out byte for byte the same (llvm's
#: model.so is left out: TVM orders its shape functions' stores by object address).
_FILES = {"llvm": ("weights.bin",),
          "pim-sim": ("weights.bin", "program.json", "program.txt")}
#: The generator's matmul nodes in the order ``main`` computes them (the LM head is "logits").
_LAYERS = [f"model.layers.0.{name}" for name in (
    "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["logits"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "one_layer.onnx"
    save_model(make_decoder(_CONFIG), path)
    return path


@pytest.mark.parametrize(("target", "probe"), [("llvm", False), ("llvm", True),
                                               ("pim-sim", False)])
def test_a_fresh_target_builds_what_the_compiler_built(model: Path, tmp_path: Path,
                                                       target: str, probe: bool) -> None:
    options = CompileOptions(target=target, quant=QuantScheme.parse("w4g16"), probe=probe)
    compiled = tmp_path / "compiled"
    compile_model(model, compiled, options)
    lowered = compile_model(model, None, dataclasses.replace(options, emit="lower"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    extra = get_target(target).build(lowered.module, lowered.signature, fresh, options)
    for name in _FILES[target]:
        assert (fresh / name).read_bytes() == (compiled / name).read_bytes(), name
    manifest = json.loads((compiled / "manifest.json").read_text())
    assert {key: manifest[key] for key in extra} == json.loads(json.dumps(extra))
    assert extra["num_weights"] >= 2  # the embedding and the LM head at least
    if probe:
        assert extra["probe_layers"] == _LAYERS
    if target == "pim-sim":
        program = list_program(lowered.module)
        assert [i.name for i in program.instructions if i.opcode == "LUTGEMV"] == _LAYERS


def test_modules_lowered_for_another_target_are_refused(model: Path) -> None:
    lowered = compile_model(model, None, CompileOptions(target="llvm", emit="lower",
                                                        quant=QuantScheme.parse("w4g16")))
    with pytest.raises(SailError, match="no SAIL commands: LowerToSAILProgram did not run"):
        list_program(lowered.module)
    with pytest.raises(SailError, match="no group-sum probe: ExposeGroupSums did not run"):
        probe_layers(lowered.module)
