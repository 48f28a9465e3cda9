"""The llvm target: Relax VM executable built by TVM for this CPU."""

from .target import LLVMTarget

__all__ = ["LLVMTarget"]
