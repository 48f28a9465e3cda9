"""The llvm target's lowering and schedules are the CPU lowering all targets share,
:mod:`sail_compiler.lowering`; its public names stay importable from here for scripts written
against this module (``benchmarks/lut_gemv.py``)."""

from ...lowering import (
    PANEL,
    TILE_M,
    DropRedefinedScalarParams,
    FuseOpsAndTIR,
    MarkShapeFuncsNoalias,
    PackMatmulWeights,
    ScheduleLLVM,
    build_pipeline,
    host_target,
    lowering_passes,
)

__all__ = ["PANEL", "TILE_M", "DropRedefinedScalarParams", "FuseOpsAndTIR",
           "MarkShapeFuncsNoalias", "PackMatmulWeights", "ScheduleLLVM", "build_pipeline",
           "host_target", "lowering_passes"]
