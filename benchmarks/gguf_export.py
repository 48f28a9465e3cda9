"""Write the example decoder (``examples/make_decoder.py``) as a GGUF file that llama.cpp runs.

The GGUF holds the same weights as the ONNX model, in llama.cpp's ``llama`` architecture:

* Weights: ONNX MatMuls compute ``y = x @ W`` with ``W[K, N]``; GGUF (like PyTorch) stores
  ``W.T`` (numpy ``[N, K]``, ggml ``ne = [K, N]``). Token embedding ``[V, H]`` as is.
* Rotary: the ONNX model rotates in the rotate-half form (feature ``i`` pairs with
  ``i + hd/2``), llama.cpp's ``llama`` architecture in the interleaved form (``2i`` with
  ``2i + 1``), both with angle ``pos * theta**(-2i/hd)`` for pair ``i``. Like Hugging Face's
  ``convert_hf_to_gguf.py``, the rows of q_proj and k_proj are permuted within each head so that
  new row ``2i + j`` is old row ``i + j * hd/2``. Queries and keys then come out in that
  permuted order, and ``q . k`` (all attention needs of them) is unchanged; v, o_proj and the
  rest are not touched.
* Hyper-parameters: heads, KV heads, RMSNorm epsilon, rotary base and context length from the
  model's :class:`~sail_compiler.testing.decoders.DecoderConfig`.
* Tokenizer: llama.cpp needs a vocabulary even when it is fed token ids, so the file carries a
  ``llama`` (SentencePiece) vocabulary of ``vocab_size`` placeholder tokens: ``<unk>``, ``<s>``,
  ``</s>``, then ``<t3>``, ``<t4>``, ... . It has no byte tokens (llama.cpp warns that the
  newline token is missing); it is not meant to tokenize text.

Tensors are written in float32 (``F32``: the correctness reference), or with the linear weights
(attention, MLP, LM head) quantized by the ``gguf`` package to ``Q8_0`` / ``Q4_0`` (blocks of 32
along K with one float16 scale). To get llama.cpp's own choice of types for a file type (k-quants
fall back to other types when a row is not a multiple of 256), quantize the F32 file with
llama.cpp's ``llama_model_quantize`` instead, and read the types back with
:func:`tensor_types`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import gguf
import numpy as np
import onnx

from sail_compiler.testing.decoders import DecoderConfig

ARCH = "llama"
#: Quantization types the ``gguf`` package can write for the linear weights here.
TENSOR_TYPES = ("F32", "F16", "Q8_0", "Q4_0")
#: The placeholder vocabulary's special tokens (llama.cpp's SentencePiece defaults).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def rotate_half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Permute the output rows of a q or k projection from rotate-half to interleaved rotary.

    Parameters
    ----------
    w
        ``[n_heads * hd, K]`` (rows are outputs, PyTorch/GGUF layout).
    n_heads
        Heads the rows split into (the KV head count for k_proj).

    Returns
    -------
    np.ndarray
        Same shape; within each head, row ``2i + j`` is input row ``i + j * hd/2``
        (``j`` in {0, 1}).
    """
    rows = w.shape[0]
    hd = rows // n_heads
    assert rows == n_heads * hd and hd % 2 == 0, (w.shape, n_heads)
    return (w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def iter_decoder_tensors(weights: Mapping[str, np.ndarray], cfg: DecoderConfig
                         ) -> Iterator[tuple[str, np.ndarray]]:
    """The GGUF tensors (llama.cpp names, float32, ``[out, in]``) of the example decoder, one at
    a time: each is computed when the iteration reaches it, so a model larger than memory
    (``weights`` a lazy mapping over its external data) is never held as a float copy.

    Parameters
    ----------
    weights
        The ONNX model's initializers by name (``model.layers.{i}.self_attn.q_proj.weight``
        ``[H, nh * hd]`` etc., as ``make_decoder`` names them).
    cfg
        The model's shape.
    """
    def linear(name: str) -> np.ndarray:
        return np.ascontiguousarray(weights[name].T, dtype=np.float32)

    def vector(name: str) -> np.ndarray:
        return np.ascontiguousarray(weights[name], dtype=np.float32)

    yield "token_embd.weight", vector("model.embed_tokens.weight")
    for i in range(cfg.num_layers):
        p, b = f"model.layers.{i}", f"blk.{i}"
        yield f"{b}.attn_norm.weight", vector(f"{p}.input_layernorm.weight")
        yield f"{b}.attn_q.weight", rotate_half_to_interleaved(
            linear(f"{p}.self_attn.q_proj.weight"), cfg.num_heads)
        yield f"{b}.attn_k.weight", rotate_half_to_interleaved(
            linear(f"{p}.self_attn.k_proj.weight"), cfg.num_kv_heads)
        yield f"{b}.attn_v.weight", linear(f"{p}.self_attn.v_proj.weight")
        yield f"{b}.attn_output.weight", linear(f"{p}.self_attn.o_proj.weight")
        yield f"{b}.ffn_norm.weight", vector(f"{p}.post_attention_layernorm.weight")
        yield f"{b}.ffn_gate.weight", linear(f"{p}.mlp.gate_proj.weight")
        yield f"{b}.ffn_up.weight", linear(f"{p}.mlp.up_proj.weight")
        yield f"{b}.ffn_down.weight", linear(f"{p}.mlp.down_proj.weight")
    yield "output_norm.weight", vector("model.norm.weight")
    yield "output.weight", linear("lm_head.weight")


def decoder_tensors(weights: Mapping[str, np.ndarray], cfg: DecoderConfig
                    ) -> dict[str, np.ndarray]:
    """:func:`iter_decoder_tensors` as a dictionary (every tensor in memory at once)."""
    return dict(iter_decoder_tensors(weights, cfg))


def _is_linear(name: str) -> bool:
    return name != "token_embd.weight" and not name.endswith("norm.weight")


def write_gguf(weights: Mapping[str, np.ndarray], cfg: DecoderConfig, path: str | os.PathLike[str],
               tensor_type: str = "F32", name: str = "sail example decoder") -> dict[str, str]:
    """Write the decoder as a ``llama``-architecture GGUF file.

    Parameters
    ----------
    weights
        The ONNX model's initializers by name (see :func:`iter_decoder_tensors`); a lazy
        mapping (:class:`ExternalWeights`) keeps only the written tensors in memory: with a
        quantized ``tensor_type``, about the size of the output file.
    cfg
        The model's shape.
    path
        The ``.gguf`` file to write.
    tensor_type
        Type of the linear weights, one of :data:`TENSOR_TYPES`; the token embedding and the
        norm weights stay float32.
    name
        ``general.name``.

    Returns
    -------
    dict[str, str]
        GGUF tensor name -> type written.
    """
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type must be one of {', '.join(TENSOR_TYPES)}, got "
                         f"{tensor_type!r}")
    qtype = gguf.GGMLQuantizationType[tensor_type]
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[tensor_type]
    writer = gguf.GGUFWriter(os.fspath(path), ARCH)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_positions)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.ffn_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_eps)
    writer.add_vocab_size(cfg.vocab_size)

    writer.add_tokenizer_model("llama")
    tokens = [*SPECIAL_TOKENS, *(f"<t{i}>" for i in range(len(SPECIAL_TOKENS),
                                                          cfg.vocab_size))][:cfg.vocab_size]
    token_types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
                   *[gguf.TokenType.NORMAL] * (cfg.vocab_size - len(SPECIAL_TOKENS))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * cfg.vocab_size)
    writer.add_token_types(token_types[:cfg.vocab_size])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)

    written = {}
    for tensor_name, value in iter_decoder_tensors(weights, cfg):
        if _is_linear(tensor_name) and tensor_type != "F32":
            # uint8 blocks: the writer derives the logical shape from the byte shape.
            writer.add_tensor(tensor_name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
            written[tensor_name] = tensor_type
        else:
            writer.add_tensor(tensor_name, value)
            written[tensor_name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


class ExternalWeights(Mapping[str, np.ndarray]):
    """An ONNX model's initializers by name, each read from its external-data file only when
    asked for (:meth:`sail_compiler.external_data.ExternalData.read`: a fresh array, the
    mapping's pages untouched); initializers stored in the ``.onnx`` itself come from it.

    Parameters
    ----------
    path
        The ``.onnx`` file, its external data beside it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from sail_compiler.external_data import ExternalData

        path = Path(path)
        model = onnx.load(str(path), load_external_data=False)
        self._external = ExternalData(model, path.parent)
        self._names = [t.name for t in model.graph.initializer]
        self._inline = {t.name: t for t in model.graph.initializer
                        if t.name not in self._external}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._external:
            return self._external.read(name)
        return onnx.numpy_helper.to_array(self._inline[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def tensor_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """GGUF tensor name -> ggml type name (``Q4_0``, ``Q6_K``, ...), read back from the file."""
    reader = gguf.GGUFReader(os.fspath(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def type_summary(types: dict[str, str]) -> str:
    """A short account of ``types``: counts per type and where the output and embedding went,
    e.g. ``Q4_0 x210, F32 x61; token_embd Q4_0, output Q8_0``."""
    counts = collections.Counter(types.values())
    parts = ", ".join(f"{t} x{n}" for t, n in counts.most_common())
    where = ", ".join(f"{n.removesuffix('.weight')} {types[n]}"
                      for n in ("token_embd.weight", "output.weight") if n in types)
    return f"{parts}; {where}" if where else parts
