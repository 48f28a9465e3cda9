"""The shared CPU lowering of the llvm, c and pim-sim targets (docs/layers.md: between the
passes and the targets): weight packing, fusion, the default schedule rules and the VM build
pipeline. :mod:`.pipeline` says what runs in which order."""

from .fuse_ops_and_tir import DropRedefinedScalarParams, FuseOpsAndTIR
from .pack_matmul_weights import PANEL, TILE_M, PackMatmulWeights
from .pipeline import MarkShapeFuncsNoalias, build_pipeline, host_target, lowering_passes
from .schedule_llvm import ScheduleLLVM

__all__ = ["PANEL", "TILE_M", "DropRedefinedScalarParams", "FuseOpsAndTIR",
           "MarkShapeFuncsNoalias", "PackMatmulWeights", "ScheduleLLVM", "build_pipeline",
           "host_target", "lowering_passes"]
