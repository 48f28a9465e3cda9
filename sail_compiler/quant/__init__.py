"""Weight quantization: schemes, bit packing and the NumPy reference semantics.

* :mod:`.scheme`: :class:`QuantScheme` (bits, group size, symmetric) and its presets (``w4g128``).
* :mod:`.packing`: the one bit layout of packed codes (little-endian bit streams along K).
* :mod:`.reference`: RTN weight quantization, activation quantization (per row or per block,
  :class:`ActBlocks`), exact group sums and the reference quantized matmul every target must
  reproduce (DESIGN.md section 3).
* :mod:`.lut`: the two table forms of the same group sums (SAIL's weight tables indexed by
  activation bit planes; the CPU's activation tables indexed by weight bit planes).
* :mod:`.patterns`: pattern reuse of SAIL's lookups and the deduplicated lookup schedule.
* :mod:`.methods`, :mod:`.plan`, :mod:`.calibrate`, :mod:`.prepare`: how weights are quantized
  and which layer gets which scheme.
"""

from .packing import pack_bits, packed_length, unpack_bits
from .reference import (
    ActBlocks,
    QuantizedWeight,
    block_sums,
    dequantize,
    group_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from .scheme import QuantScheme, preset_names, register_preset

__all__ = [
    "ActBlocks",
    "QuantScheme",
    "QuantizedWeight",
    "block_sums",
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
