"""The compiler driver: check -> import -> stages -> target artifact.

Every ``PassContext`` opened here extends the instruments already active (a user's own
instrument keeps seeing our passes) instead of replacing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tvm

from .artifact import check_output_path, write_artifact
from .errors import OptionError
from .external_data import ExternalData, external_tensors
from .frontend import ModelSignature, bind_shapes, import_onnx, load_checked
from .frontend.signature import context_length, position_table_rows
from .ir_dump import IRDumper, prepare_dump_dir
from .options import CompileOptions
from .pipeline import STAGES, stage_pass
from .quant.prepare import Quantization, prepare_quantization
from .targets import get_target
from .tokenizer import prepare_tokenizer

PLAN_FILE = "quant_plan.json"
QUANT_REPORT_FILE = "quant_report.json"


@dataclasses.dataclass
class CompileResult:
    """What :func:`compile_model` produced.

    ``output`` is the artifact directory (or the TVMScript file with ``emit``); ``module`` the
    IRModule after the last stage run; ``notes`` messages for the user (e.g. bound dims);
    ``stage_seconds`` the wall time of each stage; ``quantization`` every layer's choice and
    quantized weights (None for a float compile).
    """

    output: Path | None
    module: tvm.IRModule
    signature: ModelSignature
    notes: list[str]
    stage_seconds: dict[str, float]
    passes_run: list[str]
    quantization: Quantization | None = None


@contextmanager
def _pass_context(dumper: IRDumper) -> Iterator[None]:
    current = tvm.transform.PassContext.current()
    instruments = [*current.instruments, dumper]
    with tvm.transform.PassContext(opt_level=current.opt_level, config=current.config,
                                   instruments=instruments,
                                   required_pass=current.required_pass,
                                   disabled_pass=current.disabled_pass):
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _last_logits_signature(signature: ModelSignature, mod: tvm.IRModule) -> ModelSignature:
    """The signature after :class:`~.passes.KeepLastLogits`: outputs whose sequence dim it cut
    to 1 say so (the Relax function keeps only positions; the names and dims live here)."""
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    outputs = list(signature.outputs)
    changed = False
    for index, (spec, ty) in enumerate(zip(outputs, fields, strict=False)):
        shape = getattr(ty, "shape", None)
        if shape is None or len(spec.dims) != 3 or len(shape) != 3 or spec.dims[1] == 1:
            continue
        if isinstance(shape[1], tvm.tirx.IntImm) and int(shape[1]) == 1:
            outputs[index] = dataclasses.replace(spec, dims=(spec.dims[0], 1, spec.dims[2]))
            changed = True
    if not changed:
        raise OptionError("--logits last: no output is [batch, seq, vocab] logits computed by an "
                          "LM-head matmul per position (KeepLastLogits did not fire)")
    return dataclasses.replace(signature, outputs=tuple(outputs))


def _weights_may_stay_in_files(options: CompileOptions) -> bool:
    """Whether a large model's external data may stay in its files, memory-mapped, through
    import and quantization (:mod:`.external_data`). Always: a calibrated compile (GPTQ,
    ``--awq``, ``--avg-bits``, ``--calib``) runs the model on onnxruntime, which maps the same
    files (:mod:`.quant.calibrate`)."""
    return True


def compile_model(model_path: str | Path, output: str | Path | None,
                  options: CompileOptions | None = None,
                  command: list[str] | None = None,
                  quantization: Quantization | None = None) -> CompileResult:
    """Compile an ONNX model.

    Parameters
    ----------
    model_path
        The ``.onnx`` file (external data beside it).
    output
        The artifact directory to write (with ``options.emit``: the TVMScript file, or None to
        write nothing). An existing path is replaced only if sail made it or ``options.force``.
    options
        See :class:`CompileOptions`.
    command
        The command line, recorded in the dump directory.
    quantization
        Reuse this (from an earlier :class:`CompileResult` of the same model and options)
        instead of choosing and computing the quantized weights again.

    Returns
    -------
    CompileResult
    """
    options = options or CompileOptions()
    model_path = Path(model_path)
    out = Path(output) if output is not None else None
    target = get_target(options.target)
    if out is not None:
        check_output_path(out, model_path, options.force)
    dump_dir = None
    if options.dump_dir is not None:
        dump_dir = prepare_dump_dir(options.dump_dir, options.force,
                                    command or [sys.argv[0], str(model_path)])
    dumper = IRDumper(dump_dir, list(options.print_after))
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    prequantized: dict = {}
    # a tokenizer that does not load fails before the long part
    tokenizer = prepare_tokenizer(options.tokenizer) \
        if options.tokenizer is not None and options.emit is None else None
    model = load_checked(model_path, prequantized=prequantized,
                         map_external=_weights_may_stay_in_files(options))
    external = ExternalData(model, model_path.parent) if external_tensors(model)[0] else None
    notes = bind_shapes(model, options.shapes)
    mod, signature = import_onnx(model, external)
    context, position_rows = context_length(model), position_table_rows(model)
    seconds["import"] = time.perf_counter() - started
    if tokenizer is not None:
        ids = signature.input_of("ids")
        bound = None if ids is None else ids.index_bound
        notes.extend([*tokenizer.notes, *tokenizer.check_vocabulary(bound)])
    dumper.record_stage(0, "frontend", mod)
    # calibration statistics of a large model spill beside the artifact (removed after)
    quant = quantization if quantization is not None else \
        prepare_quantization(model, signature, options, prequantized, external,
                             out.resolve().parent if out is not None else None)
    del model
    if quant is not None:
        seconds["prepare_quantization"] = quant.seconds
        notes.extend(quant.notes)

    with _pass_context(dumper):
        for position, stage in enumerate(STAGES, start=1):
            dumper.stage = stage.name
            started = time.perf_counter()
            mod = stage_pass(stage, options, target, quant)(mod)
            seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - started
            dumper.record_stage(position, stage.name, mod)
            if stage.name == "import" and options.logits == "last":
                signature = _last_logits_signature(signature, mod)
            if stage.name == options.emit:
                break

        if options.emit is not None:
            if out is not None:
                out.write_text(mod.script())
            return CompileResult(out, mod, signature, notes, seconds, dumper.seen_passes,
                                 quant)

        assert out is not None, "an artifact needs an output path"
        dumper.stage = "build"
        started = time.perf_counter()

        def build(staging: Path) -> dict:
            extra = target.build(mod, signature, staging, options)
            if quant is not None:
                (staging / PLAN_FILE).write_text(json.dumps(quant.plan.to_json(), indent=1))
                (staging / QUANT_REPORT_FILE).write_text(json.dumps(quant.report(), indent=1))
                extra["quant_plan"] = PLAN_FILE
                extra["quant_report"] = QUANT_REPORT_FILE
            if tokenizer is not None:
                extra["tokenizer"] = tokenizer.write(staging)
            return extra

        write_artifact(out, build, {
            "target": options.target,
            "tvm_version": tvm.__version__,
            "model": {"path": str(model_path.resolve()), "sha256": _sha256(model_path)},
            "shapes": {k: list(v) for k, v in options.shapes.items()},
            "quant": options.scheme_name,
            "method": options.method,
            "act_bits": options.act_bits,
            "act_group_size": options.act_group_size,
            "scale_dtype": options.scale_dtype,
            "avg_bits": options.avg_bits,
            "skip": list(options.skip),
            "sail": ({"nbw": options.nbw, "pim_types": options.pim_types}
                     if quant is not None and options.sail else None),
            "signature": signature.to_json(),
            "context_length": context,
            "position_table_rows": position_rows,
        })
        seconds["build"] = time.perf_counter() - started
    return CompileResult(out, mod, signature, notes, seconds, dumper.seen_passes, quant)
