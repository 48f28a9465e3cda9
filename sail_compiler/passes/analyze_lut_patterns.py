"""``AnalyzeLUTPatterns``: how many table lookups SAIL's pattern reuse saves, per layer.

Given calibration activations (the float input ``x`` that reaches each layer, recorded from a
run of the compiled model: :func:`sail_compiler.lut_patterns.collect_activations`), the pass
quantizes them as the layer's ``sail.quantize`` does and counts, for every ``sail.lut_gemv`` and
batch size B (default 1, 4 and 16), the lookups (token x chunk x bit plane) whose pattern
repeats one already read in the same call (:mod:`sail_compiler.quant.patterns`):

* ``ideal``: with an unbounded reuse table (the deduplicated schedule), beside its pigeonhole
  lower bound ``1 - 2**NBW / (B * b_a)``;
* ``table``: with a ``size``-entry reuse table per data-feeding stream (:class:`ReuseConfig`:
  32 entries, fully associative LRU, 8 chunks per stream unless configured);
* ``zero``: lookups of the all-zero pattern, which read nothing.

It annotates each analysed call with the figures (attribute ``reuse``: ``{"b1.ideal": ...,
"b1.table": ..., "b1.zero": ..., ...}``) and the reuse table it assumed (``reuse_table``:
``size``, ``ways``, ``hash``, ``chunks_per_stream``), and sets ``lookup_schedule="dedup"``: each
distinct (chunk, pattern) of a call is looked up once per table and the result fanned out to
its (token, bit plane) consumers. The schedule itself depends on the activations, so the
pim-sim target builds it at run time with :func:`~sail_compiler.quant.patterns.lookup_schedule`
on the real inputs; the pass keeps the calibration inputs' schedules of the first call per batch
size in ``schedules`` (and ``results``, per layer, for reports). Calls without activations are
left unannotated and listed in ``missing``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..errors import OptionError
from ..ops.sail_ops import LUT_GEMV, is_sail_op, op_attrs, reference_quantize
from ..quant.lut import activation_patterns
from ..quant.patterns import LookupSchedule, ReuseConfig, analyze_layer, lookup_schedule
from ..quant.reference import ActBlocks
from ._common import rewrite_relax_functions

DEFAULT_BATCHES = (1, 4, 16)


def _check_batches(batches: Iterable[int]) -> tuple[int, ...]:
    batches = tuple(batches)
    bad = [b for b in batches if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if bad or not batches:
        raise OptionError(f"batch sizes must be positive integers, got {list(batches)}")
    return batches


@relax.expr_functor.mutator
class _Annotator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, analysis: AnalyzeLUTPatterns) -> None:
        super().__init__(mod)
        self.analysis = analysis

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_sail_op(call, LUT_GEMV):
            return call
        attrs = op_attrs(call)
        figures = self.analysis.analyze(attrs)
        if figures is None:
            return call
        reuse = {}
        for b, entry in figures.items():
            reuse[f"b{b}.ideal"] = round(float(entry["ideal_saved_fraction"]), 4)
            reuse[f"b{b}.table"] = round(float(entry["table_saved_fraction"]), 4)
            reuse[f"b{b}.zero"] = round(float(entry["zero_fraction"]), 4)
        config = self.analysis.config
        new_attrs = {**dict(call.attrs.items()), "reuse": reuse, "lookup_schedule": "dedup",
                     "reuse_table": {"size": config.size, "ways": config.ways or 0,
                                     "hash": config.hash,
                                     "chunks_per_stream": config.chunks_per_stream}}
        return relax.Call(call.op, call.args, new_attrs)


@tvm.transform.module_pass(opt_level=0, name="AnalyzeLUTPatterns")
class AnalyzeLUTPatterns:
    """Pattern-reuse figures per ``sail.lut_gemv`` (module docstring).

    Parameters
    ----------
    activations
        ``{layer name: float x [S, L, K]}``: S calibration samples of L positions reaching each
        layer (layers sharing an input may share the array).
    batches
        Batch sizes to analyse (default 1, 4, 16).
    config
        The data-feeding streams' reuse table (default 32 entries, LRU, 8 chunks per stream).

    Raises
    ------
    OptionError
        A batch size is not positive, an activation array is not ``[S, L, K]`` with the layer's
        K, or no activation names any ``sail.lut_gemv`` of the module.
    """

    def __init__(self, activations: dict[str, np.ndarray],
                 batches: Iterable[int] = DEFAULT_BATCHES,
                 config: ReuseConfig | None = None) -> None:
        self.activations = activations
        self.batches = _check_batches(batches)
        self.config = config or ReuseConfig()
        self.results: dict[str, dict[str, Any]] = {}
        self.schedules: dict[str, dict[int, LookupSchedule]] = {}
        self.missing: list[str] = []

    def analyze(self, attrs: dict[str, Any]) -> dict[int, dict[str, Any]] | None:
        """Figures for one call's attributes (None when no activations name its layer)."""
        name = attrs.get("layer", "")
        x = self.activations.get(name)
        if x is None:
            self.missing.append(name or "<unnamed>")
            return None
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != attrs["k"]:
            raise OptionError(f"calibration activations for layer {name} have shape "
                              f"{list(x.shape)}; expected [samples, positions, {attrs['k']}]")
        blocks = ActBlocks(attrs["k"], attrs["group_size"], attrs.get("act_group", attrs["k"]))
        xq, _ = reference_quantize(x, attrs["act_bits"], blocks.act_group)
        # the tables are laid out per sum block (the weight groups, split at activation blocks)
        kw = {"group_size": blocks.sum_size, "nbw": attrs["nbw"], "act_bits": attrs["act_bits"]}
        figures = analyze_layer(xq, batches=self.batches, config=self.config, **kw)
        self.results[name] = {"k": attrs["k"], "nbw": attrs["nbw"], "act_bits": attrs["act_bits"],
                              "group_size": attrs["group_size"], "batches": figures}
        schedules = {}
        for b, entry in figures.items():
            rows = (xq[:b, 0] if entry["batching"] == "samples" else xq[0, :b])
            schedules[b] = lookup_schedule(activation_patterns(rows, **kw))
        self.schedules[name] = schedules
        return figures

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.results, self.schedules, self.missing = {}, {}, []
        out = rewrite_relax_functions(_Annotator(mod, self), mod)
        if not self.results:
            raise OptionError("no sail.lut_gemv layer has calibration activations (layers "
                              f"without: {', '.join(sorted(set(self.missing))) or 'none'}); "
                              "compile with --bits so the sail stage lowers matmuls to "
                              "sail.lut_gemv, and pass activations keyed by layer name")
        return out
