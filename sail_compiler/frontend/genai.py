"""onnxruntime-genai's model builder output: rewrites before import and the attention converter.

``python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int4|fp32 -e cpu`` writes
decoders with onnxruntime's contrib ops. :func:`rewrite_genai` runs on the loaded model before
the quantized-matmul rewrite (:mod:`.prequantized`, which handles the builder's
``MatMulNBits``) and makes every other contrib op importable:

``SimplifiedLayerNormalization`` (ai.onnx or com.microsoft domain)
    ``y = x / sqrt(mean(x * x, axis=-1) + epsilon) * scale`` over the last axis, written as
    ai.onnx ``Mul``, ``ReduceMean``, ``Add``, ``Sqrt``, ``Div``, ``Mul``. Only ``axis = -1`` (or
    the last axis) and ``stash_type = 1`` (float32) are accepted.
``SkipSimplifiedLayerNormalization`` (com.microsoft)
    ``s = input + skip (+ bias)``; output 0 is the simplified norm of ``s``, output 3 is ``s``.
    Outputs 1 and 2 (mean, inverse std) must be unused.
``GatherBlockQuantized`` (com.microsoft)
    A lookup in a table of 4-bit codes ``[V, D / 2]`` (uint8, two codes per byte, low nibble
    first; directly or through a ``Reshape`` of an initializer) with scales ``[V, D / block]``
    and no zero points (implicit 8), gathered along axis 0, quantized along axis 1: the builder's
    tied int4 embedding. It becomes an ai.onnx ``Gather`` of the float table ``T = dequantize(qw)
    ^T`` and a :class:`~.prequantized.PrequantizedLayer` whose ``qw`` holds ``T^T`` as stored:
    the quantize stage keeps those codes (``sail.quant_take``) instead of re-quantizing.
``GroupQueryAttention`` (com.microsoft)
    Kept; :class:`GroupQueryAttentionConverter` imports it onto ``sail.attention``
    (:mod:`~sail_compiler.ops.attention`). Semantics (onnxruntime's CPU kernel, past and present
    in separate buffers): ``q [B, S, Hq * D]``, ``k``, ``v [B, S, Hkv * D]`` (or a packed
    ``q [B, S, (Hq + 2 Hkv) * D]`` with ``k``, ``v`` absent), ``past_key/value [B, Hkv, P, D]``,
    ``seqlens_k int32 [B]`` (tokens so far minus one, from the attention mask). The query at
    row ``s`` has position ``pos = seqlens_k + 1 - S + s``; with ``do_rotary = 1`` queries and
    keys are rotated (half-split, not interleaved) by ``cos_cache[pos]``, ``sin_cache[pos]``
    (``[max_positions, R / 2]``; the first ``R`` of the ``D`` dims rotate). ``present = concat
    (past, new)`` along the sequence; the query at ``pos`` reads present key ``t`` when
    ``t <= pos`` and, with ``local_window_size = W > 0``, ``t > pos - W`` (the last W keys,
    as Hugging Face's ``sliding_window``; checked against onnxruntime).
    Scores are scaled by ``scale`` (0: ``1 / sqrt(D)``) and soft-capped by ``softcap``.

With ``sliding_window_cache = 1`` onnxruntime-genai keeps a sliding layer's past in a buffer of
the window's capacity and evicts the oldest keys; the lowering keeps every key and masks those
outside the window, which gives the same logits (checked to ~1e-6 against onnxruntime-genai
over four windows; onnxruntime alone refuses growing pasts with the attribute, so
:func:`reference_model` drops it for ``sail verify``).

The builder writes the cache dims as ``kv_cache_dim`` (symbolic, for its quantized caches) and
names the past of sliding layers ``past_sliding_length``; :func:`rewrite_genai` fixes
``kv_cache_dim`` to the head size and names every past ``past_sequence_length`` and every
total ``past_sequence_length + sequence_length``, the convention the runtimes read.

Anything else (interleaved rotary, ``position_ids``, ``attention_bias`` or ``head_sink``
inputs, ``smooth_softmax``, quantized KV caches, fused q/k norms, other attribute values) is
reported by node and attribute in one :class:`~sail_compiler.errors.ModelCheckError`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..quant.packing import unpack_bits
from ..quant.reference import QuantizedWeight, dequantize
from .prequantized import MS_DOMAIN, PrequantizedLayer, fresh_name, remove_named

#: The (domain, op type) pairs :func:`rewrite_genai` rewrites or reports.
GENAI_OPS = frozenset({
    ("", "SimplifiedLayerNormalization"), ("ai.onnx", "SimplifiedLayerNormalization"),
    (MS_DOMAIN, "SimplifiedLayerNormalization"), (MS_DOMAIN, "SkipSimplifiedLayerNormalization"),
    (MS_DOMAIN, "GatherBlockQuantized"), (MS_DOMAIN, "GroupQueryAttention"),
})
#: Dim names the rewrite gives the cache and mask dims.
PAST_DIM = "past_sequence_length"
SEQ_DIM = "sequence_length"
TOTAL_DIM = f"{PAST_DIM} + {SEQ_DIM}"

# GroupQueryAttention attributes: name -> predicate on the value, and what is accepted.
_GQA_ATTRS: dict[str, tuple[Any, str]] = {
    "num_heads": (lambda v: v > 0, "> 0"),
    "kv_num_heads": (lambda v: v > 0, "> 0"),
    "scale": (lambda v: math.isfinite(v), "finite"),
    "softcap": (lambda v: math.isfinite(v) and v >= 0, ">= 0"),
    "local_window_size": (lambda v: v == -1 or v > 0, "-1 or > 0"),
    "do_rotary": (lambda v: v in (0, 1), "0 or 1"),
    "rotary_interleaved": (lambda v: v == 0, "0 (half-split rotary)"),
    "smooth_softmax": (lambda v: v == 0, "0"),
    "qk_output": (lambda v: v == 0, "0"),
    "sliding_window_cache": (lambda v: v in (0, 1), "0 or 1"),
}
# GroupQueryAttention inputs past cos/sin that the lowering does not model.
_GQA_UNSUPPORTED_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink"}


@dataclasses.dataclass
class GenaiRewrite:
    """What :func:`rewrite_genai` did: problems (one line each), the embedding layers it made
    and whether the model had ops to rewrite."""

    problems: list[str] = dataclasses.field(default_factory=list)
    layers: dict[str, PrequantizedLayer] = dataclasses.field(default_factory=dict)
    rewrote: bool = False


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def is_genai_model(model: onnx.ModelProto) -> bool:
    """Whether the graph has a node :func:`rewrite_genai` handles."""
    return any((n.domain, n.op_type) in GENAI_OPS for n in model.graph.node)


class _Builder:
    """Emits the replacement nodes of one graph, with fresh names and shared constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.taken = {n for node in self.graph.node for n in [*node.input, *node.output]}
        self.taken |= {t.name for t in self.graph.initializer}
        self.taken |= {v.name for v in [*self.graph.input, *self.graph.output]}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          17)
        self.constants: dict[tuple, str] = {}
        self.new_initializers: list[onnx.TensorProto] = []  # added once nothing was wrong
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}

    def name(self, base: str) -> str:
        name = fresh_name(base, self.taken)
        self.taken.add(name)
        return name

    def constant(self, array: np.ndarray) -> str:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            name = self.name(f"genai_const_{len(self.constants)}")
            self.new_initializers.append(numpy_helper.from_array(array, name))
            self.constants[key] = name
        return self.constants[key]

    def rms_norm(self, x: str, scale: str, eps: float, out: str, where: str) -> list:
        """``out = x / sqrt(mean(x * x, -1) + eps) * scale`` as ai.onnx nodes."""
        names = [self.name(f"{where}/{s}") for s in ("square", "mean", "add_eps", "rms", "normed")]
        if self.opset >= 18:
            mean = helper.make_node("ReduceMean", [names[0], self.constant(np.array([-1]))],
                                    [names[1]], keepdims=1, name=names[1])
        else:
            mean = helper.make_node("ReduceMean", [names[0]], [names[1]], axes=[-1],
                                    keepdims=1, name=names[1])
        return [
            helper.make_node("Mul", [x, x], [names[0]], name=names[0]),
            mean,
            helper.make_node("Add", [names[1], self.constant(np.array(eps, np.float32))],
                             [names[2]], name=names[2]),
            helper.make_node("Sqrt", [names[2]], [names[3]], name=names[3]),
            helper.make_node("Div", [x, names[3]], [names[4]], name=names[4]),
            helper.make_node("Mul", [names[4], scale], [out], name=f"{where}/scale"),
        ]

    def initializer_value(self, name: str) -> np.ndarray | None:
        """An initializer, or a ``Reshape`` of one by a constant shape, as an array."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            return None
        data = self.initializer_value(node.input[0])
        shape = self._constant_value(node.input[1])
        if data is None or shape is None:
            return None
        return data.reshape([d if d != 0 else data.shape[i] for i, d in enumerate(shape)])

    def _constant_value(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(_attrs(node)["value"]) if "value" in _attrs(node) \
                else None
        return None


def _simplified_norm(b: _Builder, node: onnx.NodeProto, problems: list[str]) -> list | None:
    attrs = _attrs(node)
    bad = [f"{k}={v}" for k, v in attrs.items()
           if not ((k == "axis" and v == -1) or (k == "stash_type" and v == 1)
                   or k == "epsilon")]
    if bad or len(node.input) != 2 or len(node.output) != 1:
        problems.append(f"{_label(node)}: unsupported attribute(s) {', '.join(bad) or '-'} or "
                        f"{len(node.input)} inputs / {len(node.output)} outputs; the import "
                        "supports axis=-1, stash_type=1, inputs (X, scale) and one output")
        return None
    return b.rms_norm(node.input[0], node.input[1], float(attrs.get("epsilon", 1e-5)),
                      node.output[0], node.name or node.output[0])


def _skip_simplified_norm(b: _Builder, node: onnx.NodeProto, used: set[str],
                          problems: list[str]) -> list | None:
    attrs = _attrs(node)
    outs = list(node.output) + [""] * (4 - len(node.output))
    bad = [f"{k}={v}" for k, v in attrs.items() if k != "epsilon"]
    if any(outs[i] and outs[i] in used for i in (1, 2)):
        bad.append("its mean / inv_std_var outputs are read")
    if bad or len(node.input) not in (3, 4):
        problems.append(f"{_label(node)}: unsupported {', '.join(bad) or 'inputs'}; the import "
                        "supports inputs (input, skip, gamma[, bias]) and outputs 0 and 3")
        return None
    where = node.name or outs[0]
    total = outs[3] or b.name(f"{where}/sum")
    nodes = []
    if len(node.input) == 4 and node.input[3]:
        partial = b.name(f"{where}/sum_no_bias")
        nodes += [helper.make_node("Add", node.input[:2], [partial], name=partial),
                  helper.make_node("Add", [partial, node.input[3]], [total], name=total)]
    else:
        nodes.append(helper.make_node("Add", node.input[:2], [total], name=total))
    out = outs[0] or b.name(f"{where}/unused")
    return nodes + b.rms_norm(total, node.input[2], float(attrs.get("epsilon", 1e-5)), out, where)


def _gather_block_quantized(b: _Builder, node: onnx.NodeProto, rewrite: GenaiRewrite) -> list:
    attrs = _attrs(node)
    bits, block = int(attrs.get("bits", 4)), int(attrs.get("block_size", 128))
    problems = []
    if bits != 4:
        problems.append(f"bits={bits} (4 supported)")
    if int(attrs.get("gather_axis", 0)) != 0:
        problems.append(f"gather_axis={attrs.get('gather_axis')} (0 supported)")
    if int(attrs.get("quantize_axis", 1)) not in (1, -1):
        problems.append(f"quantize_axis={attrs.get('quantize_axis')} (1 supported)")
    if len(node.input) > 3 and node.input[3]:
        problems.append("zero_points input (symmetric codes only)")
    data = b.initializer_value(node.input[0])
    scales = b.initializer_value(node.input[2]) if len(node.input) > 2 else None
    if data is None or data.dtype != np.uint8 or data.ndim != 2:
        problems.append("data must be a uint8 [V, D / 2] initializer (or a Reshape of one)")
    if scales is None or scales.dtype != np.float32:
        problems.append("scales must be a float32 initializer")
    if not problems:
        vocab, dim = data.shape[0], data.shape[1] * 2
        groups = -(-dim // block)
        if scales.size != vocab * groups or block < 16 or block & (block - 1):
            problems.append(f"scales hold {scales.size} values for a [{vocab}, {dim}] table "
                            f"in blocks of {block}")
    if problems:
        rewrite.problems.append(f"{_label(node)}: unsupported " + "; ".join(problems))
        return []
    codes = unpack_bits(data.reshape(-1), 4, vocab * dim).reshape(vocab, dim)
    k_pad = groups * block
    q = np.full((k_pad, vocab), 8, np.uint8)
    q[:dim] = codes.T
    qw = QuantizedWeight(q, np.ascontiguousarray(scales.reshape(vocab, groups).T), None, 4,
                         block, dim)
    table = b.name(f"{node.name or node.output[0]}/table")
    b.new_initializers.append(
        numpy_helper.from_array(np.ascontiguousarray(dequantize(qw).T, np.float32), table))
    rewrite.layers[table] = PrequantizedLayer(node.name or node.output[0], table, qw,
                                              "GatherBlockQuantized")
    return [helper.make_node("Gather", [table, node.input[1]], list(node.output), axis=0,
                             name=node.name)]


def _check_gqa(b: _Builder, node: onnx.NodeProto) -> list[str]:
    """Problems of one GroupQueryAttention node."""
    attrs = _attrs(node)
    problems = []
    for key, value in attrs.items():
        rule = _GQA_ATTRS.get(key)
        if rule is None:
            problems.append(f"attribute {key}={value} is not supported")
        elif not rule[0](value):
            problems.append(f"attribute {key}={value} is not supported (accepted: {rule[1]})")
    for key in ("num_heads", "kv_num_heads"):
        if key not in attrs:
            problems.append(f"attribute {key} is missing")
    if not problems and attrs["num_heads"] % attrs["kv_num_heads"]:
        problems.append(f"num_heads={attrs['num_heads']} is not a multiple of kv_num_heads="
                        f"{attrs['kv_num_heads']}")
    inputs = list(node.input) + [""] * (12 - len(node.input))
    if len(node.input) > 12:
        problems.append(f"{len(node.input)} inputs (at most 12 are known)")
    for index, what in _GQA_UNSUPPORTED_INPUTS.items():
        if inputs[index]:
            problems.append(f"input {index} ({what}) is not supported")
    if bool(inputs[1]) != bool(inputs[2]):
        problems.append("key and value must both be given (or both absent: packed QKV)")
    if bool(inputs[3]) != bool(inputs[4]):
        problems.append("past_key and past_value must both be given or both absent")
    if not inputs[5]:
        problems.append("input 5 (seqlens_k) is required")
    if attrs.get("do_rotary", 0):
        for index in (7, 8):
            table = b.initializer_value(inputs[index]) if inputs[index] else None
            if table is None or table.ndim != 2 or table.dtype != np.float32:
                problems.append(f"input {index} (cos/sin cache) must be a float32 2-D "
                                "initializer")
    return [f"{_label(node)}: {p}" for p in problems]


def _value_dims(value: onnx.ValueInfoProto) -> list:
    return list(value.type.tensor_type.shape.dim)


def _rename_cache_dims(graph: onnx.GraphProto, head_size: int | None) -> None:
    """Name the builder's cache and mask dims as the runtimes expect (module docstring).

    A graph without a past (e.g. onnxruntime's transformers optimizer output, whose only contrib
    op is SkipSimplifiedLayerNormalization) keeps its names: its mask is as long as its ids, and
    a total named ``past + seq`` would use a past no input defines.
    """
    if not any(v.name.startswith("past_key_values.") for v in graph.input):
        return
    for value in [*graph.input, *graph.output]:
        dims = _value_dims(value)
        if value.name == "attention_mask" and len(dims) == 2 \
                and dims[1].HasField("dim_param"):
            dims[1].dim_param = TOTAL_DIM
        if (value.name.startswith("past_key_values.") or value.name.startswith("present.")) \
                and len(dims) == 4:
            if dims[2].HasField("dim_param"):
                dims[2].dim_param = PAST_DIM if value.name.startswith("past") else TOTAL_DIM
            if dims[3].HasField("dim_param") and head_size is not None:
                dims[3].Clear()
                dims[3].dim_value = head_size
        if value.name == "input_ids" and len(dims) == 2 and dims[1].HasField("dim_param"):
            dims[1].dim_param = SEQ_DIM


def _head_size(b: _Builder, node: onnx.NodeProto) -> int | None:
    """The head size of a GroupQueryAttention, from the MatMul weights that produce its q."""
    attrs = _attrs(node)
    width = _last_dim(b, node.input[0])
    if width is None:
        return None
    heads = attrs["num_heads"] + (0 if node.input[1] else 2 * attrs["kv_num_heads"])
    return width // heads if width % heads == 0 else None


def _last_dim(b: _Builder, name: str, depth: int = 0) -> int | None:
    """The static last dim of ``name``, followed back through shape-keeping ops."""
    node = b.producer.get(name)
    if node is None or depth > 20:
        return None
    if node.op_type == "MatMulNBits":
        return int(_attrs(node)["N"])
    if node.op_type == "MatMul" and node.input[1] in b.initializers:
        return int(b.initializers[node.input[1]].dims[-1])
    if node.op_type == "Reshape":
        shape = b._constant_value(node.input[1])
        if shape is not None and shape[-1] > 0:
            return int(shape[-1])
    if node.op_type == "Split":
        sizes = b._constant_value(node.input[1]) if len(node.input) > 1 else None
        if sizes is not None:
            return int(sizes[list(node.output).index(name)])
        return None
    if node.op_type in ("Add", "Mul", "SimplifiedLayerNormalization", "Cast", "Identity"):
        return _last_dim(b, node.input[0], depth + 1)
    return None


def rewrite_genai(model: onnx.ModelProto) -> GenaiRewrite:
    """Rewrite, in place, the builder's contrib ops that import as ai.onnx (module docstring).

    Returns
    -------
    GenaiRewrite
        Every problem (node and attribute), the embedding layers made from
        ``GatherBlockQuantized`` (new initializer name -> layer). When there are problems the
        model is left as it was.
    """
    rewrite = GenaiRewrite()
    if not is_genai_model(model):
        return rewrite
    rewrite.rewrote = True
    b = _Builder(model)
    graph = model.graph
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    head_sizes: set[int] = set()
    replaced: dict[int, list] = {}
    for index, node in enumerate(graph.node):
        key = (node.domain, node.op_type)
        if key not in GENAI_OPS:
            continue
        if node.op_type == "SimplifiedLayerNormalization":
            new = _simplified_norm(b, node, rewrite.problems)
        elif node.op_type == "SkipSimplifiedLayerNormalization":
            new = _skip_simplified_norm(b, node, used, rewrite.problems)
        elif node.op_type == "GatherBlockQuantized":
            new = _gather_block_quantized(b, node, rewrite)
        else:
            problems = _check_gqa(b, node)
            rewrite.problems += problems
            size = _head_size(b, node) if not problems else None
            if size is not None:
                head_sizes.add(size)
            new = None
        if new is not None:
            replaced[index] = new
    if rewrite.problems:
        return rewrite
    nodes = []
    for index, node in enumerate(graph.node):
        nodes += replaced.get(index, [node])
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(b.new_initializers)
    # the Reshapes that fed GatherBlockQuantized are read by nobody now
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "Reshape" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    used = {n for node in graph.node for n in node.input}
    remove_named(graph.initializer, {t.name for t in graph.initializer if t.name not in used})
    _rename_cache_dims(graph, head_sizes.pop() if len(head_sizes) == 1 else None)
    return rewrite


def reference_model(model_path: str | Path) -> bytes | None:
    """What onnxruntime should run to check an import of ``model_path``: None for the file
    itself or, when a GroupQueryAttention has ``sliding_window_cache = 1`` (whose past
    onnxruntime reads as a fixed-capacity window buffer), the serialized graph without the
    attribute, which computes with growing past/present buffers as the import does. Its
    external data stays in the model's folder: run it with the session config entry
    :data:`EXTERNAL_DATA_FOLDER` set to that folder."""
    model = onnx.load(str(model_path), load_external_data=False)
    changed = False
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            for i in reversed(range(len(node.attribute))):
                if node.attribute[i].name == "sliding_window_cache":
                    del node.attribute[i]
                    changed = True
    return model.SerializeToString() if changed else None


#: onnxruntime's session config key for the folder of a model given as bytes.
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


# ---------------------------------------------------------------------------------------------
# GroupQueryAttention -> sail.attention


def _static_dim(dim: Any) -> int:
    return int(dim.value) if hasattr(dim, "value") else -1


class GroupQueryAttentionConverter:
    """TVM ONNX converter of ``com.microsoft.GroupQueryAttention`` (checked by
    :func:`rewrite_genai` first; semantics in the module docstring)."""

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        return cls._impl_v1

    @classmethod
    def _impl_v1(cls, bb: Any, inputs: list, attr: dict, params: Any) -> Any:
        from tvm import relax

        from ..ops.attention import attention

        op = relax.op
        inputs = list(inputs) + [None] * (12 - len(inputs))
        q, k, v, past_k, past_v, seqlens = inputs[:6]
        cos, sin = inputs[7], inputs[8]
        hq, hkv = int(attr["num_heads"]), int(attr["kv_num_heads"])
        batch, seq, width = q.ty.shape
        if k is None:
            d = _static_dim(width) // (hq + 2 * hkv)
            q, k, v = (bb.emit(t) for t in op.split(q, [hq * d, (hq + hkv) * d], axis=2))
        else:
            d = _static_dim(width) // hq

        def heads(x: Any, n: int) -> Any:  # [B, S, n * D] -> [B, n, S, D]
            return bb.emit(op.permute_dims(bb.emit(op.reshape(x, (batch, seq, n, d))),
                                           [0, 2, 1, 3]))

        q, k, v = heads(q, hq), heads(k, hkv), heads(v, hkv)
        # positions of the new tokens: seqlens_k + 1 - S + s, int64 [B, S]
        last = bb.emit(op.astype(seqlens, "int64"))
        offsets = bb.emit(op.arange(1 - seq, 1, 1, "int64"))
        pos = bb.emit(op.add(op.expand_dims(last, 1), op.expand_dims(offsets, 0)))
        if int(attr.get("do_rotary", 0)):
            q, k = cls._rotate(bb, q, pos, cos, sin, d), cls._rotate(bb, k, pos, cos, sin, d)
        if past_k is not None:
            k = bb.emit(op.concat([past_k, k], axis=2))
            v = bb.emit(op.concat([past_v, v], axis=2))
        total = k.ty.shape[2]
        keys = bb.emit(op.arange(0, total, 1, "int64"))
        qpos = bb.emit(op.expand_dims(pos, 2))  # [B, S, 1]
        allowed = bb.emit(op.less_equal(keys, qpos))  # [B, S, T]
        window = int(attr.get("local_window_size", -1))
        if window > 0:
            lowest = bb.emit(op.subtract(qpos, relax.const(window, "int64")))
            allowed = bb.emit(op.logical_and(allowed, op.greater(keys, lowest)))
        mask = bb.emit(op.where(allowed, relax.const(0.0, "float32"),
                                relax.const(float(np.finfo(np.float32).min), "float32")))
        mask = bb.emit(op.expand_dims(mask, 1))  # [B, 1, S, T]
        scale = float(attr.get("scale", 0.0)) or 1.0 / math.sqrt(d)
        out = bb.emit(attention(q, k, v, mask, scale=scale,
                                softcap=float(attr.get("softcap", 0.0))))
        out = bb.emit(op.reshape(op.permute_dims(out, [0, 2, 1, 3]), (batch, seq, hq * d)))
        return relax.Tuple([out, k, v])

    @staticmethod
    def _rotate(bb: Any, x: Any, pos: Any, cos: Any, sin: Any, d: int) -> Any:
        """Half-split rotary of the first ``R`` dims of ``x [B, H, S, D]`` at ``pos [B, S]``."""
        from tvm import relax

        op = relax.op
        half = _static_dim(cos.ty.shape[1])
        c = bb.emit(op.expand_dims(op.take(cos, pos, axis=0), 1))  # [B, 1, S, R / 2]
        s = bb.emit(op.expand_dims(op.take(sin, pos, axis=0), 1))
        x1 = bb.emit(op.strided_slice(x, [3], [0], [half]))
        x2 = bb.emit(op.strided_slice(x, [3], [half], [2 * half]))
        parts = [op.subtract(op.multiply(x1, c), op.multiply(x2, s)),
                 op.add(op.multiply(x2, c), op.multiply(x1, s))]
        if 2 * half < d:
            parts.append(op.strided_slice(x, [3], [2 * half], [d]))
        return bb.emit(op.concat(parts, axis=3))
