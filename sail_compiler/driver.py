"""The compiler driver: check -> import -> stages -> target artifact.

Every ``PassContext`` opened here extends the instruments already active (a user's own
instrument keeps seeing our passes) instead of replacing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tvm

from .artifact import check_output_path, write_artifact
from .frontend import ModelSignature, bind_shapes, import_onnx, load_checked
from .ir_dump import IRDumper, prepare_dump_dir
from .options import CompileOptions
from .pipeline import STAGES, stage_pass
from .targets import get_target


@dataclasses.dataclass
class CompileResult:
    """What :func:`compile_model` produced.

    ``output`` is the artifact directory (or the TVMScript file with ``emit``); ``module`` the
    IRModule after the last stage run; ``notes`` messages for the user (e.g. bound dims);
    ``stage_seconds`` the wall time of each stage.
    """

    output: Path | None
    module: tvm.IRModule
    signature: ModelSignature
    notes: list[str]
    stage_seconds: dict[str, float]
    passes_run: list[str]


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


def compile_model(model_path: str | Path, output: str | Path | None,
                  options: CompileOptions | None = None,
                  command: list[str] | None = None) -> CompileResult:
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
    model = load_checked(model_path)
    notes = bind_shapes(model, options.shapes)
    mod, signature = import_onnx(model)
    del model
    seconds["import"] = time.perf_counter() - started
    dumper.record_stage(0, "frontend", mod)

    with _pass_context(dumper):
        for position, stage in enumerate(STAGES, start=1):
            dumper.stage = stage.name
            started = time.perf_counter()
            mod = stage_pass(stage, options, target)(mod)
            seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - started
            dumper.record_stage(position, stage.name, mod)
            if stage.name == options.emit:
                break

        if options.emit is not None:
            if out is not None:
                out.write_text(mod.script())
            return CompileResult(out, mod, signature, notes, seconds, dumper.seen_passes)

        assert out is not None, "an artifact needs an output path"
        dumper.stage = "build"
        started = time.perf_counter()
        write_artifact(out, lambda d: target.build(mod, signature, d, options), {
            "target": options.target,
            "tvm_version": tvm.__version__,
            "model": {"path": str(model_path.resolve()), "sha256": _sha256(model_path)},
            "shapes": {k: list(v) for k, v in options.shapes.items()},
            "quant": options.quant.name if options.quant else None,
            "skip": list(options.skip),
            "signature": signature.to_json(),
        })
        seconds["build"] = time.perf_counter() - started
    return CompileResult(out, mod, signature, notes, seconds, dumper.seen_passes)
