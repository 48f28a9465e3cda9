"""The interface every target implements, and the registry of targets by name."""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import tvm

from ..errors import OptionError, valid_choices
from ..frontend.signature import ModelSignature

if TYPE_CHECKING:
    from ..options import CompileOptions


class Runner(abc.ABC):
    """A loaded artifact that runs the model on NumPy inputs."""

    @abc.abstractmethod
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run once; ``inputs`` and the result follow the signature's order."""


class TargetBackend(abc.ABC):
    """A compilation target: its lowering passes, its build, and how to load what it built."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abc.abstractmethod
    def lowering_passes(self, options: CompileOptions) -> list[tvm.transform.Pass]:
        """Passes of the ``lower`` stage."""

    @abc.abstractmethod
    def build(self, mod: tvm.IRModule, signature: ModelSignature, out_dir: Path,
              options: CompileOptions) -> dict[str, Any]:
        """Write the artifact's files into ``out_dir``; return target-specific manifest fields."""

    @abc.abstractmethod
    def load(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        """Load an artifact this target built."""


T = TypeVar("T", bound=type[TargetBackend])
_TARGETS: dict[str, type[TargetBackend]] = {}


def register_target(name: str) -> Callable[[T], T]:
    """Class decorator registering a target under ``name`` (duplicates are rejected)."""

    def wrap(cls: T) -> T:
        if name in _TARGETS:
            raise ValueError(f"target '{name}' is already registered by {_TARGETS[name]}")
        cls.name = name
        _TARGETS[name] = cls
        return cls

    return wrap


def target_names() -> list[str]:
    return sorted(_TARGETS)


def get_target(name: str) -> TargetBackend:
    """An instance of the target registered as ``name``."""
    if name not in _TARGETS:
        raise OptionError(f"unknown target '{name}'; {valid_choices(target_names())}")
    return _TARGETS[name]()
