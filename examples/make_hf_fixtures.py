"""Export tiny random-init Hugging Face decoders (and a BERT encoder) to ONNX test fixtures.

The fixtures exercise the ONNX frontend on the shape-computation subgraphs that real
``torch.onnx.export`` output of transformers decoders contains (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape``, ``Range`` over the sequence length, causal-mask
construction with ``Expand``/``Where``/``Equal``), with batch, sequence and past lengths
left symbolic.

Ten files are written to ``tests/fixtures/hf/`` (or ``--out-dir``)::

    {llama,gpt2}_{legacy,dynamo}[_kv].onnx
    bert_{legacy,dynamo}.onnx

* ``llama``: ``LlamaForCausalLM`` with grouped-query attention (4 query heads, 2 key/value
  heads), hidden size 64, 2 layers, vocabulary 256.
* ``gpt2``: ``GPT2LMHeadModel``, hidden size 64, 4 heads, 2 layers, vocabulary 256.
* ``bert``: ``BertModel`` (encoder with pooler, no head), hidden size 64, 4 heads, 2 layers,
  intermediate size 128, vocabulary 256, 128 positions, 2 token types. Inputs
  ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64 ``[batch, seq]``);
  outputs ``last_hidden_state [batch, seq, 64]`` and ``pooler_output [batch, 64]``. No KV
  variant. It is traced with a padded mask (zeros at the end of one row) and token types
  0/1, so that no value of either specializes the trace.
* ``legacy``: ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing), opset 17,
  dynamic axes given with ``dynamic_axes``.
* ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript),
  dynamic axes given with ``dynamic_shapes``, opset 18. Opset 17 cannot be had from this
  exporter: it builds at 18 and then runs a version converter, and with opset_version=17
  the GPT-2 export comes out labelled opset 17 but with opset-18 ``Split(num_outputs=)``
  nodes (``onnx.checker`` rejects it), while for Llama the conversion fails (``ReduceMean``
  axes are not a constant) and the file silently stays at opset 18. So 18 is requested.
* without ``_kv``: inputs ``input_ids [batch, seq]`` (int64) and
  ``attention_mask [batch, seq]`` (int64); output ``logits [batch, seq, vocab]``.
* with ``_kv``: inputs ``input_ids [batch, seq]``, ``attention_mask [batch, past + seq]``
  (the mask length is its own symbol in the file: ``past_seq`` or ``s53``) and, per
  layer ``i``, ``past_key_values.{i}.key`` / ``past_key_values.{i}.value``
  ``[batch, kv_heads, past, head_dim]`` (float32); outputs ``logits`` and
  ``present.{i}.key`` / ``present.{i}.value`` ``[batch, kv_heads, past + seq, head_dim]``.
  A wrapper module rebuilds a ``DynamicCache`` from the flat past tensors, runs the model
  with ``use_cache=True`` and returns the flat present tensors.

All models use ``attn_implementation="eager"`` so that the attention mask is an explicit
tensor computation in the graph (the SDPA path lets transformers drop the mask when it can
prove it is all ones, which a symbolic trace cannot). Weights come from
``torch.manual_seed(0)`` random initialization (nothing is downloaded). Position ids are
not an input: the models derive them from the past length (``past + arange(seq)``), which
is exactly the shape arithmetic the frontend has to keep symbolic.

The KV fixtures are traced with past length 3 but are valid for any past length,
including 0 (an empty cache, i.e. prefill): onnxruntime matches the PyTorch module at past
lengths 0, 1, 4 and 9 to ~3e-7.

All eight decoder combinations and both BERT exports export with torch 2.13.0 /
transformers 5.24.0 / onnxscript 0.7.2, byte-for-byte reproducibly. Notes on the dynamo
exporter: ``past + seq`` cannot be given as the attention mask's length (``torch.export``
derived dims are linear in a *single* root dim), so that axis is ``Dim.DYNAMIC`` and
appears in the ONNX file under a generated name (``s53``); the present outputs
get ``past + seq`` as their dim names.

Usage::

    python examples/make_hf_fixtures.py [--out-dir tests/fixtures/hf] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import transformers
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

SEED = 0
VOCAB = 256
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # Llama only: grouped-query attention
LEGACY_OPSET = 17
DYNAMO_OPSET = 18
# Example-input sizes used for tracing. They must differ from each other and from 1 so
# that no tracer specializes a dimension to a constant.
EX_BATCH, EX_SEQ, EX_PAST = 2, 5, 3

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"


@dataclass(frozen=True)
class FixtureSpec:
    """One fixture to export.

    Parameters
    ----------
    family : str
        ``"llama"``, ``"gpt2"`` or ``"bert"`` (encoder; ``kv_cache`` must be False).
    exporter : str
        ``"legacy"`` (``dynamo=False``) or ``"dynamo"`` (``dynamo=True``).
    kv_cache : bool
        Whether past key/values are graph inputs and present key/values are outputs.
    """

    family: str
    exporter: str
    kv_cache: bool

    @property
    def name(self) -> str:
        """File stem of the fixture, e.g. ``llama_dynamo_kv``."""
        return f"{self.family}_{self.exporter}" + ("_kv" if self.kv_cache else "")


ALL_SPECS: tuple[FixtureSpec, ...] = tuple(
    FixtureSpec(family, exporter, kv)
    for family in ("llama", "gpt2")
    for exporter in ("legacy", "dynamo")
    for kv in (False, True)
) + tuple(FixtureSpec(family, exporter, False) for family in ("bert", "whisper")
          for exporter in ("legacy", "dynamo"))


def build_model(family: str) -> transformers.PreTrainedModel:
    """Build a tiny random-init causal LM in eval mode.

    Parameters
    ----------
    family : str
        ``"llama"``, ``"gpt2"`` or ``"bert"``.

    Returns
    -------
    transformers.PreTrainedModel
        The model, float32, with dropout disabled.
    """
    torch.manual_seed(SEED)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            attn_implementation="eager",
        )
        model = transformers.LlamaForCausalLM(config)
    elif family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
        model = transformers.GPT2LMHeadModel(config)
    elif family == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=128,
            type_vocab_size=2,
            attn_implementation="eager",
        )
        model = transformers.BertModel(config)
    elif family == "t5":
        config = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=HIDDEN // HEADS,
            d_ff=2 * HIDDEN,
            num_layers=LAYERS,
            num_heads=HEADS,
            relative_attention_num_buckets=8,
            attn_implementation="eager",
        )
        model = transformers.T5EncoderModel(config)
    elif family == "whisper":
        config = transformers.WhisperConfig(
            vocab_size=VOCAB,
            num_mel_bins=WHISPER_MELS,
            d_model=HIDDEN,
            encoder_layers=LAYERS,
            encoder_attention_heads=HEADS,
            encoder_ffn_dim=2 * HIDDEN,
            decoder_layers=1,
            decoder_attention_heads=HEADS,
            decoder_ffn_dim=2 * HIDDEN,
            max_source_positions=WHISPER_FRAMES // 2,
            max_target_positions=32,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            decoder_start_token_id=0,
            attn_implementation="eager",
        )
        model = transformers.WhisperModel(config).get_encoder()
    elif family in _CORPUS_FAMILIES:
        config_cls, model_cls, extra = _CORPUS_FAMILIES[family]
        config = getattr(transformers, config_cls)(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            max_position_embeddings=256,
            attn_implementation="eager",
            **extra,
        )
        model = getattr(transformers, model_cls)(config)
    else:
        raise ValueError(f"unknown model family {family!r}")
    return model.eval()


# Decoders of the corpus report (benchmarks/frontend_corpus.py), not committed as fixtures:
# family -> (config class, model class, config arguments beyond the shared sizes).
_CORPUS_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": HIDDEN // HEADS}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": HIDDEN // HEADS}),
}

#: Encoders: T5's (``input_ids``, ``attention_mask``; corpus only) and Whisper's
#: (``input_features [batch, mels, frames]``; Whisper requires exactly ``2 *
#: max_source_positions`` frames, so only the batch is dynamic; committed fixtures, the
#: Hugging Face exports stock TVM imports too).
ENCODER_FAMILIES = ("t5", "whisper")
WHISPER_MELS, WHISPER_FRAMES = 16, 32

#: Every export of the corpus report: the fixtures' families and the ones above.
CORPUS_SPECS: tuple[FixtureSpec, ...] = ALL_SPECS + tuple(
    FixtureSpec(family, exporter, kv)
    for family in _CORPUS_FAMILIES
    for exporter in ("legacy", "dynamo")
    for kv in (False, True)
) + tuple(FixtureSpec("t5", exporter, False) for exporter in ("legacy", "dynamo"))


def kv_shape_info(model: transformers.PreTrainedModel) -> tuple[int, int, int]:
    """Return ``(num_layers, num_kv_heads, head_dim)`` of a model's cache tensors."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask) -> logits`` without any cache."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the model without a cache and return the logits."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


class BertOutputs(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> (last_hidden_state, pooler_output)``."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder and return its two outputs as a plain tuple."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state, out.pooler_output


class EncoderOutput(nn.Module):
    """``(*inputs) -> last_hidden_state`` of an encoder (T5's, Whisper's)."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the encoder on its positional inputs and return the last hidden state."""
        return self.model(*inputs).last_hidden_state


class FlatKVCache(nn.Module):
    """``(input_ids, attention_mask, *past) -> (logits, *present)`` with a flat cache.

    ``past`` is ``key_0, value_0, key_1, value_1, ...``; ``present`` has the same layout
    with the new tokens appended along the sequence axis.
    """

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Rebuild a ``DynamicCache`` from ``past``, run one step, flatten the cache."""
        layers = []
        for i in range(self.num_layers):
            # Fill the layer directly: DynamicLayer.update would concatenate onto an empty
            # placeholder tensor, which adds a pointless empty Concat input to the graph.
            layer = DynamicLayer()
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            layer.device = layer.keys.device
            layer.is_initialized = True
            layers.append(layer)
        cache = DynamicCache()
        cache.layers = layers
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True
        )
        flat: list[torch.Tensor] = [out.logits]
        for layer in out.cache.layers:
            flat.extend((layer.keys, layer.values))
        return tuple(flat)


def io_names(num_layers: int, kv_cache: bool, family: str = "") -> tuple[list[str], list[str]]:
    """Graph input and output names of a fixture."""
    if family == "bert":
        return ["input_ids", "attention_mask", "token_type_ids"], [
            "last_hidden_state",
            "pooler_output",
        ]
    if family == "t5":
        return ["input_ids", "attention_mask"], ["last_hidden_state"]
    if family == "whisper":
        return ["input_features"], ["last_hidden_state"]
    inputs = ["input_ids", "attention_mask"]
    outputs = ["logits"]
    if kv_cache:
        for i in range(num_layers):
            inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def example_inputs(model: transformers.PreTrainedModel, kv_cache: bool) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs used for tracing."""
    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, model.config.vocab_size, (EX_BATCH, EX_SEQ), generator=gen)
    if model.config.model_type == "whisper":
        return (torch.randn(EX_BATCH, WHISPER_MELS, WHISPER_FRAMES, generator=gen),)
    if model.config.model_type == "t5":
        mask = torch.ones(EX_BATCH, EX_SEQ, dtype=torch.int64)
        mask[-1, -2:] = 0  # right padding in the last row
        return ids, mask
    if model.config.model_type == "bert":
        mask = torch.ones(EX_BATCH, EX_SEQ, dtype=torch.int64)
        mask[-1, -2:] = 0  # right padding in the last row
        token_types = torch.zeros(EX_BATCH, EX_SEQ, dtype=torch.int64)
        token_types[:, EX_SEQ // 2 :] = 1  # sentence A, then sentence B
        return ids, mask, token_types
    if not kv_cache:
        return ids, torch.ones(EX_BATCH, EX_SEQ, dtype=torch.int64)
    num_layers, kv_heads, head_dim = kv_shape_info(model)
    mask = torch.ones(EX_BATCH, EX_PAST + EX_SEQ, dtype=torch.int64)
    past = [
        torch.randn(EX_BATCH, kv_heads, EX_PAST, head_dim, generator=gen)
        for _ in range(2 * num_layers)
    ]
    return (ids, mask, *past)


def export_legacy(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    kv_cache: bool,
) -> None:
    """Export with the TorchScript-based exporter (``dynamo=False``)."""
    inputs, outputs = names
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "past_seq" if kv_cache else "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    if "token_type_ids" in inputs:  # BERT
        axes = {name: {0: "batch", 1: "seq"} for name in [*inputs, outputs[0]]}
        axes["pooler_output"] = {0: "batch"}
    elif inputs == ["input_features"]:  # Whisper's encoder: a fixed number of frames
        axes = {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}}
    elif outputs == ["last_hidden_state"]:  # T5's encoder
        axes = {name: {0: "batch", 1: "seq"} for name in [*inputs, *outputs]}
    else:
        for name in inputs[2:]:
            axes[name] = {0: "batch", 2: "past"}
        for name in outputs[1:]:
            axes[name] = {0: "batch", 2: "past_seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python bools in transformers
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=LEGACY_OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def export_dynamo(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    kv_cache: bool,
) -> None:
    """Export with the ``torch.export``-based exporter (``dynamo=True``)."""
    inputs, outputs = names
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=128)
    if kv_cache:
        past = torch.export.Dim("past", min=1, max=128)
        shapes: tuple = (
            {0: batch, 1: seq},
            # past + seq is not expressible (derived dims are linear in ONE root dim):
            # leave it to torch.export to infer the relation from the graph.
            {0: batch, 1: torch.export.Dim.DYNAMIC},
            *([{0: batch, 2: past}] * (len(inputs) - 2)),
        )
        shapes = (shapes[0], shapes[1], shapes[2:])  # *past is one positional pytree
    elif inputs == ["input_features"]:  # Whisper's encoder: a fixed number of frames
        shapes = (({0: batch},),)  # the encoder's *inputs is one positional pytree
    elif outputs == ["last_hidden_state"] and "token_type_ids" not in inputs:  # T5's encoder
        shapes = (tuple({0: batch, 1: seq} for _ in inputs),)
    else:
        shapes = tuple({0: batch, 1: seq} for _ in inputs)
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=shapes,
        external_data=False,
        optimize=True,
    )
    program.save(str(path), external_data=False)


def export_fixture(spec: FixtureSpec, out_dir: Path) -> Path:
    """Export one fixture and check it with ``onnx.checker``.

    Parameters
    ----------
    spec : FixtureSpec
        What to export.
    out_dir : Path
        Destination directory (created if missing).

    Returns
    -------
    Path
        Path of the written ``.onnx`` file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    model = build_model(spec.family)
    if spec.family == "bert":
        module: nn.Module = BertOutputs(model)
    elif spec.family in ENCODER_FAMILIES:
        module = EncoderOutput(model)
    else:
        module = FlatKVCache(model) if spec.kv_cache else LogitsOnly(model)
    module.eval()
    args = example_inputs(model, spec.kv_cache)
    names = io_names(model.config.num_hidden_layers, spec.kv_cache, spec.family)
    with torch.no_grad():
        if spec.exporter == "legacy":
            export_legacy(module, args, path, names, spec.kv_cache)
        else:
            export_dynamo(module, args, path, names, spec.kv_cache)
    proto = onnx.load(str(path))
    if strip_stack_traces(proto):
        onnx.save(proto, str(path))
    onnx.checker.check_model(proto)
    return path


def strip_stack_traces(proto: onnx.ModelProto) -> int:
    """Drop the dynamo exporter's per-node Python stack traces, in place.

    They hold absolute paths and line numbers of this script and of the installed
    packages, so keeping them would make the files depend on where they were made.

    Returns
    -------
    int
        Number of entries removed.
    """
    removed = 0
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        removed += len(node.metadata_props) - len(kept)
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return removed


def describe(path: Path) -> str:
    """One-line summary of an exported file: size, opsets, inputs and outputs."""
    proto = onnx.load(str(path))
    opsets = ",".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in proto.opset_import)

    def fmt(values: Sequence[onnx.ValueInfoProto]) -> str:
        parts = []
        for v in values:
            dims = [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]
            parts.append(f"{v.name}[{','.join(dims)}]")
        return " ".join(parts)

    return (
        f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, opset {opsets}, "
        f"{len(proto.graph.node)} nodes\n  in:  {fmt(proto.graph.input)}\n"
        f"  out: {fmt(proto.graph.output)}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--only", nargs="*", default=None, help="fixture names to export (default: all)"
    )
    parser.add_argument(
        "--corpus", action="store_true",
        help="export every family of the corpus report (more families; failures recorded in "
             "NAME.export_error; files already there are kept)",
    )
    ns = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    pool = CORPUS_SPECS if ns.corpus else ALL_SPECS
    specs = [s for s in pool if ns.only is None or s.name in ns.only]
    failed = 0
    for spec in specs:
        if ns.corpus and (ns.out_dir / f"{spec.name}.onnx").exists():
            continue
        try:
            path = export_fixture(spec, ns.out_dir)
        except Exception as err:
            if not ns.corpus:
                raise
            # the corpus records an export that fails instead of stopping at it
            failed += 1
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            (ns.out_dir / f"{spec.name}.export_error").write_text(f"{type(err).__name__}: {line}")
            print(f"{spec.name}: export failed: {type(err).__name__}: {line[:200]}", flush=True)
            continue
        print(describe(path), flush=True)


if __name__ == "__main__":
    main()
