"""Which layers get quantized, and how: layer discovery, bits plans, and the resolved plan.

Layers. A *layer* is an ONNX ``MatMul`` or ``Gemm`` node whose weight input (B) is a 2-D float32
initializer; its weight is ``W[K, N]`` with ``y = x @ W`` (``B`` itself, or ``B^T`` for
``Gemm(transB=1)``). Its name is the ONNX node name (``<op type>_<index>`` when the node has
none). The IR carries each initializer's name on its constant (:func:`weight_ref`), and the
``quantize`` stage finds each layer's matmul in the IR by it (:func:`layer_ref`).

Bits plans (``--bits-plan plan.json``) map layer-name patterns to schemes::

    {
      "act_bits": 8,                                   (optional)
      "scale_dtype": "float16",                        (optional)
      "layers": [
        {"match": "/model/layers.0/*", "bits": 8, "group_size": 64},
        {"match": "*mlp*", "scheme": "w3g128", "method": "gptq"},
        {"match": "lm_head*", "float": true}
      ]
    }

``match`` is an ``fnmatch`` pattern tested against the layer name and the weight initializer
name; the first matching rule decides. A rule gives ``"scheme"`` (``w4g128``, see
:class:`~.scheme.QuantScheme`) or ``"bits"`` with optional ``"group_size"`` (an integer or
``"channel"``; default: the command line's) and ``"symmetric"``; or ``"float": true`` to keep the
layer in float. ``"method"`` (default: the command line's) is one of
:data:`~.methods.METHODS`. Every rule must match at least one layer. ``act_bits`` and
``scale_dtype`` (``--scale-dtype``), when given, must agree with the compile's options.

Precedence for one layer: a pre-quantized weight (imported from ``MatMulNBits`` or QDQ) is kept
as it is; then ``--skip`` (float); then the first matching plan rule; then the ``--avg-bits``
assignment; then ``--bits`` with ``--method``; otherwise the layer stays float.

The resolved plan (:meth:`ResolvedPlan.to_json`) lists every layer by its exact (escaped) name
and is itself a valid bits plan: the compiler writes it next to the artifact as
``quant_plan.json``, and ``--bits-plan quant_plan.json`` reproduces the compile.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OptionError
from ..external_data import ExternalData
from .reference import SCALE_DTYPES
from .scheme import QuantScheme

PLAN_FORMAT = "sail-quant-plan"
PLAN_VERSION = 1
#: Methods a plan may name (kept in sync with ``methods.METHODS`` by a test).
PLAN_METHODS = ("rtn", "search", "gptq")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One quantizable ONNX matmul.

    Attributes
    ----------
    name
        The node name, or ``<op type>_<index>`` for an unnamed node.
    op_type
        ``MatMul`` or ``Gemm``.
    weight_name
        The initializer holding B.
    input_name
        The activation input (A).
    k, n
        ``W`` is ``[K, N]``.
    transposed
        True for ``Gemm(transB=1)``: the initializer holds ``W^T``.
    node_index
        Position of the node in ``graph.node``.
    """

    name: str
    op_type: str
    weight_name: str
    input_name: str
    k: int
    n: int
    transposed: bool = False
    node_index: int = -1

    @property
    def params(self) -> int:
        """Weights in the layer, ``K * N``."""
        return self.k * self.n


#: How the IR names an initializer's constant: its span's source name is this plus the
#: initializer name (:func:`weight_ref`).
INITIALIZER_PREFIX = "sail.init:"
#: ... and the constant holding a 2-D initializer's transpose (a ``Gemm(transB=1)`` weight).
TRANSPOSED_PREFIX = "sail.init.T:"


def weight_ref(initializer: str, transposed: bool = False) -> str:
    """The name the IR carries for the constant of ONNX initializer ``initializer`` (or of its
    transpose): ``sail.init:<name>`` / ``sail.init.T:<name>``.

    The frontend names every initializer's constant so at import, and
    :class:`~sail_compiler.passes.FoldWeightTransposes` names the transposed constant it folds
    from one; the ``quantize`` stage's tables are keyed by it (``layer_ref``)."""
    return f"{TRANSPOSED_PREFIX if transposed else INITIALIZER_PREFIX}{initializer}"


def layer_ref(layer: Layer) -> str:
    """The :func:`weight_ref` of the IR constant that holds ``layer``'s weight: the initializer
    itself for a ``MatMul``, a plain ``Gemm`` and a lookup table (``take`` reads ``T[V, D]`` as
    stored), its transpose for a ``Gemm(transB=1)`` (the matmul reads ``W = B^T``)."""
    return weight_ref(layer.weight_name, layer.transposed and layer.op_type != "Gather")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """Every ``MatMul``/``Gemm`` of the main graph with a 2-D float32 initializer as weight.

    ``Gemm`` with ``transA=1`` is left out (its activation is transposed); names are made unique
    by appending ``#<index>`` to repeated node names.
    """
    inits = {t.name: t for t in model.graph.initializer}
    layers: list[Layer] = []
    seen: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        tensor = inits[node.input[1]]
        if tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        transposed = False
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0):
                continue
            transposed = bool(_attr(node, "transB", 0))
        rows, cols = (int(d) for d in tensor.dims)
        k, n = (cols, rows) if transposed else (rows, cols)
        if k < 1 or n < 1:
            continue
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
        layers.append(Layer(name, node.op_type, node.input[1], node.input[0], k, n, transposed,
                            index))
    return layers


#: Ops an index may pass through between a graph input and an embedding lookup.
_INDEX_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def find_embeddings(model: onnx.ModelProto) -> list[Layer]:
    """Every ``Gather`` (axis 0) of a 2-D float32 initializer by indices that come from a graph
    input (directly or through Cast/Reshape/...): the token embedding tables.

    Lookups by computed indices (e.g. rotary tables indexed by positions derived from shapes) are
    not embeddings. As a :class:`Layer` a table ``T[V, D]`` is ``W = T^T`` (``k = D``, ``n = V``,
    ``transposed``), the layout ``sail.quant_take`` reads.
    """
    inits = {t.name: t for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - set(inits)
    producer = {out: node for node in model.graph.node for out in node.output}

    def from_input(name: str) -> bool:
        while name not in inputs:
            node = producer.get(name)
            if node is None or node.op_type not in _INDEX_PASSTHROUGH or not node.input:
                return False
            name = node.input[0]
        return True

    layers = []
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type != "Gather" or len(node.input) < 2:
            continue
        table = inits.get(node.input[0])
        if table is None or table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2:
            continue
        if _attr(node, "axis", 0) not in (0, -2) or not from_input(node.input[1]):
            continue
        vocab, dim = (int(d) for d in table.dims)
        layers.append(Layer(node.name or f"Gather_{index}", "Gather", node.input[0],
                            node.input[1], dim, vocab, True, index))
    return layers


def initializer_array(name: str, initializers: dict[str, onnx.TensorProto],
                      external: ExternalData | None = None) -> np.ndarray:
    """Initializer ``name`` as an array, read from ``external``'s file when it is one of its,
    else from its tensor in ``initializers`` (a fresh copy either way)."""
    if external is not None and name in external:
        return external.read(name)
    return numpy_helper.to_array(initializers[name])


def layer_weight(model: onnx.ModelProto, layer: Layer,
                 initializers: dict[str, onnx.TensorProto] | None = None,
                 external: ExternalData | None = None) -> np.ndarray:
    """The float32 ``W[K, N]`` of ``layer`` (C-contiguous), read from ``external``'s file when
    the initializer is one of its (a fresh copy either way)."""
    if initializers is None and (external is None or layer.weight_name not in external):
        initializers = {t.name: t for t in model.graph.initializer}
    w = initializer_array(layer.weight_name, initializers or {}, external)
    w = w.astype(np.float32, copy=False)
    return np.ascontiguousarray(w.T if layer.transposed else w)


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    """How one layer is quantized: ``scheme`` None keeps it float."""

    scheme: QuantScheme | None
    method: str = "rtn"
    source: str = "default"

    def to_json(self) -> dict[str, Any]:
        if self.scheme is None:
            return {"float": True}
        s = self.scheme
        out: dict[str, Any] = {"bits": s.bits, "group_size": s.group_size or "channel",
                               "symmetric": s.symmetric}
        if self.source != "prequantized":  # imported codes were chosen by another tool
            out["method"] = self.method
        return out


@dataclasses.dataclass(frozen=True)
class PlanRule:
    """``match`` (fnmatch pattern) -> ``choice``."""

    match: str
    choice: LayerChoice

    def matches(self, layer: Layer) -> bool:
        return fnmatch.fnmatchcase(layer.name, self.match) or \
            fnmatch.fnmatchcase(layer.weight_name, self.match)


def check_method(method: str) -> str:
    """Validate a method name."""
    if method not in PLAN_METHODS:
        raise OptionError(f"unknown quantization method '{method}'; valid choices are: "
                          f"{', '.join(PLAN_METHODS)}")
    return method


def _rule(entry: Any, where: str, default: QuantScheme | None, method: str) -> PlanRule:
    if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
        raise OptionError(f"{where}: each rule must be an object with a string \"match\", "
                          f"got {entry!r}")
    # "source" is informational (written in resolved plans: plan, avg-bits, default, ...)
    known = {"match", "float", "scheme", "bits", "group_size", "symmetric", "method", "source"}
    extra = sorted(set(entry) - known)
    if extra:
        raise OptionError(f"{where}: unknown key(s) {extra} in rule for '{entry['match']}'; "
                          f"valid keys are: {', '.join(sorted(known))}")
    if entry.get("float"):
        if set(entry) - {"match", "float", "source"}:
            raise OptionError(f"{where}: rule '{entry['match']}' says float and also gives "
                              "quantization settings; keep one")
        return PlanRule(entry["match"], LayerChoice(None, source="plan"))
    rule_method = check_method(entry.get("method", method))
    if "scheme" in entry:
        if set(entry) & {"bits", "group_size", "symmetric"}:
            raise OptionError(f"{where}: rule '{entry['match']}' gives both \"scheme\" and "
                              "bits/group_size/symmetric; give one form")
        scheme = QuantScheme.parse(str(entry["scheme"]))
    elif "bits" in entry:
        group: Any = entry.get("group_size", default.group_size if default else 128)
        if group == "channel":
            group = None
        elif isinstance(group, str):
            raise OptionError(f"{where}: group_size must be an integer or \"channel\", "
                              f"got '{group}'")
        symmetric = entry.get("symmetric", default.symmetric if default else False)
        bits = entry["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise OptionError(f"{where}: bits must be an integer in 1..8, got {bits!r}")
        scheme = QuantScheme(bits, group, symmetric)
    else:
        raise OptionError(f"{where}: rule '{entry['match']}' needs \"bits\", \"scheme\" or "
                          "\"float\": true")
    return PlanRule(entry["match"], LayerChoice(scheme, rule_method, "plan"))


@dataclasses.dataclass(frozen=True)
class BitsPlan:
    """A parsed ``--bits-plan`` file: ordered rules and an optional activation width."""

    rules: tuple[PlanRule, ...]
    act_bits: int | None = None
    source: str = "<plan>"
    #: The scale dtype the plan was made with (``--scale-dtype``), or None if it does not say.
    scale_dtype: str | None = None

    @classmethod
    def load(cls, path: str | Path, default: QuantScheme | None = None,
             method: str = "rtn") -> BitsPlan:
        """Read and validate a plan file (module docstring); errors name the file and rule."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise OptionError(f"bits plan {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OptionError(f"bits plan {path} is not readable JSON: {err}") from None
        return cls.parse(data, str(path), default, method)

    @classmethod
    def parse(cls, data: Any, source: str = "<plan>", default: QuantScheme | None = None,
              method: str = "rtn") -> BitsPlan:
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise OptionError(f"{source}: a bits plan is an object with a \"layers\" list of "
                              "rules, e.g. {\"layers\": [{\"match\": \"*\", \"bits\": 4}]}")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise OptionError(f"{source}: format is '{data.get('format')}', expected "
                              f"'{PLAN_FORMAT}'")
        rules = tuple(_rule(e, f"{source} rule {i}", default, method)
                      for i, e in enumerate(data["layers"]))
        act_bits = data.get("act_bits")
        if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int)):
            raise OptionError(f"{source}: act_bits must be an integer, got {act_bits!r}")
        scale_dtype = data.get("scale_dtype")
        if scale_dtype is not None and scale_dtype not in SCALE_DTYPES:
            raise OptionError(f"{source}: scale_dtype must be one of {', '.join(SCALE_DTYPES)}, "
                              f"got {scale_dtype!r}")
        return cls(rules, act_bits, source, scale_dtype)

    def choose(self, layer: Layer) -> LayerChoice | None:
        """The first matching rule's choice, or None."""
        return next((r.choice for r in self.rules if r.matches(layer)), None)

    def unmatched(self, layers: list[Layer]) -> list[str]:
        """Patterns of rules that match no layer."""
        return [r.match for r in self.rules if not any(r.matches(layer) for layer in layers)]


def unmatched_error(what: str, patterns: list[str], layers: list[Layer]) -> OptionError:
    """The error for patterns that match no layer, listing some layer names."""
    names = [layer.name for layer in layers]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} layers)" if len(names) > 8 else "")
    return OptionError(f"{what} {patterns} match no layer; patterns match layer (ONNX node) "
                       f"names or weight names, e.g. {shown}" if names else
                       f"{what} {patterns} match no layer: the model has no MatMul/Gemm with a "
                       "float32 weight initializer")


@dataclasses.dataclass(frozen=True)
class ResolvedPlan:
    """The choice for every layer, in model order."""

    layers: tuple[Layer, ...]
    choices: tuple[LayerChoice, ...]
    act_bits: int
    scale_dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        """A bits plan naming every layer exactly; loading it reproduces these choices."""
        rules = []
        for layer, choice in zip(self.layers, self.choices, strict=True):
            rules.append({"match": glob.escape(layer.name), **choice.to_json(),
                          "source": choice.source})
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "act_bits": self.act_bits,
                "scale_dtype": self.scale_dtype, "layers": rules}

    def average_bits(self) -> float | None:
        """Code bits per quantized weight (scales and zero points not counted)."""
        pairs = [(layer.params, c.scheme.bits)
                 for layer, c in zip(self.layers, self.choices, strict=True)
                 if c.scheme is not None]
        total = sum(p for p, _ in pairs)
        return sum(p * b for p, b in pairs) / total if total else None
