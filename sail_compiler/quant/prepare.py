"""Decide and compute every layer's quantized weights before the ``quantize`` stage runs.

:func:`prepare_quantization` works on the checked ONNX model, where layer names exist: it finds
the layers (:func:`~.plan.find_layers`), resolves each one's choice (pre-quantized, ``--skip``,
``--bits-plan``, ``--avg-bits``, ``--bits``; precedence in :mod:`.plan`), gathers calibration
statistics when a method or the budget needs them (:mod:`.calibrate`), and quantizes each layer
with its method (:mod:`.methods`), showing progress. The result's :attr:`~Quantization.table`
is what :class:`~sail_compiler.passes.QuantizeWeights` substitutes into the IR.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..errors import OptionError
from ..external_data import ExternalData
from .awq import Folding, fold_scales
from .calibrate import (
    HessianStore,
    assign_bits,
    calibration_feeds,
    candidate_widths,
    collect_hessians,
    collect_hessians_sequential,
    curve_columns,
    layer_output_error,
    measure_sensitivity,
    probe_width,
    progress,
    sensitivity_feeds,
)
from .methods import quantize_weight, reconstruction_error
from .plan import (
    BitsPlan,
    Layer,
    LayerChoice,
    ResolvedPlan,
    find_embeddings,
    find_layers,
    layer_ref,
    layer_weight,
    unmatched_error,
)
from .reference import ActBlocks, PackedWeight, QuantizedWeight, dequantize, float16_exact
from .scheme import QuantScheme

if TYPE_CHECKING:
    from ..frontend.signature import ModelSignature
    from ..options import CompileOptions


@dataclasses.dataclass
class QuantizedLayer:
    """One layer's outcome: its choice, weights (None: float) and weight-space error.

    A compile whose weights stay in their files (a large model) keeps ``qw`` packed
    (:class:`~.reference.PackedWeight`).

    ``weight_error`` is :func:`~.methods.reconstruction_error`: the relative output error
    ``||X (W - W_q)||^2 / ||X W||^2`` over the calibration activations when there are some,
    else the relative Frobenius error of the weights.
    """

    layer: Layer
    choice: LayerChoice
    qw: QuantizedWeight | PackedWeight | None
    weight_error: float | None = None
    #: ``float16`` when the compile asked for float16 scales (``--scale-dtype``) and every scale
    #: of the layer is a float16 value (the c target then stores its LUT-GEMV weight's scales
    #: in 2 bytes), ``float32`` otherwise; None for a float layer.
    scale_dtype: str | None = None

    @property
    def key(self) -> str:
        """The name the IR carries on the layer's weight constant (:func:`~.plan.layer_ref`)."""
        return layer_ref(self.layer)

    @property
    def size_bytes(self) -> int:
        """Bytes of packed codes + scales (2 bytes each when :attr:`scale_dtype` is float16,
        else 4) (+ uint8 zero points), or float32 weights."""
        if self.qw is None:
            return 4 * self.layer.params
        qw = self.qw
        zero = 0 if qw.zero is None else qw.zero.size
        scale_bytes = 2 if self.scale_dtype == "float16" else 4
        return qw.packed().size + scale_bytes * qw.scale.size + zero

    def report(self) -> dict[str, Any]:
        choice = self.choice
        s = choice.scheme
        return {"layer": self.layer.name, "k": self.layer.k, "n": self.layer.n,
                "bits": s.bits if s else None,
                "group_size": (s.group_size or "channel") if s else None,
                "symmetric": s.symmetric if s else None,
                "method": choice.method if s and choice.source != "prequantized" else None,
                "source": choice.source, "scale_dtype": self.scale_dtype,
                "size_bytes": self.size_bytes,
                "weight_error": self.weight_error}


@dataclasses.dataclass
class Quantization:
    """What :func:`prepare_quantization` decided and computed."""

    plan: ResolvedPlan
    layers: list[QuantizedLayer]
    calibration: str | None
    sensitivity: dict[str, dict[int, float]] | None
    seconds: float
    notes: list[str]
    #: ``--awq``: the scales folded into the model (None without it).
    folding: Folding | None = None

    @property
    def table(self) -> dict[str, tuple[str, QuantizedWeight | PackedWeight | None]]:
        """``{layer_ref: (name, qw or None)}`` for :class:`QuantizeWeights` and
        :class:`QuantizeEmbedding`: the name the IR carries on each layer's weight constant
        (:func:`~.plan.layer_ref`). Layers that share a weight constant share its entry (the
        first layer's)."""
        table: dict[str, tuple[str, QuantizedWeight | PackedWeight | None]] = {}
        for q in self.layers:
            table.setdefault(q.key, (q.layer.name, q.qw))
        return table

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """``{weight_ref(initializer): new value}``: constants ``--awq`` rescaled (see
        :mod:`.awq`), for :class:`QuantizeWeights`."""
        return self.folding.constant_table() if self.folding is not None else {}

    def by_name(self) -> dict[str, QuantizedLayer]:
        return {q.layer.name: q for q in self.layers}

    def report(self) -> dict[str, Any]:
        quantized = [q for q in self.layers if q.qw is not None]
        total = sum(q.layer.params for q in self.layers)
        return {"plan": self.plan.to_json(), "calibration": self.calibration,
                "average_bits": self.plan.average_bits(),
                "scale_dtype": self.plan.scale_dtype,
                "quantized_params": sum(q.layer.params for q in quantized),
                "total_params": total,
                "size_bytes": sum(q.size_bytes for q in self.layers),
                "float_size_bytes": 4 * total,
                "seconds": round(self.seconds, 3),
                "awq": self.folding.report() if self.folding is not None else None,
                "layers": [q.report() for q in self.layers]}


def _scheme_of(qw: QuantizedWeight) -> QuantScheme:
    group = None if qw.n_groups == 1 and qw.group_size >= qw.k else qw.group_size
    return QuantScheme(qw.bits, group, qw.symmetric)


def _embedding_choice(options: CompileOptions) -> LayerChoice:
    """An embedding table's choice from ``--embedding-bits`` (float without it)."""
    if options.embedding_bits is None:
        return LayerChoice(None, source="default")
    template = options.quant or QuantScheme(8)
    scheme = dataclasses.replace(template, bits=options.embedding_bits)
    method = "search" if options.method == "gptq" else options.method
    return LayerChoice(scheme, method, "embedding")


def _check_act_groups(layers: list[Layer], choices: list[LayerChoice],
                      fixed: dict[str, QuantizedWeight], act_group: int | str) -> None:
    """Every quantized matmul's weight groups must nest with ``--act-group-size``
    (:class:`~.reference.ActBlocks`); all that do not are listed in one :class:`OptionError`."""
    problems = []
    for layer, choice in zip(layers, choices, strict=True):
        if layer.op_type == "Gather":  # a lookup has no activations
            continue
        if layer.name in fixed:
            group = fixed[layer.name].group_size
        elif choice.scheme is not None:
            group = choice.scheme.group_size_for(layer.k)
        else:
            continue
        try:
            ActBlocks.resolve(act_group, layer.k, group)
        except OptionError as err:
            problems.append(f"{layer.name}: {err}")
    if problems:
        raise OptionError(f"--act-group-size {act_group} does not fit {len(problems)} "
                          "quantized layer(s):\n" + "\n".join(f"  - {p}" for p in problems))


def needs_calibration(options: CompileOptions, choices: list[LayerChoice]) -> bool:
    """GPTQ, ``--awq``, ``--avg-bits`` and ``--gptq-sequential`` need activations; the search
    uses them when given."""
    return options.avg_bits is not None or options.calib is not None or options.awq \
        or options.gptq_sequential \
        or any(c.scheme is not None and c.method == "gptq" for c in choices)


def prepare_quantization(model: onnx.ModelProto, signature: ModelSignature,
                         options: CompileOptions,
                         prequantized: dict[str, Any] | None = None,
                         external: ExternalData | None = None,
                         work_dir: Path | None = None) -> Quantization | None:
    """Resolve and compute every layer's quantization (module docstring).

    Parameters
    ----------
    model
        The checked model (pre-quantized nodes already rewritten to float MatMuls).
    signature
        Its inputs, for calibration inputs.
    options
        ``quant``, ``method``, ``skip``, ``bits_plan``, ``avg_bits``, ``calib``, ``act_bits``.
    prequantized
        ``{weight initializer name: PrequantizedLayer}`` from the frontend's rewrite.
    external
        The model's mapped external data (its initializers are not in ``model``): each weight
        is read from its file while it is quantized, one at a time. Calibration runs the model
        on onnxruntime, which maps the same files, and spills the layers' statistics to a
        temporary folder (:class:`~.calibrate.HessianStore`), so that one layer's Hessian is in
        memory at a time.
    work_dir
        Where that folder is made (None: the system's temporary directory).

    Returns
    -------
    Quantization or None
        None when nothing is quantized (no scheme, plan or pre-quantized layer).

    Raises
    ------
    OptionError
        A ``--skip`` pattern or plan rule matches no layer; a plan's act_bits disagrees with
        ``--act-bits``; ``--avg-bits`` out of range; ``--gptq-act-order`` and no layer
        quantized by gptq.
    """
    prequantized = prequantized or {}
    base_dir = external.base_dir if external is not None else None
    if options.quant is None and options.bits_plan is None and not prequantized \
            and options.embedding_bits is None:
        return None
    started = time.perf_counter()
    notes: list[str] = []
    layers = find_layers(model) + find_embeddings(model)
    plan = BitsPlan.load(options.bits_plan, options.quant, options.method) \
        if options.bits_plan is not None else None
    problems = []
    unmatched_skip = [p for p in options.skip
                      if not any(fnmatch.fnmatchcase(layer.name, p)
                                 or fnmatch.fnmatchcase(layer.weight_name, p) for layer in layers)]
    if unmatched_skip:
        problems.append(unmatched_error("--skip patterns", unmatched_skip, layers))
    if plan is not None and plan.unmatched(layers):
        problems.append(unmatched_error(f"plan rules of {plan.source}", plan.unmatched(layers),
                                        layers))
    if problems:
        raise OptionError("; ".join(str(p) for p in problems))
    if plan is not None and plan.act_bits is not None and plan.act_bits != options.act_bits:
        raise OptionError(f"{plan.source} was made with act_bits {plan.act_bits}, the compile "
                          f"uses --act-bits {options.act_bits}; pass --act-bits "
                          f"{plan.act_bits} to reproduce it")
    if plan is not None and plan.scale_dtype is not None \
            and plan.scale_dtype != options.scale_dtype:
        raise OptionError(f"{plan.source} was made with scale_dtype {plan.scale_dtype}, the "
                          f"compile uses --scale-dtype {options.scale_dtype}; pass --scale-dtype "
                          f"{plan.scale_dtype} to reproduce it")

    choices: list[LayerChoice | None] = []
    fixed: dict[str, QuantizedWeight] = {}
    for layer in layers:
        pre = prequantized.get(layer.weight_name)
        if pre is not None:
            fixed[layer.name] = pre.qw
            choices.append(LayerChoice(_scheme_of(pre.qw), "rtn", "prequantized"))
        elif any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.weight_name, p)
                 for p in options.skip):
            choices.append(LayerChoice(None, source="skip"))
        elif plan is not None and plan.choose(layer) is not None:
            choices.append(plan.choose(layer))
        elif layer.op_type == "Gather":
            choices.append(_embedding_choice(options))
        elif options.avg_bits is not None:
            choices.append(None)  # decided below
        elif options.quant is not None:
            choices.append(LayerChoice(options.quant, options.method, "default"))
        else:
            choices.append(LayerChoice(None, source="default"))

    hessians: HessianStore | dict[str, np.ndarray] | None = None
    store: HessianStore | None = None  # the float model's spilled Hessians, closed at the end
    wanted: list[Layer] = []
    try:
        calibration = sensitivity = None
        folding: Folding | None = None
        provisional = [c or LayerChoice(options.quant, options.method) for c in choices]
        _check_act_groups(layers, provisional, fixed, options.act_group_size)
        by_gptq = [layer for layer, c in zip(layers, provisional, strict=True)
                   if c.scheme is not None and c.method == "gptq" and layer.name not in fixed
                   and layer.op_type != "Gather"]
        if options.gptq_act_order and not by_gptq:
            where = f"the rules of {plan.source}" if plan is not None else "--method"
            raise OptionError(f"--gptq-act-order orders GPTQ's rows, and no layer is quantized "
                              f"by gptq ({where}); add --method gptq, or \"method\": \"gptq\" "
                              "to a plan rule")
        if needs_calibration(options, provisional):
            from ..options import CalibrationSpec

            spec = options.calib or CalibrationSpec()
            feeds = calibration_feeds(spec, signature)
            calibration = spec.describe()
            wanted = [layer for layer, c in zip(layers, provisional, strict=True)
                      if c.scheme is not None and layer.name not in fixed
                      and layer.op_type != "Gather"]
            spill = None
            if external is not None:  # a large model: one layer's Hessian in memory at a time
                spill = work_dir if work_dir is not None else Path(tempfile.gettempdir())
            # the sequential order collects its own Hessians below; the float model's are for
            # --awq and --avg-bits
            float_needed = not options.gptq_sequential or options.awq \
                or options.avg_bits is not None
            hessians = collect_hessians(model, wanted, feeds, base_dir, spill) \
                if wanted and float_needed else {}
            store = hessians if isinstance(hessians, HessianStore) else None
            if options.awq:
                assert options.quant is not None or plan is not None
                folding = fold_scales(model, layers, provisional, hessians, set(fixed),
                                      options.quant or QuantScheme(4), external)
            if options.avg_bits is not None:
                free = [layer for layer, c in zip(layers, choices, strict=True) if c is None]
                assert options.quant is not None, "CompileOptions checks --avg-bits has a scheme"
                widths = candidate_widths(options.quant)
                inits = {t.name: t for t in model.graph.initializer}

                @functools.lru_cache(maxsize=1)  # asked for once per width of one layer
                def folded(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
                    w, h = layer_weight(model, layer, inits, external), hessians[layer.name]
                    return (w, h) if folding is None else \
                        (folding.weight(layer, w), folding.hessian(layer, h))

                # RTN: GPTQ's weights are computed once, for the chosen widths, below.
                def quantized(layer: Layer, scheme: QuantScheme) -> np.ndarray:
                    w_hat = dequantize(quantize_weight(folded(layer)[0], scheme, "rtn"))
                    return w_hat if folding is None else folding.unfold(layer, w_hat)

                def output_error(layer: Layer, scheme: QuantScheme) -> float:
                    w, h = folded(layer)
                    w = w[:, curve_columns(w.shape[1])]
                    return layer_output_error(w - dequantize(quantize_weight(w, scheme, "rtn")), h)

                sensitivity = measure_sensitivity(model, free, widths,
                                                  probe_width(widths, options.avg_bits),
                                                  options.quant, sensitivity_feeds(spec, signature),
                                                  quantized, output_error, base_dir)
                bits = assign_bits(sensitivity, {layer.name: layer.params for layer in free},
                                   options.avg_bits)
                for i, (layer, c) in enumerate(zip(layers, choices, strict=True)):
                    if c is None:
                        choices[i] = LayerChoice(dataclasses.replace(options.quant,
                                                                     bits=bits[layer.name]),
                                                 options.method, "avg-bits")
        final = [c for c in choices if c is not None]
        assert len(final) == len(layers)
        done: dict[str, QuantizedWeight] = {}  # quantized during the sequential calibration
        if options.gptq_sequential and wanted:
            inits = {t.name: t for t in model.graph.initializer}
            choice_of = {layer.name: c for layer, c in zip(layers, final, strict=True)}

            def quantize_layer(layer: Layer, h: np.ndarray) -> np.ndarray:
                w = layer_weight(model, layer, inits, external)
                if folding is not None:
                    w, h = folding.weight(layer, w), folding.hessian(layer, h)
                choice = choice_of[layer.name]
                done[layer.name] = qw = quantize_weight(
                    w, choice.scheme, choice.method, h,
                    options.gptq_act_order and choice.method == "gptq", options.scale_dtype)
                w_hat = dequantize(qw)
                return w_hat if folding is None else folding.unfold(layer, w_hat)

            hessians = collect_hessians_sequential(
                model, [layer for layer in wanted if choice_of[layer.name].scheme is not None],
                feeds, quantize_layer, base_dir=base_dir)
        # Embedding tables are layers only when asked for (--embedding-bits, a plan rule, --skip):
        # a float table left alone is not part of the plan or the reports.
        kept = [i for i, (layer, c) in enumerate(zip(layers, final, strict=True))
                if layer.op_type != "Gather" or c.source != "default"]
        layers, final = [layers[i] for i in kept], [final[i] for i in kept]

        inits = {t.name: t for t in model.graph.initializer}
        results = []
        for layer, choice in progress(list(zip(layers, final, strict=True)), "quantize"):
            w = layer_weight(model, layer, inits, external)
            h = hessians.get(layer.name) if hessians else None
            if folding is not None:
                w, h = folding.weight(layer, w), folding.hessian(layer, h)
            if layer.name in fixed:
                qw = fixed[layer.name]
            elif layer.name in done:
                qw = done[layer.name]
            elif choice.scheme is None:
                qw = None
            else:
                # a lookup has no activations to calibrate GPTQ with: it gets the search
                method = "search" if h is None and choice.method == "gptq" else choice.method
                qw = quantize_weight(w, choice.scheme, method, h,
                                     options.gptq_act_order and method == "gptq",
                                     options.scale_dtype)
            err = reconstruction_error(w, qw, h) if qw is not None else None
            del w
            if external is not None and qw is not None:
                qw = PackedWeight.of(qw)  # a large model: hold bits / 8 bytes a weight, not 1
            scale_dtype = None if qw is None else "float16" \
                if options.scale_dtype == "float16" and float16_exact(qw.scale) else "float32"
            results.append(QuantizedLayer(layer, choice, qw, err, scale_dtype))
        resolved = ResolvedPlan(tuple(layers), tuple(final), options.act_bits,
                                options.scale_dtype)
        if options.scale_dtype == "float16":
            kept32 = [q.layer.name for q in results if q.qw is not None and q.choice.source
                      != "prequantized" and q.scale_dtype == "float32"]
            if kept32:
                shown = ", ".join(kept32[:5]) + (", ..." if len(kept32) > 5 else "")
                notes.append(f"--scale-dtype float16: {len(kept32)} layer(s) keep float32 scales "
                             f"because some scale lies outside float16's normal range "
                             f"[2^-14, 65504] ({shown}); see quant_report.json")
        if prequantized:
            notes.append(f"{len(fixed)} pre-quantized layer(s) kept as imported")
        if folding is not None:
            notes.append(f"--awq: {folding.report()['scaled_sites']} of {len(folding.alphas)} "
                         "input(s) scaled per channel")
        return Quantization(resolved, results, calibration, sensitivity,
                            time.perf_counter() - started, notes, folding)
    finally:
        if store is not None:
            store.close()  # its spilled files
