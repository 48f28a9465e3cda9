"""The c target: a standalone C library and command-line runner, built with ``cc``.

Lowering is the llvm target's CPU lowering (:func:`~sail_compiler.targets.llvm.schedule.
lowering_passes`: legalization, fusion, the default CPU schedules), with two differences that
make the TIR printable as C: ``sail.lut_gemv`` is legalized without ``llvm.arithmetic.fence``
(the library compiles with ``-ffp-contract=off``, which keeps the fused dequantization's
rounding exact), and the weights stay constants (the emitter writes them to ``weights.bin``).
The schedules' ``vectorized`` loops are emitted as scalar loops for the C compiler to vectorize
and their ``parallel`` loops run serially: the library uses one thread.

Artifact files, beside ``manifest.json``:

* ``model.h`` / ``sail_model_api.h``: ``sail_model_load``, ``sail_model_run``,
  ``sail_model_free`` and the model's inputs and outputs;
* ``model.c`` (the graph as kernel calls, :mod:`.emit`), ``kernels.c`` (TVM's C code for the
  kernels, :mod:`.tir_codegen`), the runtime ``sail_model_rt.[ch]`` and ``sail_tvm_shim.h``;
* ``weights.bin`` (:mod:`.weight_file`); ``main.c`` and ``sail_npy.[ch]``: the ``sail_main``
  runner; a ``Makefile`` (``make``, ``make portable``).

``sail build OUT`` (or the first :meth:`Artifact.run`) runs ``make``; the runner then runs
``sail_main`` on ``.npy`` files.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm

from ... import __version__
from ...errors import ArtifactError, OptionError
from ...frontend.signature import ModelSignature
from ...ops.sail_ops import LUT_GEMV, legalize_lut_gemv
from ..base import Runner, TargetBackend, register_target
from ..llvm.schedule import host_target, lowering_passes
from .emit import RecordWeightNames, emit_model
from .tir_codegen import kernels_source
from .weight_file import write_weight_file

if TYPE_CHECKING:
    from ...options import CompileOptions

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
#: Runtime files copied into every artifact: package file -> artifact file.
RUNTIME_FILES = {
    "sail_model_api.h": "sail_model_api.h",
    "sail_model_rt.h": "sail_model_rt.h",
    "sail_model_rt.c": "sail_model_rt.c",
    "sail_tvm_shim.h": "sail_tvm_shim.h",
    "sail_npy.h": "sail_npy.h",
    "sail_npy.c": "sail_npy.c",
    "sail_main.c": "main.c",
    "Makefile": "Makefile",
}
WEIGHTS = "weights.bin"
BINARY = "sail_main"
LIBRARIES = ("libmodel.a", "libmodel.so")
_BUILD_LOCK = ".sail-build.lock"
#: Lines of the C compiler's output shown when a build fails.
_SHOWN_LINES = 30


@register_target("c")
class CTarget(TargetBackend):
    description = "a standalone C library (TVM's C code for the kernels) built with cc"

    def __init__(self) -> None:
        self._names = RecordWeightNames()

    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        if options.probe:
            raise OptionError("the c target cannot record group sums (the reference check "
                              "builds its probe for llvm)")
        unfenced = functools.partial(legalize_lut_gemv, fence=False)
        # One core: the C code runs the schedules' parallel loops serially.
        return [self._names, *lowering_passes(host_target(1), {LUT_GEMV: unfenced})]

    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        title = (f"compiled by sail {__version__} for the c target (apache-tvm "
                 f"{tvm.__version__}, weights {options.describe_quant()})")
        emitted = emit_model(mod, signature, self._names.names, title)
        (out_dir / "model.c").write_text(emitted.model_c)
        (out_dir / "model.h").write_text(emitted.model_h)
        kernels = kernels_source(emitted.kernels)
        (out_dir / "kernels.c").write_text(
            f"/* kernels.c: {len(emitted.kernels)} kernels {title}. Written by TVM's C code "
            "generator;\n * sail replaced TVM's includes by sail_tvm_shim.h. */\n" + kernels)
        weight_bytes = write_weight_file(out_dir / WEIGHTS, emitted.weights)
        for source, target in RUNTIME_FILES.items():
            shutil.copyfile(RUNTIME_DIR / source, out_dir / target)
        return {"weights": WEIGHTS, "binary": BINARY, "libraries": list(LIBRARIES),
                "num_weights": len(emitted.weights), "weight_bytes": weight_bytes,
                "kernels": len(emitted.kernels), "kernel_calls": emitted.calls, "threads": 1,
                "memory": "one allocation per intermediate buffer, freed after its last use"}

    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return _MainRunner(out_dir, manifest)


def build_library(out_dir: Path, portable: bool = False,
                  make_args: tuple[str, ...] = ()) -> Path:
    """Run ``make`` in a c artifact; return the path of ``sail_main``.

    Parameters
    ----------
    out_dir
        The artifact directory.
    portable
        ``make portable`` (no ``-march=native``) instead of ``make``.
    make_args
        Extra ``make`` arguments, e.g. ``("CFLAGS=-O1 -g",)``.

    Raises
    ------
    ArtifactError
        ``make`` or the C compiler is missing, or the build failed (with the compiler's
        messages).
    """
    make = shutil.which("make")
    if make is None:
        raise ArtifactError("building a c artifact needs make and a C compiler (cc); install "
                            "them (e.g. apt-get install build-essential) and run: sail build "
                            f"{out_dir}")
    command = [make, "-C", str(out_dir), f"-j{os.cpu_count() or 1}",
               *(["portable"] if portable else []), *make_args]
    with (out_dir / _BUILD_LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runners of one artifact build it once
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        messages = (proc.stderr or proc.stdout).strip().splitlines()
        shown = "\n".join(messages[-_SHOWN_LINES:])
        raise ArtifactError(f"building {out_dir} failed (make exited with {proc.returncode}); "
                            f"the compiler said:\n{shown}")
    return out_dir / BINARY


class _MainRunner(Runner):
    """Runs ``sail_main`` on ``.npy`` files.

    Loading builds the artifact if it is not built and checks the weight file with
    ``sail_main --check``, so that a damaged file is an :class:`ArtifactError` here and not an
    error of the inputs later.
    """

    def __init__(self, out_dir: Path, manifest: dict[str, Any]) -> None:
        self.signature = ModelSignature.from_json(manifest["signature"])
        self.weights = out_dir / manifest["weights"]
        binary = out_dir / manifest["binary"]
        self.binary = binary if binary.is_file() else build_library(out_dir)
        proc = subprocess.run([str(self.binary), str(self.weights), "--check"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArtifactError(_message(proc))

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="sail-c-run-") as tmp:
            command = [str(self.binary), str(self.weights)]
            for i, (spec, value) in enumerate(zip(self.signature.inputs, inputs, strict=True)):
                path = Path(tmp) / f"input_{i}.npy"
                np.save(path, np.asarray(value, order="C"))  # 0-d stays 0-d
                command += ["--input", f"{spec.name}={path}"]
            paths = [Path(tmp) / f"output_{j}.npy" for j in range(len(self.signature.outputs))]
            for spec, path in zip(self.signature.outputs, paths, strict=True):
                command += ["--output", f"{spec.name}={path}"]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(_message(proc))
            return [np.load(path) for path in paths]


def _message(proc: subprocess.CompletedProcess) -> str:
    """The last line ``sail_main`` wrote to stderr, without its prefix."""
    lines = proc.stderr.strip().splitlines()
    text = lines[-1] if lines else f"{BINARY} exited with {proc.returncode}"
    return text.removeprefix(f"{BINARY}: ")
