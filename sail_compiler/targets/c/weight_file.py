"""The c target's ``weights.bin`` is sail's one weight container (:mod:`sail_compiler.weights_file`,
read by ``runtime/sail_model_rt.c``); the names the emitter and the target use from it."""

from ...weights_file import (
    DTYPE_CODES,
    MAX_NDIM,
    WeightFileWriter,
    read_weight_file,
    write_weight_file,
)

__all__ = ["DTYPE_CODES", "MAX_NDIM", "WeightFileWriter", "read_weight_file", "write_weight_file"]
