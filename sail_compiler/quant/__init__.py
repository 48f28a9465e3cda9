"""Weight quantization: schemes, bit packing and the NumPy reference semantics.

* :mod:`.scheme`: :class:`QuantScheme` (bits, group size, symmetric) and its presets (``w4g128``).
* :mod:`.packing`: the one bit layout of packed codes (little-endian bit streams along K).
* :mod:`.reference`: RTN weight quantization, activation quantization, exact group sums and the
  reference quantized matmul every target must reproduce (DESIGN.md section 3).
"""

from .packing import pack_bits, packed_length, unpack_bits
from .reference import (
    QuantizedWeight,
    dequantize,
    group_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from .scheme import QuantScheme, preset_names, register_preset

__all__ = [
    "QuantScheme",
    "QuantizedWeight",
    "dequantize",
    "group_sums",
    "pack_bits",
    "packed_length",
    "preset_names",
    "quantize_activations",
    "quantize_weights_rtn",
    "quantized_matmul",
    "register_preset",
    "unpack_bits",
]
