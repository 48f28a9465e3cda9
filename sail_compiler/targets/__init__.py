"""Targets, registered by name: ``llvm`` (TVM's Relax VM), ``c`` (a standalone C library)."""

from . import c, llvm  # noqa: F401  (registers the targets)
from .base import Runner, TargetBackend, get_target, register_target, target_names

__all__ = ["Runner", "TargetBackend", "get_target", "register_target", "target_names"]
