"""The named stages of the compiler and their pass lists.

``quantize`` runs only for quantized compiles: it substitutes the weights the driver chose and
computed per layer (:mod:`.quant.prepare`) into ``sail.quant_matmul`` calls.
``import`` is the ONNX frontend (dumped as ``stage_0_frontend``) plus clean-up passes that make
the imported graph safe to run (:class:`~.passes.WrapGatherIndices`) and fuse its attention
(:class:`~.passes.FuseAttention`: one ``sail.attention`` per layer, for every target); with
``--logits last`` also :class:`~.passes.KeepLastLogits`.
``quantize`` holds the quantization passes; ``sail`` the SAIL passes
(:class:`~.passes.ConvertPIMTypes`, then :class:`~.passes.LowerToLUTGemv`), for quantized
compiles unless ``--no-sail``. ``lower`` is the target's: legalization, fusion and scheduling
for llvm. Each stage runs as one ``tvm.transform.Sequential`` named ``sail.stage.<name>``, so
the passes inside are ordinary TVM passes a user can reuse in their own flows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import tvm
from tvm import relax

from .ir_dump import STAGE_PASS_PREFIX
from .options import STAGE_NAMES, CompileOptions
from .passes import (
    ConvertPIMTypes,
    FoldWeightTransposes,
    FuseAttention,
    KeepLastLogits,
    LowerToLUTGemv,
    QuantizeEmbedding,
    QuantizeWeights,
    WrapGatherIndices,
)
from .targets.base import TargetBackend

if TYPE_CHECKING:
    from .quant.prepare import Quantization

PassFactory = Callable[[CompileOptions, TargetBackend, "Quantization | None"],
                       list[tvm.transform.Pass]]


def _quantize_passes(options: CompileOptions,
                     quant: Quantization | None) -> list[tvm.transform.Pass]:
    if quant is None:
        return []
    # Gemm(transB=1) weights sit behind a transpose: FoldWeightTransposes folds it into a
    # constant named after the initializer, FoldConstant the rest (unnamed). The driver already
    # applied --skip to the table; matmuls outside it stay float.
    table = quant.table
    return [FoldWeightTransposes(), relax.transform.FoldConstant(),
            QuantizeWeights(None, (), options.act_bits, layers=table,
                            act_group=options.act_group_size, constants=quant.constants),
            QuantizeEmbedding(None, layers=table)]


def _sail_passes(options: CompileOptions,
                 quant: Quantization | None) -> list[tvm.transform.Pass]:
    if quant is None or not options.sail:
        return []
    return [ConvertPIMTypes(options.pim_types), LowerToLUTGemv(options.nbw)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A named group of passes; ``passes`` builds the list for the given options and target."""

    name: str
    description: str
    passes: PassFactory


STAGES: tuple[Stage, ...] = (
    Stage("import", "ONNX -> Relax (float), weights as constants",
          lambda o, t, q: [WrapGatherIndices(), FuseAttention(),
                           *([KeepLastLogits()] if o.logits == "last" else [])]),
    Stage("quantize", "weights -> b-bit integers and sail.quant_matmul (--bits, --bits-plan, "
          "--avg-bits, pre-quantized models)",
          lambda o, t, q: _quantize_passes(o, q)),
    Stage("sail", "PIM type conversion and LUT-GEMV lowering (quantized compiles; --no-sail "
          "skips it)", lambda o, t, q: _sail_passes(o, q)),
    Stage("lower", "target lowering: legalize, fuse, schedule",
          lambda o, t, q: t.lowering_passes(o)),
)
assert tuple(s.name for s in STAGES) == STAGE_NAMES, "options.STAGE_NAMES lists the stages"


def stage_pass(stage: Stage, options: CompileOptions, target: TargetBackend,
               quant: Quantization | None = None) -> tvm.transform.Pass:
    """The stage as one Sequential pass named ``sail.stage.<name>``."""
    return tvm.transform.Sequential(stage.passes(options, target, quant),
                                    name=STAGE_PASS_PREFIX + stage.name)
