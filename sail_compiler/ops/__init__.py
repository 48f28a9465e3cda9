"""The registered ``sail.*`` Relax operators and their TIR legalizations.

Importing this package registers every operator with TVM.
"""

from .quant_matmul import OP_NAME as QUANT_MATMUL
from .quant_matmul import quant_matmul

__all__ = ["QUANT_MATMUL", "quant_matmul"]
