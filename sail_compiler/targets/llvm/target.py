"""The llvm target: the CPU lowering (:mod:`sail_compiler.lowering`), ``relax.build``, Relax VM.

Artifact files, beside the common ``manifest.json``: ``model.so`` (the VM executable, loadable by
``tvm.runtime.load_module``) and ``weights.bin`` (see :mod:`sail_compiler.weights_file`). The
weights are lifted out of the executable by the last lowering pass,
:class:`~sail_compiler.passes.LiftWeightsToParams`, because TVM truncates executables with more
than 2 GB of constants; the runner passes them after the model inputs. The build reads
everything from the lowered module (the lifted weights and a probe's layers are attributes of
``main``): the target object keeps nothing between lowering and build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from ...errors import ArtifactError
from ...frontend.signature import ModelSignature
from ...lowering import build_pipeline, host_target, lowering_passes
from ...passes import ExposeGroupSums, LiftWeightsToParams
from ...passes.expose_group_sums import probe_layers
from ...passes.lift_weights_to_params import detach_weights
from ...weights_file import read_weights, write_weights
from ..base import Runner, TargetBackend, register_target

if TYPE_CHECKING:
    from ...options import CompileOptions

LIBRARY = "model.so"
WEIGHTS = "weights.bin"


@register_target("llvm")
class LLVMTarget(TargetBackend):
    description = "TVM's llvm codegen for this CPU, run on the Relax VM"

    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        probe = [ExposeGroupSums()] if options.probe else []
        return [*probe, *lowering_passes(host_target(options.num_threads)),
                LiftWeightsToParams()]

    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        target = host_target(options.num_threads)
        layers = probe_layers(mod) if options.probe else None
        mod, weights = detach_weights(mod)
        executable = relax.build(mod, target=target, relax_pipeline=build_pipeline(target))
        executable.export_library(str(out_dir / LIBRARY))
        write_weights(out_dir / WEIGHTS, weights)
        extra = {"library": LIBRARY, "weights": WEIGHTS, "num_weights": len(weights),
                 "tvm_target": str(target)}
        if layers is not None:
            extra["probe_layers"] = layers
        return extra

    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return _VMRunner(out_dir / manifest["library"], out_dir / manifest["weights"],
                         manifest["num_weights"])


class _VMRunner(Runner):
    def __init__(self, library: Path, weights: Path, num_weights: int) -> None:
        arrays = read_weights(weights)
        if len(arrays) != num_weights:
            raise ArtifactError(f"{weights} holds {len(arrays)} tensors, the model needs "
                                f"{num_weights}; recompile the model")
        self.weights = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        args = [tvm.runtime.tensor(np.asarray(x, order="C")) for x in inputs]
        result = self.vm["main"](*args, *self.weights)
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

