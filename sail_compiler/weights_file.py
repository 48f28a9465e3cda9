"""The weight file of an artifact: magic, version, tensor table, data, checksums.

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"SAILWGT\\0"
           8   u32       format version (1)
          12   u32       reserved (0)
          16   u64       length H of the header
          24   H bytes   header: UTF-8 JSON {"tensors": [{"name", "dtype", "shape", "offset",
                         "nbytes", "crc32"}, ...]}; offsets count from the start of the file
           ...           tensor data, each tensor 64-byte aligned, C order

Reading checks the magic, the version, that every tensor lies inside the file, and each
tensor's CRC-32, so a truncated or corrupted file is an :class:`ArtifactError`, never garbage
weights or a crash.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ArtifactError

MAGIC = b"SAILWGT\0"
VERSION = 1
_ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def write_weights(path: Path, arrays: list[np.ndarray]) -> None:
    """Write ``arrays`` (named ``weight_<i>``) to ``path``."""
    entries, offset = [], 0
    for i, array in enumerate(arrays):
        entries.append({"name": f"weight_{i}", "dtype": array.dtype.name,
                        "shape": list(array.shape), "offset": offset,
                        "nbytes": int(array.nbytes), "crc32": _crc32(array)})
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    # Offsets become absolute once the header length is known (fixed point: it only grows).
    base = 0
    while True:
        header = json.dumps({"tensors": [{**e, "offset": e["offset"] + base}
                                         for e in entries]}).encode()
        new_base = -(-(_PREFIX.size + len(header)) // _ALIGN) * _ALIGN
        if new_base == base:
            break
        base = new_base
    with path.open("wb") as f:
        f.write(_PREFIX.pack(MAGIC, VERSION, 0, len(header)))
        f.write(header)
        for entry, array in zip(entries, arrays, strict=True):
            f.seek(entry["offset"] + base)
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def read_weights(path: Path) -> list[np.ndarray]:
    """Read and check a weight file; the arrays come back in the order written."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise ArtifactError(f"{path} is truncated ({size} bytes); recompile the model")
            magic, version, _, header_len = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise ArtifactError(f"{path} is not a sail weight file (bad magic); recompile")
            if version != VERSION:
                raise ArtifactError(f"{path} has weight format {version}, this sail reads "
                                    f"{VERSION}; recompile the model")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read weights {path}: {err}; recompile the model") from err
    data = np.memmap(path, mode="r", dtype=np.uint8)
    arrays = []
    for t in header["tensors"]:
        end = t["offset"] + t["nbytes"]
        if end > size:
            raise ArtifactError(f"{path} is truncated: {t['name']} needs bytes up to {end}, "
                                f"the file has {size}; recompile the model")
        raw = data[t["offset"]:end]
        if zlib.crc32(raw) != t["crc32"]:
            raise ArtifactError(f"{path} is corrupted: checksum of {t['name']} does not match; "
                                "recompile the model")
        arrays.append(raw.view(t["dtype"]).reshape(t["shape"]))
    return arrays
