"""The example decoder generator, checked on onnxruntime (the reference executor)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from sail_compiler.testing.decoders import PRESETS, DecoderConfig, make_decoder, save_model

ROOT = Path(__file__).resolve().parents[1]
CFG = DecoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    ffn_size=48, max_positions=64)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _empty_past(batch: int) -> dict[str, np.ndarray]:
    shape = (batch, CFG.num_kv_heads, 0, CFG.head_dim)
    return {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
            for i in range(CFG.num_layers) for kind in ("key", "value")}


def test_kv_cache_decoding_equals_full_forward() -> None:
    full = _session(make_decoder(CFG))
    cached = _session(make_decoder(CFG, kv_cache=True))
    ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 9))
    expected = full.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    names = [o.name for o in cached.get_outputs()]
    feeds = {"input_ids": ids[:, :6], "attention_mask": np.ones((2, 6), np.int64),
             **_empty_past(2)}
    logits, *present = cached.run(names, feeds)
    np.testing.assert_allclose(logits, expected[:, :6], rtol=1e-5, atol=1e-6)
    for step in range(6, 9):  # one token at a time, as a decode loop does
        feeds = {"input_ids": ids[:, step:step + 1],
                 "attention_mask": np.ones((2, step + 1), np.int64)}
        feeds |= {n.replace("present", "past_key_values"): v
                  for n, v in zip(names[1:], present, strict=True)}
        logits, *present = cached.run(names, feeds)
        np.testing.assert_allclose(logits[:, 0], expected[:, step], rtol=1e-5, atol=1e-6)
        assert present[0].shape[2] == step + 1


def test_attention_is_causal_and_masks_padding() -> None:
    sess = _session(make_decoder(CFG))
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (1, 8))
    mask = np.ones_like(ids)
    base = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    changed = ids.copy()
    changed[0, 5] = (changed[0, 5] + 1) % CFG.vocab_size
    out = sess.run(["logits"], {"input_ids": changed, "attention_mask": mask})[0]
    np.testing.assert_array_equal(out[:, :5], base[:, :5])  # earlier positions cannot see it
    assert np.abs(out[:, 5:] - base[:, 5:]).max() > 1e-4
    # Padding the first token out changes every later position.
    padded = sess.run(["logits"], {"input_ids": ids,
                                   "attention_mask": np.array([[0, 1, 1, 1, 1, 1, 1, 1]])})[0]
    assert np.abs(padded[:, 1:] - base[:, 1:]).max() > 1e-4


def test_dims_are_symbolic_and_param_count_matches() -> None:
    model = make_decoder(CFG, kv_cache=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input}
    assert dims["input_ids"] == ["batch", "seq"]
    assert dims["past_key_values.0.key"] == ["batch", CFG.num_kv_heads, "past", CFG.head_dim]
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                  if t.name.startswith(("model.", "lm_head"))
                  and t.data_type == onnx.TensorProto.FLOAT)
    assert weights == CFG.num_params()
    assert 0.9e6 < PRESETS["tiny"].num_params() < 1.1e6


def test_external_data_round_trip(tmp_path) -> None:
    path = tmp_path / "ext.onnx"
    save_model(make_decoder(CFG), path, external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > path.stat().st_size
    onnx.checker.check_model(str(path))


def test_command_line_writes_the_generator_model(tmp_path) -> None:
    """``examples/make_decoder.py`` (the README's command) writes what the package module
    builds."""
    out = tmp_path / "micro_kv.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "make_decoder.py"), "--preset",
                           "micro", "--kv-cache", "--seed", "2", "-o", str(out)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith(f"wrote {out} (") and "with KV cache" in proc.stdout
    expected = tmp_path / "expected.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True, seed=2), expected)
    assert out.read_bytes() == expected.read_bytes()
