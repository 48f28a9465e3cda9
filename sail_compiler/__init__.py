"""SAIL compiler: low-bit LLM inference via LUT-GEMV on CPUs and SAIL PIM.

Public API: :func:`compile_model`, :class:`CompileOptions`, :func:`load` (a compiled artifact
of any target as a :class:`Model`: ``model(**inputs)``, ``model.generate(prompt, ...)``),
:class:`SamplingOptions`, :class:`Artifact`, ``__version__``.

The names are imported on first use, so that importing a low layer (``sail_compiler.options``,
the NumPy quantization core) does not load TVM through the driver (docs/layers.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .artifact import Artifact
    from .driver import CompileResult, compile_model
    from .errors import SailError
    from .model import Generation, Model, load
    from .options import CompileOptions
    from .sampling import SamplingOptions

#: Public name -> the module that defines it.
_PUBLIC = {"Artifact": "artifact", "CompileResult": "driver", "compile_model": "driver",
           "SailError": "errors", "Generation": "model", "Model": "model", "load": "model",
           "CompileOptions": "options", "SamplingOptions": "sampling"}

__all__ = ["Artifact", "CompileOptions", "CompileResult", "Generation", "Model", "SailError",
           "SamplingOptions", "__version__", "compile_model", "load"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value
