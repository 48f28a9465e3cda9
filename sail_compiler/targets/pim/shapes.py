"""Shape-only decode steps of Llama-style models, for timing-only simulation.

A decode step of a Llama-2 model (one new token per sequence, ``context_len`` positions attended
including it) is a list of ops, each with the sizes that set its cost:

* :class:`GemvOp`: a quantized linear layer ``[B, K] @ [K, N]`` (``sail.lut_gemv`` with its
  dequantization on SAIL).
* :class:`QuantizeOp`: the activation quantization (``sail.quantize``) feeding one or more
  GEMVs; q/k/v share one, gate/up share one (as ``ConvertPIMTypes`` places them).
* :class:`HostOp`: everything else, on the CPU cores: embedding lookup, RMSNorm, rotary
  embedding, attention over the KV cache, residual adds, SiLU x up, final argmax. Figures are
  per token: FP32 flops, DRAM bytes (KV cache and embedding rows, which do not fit the cache)
  and LLC bytes (activations).

Per decoder layer (``d`` hidden, ``f`` intermediate, ``h`` heads of ``d / h``, ``d_kv = kv_heads *
d / h``, ``L`` context, ``kv`` bytes per KV element)::

    input_norm   rmsnorm       4d flops, 8d LLC bytes
    quantize     -> q, k, v    K = d
    q/k/v_proj   gemv          d x d, d x d_kv, d x d_kv
    rope         host          6 (d + d_kv) flops
    attention    host          4 L d + 5 L h flops; KV read 2 L d_kv kv + write 2 d_kv kv bytes
    quantize     -> o_proj     K = d
    o_proj       gemv          d x d
    residual     host          d flops
    post_norm    rmsnorm
    quantize     -> gate, up   K = d
    gate/up_proj gemv          d x f
    silu_mul     host          9 f flops (SiLU by an 8-flop exponential, times up)
    quantize     -> down_proj  K = f
    down_proj    gemv          f x d
    residual     host

then ``norm``, ``lm_head`` (a quantized ``d x vocab`` GEMV, as the compiler quantizes every
MatMul) and ``argmax`` over the vocabulary; the ``embedding`` row (fp16) comes first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ...errors import InputError, OptionError, valid_choices

__all__ = [
    "MODELS",
    "GemvOp",
    "HostOp",
    "ModelShape",
    "Op",
    "QuantizeOp",
    "decode_step",
    "model_shape",
]


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (Hugging Face ``config.json`` names in brackets)."""

    name: str
    hidden: int
    """[hidden_size] d."""
    intermediate: int
    """[intermediate_size] f."""
    layers: int
    """[num_hidden_layers]."""
    heads: int
    """[num_attention_heads]."""
    kv_heads: int
    """[num_key_value_heads]; equal to ``heads`` for Llama-2-7B and 13B (no GQA)."""
    vocab: int
    """[vocab_size]."""

    def __post_init__(self) -> None:
        problems = [f"{f.name} must be a positive integer, got {getattr(self, f.name)!r}"
                    for f in dataclasses.fields(self) if f.name != "name"
                    and (not isinstance(getattr(self, f.name), int)
                         or getattr(self, f.name) < 1)]
        if not problems and (self.hidden % self.heads or self.heads % self.kv_heads):
            problems.append(f"hidden {self.hidden} must be a multiple of heads {self.heads}, "
                            f"and heads a multiple of kv_heads {self.kv_heads}")
        if problems:
            raise OptionError(f"invalid model shape {self.name!r}: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        """``hidden / heads``."""
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """``kv_heads * head_dim``: the width of K and V."""
        return self.kv_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, config: dict[str, Any] | str | Path,
                       name: str | None = None) -> ModelShape:
        """A shape from a Hugging Face Llama ``config.json`` (a path or its parsed dict).

        Raises
        ------
        InputError
            The file is unreadable or lacks a field.
        """
        if not isinstance(config, dict):
            path = Path(config)
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise InputError(f"cannot read model config {path}: {err}") from err
            name = name or path.parent.name or path.stem
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "vocab_size")
        missing = [key for key in keys if key not in config]
        if missing:
            raise InputError(f"model config lacks {missing}; a Llama config.json has {keys}")
        return cls(name=name or config.get("_name_or_path", "model"),
                   hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                   kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
                   vocab=config["vocab_size"])


#: Llama-2 shapes (Touvron et al. 2023; the Hugging Face configs of meta-llama/Llama-2-*-hf).
MODELS: dict[str, ModelShape] = {
    m.name: m for m in (
        ModelShape("llama-2-7b", hidden=4096, intermediate=11008, layers=32, heads=32,
                   kv_heads=32, vocab=32000),
        ModelShape("llama-2-13b", hidden=5120, intermediate=13824, layers=40, heads=40,
                   kv_heads=40, vocab=32000),
    )
}


def model_shape(name: str) -> ModelShape:
    """A model of :data:`MODELS` by name; :class:`OptionError` listing them if unknown."""
    if name not in MODELS:
        raise OptionError(f"unknown model {name!r}; {valid_choices(tuple(MODELS))}")
    return MODELS[name]


@dataclasses.dataclass(frozen=True)
class GemvOp:
    """A quantized linear layer ``[B, k] @ [k, n]``."""

    name: str
    role: str
    k: int
    n: int


@dataclasses.dataclass(frozen=True)
class QuantizeOp:
    """Quantization of ``B`` activation rows of ``k`` values."""

    name: str
    role: str
    k: int


@dataclasses.dataclass(frozen=True)
class HostOp:
    """A CPU op; every figure but ``resident_bytes`` is per token of the batch."""

    name: str
    role: str
    flops: float = 0.0
    dram_bytes: float = 0.0
    llc_bytes: float = 0.0
    resident_bytes: float = 0.0
    """Bytes the op keeps in memory whatever the batch (the embedding table)."""


Op = GemvOp | QuantizeOp | HostOp


def _layer_ops(model: ModelShape, i: int, context_len: int, kv_bytes: float,
               act_bytes: float) -> list[Op]:
    d, f, dkv, pre = model.hidden, model.intermediate, model.kv_dim, f"layers.{i}."
    norm = {"flops": 4.0 * d, "llc_bytes": 2 * d * act_bytes}
    residual = {"flops": float(d), "llc_bytes": 3 * d * act_bytes}
    return [
        HostOp(pre + "input_layernorm", "input_norm", **norm),
        QuantizeOp(pre + "self_attn.quantize", "quantize_qkv", d),
        GemvOp(pre + "self_attn.q_proj", "q_proj", d, d),
        GemvOp(pre + "self_attn.k_proj", "k_proj", d, dkv),
        GemvOp(pre + "self_attn.v_proj", "v_proj", d, dkv),
        HostOp(pre + "self_attn.rope", "rope", flops=6.0 * (d + dkv),
               llc_bytes=2 * (d + dkv) * act_bytes),
        HostOp(pre + "self_attn.attention", "attention",
               flops=4.0 * context_len * d + 5.0 * context_len * model.heads,
               dram_bytes=2 * context_len * dkv * kv_bytes + 2 * dkv * kv_bytes,
               llc_bytes=2 * d * act_bytes),
        QuantizeOp(pre + "self_attn.o_proj.quantize", "quantize_o", d),
        GemvOp(pre + "self_attn.o_proj", "o_proj", d, d),
        HostOp(pre + "residual_attn", "residual", **residual),
        HostOp(pre + "post_attention_layernorm", "post_norm", **norm),
        QuantizeOp(pre + "mlp.quantize", "quantize_gate_up", d),
        GemvOp(pre + "mlp.gate_proj", "gate_proj", d, f),
        GemvOp(pre + "mlp.up_proj", "up_proj", d, f),
        HostOp(pre + "mlp.silu_mul", "silu_mul", flops=9.0 * f, llc_bytes=3 * f * act_bytes),
        QuantizeOp(pre + "mlp.down_proj.quantize", "quantize_down", f),
        GemvOp(pre + "mlp.down_proj", "down_proj", f, d),
        HostOp(pre + "residual_mlp", "residual", **residual),
    ]


def decode_step(model: ModelShape, context_len: int, *, kv_cache_bits: int = 16,
                activation_bits: int = 32) -> list[Op]:
    """The ops of one decode step (module docstring), in execution order.

    Parameters
    ----------
    model
        The model's sizes.
    context_len
        Positions each new token attends to, itself included (>= 1).
    kv_cache_bits, activation_bits
        Storage widths of the KV cache and of float activations.

    Raises
    ------
    OptionError
        ``context_len`` is not a positive integer.
    """
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < 1:
        raise OptionError(f"context_len must be a positive integer, got {context_len!r}")
    kv_bytes, act_bytes = kv_cache_bits / 8, activation_bits / 8
    d = model.hidden
    ops: list[Op] = [HostOp("embed_tokens", "embedding", dram_bytes=2.0 * d,
                            llc_bytes=d * act_bytes, resident_bytes=2.0 * d * model.vocab)]
    for i in range(model.layers):
        ops += _layer_ops(model, i, context_len, kv_bytes, act_bytes)
    ops += [
        HostOp("norm", "final_norm", flops=4.0 * d, llc_bytes=2 * d * act_bytes),
        QuantizeOp("lm_head.quantize", "quantize_lm_head", d),
        GemvOp("lm_head", "lm_head", d, model.vocab),
        HostOp("argmax", "argmax", flops=float(model.vocab), llc_bytes=model.vocab * act_bytes),
    ]
    return ops
