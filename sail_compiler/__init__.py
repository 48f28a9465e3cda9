"""SAIL compiler: low-bit LLM inference via LUT-GEMV on CPUs and SAIL PIM.

Public API: :func:`compile_model`, :class:`CompileOptions`, :class:`Artifact`, ``__version__``.
"""

__version__ = "0.1.0"

from .artifact import Artifact  # noqa: E402
from .driver import CompileResult, compile_model  # noqa: E402
from .errors import SailError  # noqa: E402
from .options import CompileOptions  # noqa: E402

__all__ = ["Artifact", "CompileOptions", "CompileResult", "SailError", "__version__",
           "compile_model"]
