"""Rewrite onnxruntime's quantized weight formats into float MatMuls before import.

onnxruntime keeps weight-only quantized matmuls in two forms. :func:`rewrite_prequantized` turns
both into a plain ai.onnx ``MatMul(A, W)`` (plus an ``Add`` for a bias) whose ``W`` is a new
float32 initializer ``[K, N]`` equal, bit for bit, to ``dequantize(qw)``
(:func:`~sail_compiler.quant.dequantize`) of the :class:`~sail_compiler.quant.QuantizedWeight`
``qw`` it returns for the layer. The rewritten model computes what onnxruntime computes with
``accuracy_level=0`` (dequantize the weights, then a float matmul), so TVM imports it as any float
model; the quantize stage recognises these weights by the new initializer's name (which the
IR carries on its constant) and uses ``qw`` instead of re-quantizing them.

``com.microsoft.MatMulNBits`` (what ``MatMulNBitsQuantizer`` writes)
--------------------------------------------------------------------
``Y = A @ W (+ bias)``; attributes ``K``, ``N``, ``bits`` (default 4), ``block_size``,
``accuracy_level`` (how onnxruntime may round ``A``; the rewrite is the exact ``0`` function) and
``weight_prepacked`` (must be 0). Inputs:

* ``B``: uint8 ``[N, n_blocks, blob]`` with ``n_blocks = ceil(K / block_size)`` and
  ``blob = block_size * bits / 8``. Row ``n`` holds output column ``n`` of ``W[K, N]``, cut into
  blocks of ``block_size`` consecutive k; each block's codes are packed low bits first (4 bits:
  code ``2j`` in the low nibble of byte ``j``, code ``2j + 1`` in the high nibble). That is
  SAIL's little-endian bit stream (:mod:`~sail_compiler.quant.packing`), so
  ``B.reshape(N, -1)`` row ``n`` is the packed column ``n`` of our codes ``q[K_pad, N]``.
* ``scales``: float32 ``[N, n_blocks]`` (or flattened): our ``scale`` transposed.
* ``zero_points`` (optional): uint8 ``[N, ceil(n_blocks * bits / 8)]`` (or flattened), each row
  the n_blocks zero points of column ``n`` packed like ``B``. Absent, every block's zero point is
  ``2**(bits - 1)``: SAIL's symmetric form (``qw.zero`` is None).
* ``g_idx`` (optional, deprecated): int32 ``[K]``, the block of each k; only the trivial
  ``k // block_size`` is accepted.
* ``bias`` (optional): ``[N]``, added after the matmul.

``W[k, n] = (code[k, n] - zero_point[k // block_size, n]) * scale[k // block_size, n]``.

``DequantizeLinear -> MatMul`` (the QDQ form, ai.onnx)
------------------------------------------------------
A ``DequantizeLinear(x, x_scale[, x_zero_point])`` whose output is read only as the B input of
MatMuls, with ``x`` an initializer ``[K, N]`` of int8, uint8, int4, uint4, int2 or uint2 and a
float32 scale laid out one of three ways:

* per tensor: a scalar (or ``[1]``) scale: one group covering K per column;
* per column: ``axis=1``, scale ``[N]``: one group covering K per column;
* blocked along K: ``axis=0``, ``block_size=g``, scale ``[ceil(K / g), N]``: groups of g.

``W = (x - x_zero_point) * x_scale``. Signed codes become SAIL's unsigned codes
``x + 2**(b - 1)``: with no zero point (or an all-zero one) that is the symmetric form, otherwise
the zero points are ``x_zero_point + 2**(b - 1)``. Unsigned codes keep their zero points (0 when
absent). The initializer ``W`` takes the DequantizeLinear's output name, so the MatMuls are
untouched.

In both forms, when K is not a multiple of the group size the padding rows ``K..K_pad - 1`` of
``qw.q`` are set to their group's zero point (they never meet an activation). Scales are kept as
stored, sign included: onnxruntime's symmetric quantizer writes ``scale = m / -2**(b-1)`` with
``m`` the group's weight of largest magnitude, sign and all, so the groups whose ``m`` is positive
get negative scales (``(q - z) * s`` is computed the same way either way).

Rejected (every problem is listed in one :class:`~sail_compiler.errors.ModelCheckError`): widths
other than 2, 4 and 8 bits in MatMulNBits, block sizes that are not a power of two >= 16,
act-order ``g_idx``, float zero points (HQQ), float16/bfloat16 scales, ``weight_prepacked``,
quantized tensors that are not initializers (computed at run time), zero points of another type
than the codes, per-row (``axis=0`` without blocks) and blocked-along-N scales, weights that are not
2-D, non-float32 ``output_dtype``, and MatMulNBits inside subgraphs (If/Loop bodies). Other
DequantizeLinear nodes (activations, or weights that also feed non-MatMul ops) are left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelCheckError
from ..quant.packing import unpack_bits
from ..quant.reference import QuantizedWeight, dequantize

#: Code widths onnxruntime runs MatMulNBits with (its CPU kernel rejects the others).
MATMULNBITS_BITS = (2, 4, 8)
#: Smallest MatMulNBits block size (the contrib-op schema: a power of two >= 16).
MIN_BLOCK_SIZE = 16
MS_DOMAIN = "com.microsoft"
#: The (domain, op type) pairs :func:`rewrite_prequantized` is responsible for: after it ran, each
#: such node was either rewritten or reported.
REWRITTEN_OPS = frozenset({(MS_DOMAIN, "MatMulNBits")})

_ONNX_DOMAINS = ("", "ai.onnx")
# Element type -> (bits, signed) of the integer codes DequantizeLinear weights may hold.
_DQ_CODE_TYPES = {
    getattr(TensorProto, name): (bits, signed)
    for name, bits, signed in [("INT8", 8, True), ("UINT8", 8, False), ("INT4", 4, True),
                               ("UINT4", 4, False), ("INT2", 2, True), ("UINT2", 2, False)]
    if hasattr(TensorProto, name)  # int2/uint2 arrived in onnx 1.19
}


@dataclasses.dataclass(frozen=True, eq=False)
class PrequantizedLayer:
    """One quantized weight found in the model and replaced by its dequantized float value.

    Attributes
    ----------
    node_name
        Name of the MatMul that reads the weight (the MatMulNBits node's name, or the first
        MatMul reading a DequantizeLinear's output).
    weight_name
        Name of the new float32 initializer ``W[K, N]``; ``W == dequantize(qw)`` bit for bit.
    qw
        The weight as SAIL holds it: codes, scales and zero points exactly as stored.
    source
        ``"MatMulNBits"`` or ``"DequantizeLinear"``.
    """

    node_name: str
    weight_name: str
    qw: QuantizedWeight
    source: str


@dataclasses.dataclass
class PrequantizedRewrite:
    """What :func:`rewrite_or_report` did.

    Attributes
    ----------
    layers
        New initializer name -> layer; empty when there are problems.
    problems
        One line per problem, each naming its node (the model is then left unchanged).
    claimed
        Names of the tensors read by the nodes the rewrite handles or reported, so that other
        checks do not report them a second time.
    """

    layers: dict[str, PrequantizedLayer]
    problems: list[str]
    claimed: set[str]


@dataclasses.dataclass
class _Plan:
    """One node to replace: its position, the layer it becomes and the tensors it read."""

    index: int
    layer: PrequantizedLayer
    reads: list[str]


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed, output '{node.output[0] if node.output else '?'}'>"


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _is_block_size(block: int) -> bool:
    return block >= MIN_BLOCK_SIZE and block & (block - 1) == 0


def _padded(codes: np.ndarray, zero: np.ndarray | None, bits: int, group: int) -> np.ndarray:
    """uint8 ``[K_pad, N]``: ``codes [K, N]`` with rows up to a whole group of the last group's
    zero point appended."""
    k, n = codes.shape
    k_pad = -(-k // group) * group
    pad = np.full(n, 1 << (bits - 1)) if zero is None else zero[-1]
    q = np.empty((k_pad, n), np.uint8)
    q[:k] = codes
    q[k:] = pad
    return q


class _Reader:
    """Decodes the quantized nodes of one graph; problems go to ``self.problems``."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {t.name: t for t in graph.initializer}
        self.problems: list[str] = []

    def constants(self, inputs: dict[str, str], where: str) -> dict[str, onnx.TensorProto]:
        """The initializers named by ``inputs`` (role -> tensor name; empty names are absent
        optional inputs), keyed by role; one problem naming those computed at run time."""
        found, computed = {}, []
        for what, name in inputs.items():
            if name and name in self.initializers:
                found[what] = self.initializers[name]
            elif name:
                computed.append(f"{what} '{name}'")
        if computed:
            self.problems.append(
                f"{where}: {' and '.join(computed)} {'is' if len(computed) == 1 else 'are'} not "
                "an initializer (computed at run time); SAIL takes quantized weights stored in "
                "the model: fold the computation into initializers (e.g. re-quantize with "
                "onnxruntime's MatMulNBitsQuantizer)")
        return found

    def float32(self, tensor: onnx.TensorProto, what: str, where: str) -> np.ndarray | None:
        """``tensor`` as float32 if it is float32 and finite, else None with a problem."""
        if tensor.data_type != TensorProto.FLOAT:
            self.problems.append(
                f"{where}: {what} '{tensor.name}' are {_type_name(tensor.data_type)}; SAIL "
                "reads float32 models (valid scale type: float): convert the model to float32 "
                "before quantizing it")
            return None
        array = numpy_helper.to_array(tensor)
        if not np.all(np.isfinite(array)):
            self.problems.append(f"{where}: {what} '{tensor.name}' hold inf or nan; re-quantize "
                                 "the model")
            return None
        return array

    def matmulnbits(self, node: onnx.NodeProto) -> QuantizedWeight | None:
        """Decode a MatMulNBits node (module docstring); None if it has problems."""
        where = f"{MS_DOMAIN}.MatMulNBits at node '{_label(node)}'"
        before = len(self.problems)
        attrs = _attributes(node)
        missing = [a for a in ("K", "N", "block_size") if a not in attrs]
        if missing or len(node.input) < 3 or not all(node.input[:3]):
            self.problems.append(f"{where}: malformed node (needs attributes K, N, block_size "
                                 "and inputs A, B, scales); re-export it")
            return None
        k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
        bits = int(attrs.get("bits", 4))
        if bits not in MATMULNBITS_BITS:
            self.problems.append(f"{where}: bits={bits} is not supported; onnxruntime runs "
                                 "MatMulNBits with bits 2, 4 or 8 (valid choices are: 2, 4, 8)")
        if not _is_block_size(block):
            self.problems.append(f"{where}: block_size={block} is not a power of two >= "
                                 f"{MIN_BLOCK_SIZE} (valid choices are: 16, 32, 64, 128, ...)")
        if attrs.get("weight_prepacked", 0):
            self.problems.append(
                f"{where}: weight_prepacked={attrs['weight_prepacked']} (B in a CUDA kernel's "
                "own layout) is not supported; use the model as MatMulNBitsQuantizer writes it "
                "(weight_prepacked=0)")
        if k < 1 or n < 1:
            self.problems.append(f"{where}: K={k} and N={n} must be >= 1")
        inputs = list(node.input) + [""] * (6 - len(node.input))
        found = self.constants({"B": inputs[1], "scales": inputs[2], "zero_points": inputs[3],
                                "g_idx": inputs[4]}, where)
        if len(self.problems) > before:
            return None
        b_t, scales_t = found["B"], found["scales"]
        zp_t, g_idx_t = found.get("zero_points"), found.get("g_idx")

        n_blocks = -(-k // block)
        blob = block * bits // 8
        b = numpy_helper.to_array(b_t)
        if b.dtype != np.uint8 or b.shape != (n, n_blocks, blob):
            self.problems.append(
                f"{where}: B '{b_t.name}' is {b.dtype} {list(b.shape)}, expected uint8 "
                f"[N, n_blocks, blob] = [{n}, {n_blocks}, {blob}] for K={k}, "
                f"block_size={block}, bits={bits}")
        scales = self.float32(scales_t, "scales", where)
        if scales is not None and scales.size != n * n_blocks:
            self.problems.append(f"{where}: scales '{scales_t.name}' have shape "
                                 f"{list(scales.shape)}, expected [N, n_blocks] = [{n}, "
                                 f"{n_blocks}]")
        zp = None
        zp_bytes = -(-n_blocks * bits // 8)
        if zp_t is not None:
            if zp_t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                self.problems.append(
                    f"{where}: zero_points '{zp_t.name}' are {_type_name(zp_t.data_type)} "
                    "(float zero points, as HQQ writes); SAIL's zero points are integer codes: "
                    "quantize with integer zero points (valid zero-point type: uint8, e.g. "
                    "MatMulNBitsQuantizer's default config)")
            elif zp_t.data_type != TensorProto.UINT8:
                self.problems.append(f"{where}: zero_points '{zp_t.name}' are "
                                     f"{_type_name(zp_t.data_type)}; valid zero-point type: uint8")
            else:
                zp = numpy_helper.to_array(zp_t)
                if zp.size != n * zp_bytes:
                    self.problems.append(
                        f"{where}: zero_points '{zp_t.name}' have shape {list(zp.shape)}, "
                        f"expected packed uint8 [N, ceil(n_blocks * bits / 8)] = [{n}, "
                        f"{zp_bytes}]")
        if g_idx_t is not None:
            g_idx = numpy_helper.to_array(g_idx_t)
            trivial = np.arange(k) // block
            if g_idx.shape != trivial.shape or np.any(g_idx != trivial):
                self.problems.append(
                    f"{where}: g_idx '{g_idx_t.name}' reorders rows into blocks (act-order); "
                    "SAIL's groups are consecutive k: valid g_idx is absent or k // block_size; "
                    "re-quantize without act-order (desc_act=False)")
        if len(self.problems) > before:
            return None

        k_pad = n_blocks * block
        q = np.ascontiguousarray(unpack_bits(b.reshape(n, n_blocks * blob), bits, k_pad,
                                             axis=1).T)
        zero = None
        if zp is not None:
            zero = np.ascontiguousarray(unpack_bits(zp.reshape(n, zp_bytes), bits, n_blocks,
                                                    axis=1).T)
        scale = np.ascontiguousarray(scales.reshape(n, n_blocks).T)
        return QuantizedWeight(_padded(q[:k], zero, bits, block), scale, zero, bits, block, k)

    def dequantize_linear(self, node: onnx.NodeProto, matmul: str) -> QuantizedWeight | None:
        """Decode a DequantizeLinear feeding MatMul weights (module docstring); None if it has
        problems."""
        where = f"DequantizeLinear at node '{_label(node)}' (the weight of MatMul '{matmul}')"
        before = len(self.problems)
        attrs = _attributes(node)
        if len(node.input) < 2 or not node.input[1]:
            self.problems.append(f"{where}: malformed node (no x_scale); re-export it")
            return None
        found = self.constants({"its input": node.input[0], "x_scale": node.input[1],
                                "x_zero_point": node.input[2] if len(node.input) > 2 else ""},
                               where)
        if len(self.problems) > before:
            return None
        x_t, scale_t, zp_t = found["its input"], found["x_scale"], found.get("x_zero_point")

        valid_types = ", ".join(_type_name(t) for t in _DQ_CODE_TYPES)
        if x_t.data_type not in _DQ_CODE_TYPES:
            self.problems.append(f"{where}: codes '{x_t.name}' are {_type_name(x_t.data_type)}; "
                                 f"valid code types: {valid_types}")
        if len(x_t.dims) != 2:
            self.problems.append(f"{where}: weight '{x_t.name}' has shape {list(x_t.dims)}; "
                                 "only 2-D [K, N] MatMul weights can be represented")
        if zp_t is not None and zp_t.data_type != x_t.data_type:
            self.problems.append(f"{where}: x_zero_point '{zp_t.name}' is "
                                 f"{_type_name(zp_t.data_type)}, the codes are "
                                 f"{_type_name(x_t.data_type)}; they must match")
        output_dtype = int(attrs.get("output_dtype", 0))
        if output_dtype not in (0, TensorProto.FLOAT):
            self.problems.append(f"{where}: output_dtype={_type_name(output_dtype)}; SAIL reads "
                                 "float32 models (valid output_dtype: float)")
        scale = self.float32(scale_t, "x_scale", where)
        if len(self.problems) > before:
            return None

        k, n = (int(d) for d in x_t.dims)
        axis = int(attrs.get("axis", 1))
        axis = axis + 2 if axis < 0 else axis
        block = int(attrs.get("block_size", 0))
        layouts = ("valid layouts: per tensor (scalar scale), per column (axis=1, scale [N]) or "
                   "blocked along K (axis=0, block_size=g, scale [ceil(K/g), N])")
        if block == 0 and scale.size == 1 and scale.ndim <= 1:
            group, shape = k, (1, 1)
        elif block == 0 and scale.ndim == 1 and axis == 1 and scale.shape == (n,):
            group, shape = k, (1, n)
        elif block > 0 and axis == 0 and scale.shape == (-(-k // block), n):
            group, shape = block, scale.shape
        else:
            if axis not in (0, 1):
                detail = f"axis={attrs.get('axis')} is out of range for a 2-D weight"
            elif block == 0 and axis == 0:
                detail = ("axis=0 without block_size gives each row k its own scale; SAIL's "
                          "groups run along K with one scale per group and column")
            elif block > 0 and axis == 1:
                detail = f"axis=1 with block_size={block} makes blocks along N, not K"
            else:
                detail = (f"x_scale of shape {list(scale.shape)} does not fit weight [{k}, {n}] "
                          f"with axis={axis}, block_size={block}")
            self.problems.append(f"{where}: {detail}; {layouts}")
            return None

        bits, signed = _DQ_CODE_TYPES[x_t.data_type]
        half = 1 << (bits - 1)
        codes = numpy_helper.to_array(x_t).astype(np.int32)
        scale = np.ascontiguousarray(np.broadcast_to(scale.reshape(shape), (shape[0], n)),
                                     dtype=np.float32)
        zp = None
        if zp_t is not None:
            zp = np.broadcast_to(numpy_helper.to_array(zp_t).astype(np.int32).reshape(shape),
                                 scale.shape)
        if signed:
            codes = codes + half
            zero = None if zp is None or not np.any(zp) else zp + half
        else:
            zero = np.zeros(scale.shape, np.int32) if zp is None else zp
        zero = None if zero is None else np.ascontiguousarray(zero, dtype=np.uint8)
        q = _padded(codes.astype(np.uint8), zero, bits, group)
        return QuantizedWeight(q, scale, zero, bits, group, k)


def _subgraph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the subgraphs (If/Loop/Scan bodies) of ``graph``'s nodes, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from sub.node
                yield from _subgraph_nodes(sub)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names read by any node (subgraphs included) or returned by ``graph``."""
    used = {o.name for o in graph.output}
    for node in list(graph.node) + list(_subgraph_nodes(graph)):
        used.update(node.input)
    return used


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken``, which gets it."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def rewrite_or_report(model: onnx.ModelProto) -> PrequantizedRewrite:
    """Rewrite the quantized weights of ``model`` in place, or report why not.

    Every node the rewrite is responsible for (module docstring) is decoded first. If any cannot
    be represented, the model is left unchanged and the result lists every problem; otherwise all
    of them are rewritten.

    Parameters
    ----------
    model
        The model, with its tensor data in memory.

    Returns
    -------
    PrequantizedRewrite
        The layers (new initializer name -> :class:`PrequantizedLayer`), the problems, and the
        tensors claimed by the rewrite.
    """
    graph = model.graph
    reader = _Reader(graph)
    readers_of: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            readers_of.setdefault(name, []).append((node, slot))
    outputs = {o.name for o in graph.output}
    taken = ({t.name for t in graph.initializer} | {v.name for v in graph.input} | outputs
             | {v.name for v in graph.value_info}
             | {name for node in graph.node for name in [*node.input, *node.output]})
    claimed: set[str] = set()
    plans: list[_Plan] = []
    shared: dict[tuple[object, ...], str] = {}  # MatMulNBits nodes that read the same weight

    for index, node in enumerate(graph.node):
        if (node.domain, node.op_type) == (MS_DOMAIN, "MatMulNBits"):
            claimed.update(node.input[1:5])
            qw = reader.matmulnbits(node)
            if qw is None:
                continue
            key = (tuple(node.input[1:5]), qw.k, qw.n, qw.bits, qw.group_size)
            if key not in shared:
                shared[key] = fresh_name(f"{node.input[1]}_dequantized", taken)
            layer = PrequantizedLayer(node.name, shared[key], qw, "MatMulNBits")
            plans.append(_Plan(index, layer, list(node.input[1:5])))
        elif node.domain in _ONNX_DOMAINS and node.op_type == "DequantizeLinear":
            users = readers_of.get(node.output[0], [])
            if not users or node.output[0] in outputs or any(
                    not (u.domain in _ONNX_DOMAINS and u.op_type == "MatMul" and slot == 1)
                    for u, slot in users):
                continue
            claimed.update(node.input)
            matmul = users[0][0]
            qw = reader.dequantize_linear(node, _label(matmul))
            if qw is not None:
                layer = PrequantizedLayer(matmul.name, node.output[0], qw, "DequantizeLinear")
                plans.append(_Plan(index, layer, list(node.input)))
    for node in _subgraph_nodes(graph):
        if (node.domain, node.op_type) == (MS_DOMAIN, "MatMulNBits"):
            reader.problems.append(
                f"{MS_DOMAIN}.MatMulNBits at node '{_label(node)}': inside a subgraph (an "
                "If/Loop/Scan body), which SAIL does not rewrite; quantize only the main graph's "
                "MatMuls (MatMulNBitsQuantizer's nodes_to_exclude)")
    if reader.problems:
        return PrequantizedRewrite({}, reader.problems, claimed)
    return PrequantizedRewrite(_apply(model, plans, taken), [], claimed)


def _apply(model: onnx.ModelProto, plans: list[_Plan],
           taken: set[str]) -> dict[str, PrequantizedLayer]:
    """Replace the planned nodes, add the float weights and drop what nobody reads any more."""
    graph = model.graph
    by_index = {p.index: p for p in plans}
    layers: dict[str, PrequantizedLayer] = {}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        plan = by_index.get(index)
        if plan is None:
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(node)  # a copy: the originals are deleted below
            continue
        weight = plan.layer.weight_name
        if weight not in layers:  # MatMulNBits nodes reading the same tensors share one weight
            layers[weight] = plan.layer
            w = np.ascontiguousarray(dequantize(plan.layer.qw), dtype=np.float32)
            graph.initializer.append(numpy_helper.from_array(w, weight))
        if plan.layer.source == "DequantizeLinear":
            continue  # its MatMuls already read the output name, now an initializer
        bias = node.input[5] if len(node.input) > 5 else ""
        out = fresh_name(f"{node.output[0]}_before_bias", taken) if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [out], name=node.name))
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]],
                                          name=f"{node.name}_bias" if node.name else ""))
    del graph.node[:]
    graph.node.extend(nodes)

    used = _used_names(graph)
    stale = {name for p in plans for name in p.reads if name and name not in used}
    for field in (graph.initializer, graph.input, graph.value_info):
        remove_named(field, stale)
    if not any(n.domain == MS_DOMAIN for n in [*graph.node, *_subgraph_nodes(graph)]):
        remove_named(model.opset_import, {MS_DOMAIN})
    return layers


def remove_named(field: object, names: Collection[str]) -> None:
    """Delete, in place, the entries of a repeated protobuf field (initializers, value infos,
    opset imports by ``domain``) whose name is in ``names``."""
    for i in reversed(range(len(field))):
        item = field[i]
        if (item.domain if isinstance(item, onnx.OperatorSetIdProto) else item.name) in names:
            del field[i]


def rewrite_prequantized(model: onnx.ModelProto,
                         source: str | None = None) -> dict[str, PrequantizedLayer]:
    """Replace onnxruntime's quantized matmuls by float MatMuls, in place (module docstring).

    Parameters
    ----------
    model
        The model, with its tensor data in memory.
    source
        How error messages name the model (e.g. its path); default: its graph name.

    Returns
    -------
    dict[str, PrequantizedLayer]
        New float32 initializer name -> the layer, its node and its :class:`QuantizedWeight`.
        Empty when the model holds no quantized weights.

    Raises
    ------
    ModelCheckError
        Listing every quantized node that cannot be represented; the model is then unchanged.
    """
    result = rewrite_or_report(model)
    if result.problems:
        raise ModelCheckError(source or f"graph '{model.graph.name}'", result.problems)
    return result.layers
