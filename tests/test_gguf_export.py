"""benchmarks/gguf_export.py: the example decoder as a llama.cpp GGUF file.

The q/k row permutation is checked against two independent NumPy rotary implementations (the
ONNX model's rotate-half form and llama.cpp's interleaved form); with llama-cpp-python
installed, llama.cpp's logits on the F32 file are checked against onnxruntime's.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sail_compiler.testing.decoders import PRESETS, DecoderConfig, make_decoder, save_model

gguf = pytest.importorskip("gguf")

from benchmarks.gguf_export import (  # noqa: E402
    ExternalWeights,
    decoder_tensors,
    rotate_half_to_interleaved,
    tensor_types,
    type_summary,
    write_gguf,
)

CFG = DecoderConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    ffn_size=96, max_positions=64)


def _angles(positions: np.ndarray, hd: int, theta: float) -> np.ndarray:
    """[seq, hd/2]: pos * theta^(-2i/hd) for pair i."""
    return positions[:, None] * theta ** (-np.arange(hd // 2) * 2 / hd)


def _rope_rotate_half(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x [seq, heads, hd]; feature i pairs with i + hd/2 (the ONNX model's form)."""
    half = x.shape[-1] // 2
    a = _angles(positions, x.shape[-1], theta)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)],
                          axis=-1)


def _rope_interleaved(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x [seq, heads, hd]; feature 2i pairs with 2i + 1 (ggml_rope mode 0, llama.cpp's llama)."""
    a = _angles(positions, x.shape[-1], theta)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(a) - odd * np.sin(a)
    out[..., 1::2] = even * np.sin(a) + odd * np.cos(a)
    return out


def _weights(cfg: DecoderConfig) -> dict[str, np.ndarray]:
    model = make_decoder(cfg, seed=3)
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_permuted_rows_with_interleaved_rotary_give_the_same_attention_scores() -> None:
    rng = np.random.default_rng(0)
    nh, nkv, hd, h = CFG.num_heads, CFG.num_kv_heads, CFG.head_dim, CFG.hidden_size
    wq = rng.standard_normal((h, nh * hd))  # ONNX layout [K, N]
    wk = rng.standard_normal((h, nkv * hd))
    x = rng.standard_normal((7, h))
    pos = np.arange(5, 12, dtype=np.float64)

    q = _rope_rotate_half((x @ wq).reshape(7, nh, hd), pos, CFG.rope_theta)
    k = _rope_rotate_half((x @ wk).reshape(7, nkv, hd), pos, CFG.rope_theta)
    qg = _rope_interleaved((x @ rotate_half_to_interleaved(wq.T, nh).T).reshape(7, nh, hd), pos,
                           CFG.rope_theta)
    kg = _rope_interleaved((x @ rotate_half_to_interleaved(wk.T, nkv).T).reshape(7, nkv, hd),
                           pos, CFG.rope_theta)

    # Feature 2i + j of the GGUF form is feature i + j * hd/2 of the ONNX form.
    order = np.arange(hd).reshape(2, hd // 2).T.reshape(-1)
    np.testing.assert_allclose(qg, q[..., order], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kg, k[..., order], rtol=1e-12, atol=1e-12)
    kv_head = np.arange(nh) // (nh // nkv)
    scores = np.einsum("shd,thd->hst", q, k[:, kv_head])
    np.testing.assert_allclose(np.einsum("shd,thd->hst", qg, kg[:, kv_head]), scores,
                               rtol=1e-10, atol=1e-10)
    # Without the permutation, llama.cpp's rotary would change the scores.
    wrong = _rope_interleaved((x @ wq).reshape(7, nh, hd), pos, CFG.rope_theta)
    assert not np.allclose(np.einsum("shd,thd->hst", wrong, kg[:, kv_head]), scores)


def test_tensors_are_transposed_and_only_q_k_permuted() -> None:
    weights = _weights(CFG)
    tensors = decoder_tensors(weights, CFG)
    assert len(tensors) == 2 + 9 * CFG.num_layers + 1
    p = "model.layers.1"
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"],
                                  weights[f"{p}.self_attn.v_proj.weight"].T)
    np.testing.assert_array_equal(tensors["blk.1.ffn_down.weight"],
                                  weights[f"{p}.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(tensors["output.weight"], weights["lm_head.weight"].T)
    np.testing.assert_array_equal(tensors["token_embd.weight"],
                                  weights["model.embed_tokens.weight"])
    q = tensors["blk.1.attn_q.weight"]
    assert q.shape == (CFG.num_heads * CFG.head_dim, CFG.hidden_size)
    np.testing.assert_array_equal(np.sort(q, axis=0),
                                  np.sort(weights[f"{p}.self_attn.q_proj.weight"].T, axis=0))


@pytest.mark.parametrize("tensor_type", ["F32", "Q8_0", "Q4_0"])
def test_written_file_reads_back(tmp_path, tensor_type: str) -> None:
    path = tmp_path / "m.gguf"
    written = write_gguf(_weights(CFG), CFG, path, tensor_type)
    assert tensor_types(path) == written
    assert written["blk.0.attn_q.weight"] == tensor_type
    assert written["token_embd.weight"] == written["blk.0.attn_norm.weight"] == "F32"
    assert type_summary(written).endswith("token_embd F32, output " + tensor_type)

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def scalar(key: str) -> object:
        return fields[key].parts[fields[key].data[0]][0]

    assert scalar("llama.attention.head_count") == CFG.num_heads
    assert scalar("llama.attention.head_count_kv") == CFG.num_kv_heads
    assert scalar("llama.rope.dimension_count") == CFG.head_dim
    assert scalar("llama.attention.layer_norm_rms_epsilon") == np.float32(CFG.rms_eps)
    assert len(fields["tokenizer.ggml.tokens"].data) == CFG.vocab_size
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert list(tensor.shape) == [CFG.hidden_size, CFG.ffn_size]  # ggml ne: [K, N]
    if tensor_type == "F32":
        np.testing.assert_array_equal(
            np.asarray(tensor.data), decoder_tensors(_weights(CFG), CFG)["blk.0.ffn_up.weight"])


def test_external_weights_write_the_same_file(tmp_path) -> None:
    """A model's external data read lazily (the 7B preset's path) gives the bytes the
    in-memory initializers give."""
    model = make_decoder(CFG, seed=3)
    save_model(model, tmp_path / "decoder.onnx", external_data=True)
    lazy = ExternalWeights(tmp_path / "decoder.onnx")
    assert set(lazy) == {t.name for t in model.graph.initializer} and len(lazy) == len(
        model.graph.initializer)
    write_gguf(_weights(CFG), CFG, tmp_path / "memory.gguf", "Q4_0")
    write_gguf(lazy, CFG, tmp_path / "lazy.gguf", "Q4_0")
    assert (tmp_path / "lazy.gguf").read_bytes() == (tmp_path / "memory.gguf").read_bytes()


@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_llama_cpp_logits_equal_onnxruntime(tmp_path, preset: str) -> None:
    pytest.importorskip("llama_cpp")
    from benchmarks.decode import KVLayout, LlamaCppModel, OrtModel, _forward

    cfg = PRESETS[preset]
    model_path = tmp_path / "decoder.onnx"
    model = make_decoder(cfg, kv_cache=True)
    save_model(model, model_path)
    write_gguf({t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}, cfg,
               tmp_path / "m.gguf")
    prompt = [int(i) for i in np.random.default_rng(0).integers(3, cfg.vocab_size, 12)]
    layout = KVLayout.of_config(cfg)
    expected, _ = _forward(OrtModel(model_path).run_fn(1), prompt, layout.empty(), layout)
    llm = LlamaCppModel(tmp_path / "m.gguf", 16, f32_kv=True, logits_all=True)
    logits = llm.prompt_logits(prompt, 1)
    rel = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
    assert rel < 1e-4, rel
