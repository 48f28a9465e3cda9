"""The registered ``sail.*`` Relax operators and their TIR legalizations.

Importing this package registers every operator with TVM.
"""

from .attention import OP_NAME as ATTENTION
from .attention import attention
from .quant_matmul import OP_NAME as QUANT_MATMUL
from .quant_matmul import quant_matmul
from .quant_take import OP_NAME as QUANT_TAKE
from .quant_take import quant_take
from .sail_ops import (
           DEQUANTIZE,
           GROUP_SUMS,
           LUT_GEMV,
           QUANTIZE,
           dequantize,
           group_sums_op,
           lut_gemv,
           quantize,
)

__all__ = ["ATTENTION", "DEQUANTIZE", "GROUP_SUMS", "LUT_GEMV", "QUANTIZE", "QUANT_MATMUL",
           "QUANT_TAKE", "attention", "dequantize", "group_sums_op", "lut_gemv", "quant_matmul",
           "quant_take", "quantize"]
