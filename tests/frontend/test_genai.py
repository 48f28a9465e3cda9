"""onnxruntime-genai builder output (``sail_compiler.frontend.genai``) against onnxruntime.

The fixtures in ``tests/fixtures/genai/`` are what the builder writes for a random-init Gemma 3
checkpoint (``examples/make_genai_fixtures.py``): 4 layers, the first three with a sliding
window of 4 keys (so inputs of 6 and more positions cross it), a tied int4 embedding
(``GatherBlockQuantized``) in the int4 build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from sail_compiler import CompileOptions
from sail_compiler.errors import ModelCheckError
from sail_compiler.frontend.check import load_checked
from sail_compiler.frontend.genai import rewrite_genai
from sail_compiler.frontend.signature import signature_of
from sail_compiler.verify import InputPlan, verify_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "genai"
FP32 = FIXTURES / "gemma3_fp32" / "model.onnx"
INT4 = FIXTURES / "gemma3_int4" / "model.onnx"
# (batch, seq, past): prefill, decode inside and past the window of 4, a chunk crossing it;
# onnxruntime refuses batch > 1 with seq > 1 and a past
PLANS = [InputPlan(1, 3, 0), InputPlan(1, 1, 2), InputPlan(1, 1, 5), InputPlan(1, 3, 5),
         InputPlan(2, 1, 3), InputPlan(2, 4, 0)]


def test_builder_io_is_renamed_for_the_runtimes() -> None:
    model = load_checked(FP32)
    sig = signature_of(model)
    dims = {s.name: s.dims for s in sig.inputs}
    assert dims["attention_mask"] == ("batch_size", "past_sequence_length + sequence_length")
    assert dims["past_key_values.0.key"] == ("batch_size", 1, "past_sequence_length", 32)
    assert dims["past_key_values.3.value"] == ("batch_size", 1, "past_sequence_length", 32)
    outs = {s.name: s.dims for s in sig.outputs}
    assert outs["present.0.key"][2] == "past_sequence_length + sequence_length"
    assert not any(n.domain for n in model.graph.node if n.op_type != "GroupQueryAttention")


def test_fp32_build_matches_onnxruntime_on_llvm(tmp_path: Path) -> None:
    report = verify_model(FP32, CompileOptions(target="llvm"), PLANS, tolerance=1e-5,
                          artifact_dir=tmp_path / "out")
    assert report["ok"], report["outputs"]
    assert len(report["outputs"]) == 9 * len(PLANS)


def test_int4_build_keeps_the_builders_codes(tmp_path: Path) -> None:
    layers: dict = {}
    load_checked(INT4, prequantized=layers)
    sources = sorted({layer.source for layer in layers.values()})
    assert sources == ["GatherBlockQuantized", "MatMulNBits"]
    embedding = next(v for v in layers.values() if v.source == "GatherBlockQuantized")
    lm_head = next(v for v in layers.values() if v.node_name == "/lm_head/MatMul_Q4")
    # the tied table is the lm_head's codes: one set of int4 codes, read twice
    assert np.array_equal(embedding.qw.q, lm_head.qw.q)
    assert np.array_equal(embedding.qw.scale, lm_head.qw.scale)
    report = verify_model(INT4, CompileOptions(target="llvm"), PLANS[:2],
                          artifact_dir=tmp_path / "out")
    assert report["ok"] and report["ref_exact"]
    logits = [o for o in report["outputs"] if o["name"] == "logits"]
    # int8 activations against onnxruntime's accuracy_level=4 kernels: close, not equal
    assert all(o["cosine"] > 0.999 for o in logits), logits


def _with_attribute(tmp_path: Path, **attrs: int) -> Path:
    model = onnx.load(FP32)
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    for key, value in attrs.items():
        node.attribute.append(onnx.helper.make_attribute(key, value))
    out = tmp_path / "model.onnx"
    onnx.save(model, out, save_as_external_data=True, location="model.onnx.data")
    return out


@pytest.mark.parametrize("attrs, detail", [
    ({"rotary_interleaved": 1}, "rotary_interleaved=1"),
    ({"smooth_softmax": 1}, "smooth_softmax=1"),
    ({"k_quant_type": "PER_TENSOR"}, "k_quant_type"),
])
def test_unsupported_attribute_names_node_and_attribute(tmp_path: Path, attrs: dict,
                                                        detail: str) -> None:
    path = _with_attribute(tmp_path, **attrs)
    with pytest.raises(ModelCheckError) as info:
        load_checked(path)
    text = str(info.value)
    assert "GroupQueryAttention node '/model/layers.0/attn/GroupQueryAttention'" in text
    assert detail in text


def test_problems_leave_the_model_unchanged() -> None:
    model = onnx.load(FP32)
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    node.input.extend([""] * (12 - len(node.input)))
    node.input[9] = "position_ids"
    before = model.SerializeToString()
    rewrite = rewrite_genai(model)
    assert rewrite.problems and "position_ids" in rewrite.problems[0]
    assert model.SerializeToString() == before


def test_decode_loop_matches_onnxruntime_genai(tmp_path: Path) -> None:
    """Greedy decoding through four sliding windows: onnxruntime-genai runs the builder's
    window-capacity caches, the import grows its caches and masks; the logits agree."""
    og = pytest.importorskip("onnxruntime_genai")
    from sail_compiler import Artifact, compile_model

    prompt, steps = [5, 17, 300, 42], 12
    model = og.Model(str(FP32.parent))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=64, batch_size=1)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    want_logits, want_ids = [], []
    for _ in range(steps):
        want_logits.append(np.array(generator.get_logits()).reshape(-1))
        generator.generate_next_token()
        want_ids.append(int(generator.get_next_tokens()[0]))
    compile_model(FP32, tmp_path / "out", CompileOptions(target="llvm"))
    artifact = Artifact(tmp_path / "out")
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, 1, 0, 32), np.float32)
            for i in range(4) for kv in ("key", "value")}
    ids, feed, got_ids = list(prompt), list(prompt), []
    for step in range(steps):
        out = artifact.run({"input_ids": np.array([feed], np.int64),
                            "attention_mask": np.ones((1, len(ids)), np.int64), **past})
        logits = out["logits"][0, -1]
        want = want_logits[step]
        assert np.abs(logits - want).max() <= 1e-5 * np.abs(want).max(), step
        got_ids.append(int(logits.argmax()))
        ids.append(got_ids[-1])
        feed = [got_ids[-1]]
        past = {name: out[name.replace("past_key_values", "present")] for name in past}
    assert got_ids == want_ids


def test_contrib_ops_without_a_past_keep_their_dim_names(tmp_path: Path) -> None:
    """onnxruntime's transformers optimizer on a Llama export without a cache writes
    SkipSimplifiedLayerNormalization and no past: the rewrite must not name the mask's dim
    ``past + seq`` (no input defines that past; the llvm build failed with a TVM error), and
    the model verifies against onnxruntime with symbolic dims."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source = FIXTURES.parent / "hf" / "llama_legacy.onnx"
    optimized = optimize_model(str(source), model_type="bert", num_heads=4, hidden_size=64,
                               optimization_options=FusionOptions("bert"), opt_level=0)
    path = tmp_path / "llama_ortopt.onnx"
    optimized.save_model_to_file(str(path))
    assert any(n.op_type == "SkipSimplifiedLayerNormalization"
               for n in onnx.load(str(path)).graph.node)
    mask = {s.name: s for s in signature_of(load_checked(path)).inputs}["attention_mask"]
    assert "past" not in str(mask.dims[1])
    report = verify_model(path, CompileOptions(target="llvm"),
                          [InputPlan(1, 5, 0), InputPlan(2, 3, 0)], tolerance=1e-4,
                          check_reference=False)
    assert report["ok"], report["outputs"]
