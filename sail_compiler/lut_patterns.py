"""``sail analyze-patterns``: pattern-reuse figures of a model on calibration inputs.

1. Compile the model as ``sail compile`` would up to the ``sail`` stage (quantized weights,
   ``sail.lut_gemv`` calls), then a probe build of it (:class:`~.passes.ExposeGroupSums`) and
   run every calibration input through the probe: this records the float activations that
   really reach each layer in the compiled (quantized) model.
2. Run :class:`~.passes.AnalyzeLUTPatterns` on the ``sail`` stage's module with them and report
   per layer and in total (weighted by lookups) the fractions of lookups saved at each batch
   size, ideal and with the configured reuse table.

Calibration inputs are ``--calib`` files or ``--calib-text`` windows (as for quantization), or,
by default, generated *text-like* token sequences (:func:`text_like_ids`): token ids drawn from a
Zipf-Mandelbrot law over the vocabulary, as word frequencies in text follow, with a seeded
permutation so frequent ids are spread over the table, and recent tokens repeated the way text
repeats words.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import InputError
from .frontend.signature import context_length
from .options import CalibrationSpec, CompileOptions
from .passes.analyze_lut_patterns import DEFAULT_BATCHES, AnalyzeLUTPatterns
from .quant.calibrate import calibration_feeds, feed_for_ids, progress
from .quant.patterns import ReuseConfig

#: Zipf-Mandelbrot law of the generated ids: p(rank r) ~ 1 / (r + 2.7) ** 1.1
_ZIPF_SHIFT, _ZIPF_EXPONENT = 2.7, 1.1
#: Probability that a generated token repeats one of the last 32
_REPEAT = 0.25


def text_like_ids(vocab: int, length: int, seed: int) -> np.ndarray:
    """``length`` int64 token ids below ``vocab`` with text-like statistics (module docstring)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(vocab, dtype=np.float64)
    p = 1.0 / (ranks + _ZIPF_SHIFT) ** _ZIPF_EXPONENT
    ids_by_rank = np.random.default_rng(0).permutation(vocab)  # one vocabulary order per model
    ids = ids_by_rank[rng.choice(vocab, size=length, p=p / p.sum())]
    for i in range(1, length):
        if rng.random() < _REPEAT:
            ids[i] = ids[max(0, i - int(rng.integers(1, 33)))]
    return ids.astype(np.int64)


def generated_feeds(signature: Any, samples: int, seq_len: int) -> list[dict[str, np.ndarray]]:
    """``samples`` text-like feeds of ``seq_len`` tokens for a model with a token-id input."""
    from .inputs import ids_input

    spec = ids_input(signature)
    vocab = spec.index_bound
    if vocab is None:
        raise InputError(f"cannot tell the vocabulary size of input {spec.name}; give "
                         "calibration inputs with --calib or --calib-text")
    return [feed_for_ids(signature, text_like_ids(vocab, seq_len, seed))
            for seed in range(samples)]


def collect_activations(model_path: Path, options: CompileOptions, quant: Any,
                        feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{layer: float32 [S, L, K]}``: the input of every quantized layer in a probe build of
    the compile, one sample per feed (all feeds must have the same number of rows L)."""
    from .artifact import Artifact
    from .driver import compile_model
    from .passes.expose_group_sums import SUMS, recording

    per_layer: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="sail-patterns-") as tmp:
        probe_options = dataclasses.replace(options, probe=True, dump_dir=None, emit=None,
                                            print_after=(), force=False)
        compile_model(model_path, Path(tmp) / "probe", probe_options, quantization=quant)
        probe = Artifact(Path(tmp) / "probe")
        names = probe.manifest["probe_layers"]
        for feed in progress(feeds, "running calibration inputs"):
            with recording() as records:
                probe.run(feed)
            for index, kind, _, x in records:
                if kind == SUMS:
                    per_layer.setdefault(names[index], []).append(x.reshape(-1, x.shape[-1]))
    lengths = {rows.shape[0] for runs in per_layer.values() for rows in runs}
    if len(lengths) > 1:
        raise InputError(f"calibration inputs give layers {sorted(lengths)} rows; the pattern "
                         "analysis needs inputs of one sequence length")
    return {name: np.stack(runs) for name, runs in per_layer.items()}


def generated_seq_len(model_path: str | Path, longest: int = 64) -> int:
    """Tokens of the generated feeds: ``longest``, or fewer for a model whose positions end
    before (a rotary table of 32 rows takes 32 tokens; more would be refused)."""
    context = context_length(onnx.load(str(model_path), load_external_data=False))
    return longest if context is None else min(longest, context)


def analyze_patterns(model_path: str | Path, options: CompileOptions,
                     calib: CalibrationSpec | None = None,
                     batches: tuple[int, ...] = DEFAULT_BATCHES,
                     config: ReuseConfig | None = None) -> dict[str, Any]:
    """Compile, collect activations and analyse them (module docstring).

    Returns
    -------
    dict
        ``{"inputs", "config", "batches", "layers": [{"layer", "k", "nbw", "act_bits",
        "batches": {B: figures}}], "total": {B: {"lookups", "ideal_saved_fraction",
        "table_saved_fraction", "zero_fraction", "pigeonhole_bound"}}, "module"}``.
    """
    from .driver import compile_model

    model_path = Path(model_path)
    config = config or ReuseConfig()
    AnalyzeLUTPatterns({}, batches, config)  # validates the batches before compiling
    result = compile_model(model_path, None, dataclasses.replace(options, emit="sail"))
    if result.quantization is None:
        raise InputError("nothing is quantized; add --bits (the analysis needs sail.lut_gemv)")
    if calib is None:
        seq = generated_seq_len(model_path)
        feeds = generated_feeds(result.signature, 16, seq)
        described = f"16 generated text-like sequences of {seq} tokens"
    else:
        feeds = calibration_feeds(calib, result.signature)
        described = calib.describe()
    activations = collect_activations(model_path, options, result.quantization, feeds)
    # a module pass instance forwards reads, not writes, to its class: build it with its data
    analysis = AnalyzeLUTPatterns(activations, batches, config)
    module = analysis(result.module)
    totals: dict[int, dict[str, float]] = {}
    for b in analysis.batches:
        entries = [r["batches"][b] for r in analysis.results.values()]
        lookups = sum(e["lookups"] for e in entries)
        totals[b] = {"lookups": lookups, "pigeonhole_bound": entries[0]["pigeonhole_bound"]}
        for key in ("ideal_saved_fraction", "table_saved_fraction", "zero_fraction"):
            totals[b][key] = sum(e[key] * e["lookups"] for e in entries) / max(lookups, 1)
    return {"inputs": described, "config": dataclasses.asdict(config),
            "batches": list(analysis.batches),
            "layers": [{"layer": name, **r} for name, r in analysis.results.items()],
            "total": totals, "module": module, "schedules": analysis.schedules}


def format_table(report: dict[str, Any]) -> str:
    """The per-layer and total table ``sail analyze-patterns`` prints."""
    batches = report["batches"]
    cfg = report["config"]
    table = f"{cfg['size']}-entry" if cfg["ways"] is None else \
        f"{cfg['size']}-entry {cfg['ways']}-way {cfg['hash']}"
    head = ["layer", "K", "NBW"] + [f"B={b} {kind}" for b in batches
                                    for kind in ("ideal", "table")]
    rows = []
    for layer in report["layers"]:
        cells = [layer["layer"], str(layer["k"]), str(layer["nbw"])]
        for b in batches:
            figures = layer["batches"][b]
            cells += [f"{figures['ideal_saved_fraction']:.3f}",
                      f"{figures['table_saved_fraction']:.3f}"]
        rows.append(cells)
    total = ["total", "", ""]
    for b in batches:
        total += [f"{report['total'][b]['ideal_saved_fraction']:.3f}",
                  f"{report['total'][b]['table_saved_fraction']:.3f}"]
    rows.append(total)
    bound = ["pigeonhole bound", "", ""]
    for b in batches:
        bound += [f"{report['total'][b]['pigeonhole_bound']:.3f}", ""]
    rows.append(bound)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"fraction of lookups saved; inputs: {report['inputs']}; ideal = unbounded reuse "
             f"table, table = {table} per stream of {cfg['chunks_per_stream']} chunks"]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)
