"""The named stages of the compiler and their pass lists.

``quantize`` runs only for quantized compiles (``CompileOptions.quant``).
``import`` is the ONNX frontend (dumped as ``stage_0_frontend``) plus clean-up passes that make
the imported graph safe to run (:class:`~.passes.WrapGatherIndices`). ``quantize`` and
``sail`` hold the quantization and SAIL passes (empty until those land). ``lower`` is the
target's: legalization, fusion and scheduling for llvm. Each stage runs as one
``tvm.transform.Sequential`` named ``sail.stage.<name>``, so the passes inside are ordinary TVM
passes a user can reuse in their own flows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tvm
from tvm import relax

from .ir_dump import STAGE_PASS_PREFIX
from .options import CompileOptions
from .passes import QuantizeWeights, WrapGatherIndices
from .targets.base import TargetBackend

PassFactory = Callable[[CompileOptions, TargetBackend], list[tvm.transform.Pass]]


def _quantize_passes(options: CompileOptions) -> list[tvm.transform.Pass]:
    if options.quant is None:
        return []
    # FoldConstant first: Gemm(transB=1) weights sit behind a transpose until folded.
    return [relax.transform.FoldConstant(), QuantizeWeights(options.quant, options.skip, options.act_bits)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A named group of passes; ``passes`` builds the list for the given options and target."""

    name: str
    description: str
    passes: PassFactory


STAGES: tuple[Stage, ...] = (
    Stage("import", "ONNX -> Relax (float), weights as constants",
          lambda o, t: [WrapGatherIndices()]),
    Stage("quantize", "weights -> b-bit integers (RTN) and sail.quant_matmul, with --bits",
          lambda o, t: _quantize_passes(o)),
    Stage("sail", "LUT-GEMV lowering, PIM type conversion (not yet implemented: passes through)",
          lambda o, t: []),
    Stage("lower", "target lowering: legalize, fuse, schedule",
          lambda o, t: t.lowering_passes(o)),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_pass(stage: Stage, options: CompileOptions, target: TargetBackend) -> tvm.transform.Pass:
    """The stage as one Sequential pass named ``sail.stage.<name>``."""
    return tvm.transform.Sequential(stage.passes(options, target),
                                    name=STAGE_PASS_PREFIX + stage.name)
