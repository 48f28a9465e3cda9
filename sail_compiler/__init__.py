"""SAIL compiler: low-bit LLM inference via LUT-GEMV on CPUs and SAIL PIM.

Public API: :func:`compile_model`, :class:`CompileOptions`, :func:`load` (a compiled artifact
of any target as a :class:`Model`: ``model(**inputs)``, ``model.generate(prompt, ...)``),
:class:`SamplingOptions`, :class:`Artifact`, ``__version__``.
"""

__version__ = "0.1.0"

from .artifact import Artifact  # noqa: E402
from .driver import CompileResult, compile_model  # noqa: E402
from .errors import SailError  # noqa: E402
from .model import Generation, Model, load  # noqa: E402
from .options import CompileOptions  # noqa: E402
from .sampling import SamplingOptions  # noqa: E402

__all__ = ["Artifact", "CompileOptions", "CompileResult", "Generation", "Model", "SailError",
           "SamplingOptions", "__version__", "compile_model", "load"]
