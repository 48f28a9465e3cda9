"""Generate a Llama-style decoder LM as ONNX, with onnx.helper only.

The graph is what a Hugging Face Llama export computes, written out op by op:

* token embedding (``Gather``),
* per layer: RMSNorm, grouped-query attention with rotary position embeddings (rotate-half form)
  and a causal mask, a SwiGLU MLP, residual adds,
* a final RMSNorm and an untied LM head.

Dims are symbolic: ``batch``, ``seq`` and, with a KV cache, ``past``. Positions, the causal mask
and the attention length are computed inside the graph from ``Shape`` ops (``Shape -> Gather ->
Range -> Unsqueeze -> LessOrEqual -> Where``), as real exports do, so one compiled artifact must
serve every sequence length.

Inputs and outputs (``H`` hidden, ``nkv`` key/value heads, ``hd`` head dim, ``V`` vocab):

* ``input_ids``: int64 [batch, seq], token ids in [0, V).
* ``attention_mask``: int64 [batch, past + seq], 1 = attend, 0 = padding.
* with ``kv_cache``: ``past_key_values.{i}.key`` / ``.value``: float32 [batch, nkv, past, hd].
* ``logits``: float32 [batch, seq, V].
* with ``kv_cache``: ``present.{i}.key`` / ``.value``: float32 [batch, nkv, past + seq, hd].

Weights are seeded random (normal, std 0.02; norm weights near 1). Models whose weights exceed
the 2 GB protobuf limit are written with external data (``--external-data``, forced when needed).

Tests, examples and benchmarks import :func:`make_decoder`, :data:`PRESETS` and
:func:`save_model` from here; ``examples/make_decoder.py`` is the command line::

    python examples/make_decoder.py --preset tiny -o tiny.onnx [--kv-cache]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PROTOBUF_LIMIT_BYTES = 2_000_000_000


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape of a Llama-style decoder.

    Parameters
    ----------
    vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, ffn_size
        The usual Llama hyper-parameters; ``hidden_size`` must be ``num_heads * head_dim`` and
        ``num_heads`` a multiple of ``num_kv_heads``.
    max_positions
        Rows of the rotary cos/sin tables (the longest past + seq the model accepts).
    rms_eps, rope_theta
        RMSNorm epsilon and rotary base.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int
    max_positions: int = 2048
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_params(self) -> int:
        """Number of weights (embedding, layers, final norm, LM head)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = 2 * h + h * h * 2 + h * kv * 2 + 3 * h * self.ffn_size
        return 2 * self.vocab_size * h + self.num_layers * per_layer + h


PRESETS: dict[str, DecoderConfig] = {
    # One layer, every op of the example: the fastest model for CLI tests.
    "micro": DecoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                           num_kv_heads=1, ffn_size=24, max_positions=32),
    # ~1M parameters: unit tests.
    "tiny": DecoderConfig(vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4,
                          num_kv_heads=2, ffn_size=352, max_positions=512),
    # ~19M parameters: quick end-to-end runs.
    "small": DecoderConfig(vocab_size=8192, hidden_size=512, num_layers=4, num_heads=8,
                           num_kv_heads=4, ffn_size=1408, max_positions=1024),
    # ~135M parameters, the SmolLM-135M shape: decode benchmarks.
    "135m": DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                          num_kv_heads=3, ffn_size=1536),
    # ~1.1B parameters, the TinyLlama-1.1B shape (needs external data).
    "1b": DecoderConfig(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32,
                        num_kv_heads=4, ffn_size=5632),
    # ~6.7B and ~13B parameters, the Llama-2 7B and 13B shapes (27 and 52 GB of float32: written
    # by write_decoder, one tensor at a time).
    "7b": DecoderConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                        num_kv_heads=32, ffn_size=11008, max_positions=4096),
    "13b": DecoderConfig(vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40,
                         num_kv_heads=40, ffn_size=13824, max_positions=4096),
}
#: Presets whose float32 weights pass this are written by :func:`write_decoder` (streamed).
IN_MEMORY_LIMIT_BYTES = 8_000_000_000
#: Offsets of tensors in :func:`write_decoder`'s data file are multiples of this (TVM maps
#: 64-byte aligned tensors without a copy).
_DATA_ALIGN = 64


class _GraphBuilder:
    """Appends nodes with unique, readable names; holds the initializers (or, given an open
    external-data file, writes tensors of 1 KiB or more to it and keeps only their references).
    """

    def __init__(self, data: tuple[BinaryIO, str] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}
        self._data = data

    def const(self, name: str, value: np.ndarray) -> str:
        if self._data is None or value.nbytes < 1024:
            self.initializers.append(numpy_helper.from_array(value, name))
            return name
        file, location = self._data
        offset = -(-file.tell() // _DATA_ALIGN) * _DATA_ALIGN
        file.write(bytes(offset - file.tell()))
        file.write(np.ascontiguousarray(value).tobytes())
        tensor = onnx.TensorProto(name=name, dims=value.shape,
                                  data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
        for key, entry in (("location", location), ("offset", offset), ("length", value.nbytes)):
            tensor.external_data.add(key=key, value=str(entry))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        idx = self._count.get(name, 0)
        self._count[name] = idx + 1
        node_name = name if idx == 0 else f"{name}_{idx}"
        outputs = [f"{node_name}_out{i}" if n_out > 1 else node_name for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, **attrs))
        return outputs[0]


def _int64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def make_decoder(cfg: DecoderConfig, kv_cache: bool = False, seed: int = 0,
                 data: tuple[BinaryIO, str] | None = None) -> onnx.ModelProto:
    """Build the decoder graph.

    Parameters
    ----------
    cfg
        Model shape.
    kv_cache
        Add past key/value inputs and present outputs.
    seed
        Seed of the random weights.
    data
        An external-data file open for writing and its location (its name relative to the
        model): tensors of 1 KiB or more are written there as they are made (see
        :func:`write_decoder`).

    Returns
    -------
    onnx.ModelProto
        A checked model at opset 17 with symbolic ``batch``, ``seq`` (and ``past``) dims.
    """
    rng = np.random.default_rng(seed)
    g = _GraphBuilder(data)
    h, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    n_rep = nh // nkv

    def weight(name: str, shape: tuple[int, ...]) -> str:
        return g.const(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def norm_weight(name: str) -> str:
        return g.const(name, (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32))

    # Shared constants.
    zero_i = g.const("const_0", _int64([0]))
    one_i = g.const("const_1", _int64([1]))
    one_scalar = g.const("const_1_scalar", np.array(1, dtype=np.int64))
    eps = g.const("rms_eps", np.array(cfg.rms_eps, dtype=np.float32))
    one_f = g.const("const_1f", np.array(1.0, dtype=np.float32))
    zero_f = g.const("const_0f", np.array(0.0, dtype=np.float32))
    neg_inf = g.const("mask_min", np.array(-1e9, dtype=np.float32))
    attn_scale = g.const("attn_scale", np.array(1.0 / math.sqrt(hd), dtype=np.float32))
    half = hd // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / hd))
    angles = np.outer(np.arange(cfg.max_positions, dtype=np.float64), inv_freq)
    cos_table = g.const("rope_cos", np.cos(angles).astype(np.float32))
    sin_table = g.const("rope_sin", np.sin(angles).astype(np.float32))

    # Positions past .. past+seq-1 and key positions 0 .. past+seq-1, from Shape ops.
    ids_shape = g.op("Shape", ["input_ids"], "ids_shape")
    seq_len = g.op("Gather", [ids_shape, one_scalar], "seq_len", axis=0)
    if kv_cache:
        past_shape = g.op("Shape", ["past_key_values.0.key"], "past_shape")
        past_len = g.op("Gather", [past_shape, g.const("const_2_scalar",
                                                        np.array(2, dtype=np.int64))],
                        "past_len", axis=0)
    else:
        past_len = g.const("past_len_zero", np.array(0, dtype=np.int64))
    total_len = g.op("Add", [past_len, seq_len], "total_len")
    positions = g.op("Range", [past_len, total_len, one_scalar], "positions")
    key_positions = g.op("Range", [g.const("const_0_scalar", np.array(0, dtype=np.int64)),
                                   total_len, one_scalar], "key_positions")
    cos = g.op("Gather", [cos_table, positions], "rope_cos_gather", axis=0)  # [seq, half]
    sin = g.op("Gather", [sin_table, positions], "rope_sin_gather", axis=0)

    # Additive mask [batch, 1, 1, seq, total]: causal (key <= query position) and padding.
    q_col = g.op("Unsqueeze", [positions, one_i], "query_positions_col")  # [seq, 1]
    causal = g.op("LessOrEqual", [key_positions, q_col], "causal_allowed")  # [seq, total]
    causal_bias = g.op("Where", [causal, zero_f, neg_inf], "causal_bias")
    mask_f = g.op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    pad = g.op("Mul", [g.op("Sub", [one_f, mask_f], "mask_inverted"), neg_inf], "padding_bias")
    pad = g.op("Unsqueeze", [pad, g.const("mask_axes", _int64([1, 2, 3]))], "padding_bias_5d")
    mask_bias = g.op("Add", [pad, causal_bias], "attention_bias")

    def rms_norm(x: str, w: str, name: str) -> str:
        sq = g.op("Mul", [x, x], f"{name}.square")
        mean = g.op("ReduceMean", [sq], f"{name}.mean", axes=[-1], keepdims=1)
        rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [mean, eps], f"{name}.add_eps")],
                                        f"{name}.sqrt")], f"{name}.rstd")
        return g.op("Mul", [g.op("Mul", [x, rstd], f"{name}.normalize"), w], f"{name}.scale")

    def rotary(x: str, name: str) -> str:
        """x: [batch, heads, seq, hd] -> rotate-half RoPE."""
        x1 = g.op("Slice", [x, zero_i, g.const(f"{name}.half", _int64([half])),
                            g.const(f"{name}.axis", _int64([3]))], f"{name}.x1")
        x2 = g.op("Slice", [x, f"{name}.half", g.const(f"{name}.end", _int64([hd])),
                            f"{name}.axis"], f"{name}.x2")
        r1 = g.op("Sub", [g.op("Mul", [x1, cos], f"{name}.x1cos"),
                          g.op("Mul", [x2, sin], f"{name}.x2sin")], f"{name}.r1")
        r2 = g.op("Add", [g.op("Mul", [x2, cos], f"{name}.x2cos"),
                          g.op("Mul", [x1, sin], f"{name}.x1sin")], f"{name}.r2")
        return g.op("Concat", [r1, r2], f"{name}.concat", axis=-1)

    def heads(x: str, n: int, name: str) -> str:
        """[batch, seq, n*hd] -> [batch, n, seq, hd]."""
        r = g.op("Reshape", [x, g.const(f"{name}.shape", _int64([0, 0, n, hd]))],
                 f"{name}.reshape")
        return g.op("Transpose", [r], f"{name}.transpose", perm=[0, 2, 1, 3])

    x = g.op("Gather", [weight("model.embed_tokens.weight", (cfg.vocab_size, h)), "input_ids"],
             "model.embed_tokens", axis=0)
    present_outputs: list[str] = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        xn = rms_norm(x, norm_weight(f"{p}.input_layernorm.weight"), f"{p}.input_layernorm")
        q = g.op("MatMul", [xn, weight(f"{p}.self_attn.q_proj.weight", (h, nh * hd))],
                 f"{p}.self_attn.q_proj")
        k = g.op("MatMul", [xn, weight(f"{p}.self_attn.k_proj.weight", (h, nkv * hd))],
                 f"{p}.self_attn.k_proj")
        v = g.op("MatMul", [xn, weight(f"{p}.self_attn.v_proj.weight", (h, nkv * hd))],
                 f"{p}.self_attn.v_proj")
        q = rotary(heads(q, nh, f"{p}.self_attn.q"), f"{p}.self_attn.q_rope")
        k = rotary(heads(k, nkv, f"{p}.self_attn.k"), f"{p}.self_attn.k_rope")
        v = heads(v, nkv, f"{p}.self_attn.v")
        if kv_cache:
            k = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
            v = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
            present_outputs += [k, v]
        # Grouped-query attention by broadcasting: q [b, nkv, n_rep, s, hd] x k [b, nkv, 1, hd, t].
        q5 = g.op("Reshape", [q, g.const(f"{p}.self_attn.q5_shape", _int64([0, nkv, n_rep, -1,
                                                                              hd]))],
                  f"{p}.self_attn.q_groups")
        k5 = g.op("Unsqueeze", [k, g.const(f"{p}.self_attn.kv_axis", _int64([2]))],
                  f"{p}.self_attn.k_groups")
        v5 = g.op("Unsqueeze", [v, f"{p}.self_attn.kv_axis"], f"{p}.self_attn.v_groups")
        kt = g.op("Transpose", [k5], f"{p}.self_attn.k_transpose", perm=[0, 1, 2, 4, 3])
        scores = g.op("Mul", [g.op("MatMul", [q5, kt], f"{p}.self_attn.qk"), attn_scale],
                      f"{p}.self_attn.scale")
        scores = g.op("Add", [scores, mask_bias], f"{p}.self_attn.mask")
        probs = g.op("Softmax", [scores], f"{p}.self_attn.softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v5], f"{p}.self_attn.pv")  # [b, nkv, n_rep, s, hd]
        ctx = g.op("Reshape", [ctx, g.const(f"{p}.self_attn.ctx_shape", _int64([0, nh, -1, hd]))],
                   f"{p}.self_attn.merge_groups")
        ctx = g.op("Transpose", [ctx], f"{p}.self_attn.ctx_transpose", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const(f"{p}.self_attn.out_shape", _int64([0, 0, nh * hd]))],
                   f"{p}.self_attn.merge_heads")
        attn = g.op("MatMul", [ctx, weight(f"{p}.self_attn.o_proj.weight", (nh * hd, h))],
                    f"{p}.self_attn.o_proj")
        x = g.op("Add", [x, attn], f"{p}.attn_residual")
        xn = rms_norm(x, norm_weight(f"{p}.post_attention_layernorm.weight"),
                      f"{p}.post_attention_layernorm")
        gate = g.op("MatMul", [xn, weight(f"{p}.mlp.gate_proj.weight", (h, cfg.ffn_size))],
                    f"{p}.mlp.gate_proj")
        up = g.op("MatMul", [xn, weight(f"{p}.mlp.up_proj.weight", (h, cfg.ffn_size))],
                  f"{p}.mlp.up_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.mlp.sigmoid")], f"{p}.mlp.silu")
        down = g.op("MatMul", [g.op("Mul", [act, up], f"{p}.mlp.gated"),
                               weight(f"{p}.mlp.down_proj.weight", (cfg.ffn_size, h))],
                    f"{p}.mlp.down_proj")
        x = g.op("Add", [x, down], f"{p}.mlp_residual")
    x = rms_norm(x, norm_weight("model.norm.weight"), "model.norm")
    g.op("MatMul", [x, weight("lm_head.weight", (h, cfg.vocab_size))], "logits")

    past = "past" if kv_cache else 0
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                      ["batch", "past_plus_seq" if kv_cache else "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", "seq", cfg.vocab_size])]
    if kv_cache:
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch", nkv, past, hd]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", nkv, "past_plus_seq",
                                                                 hd]))
        # The graph names present outputs after their Concat nodes already.
        assert present_outputs == [o.name for o in outputs[1:]]
    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, g.initializers)
    # The producer name of the files examples/make_decoder.py wrote before it moved here.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sail_compiler.examples.make_decoder")
    model.ir_version = 8
    return model


def write_decoder(cfg: DecoderConfig, path: Path, kv_cache: bool = False, seed: int = 0) -> None:
    """Write the decoder to ``path`` and its weights to ``<path>.data`` one tensor at a time, for
    models too large to build in memory (the same weights as :func:`make_decoder`'s)."""
    location = path.name + ".data"
    with (path.parent / location).open("wb") as file:
        model = make_decoder(cfg, kv_cache, seed, data=(file, location))
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def save_model(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> None:
    """Save ``model``; weights go to ``<path>.data`` when asked or when over 1 GB (protobuf cannot
    serialize 2 GB)."""
    if external_data is None:
        # ByteSize() itself fails above 2 GB; the weights are nearly all of the size.
        weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        external_data = weight_bytes > PROTOBUF_LIMIT_BYTES // 2
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))

