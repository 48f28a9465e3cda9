"""Targets, registered by name: ``llvm`` (TVM's Relax VM), ``c`` (a standalone C library),
``pim-sim`` (a SAIL program on the functional PIM simulator)."""

from . import c, llvm  # noqa: F401  (registers the targets)
from .base import Runner, TargetBackend, get_target, register_target, target_names
from .pim import target as _pim_target  # noqa: F401  (registers pim-sim)

__all__ = ["Runner", "TargetBackend", "get_target", "register_target", "target_names"]
