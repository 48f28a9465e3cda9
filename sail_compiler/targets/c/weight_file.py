"""The weight file of a ``c`` artifact (``weights.bin``), a format a C loader reads directly.

Layout, all integers little-endian (``runtime/sail_model_rt.c`` reads and checks it)::

    header, 64 bytes   magic b"SAILCWT\\0" | u32 version (2) | u32 tensor count
                       | u64 table offset | u64 table bytes | u64 data offset | u64 file bytes
                       | u32 CRC-32 of the table | u32 CRC-32 of header bytes 0..51 | u64 0
    table              one 104-byte entry per tensor: u32 name offset | u32 name bytes
                       | u32 dtype (:data:`DTYPE_CODES`, ``enum sail_dtype``) | u32 ndim
                       | u64 shape[8] | u64 data offset | u64 data bytes | u32 CRC-32 of the
                       data | u32 0; then the UTF-8 names, offsets relative to their start
    data               each tensor 64-byte aligned, C order

The CRC-32 is zlib's. Unlike the llvm target's JSON-headed file (:mod:`sail_compiler.weights_file`)
everything here has a fixed width, so the C loader needs no parser.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"SAILCWT\0"
#: 2: 4-bit LUT-GEMV weights hold nibble-packed codes, not bit planes (``sail_lut.h``).
VERSION = 2
ALIGN = 64
MAX_NDIM = 8
#: NumPy dtype name -> ``enum sail_dtype`` value (``runtime/sail_model_api.h``).
DTYPE_CODES = {"bool": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "uint8": 6,
               "uint16": 7, "uint32": 8, "uint64": 9, "float16": 10, "float32": 11,
               "float64": 12}

_HEADER = struct.Struct("<8sIIQQQQII")  # up to the header CRC; 8 reserved bytes follow
_HEADER_BYTES = 64
_ENTRY = struct.Struct(f"<IIII{MAX_NDIM}QQQII")


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_weight_file(path: Path, tensors: list[tuple[str, np.ndarray]]) -> int:
    """Write named arrays (in this order) to ``path``; return the file size in bytes.

    Raises
    ------
    ValueError
        An array of a dtype C cannot take (see :data:`DTYPE_CODES`) or with more than 8 dims;
        the emitter checks both before, so this is an internal error.
    """
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    arrays = [np.array(a, order="C", copy=None) for _, a in tensors]
    names = [name.encode() for name, _ in tensors]
    table_bytes = _ENTRY.size * len(arrays) + sum(len(n) for n in names)
    data_offset = _aligned(_HEADER_BYTES + table_bytes)
    offsets, end = [], data_offset
    for array in arrays:
        offsets.append(_aligned(end))
        end = offsets[-1] + array.nbytes
    entries, name_offset = [], 0
    for name, array, offset in zip(names, arrays, offsets, strict=True):
        if array.dtype.name not in DTYPE_CODES or array.ndim > MAX_NDIM:
            raise ValueError(f"cannot store {array.dtype}{list(array.shape)} for C")
        shape = [*array.shape, *[0] * (MAX_NDIM - array.ndim)]
        crc = zlib.crc32(memoryview(array).cast("B"))
        entries.append(_ENTRY.pack(name_offset, len(name), DTYPE_CODES[array.dtype.name],
                                   array.ndim, *shape, offset, array.nbytes, crc, 0))
        name_offset += len(name)
    table = b"".join(entries) + b"".join(names)
    head = _HEADER.pack(MAGIC, VERSION, len(arrays), _HEADER_BYTES, len(table), data_offset,
                        end, zlib.crc32(table), 0)[:52]
    with path.open("wb") as f:
        f.write(head + struct.pack("<IQ", zlib.crc32(head), 0))
        f.write(table)
        for array, offset in zip(arrays, offsets, strict=True):
            f.seek(offset)
            f.write(memoryview(array).cast("B"))
        f.truncate(end)
    return end
