"""The llvm target: legalize + schedule (see :mod:`.schedule`), ``relax.build``, Relax VM.

Artifact files: ``model.so`` (the VM executable with the weights embedded as constants; a shared
library loadable by ``tvm.runtime.load_module``) beside the common ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from ...frontend.signature import ModelSignature
from ..base import Runner, TargetBackend, register_target
from .schedule import build_pipeline, host_target, lowering_passes

if TYPE_CHECKING:
    from ...options import CompileOptions

LIBRARY = "model.so"


@register_target("llvm")
class LLVMTarget(TargetBackend):
    description = "TVM's llvm codegen for this CPU, run on the Relax VM"

    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        return lowering_passes(host_target(options.num_threads))

    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        target = host_target(options.num_threads)
        executable = relax.build(mod, target=target, relax_pipeline=build_pipeline(target))
        executable.export_library(str(out_dir / LIBRARY))
        return {"library": LIBRARY, "tvm_target": str(target)}

    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return _VMRunner(out_dir / manifest["library"])


class _VMRunner(Runner):
    def __init__(self, library: Path) -> None:
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = self.vm["main"](*(tvm.runtime.tensor(np.asarray(x, order="C")) for x in inputs))
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

