"""KeepLastLogits (``--logits last``): the LM head computed for the last position only. Its
logits equal onnxruntime's last position for prefill and decode on llvm and c, the manifest says
[batch, 1, vocab], ``sail_generate`` and ``sail verify`` read them, and it leaves a model without
such an output alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import tvm

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.errors import OptionError
from sail_compiler.frontend import import_onnx
from sail_compiler.passes import KeepLastLogits
from sail_compiler.testing.decoders import PRESETS, make_decoder
from sail_compiler.verify import (
    InputPlan,
    OnnxRuntimeReference,
    compare,
    generate_inputs,
    verify_model,
)

HAS_CC = shutil.which("cc") is not None and shutil.which("make") is not None
PROMPT = [3, 17, 256, 9, 1000]


@pytest.mark.parametrize("target", ["llvm",
                                    pytest.param("c", marks=pytest.mark.skipif(
                                        not HAS_CC, reason="the c target builds with cc"))])
def test_last_logits_equal_onnxruntime_last_position(tiny_decoder_kv: Path, tmp_path: Path,
                                                     target: str) -> None:
    out = tmp_path / target
    compile_model(tiny_decoder_kv, out, CompileOptions(target=target, logits="last"))
    artifact = Artifact(out)
    manifest = json.loads((out / "manifest.json").read_text())
    logits = next(o for o in manifest["signature"]["outputs"] if o["name"] == "logits")
    assert logits["dims"][1] == 1
    reference = OnnxRuntimeReference(tiny_decoder_kv)
    for plan in (InputPlan(seq_len=7, past_len=0), InputPlan(seq_len=1, past_len=6),
                 InputPlan(batch=2, seq_len=3, past_len=4)):
        inputs = generate_inputs(artifact.signature, plan)
        ours = artifact.run(inputs)
        theirs = reference.run(inputs)
        assert ours["logits"].shape == (plan.batch, 1, theirs["logits"].shape[2])
        assert compare(ours["logits"], theirs["logits"][:, -1:])["rel_l2_err"] < 1e-4
        for name, value in ours.items():
            if name != "logits":
                assert compare(value, theirs[name])["rel_l2_err"] < 1e-4


@pytest.mark.skipif(not HAS_CC, reason="the c target builds with cc")
def test_sail_generate_ids_unchanged(tiny_decoder_kv: Path, tmp_path: Path) -> None:
    from sail_compiler.targets.c.target import build_library, generate

    ids = []
    for logits in ("all", "last"):
        out = tmp_path / logits
        compile_model(tiny_decoder_kv, out, CompileOptions(target="c", logits=logits))
        build_library(out)
        ids.append(generate(out, Artifact(out).manifest, PROMPT, 8)["ids"])
    assert ids[0] == ids[1] and len(ids[0]) == 8


def test_model_generate_ids_unchanged(tiny_decoder_kv: Path, tmp_path: Path) -> None:
    """The Python token loop (llvm) reads the one row of ``[1, 1, vocab]`` logits."""
    import sail_compiler

    ids = []
    for logits in ("all", "last"):
        out = tmp_path / logits
        compile_model(tiny_decoder_kv, out, CompileOptions(logits=logits))
        ids.append(sail_compiler.load(out).generate(PROMPT, 6, ignore_eos=True).ids)
    assert ids[0] == ids[1] and len(ids[0]) == 6


def test_verify_compares_the_last_position(tiny_decoder_kv: Path) -> None:
    report = verify_model(tiny_decoder_kv, CompileOptions(logits="last"),
                          [InputPlan(seq_len=5, past_len=0)])
    assert report["ok"]
    assert any(o["name"] == "logits" for o in report["outputs"])


def _hidden_state_decoder() -> onnx.ModelProto:
    """The micro decoder without its LM head: it returns the final norm's output."""
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    matmul = next(n for n in model.graph.node if "logits" in n.output)
    model.graph.node.remove(matmul)
    model.graph.output[0].name = matmul.input[0]
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 16
    return model


def test_does_not_fire_without_an_lm_head_output() -> None:
    """The KV-cache outputs and a hidden state without a matmul stay as they are."""
    mod, _ = import_onnx(_hidden_state_decoder())
    tvm.ir.assert_structural_equal(KeepLastLogits()(mod), mod)


def test_fires_on_the_decoder() -> None:
    mod, _ = import_onnx(make_decoder(PRESETS["micro"], kv_cache=True))
    after = KeepLastLogits()(mod)
    logits = after["main"].ret_ty.fields[0]
    assert int(logits.shape[1]) == 1
    assert "R.strided_slice" in after["main"].script()


def test_fires_on_a_decoder_without_a_cache(tmp_path: Path) -> None:
    """A model whose only output is the logits (Gemma 3's export without a KV cache was
    refused: the returned var was followed to its matmul, which is no var)."""
    model = make_decoder(PRESETS["micro"], kv_cache=False)
    assert [o.name for o in model.graph.output] == ["logits"]
    path = tmp_path / "nokv.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    compile_model(path, out, CompileOptions(logits="last"))
    artifact = Artifact(out)
    inputs = generate_inputs(artifact.signature, InputPlan(batch=2, seq_len=5))
    theirs = OnnxRuntimeReference(path).run(inputs)["logits"]
    ours = artifact.run(inputs)["logits"]
    assert ours.shape == (2, 1, theirs.shape[2])
    assert compare(ours, theirs[:, -1:])["rel_l2_err"] < 1e-4


def test_bad_option_value() -> None:
    with pytest.raises(OptionError, match="unknown --logits 'first'; valid choices are: all, last"):
        CompileOptions(logits="first")


def test_no_logits_output_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "hidden.onnx"
    onnx.save(_hidden_state_decoder(), path)
    with pytest.raises(OptionError, match="KeepLastLogits did not fire"):
        compile_model(path, tmp_path / "out", CompileOptions(logits="last"))
