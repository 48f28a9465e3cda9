"""Activation-aware weight scaling (``--awq``): per-input-channel scales folded into the model.

The idea of AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", 2023): the input channels with large activations carry the weights whose error
costs the most, so before quantizing ``y = x @ W`` the rows of W are multiplied by ``s[k]`` and
the activations divided by it, ``y = (x / s) @ (diag(s) W)``: the same function in float, but the
important rows now span more quantization levels. Here the division is folded into the model, so
nothing is added at run time:

* **norm sites**: the layers' shared input is ``Mul(y, c)`` with a constant ``c[K]`` used
  nowhere else (an RMSNorm's weight, e.g. Gemma's ``1 + w`` stored as one constant): ``c`` becomes
  ``c / s``;
* **product sites**: the input is ``Mul(a, y)`` where ``y = MatMul(u, P)`` is a quantized layer
  whose output goes only there (a gated MLP's ``down_proj`` input ``act(gate) * up``): P's
  columns are divided by s. Per-column groups along K make this free for P's own quantization
  (RTN and GPTQ are equivariant to scaling a column).

Per site, ``s = r ** alpha`` with ``r[k]`` the RMS of input channel k over the calibration rows
(from the Hessian's diagonal, normalised to geometric mean 1 of the extremes), and ``alpha``
from :data:`ALPHAS` minimising the sites' summed output error of round-to-nearest
``sum_layers trace(E^T H E)``, ``E = W - diag(1/s) Q(diag(s) W)``, on up to
:data:`SEARCH_COLUMNS` columns of each layer. ``alpha = 0`` (no scaling) is a candidate, so a
site is scaled only when that error drops. The layers are then quantized (any method) as
``diag(s) W`` with the Hessian ``diag(1/s) H diag(1/s)`` of the scaled inputs.

Sites are skipped, never folded wrongly, when anything else reads the constant, the input, the
producer's output or a weight, or when a layer is not quantized (or imported pre-quantized). The
compiled IR finds a folded constant by the initializer name it carries
(:func:`~.plan.weight_ref`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx

from ..external_data import ExternalData
from .plan import Layer, LayerChoice, initializer_array, layer_weight, weight_ref
from .progress import progress
from .reference import dequantize, quantize_weights_rtn
from .scheme import QuantScheme

#: Exponents of the activation RMS tried per site (0: no scaling).
ALPHAS: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
#: Columns per layer the alpha search measures the output error on (a fixed random subset).
SEARCH_COLUMNS = 2048


@dataclasses.dataclass
class FoldSite:
    """Matmul layers sharing one input that can absorb per-input-channel scales.

    ``constant``: the initializer divided by s (norm site); ``producer``: the layer whose output
    columns are divided by s (product site). Exactly one is set.
    """

    layers: list[Layer]
    constant: str | None = None
    producer: Layer | None = None


@dataclasses.dataclass
class Folding:
    """The scales chosen per site and what they change.

    ``row_scales``: ``{layer name: s[K]}`` (W's rows multiplied); ``column_scales``: ``{layer
    name: c[N]}`` (W's columns divided); ``constants``: ``{initializer name: new value}``;
    ``alphas``: ``{first layer of a site: alpha}``.
    """

    row_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    column_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    constants: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    alphas: dict[str, float] = dataclasses.field(default_factory=dict)

    def weight(self, layer: Layer, w: np.ndarray) -> np.ndarray:
        """float32 ``[K, N]``: ``layer``'s weights as the folded model holds them."""
        s, c = self.row_scales.get(layer.name), self.column_scales.get(layer.name)
        if s is None and c is None:
            return w
        # float32 in place: the LM head of a large vocabulary is big
        out = np.array(w, np.float32)
        if s is not None:
            out *= s.astype(np.float32)[:, None]
        if c is not None:
            out /= c.astype(np.float32)[None, :]
        return out

    def hessian(self, layer: Layer, h: np.ndarray | None) -> np.ndarray | None:
        """The Hessian of the layer's folded input ``x / s``."""
        s = self.row_scales.get(layer.name)
        if s is None or h is None:
            return h
        return h / s[:, None] / s[None, :]

    def unfold(self, layer: Layer, w_folded: np.ndarray) -> np.ndarray:
        """float32 ``[K, N]``: folded weights mapped back to the original model's basis (what
        the original layer computes with, given the folded constants)."""
        s, c = self.row_scales.get(layer.name), self.column_scales.get(layer.name)
        out = w_folded.astype(np.float64)
        if s is not None:
            out = out / s[:, None]
        if c is not None:
            out = out * c[None, :]
        return out.astype(np.float32)

    def constant_table(self) -> dict[str, np.ndarray]:
        """``{weight_ref(initializer): new constant}`` for the compiled IR."""
        return {weight_ref(name): value for name, value in self.constants.items()}

    def report(self) -> dict[str, object]:
        return {"sites": len(self.alphas),
                "scaled_sites": sum(1 for a in self.alphas.values() if a > 0),
                "alphas": self.alphas}


def find_fold_sites(model: onnx.ModelProto, layers: list[Layer],
                    quantized: set[str]) -> list[FoldSite]:
    """The norm and product sites of ``model`` (module docstring) among ``layers``, whose
    layers (and producer) are all in ``quantized``."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: Counter[str] = Counter(i for n in graph.node for i in n.input)
    uses.update(o.name for o in graph.output)
    producer_of = {o: n for n in graph.node for o in n.output}
    by_input: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.op_type in ("MatMul", "Gemm"):
            by_input.setdefault(layer.input_name, []).append(layer)
    layer_by_output = {graph.node[layer.node_index].output[0]: layer for layer in layers
                       if layer.op_type == "MatMul"}
    sites = []
    for name, group in by_input.items():
        k = group[0].k
        if uses[name] != len(group) or any(layer.name not in quantized for layer in group) \
                or any(uses[layer.weight_name] != 1 for layer in group):
            continue
        node = producer_of.get(name)
        if node is None or node.op_type != "Mul" or len(node.input) != 2:
            continue
        a, b = node.input
        const = a if a in inits else b if b in inits else None
        if const is not None:
            other = b if const == a else a
            dims = list(inits[const].dims)
            if other in inits or uses[const] != 1 or int(np.prod(dims)) != k \
                    or any(d != 1 for d in dims[:-1]) \
                    or inits[const].data_type != onnx.TensorProto.FLOAT:
                continue
            sites.append(FoldSite(group, constant=const))
            continue
        for operand in (a, b):
            producer = layer_by_output.get(operand)
            if producer is not None and producer.n == k and uses[operand] == 1 \
                    and producer.name in quantized and uses[producer.weight_name] == 1:
                sites.append(FoldSite(group, producer=producer))
                break
    return sites


def search_scales(weights: list[np.ndarray], hessian: np.ndarray, scheme: QuantScheme,
                  alphas: tuple[float, ...] = ALPHAS,
                  columns: int = SEARCH_COLUMNS) -> tuple[float, np.ndarray]:
    """``(alpha, s[K])`` minimising the summed RTN output error of ``weights`` (module
    docstring); ``s`` is all ones when ``alpha`` is 0.

    Parameters
    ----------
    weights
        float ``[K, N_i]`` weights of the layers sharing the input.
    hessian
        float64 ``[K, K]``: ``sum_t x[t]^T x[t]`` of that input.
    scheme
        The scheme the error is measured with (round to nearest).
    """
    h = np.asarray(hessian, np.float64)
    d = np.diag(h).copy()
    live = d > 0
    rms = np.ones_like(d)
    if live.any():
        rms[live] = np.sqrt(d[live] / d[live].mean())
    rng = np.random.default_rng(0)
    picked = []
    for w in weights:
        w = np.asarray(w, np.float32)
        if w.shape[1] > columns:
            w = w[:, np.sort(rng.choice(w.shape[1], columns, replace=False))]
        picked.append(w)
    best_alpha, best_error, best_scale = 0.0, np.inf, np.ones_like(d)
    for alpha in alphas:
        s = rms ** alpha
        s = s / np.sqrt(s.max() * s.min())
        error = 0.0
        for w in picked:
            scaled = (w.astype(np.float64) * s[:, None]).astype(np.float32)
            e = w - dequantize(quantize_weights_rtn(scaled, scheme)) / s[:, None]
            error += float(np.einsum("kn,kn->", e, h @ e))
        if error < best_error:
            best_alpha, best_error, best_scale = alpha, error, s
    if best_alpha == 0.0:
        best_scale = np.ones_like(d)
    return best_alpha, best_scale


def fold_scales(model: onnx.ModelProto, layers: list[Layer], choices: list[LayerChoice],
                hessians: Mapping[str, np.ndarray], fixed: set[str],
                base: QuantScheme, external: ExternalData | None = None) -> Folding:
    """Find the sites among the quantized ``layers`` and search each one's scales (the scheme
    of its first layer, else ``base``). ``external``: the model's mapped external data (weights
    and constants are read from their files, one site at a time)."""
    inits = {t.name: t for t in model.graph.initializer}
    quantized = {layer.name for layer, c in zip(layers, choices, strict=True)
                 if c is not None and c.scheme is not None and layer.name not in fixed
                 and layer.name in hessians}
    scheme_of = {layer.name: (c.scheme if c is not None and c.scheme is not None else base)
                 for layer, c in zip(layers, choices, strict=True)}
    folding = Folding()
    for site in progress(find_fold_sites(model, layers, quantized), "awq scales"):
        first = site.layers[0]
        weights = [layer_weight(model, layer, inits, external) for layer in site.layers]
        alpha, s = search_scales(weights, hessians[first.name], scheme_of[first.name])
        folding.alphas[first.name] = alpha
        if alpha == 0.0:
            continue
        for layer in site.layers:
            folding.row_scales[layer.name] = s
        if site.constant is not None:
            original = initializer_array(site.constant, inits, external)
            folding.constants[site.constant] = (
                original.astype(np.float64) / s.reshape(original.shape)).astype(np.float32)
        else:
            assert site.producer is not None
            folding.column_scales[site.producer.name] = s
    return folding


def apply_constants(model: onnx.ModelProto, folding: Folding) -> None:
    """Write the folded constants into ``model``'s initializers (for an ONNX export)."""
    for t in model.graph.initializer:
        if t.name in folding.constants:
            t.CopyFrom(onnx.numpy_helper.from_array(folding.constants[t.name], t.name))
