"""SAIL compiler: low-bit LLM inference via LUT-GEMV on CPUs and SAIL PIM.

Public API: :func:`compile_model`, :class:`CompileOptions`, :func:`load` (a compiled artifact
of any target as a :class:`Model`: ``model(**inputs)``, ``model.generate(prompt, ...)``),
:class:`SamplingOptions`, :class:`Artifact`, ``__version__``.
"""

from .artifact import Artifact
from .driver import CompileResult, compile_model
from .errors import SailError
from .model import Generation, Model, load
from .options import CompileOptions
from .sampling import SamplingOptions
from .version import __version__

__all__ = ["Artifact", "CompileOptions", "CompileResult", "Generation", "Model", "SailError",
           "SamplingOptions", "__version__", "compile_model", "load"]
