"""Targets, registered by name: ``llvm`` (TVM's Relax VM)."""

from . import llvm  # noqa: F401  (registers the target)
from .base import Runner, TargetBackend, get_target, register_target, target_names

__all__ = ["Runner", "TargetBackend", "get_target", "register_target", "target_names"]
