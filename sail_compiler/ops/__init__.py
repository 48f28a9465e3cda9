"""The registered ``sail.*`` Relax operators and their TIR legalizations.

Importing this package registers every operator with TVM.
"""

from .quant_matmul import OP_NAME as QUANT_MATMUL
from .quant_matmul import quant_matmul
from .quant_take import OP_NAME as QUANT_TAKE
from .quant_take import quant_take

__all__ = ["QUANT_MATMUL", "QUANT_TAKE", "quant_matmul", "quant_take"]
