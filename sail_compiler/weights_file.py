"""sail's one weight container, written by every target and memory-mapped by the C runtime
(``targets/c/runtime/sail_model_rt.c``) and by Python.

Layout, all integers little-endian::

    header, 64 bytes   magic b"SAILCWT\\0" | u32 version (2) | u32 tensor count
                       | u64 table offset | u64 table bytes | u64 data offset | u64 file bytes
                       | u32 CRC-32 of the table | u32 CRC-32 of header bytes 0..51 | u64 0
    table              one 104-byte entry per tensor: u32 name offset | u32 name bytes
                       | u32 dtype (:data:`DTYPE_CODES`, ``enum sail_dtype``) | u32 ndim
                       | u64 shape[8] | u64 data offset | u64 data bytes | u32 CRC-32 of the
                       data | u32 0; then the UTF-8 names, offsets relative to their start
    data               each tensor 64-byte aligned, C order

The CRC-32 is zlib's. Everything has a fixed width, so the C loader needs no parser. The c target
names its tensors after its constants (``model.c`` checks names, dtypes and shapes at load); the
llvm and pim-sim targets store theirs as ``weight_<i>`` (:func:`write_weights`).

:func:`read_weight_file` checks a file as strictly as the C loader: magic, version, both table
checksums, the file size, reserved fields zero, dims past the rank zero, known dtypes, byte
counts equal to the shape's, 64-byte aligned tensors inside the data area, no two tensors sharing
a byte, and each tensor's CRC-32. (The C loader also checks names, dtypes and shapes against what
``model.c`` expects; Python returns what the file holds.) Writing first checks that the disk has
room for the whole file, so a full disk is reported with the size needed before anything is
written.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ArtifactError

MAGIC = b"SAILCWT\0"
#: The JSON-headed weight file of the llvm and pim-sim targets before the container was one.
_OLD_MAGIC = b"SAILWGT\0"
#: 2: 4-bit LUT-GEMV weights hold nibble-packed codes, not bit planes (``sail_lut.h``).
VERSION = 2
ALIGN = 64
MAX_NDIM = 8
#: NumPy dtype name -> ``enum sail_dtype`` value (``runtime/sail_model_api.h``).
DTYPE_CODES = {"bool": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "uint8": 6,
               "uint16": 7, "uint32": 8, "uint64": 9, "float16": 10, "float32": 11,
               "float64": 12}

_DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
_HEADER = struct.Struct("<8sIIQQQQII")  # up to the header CRC; 8 reserved bytes follow
_HEADER_BYTES = 64
_ENTRY = struct.Struct(f"<IIII{MAX_NDIM}QQQII")


def require_space(path: Path, nbytes: int) -> None:
    """Refuse to start writing ``nbytes`` to ``path`` when its file system has less free.

    Raises
    ------
    ArtifactError
        Naming the size needed and the space free.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return  # no figure to check against: the write itself reports a full disk
    if free < nbytes:
        raise ArtifactError(f"not enough disk space to write {path.name}: it needs {nbytes} bytes "
                            f"({nbytes / 2**30:.2f} GiB), {free} bytes are free on the file "
                            f"system of {path.parent}; free space or compile to another -o path")


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _entry(name: bytes, array: np.ndarray, offset: int, crc: int) -> bytes:
    """The table entry of ``array`` stored at ``offset`` (ValueError: a dtype C cannot take or
    more than 8 dims; the emitter checks both before, so this is an internal error)."""
    if array.dtype.name not in DTYPE_CODES or array.ndim > MAX_NDIM:
        raise ValueError(f"cannot store {array.dtype}{list(array.shape)} for C")
    shape = [*array.shape, *[0] * (MAX_NDIM - array.ndim)]
    return _ENTRY.pack(0, len(name), DTYPE_CODES[array.dtype.name], array.ndim, *shape, offset,
                       array.nbytes, crc, 0)


def _head_and_table(names: list[bytes], entries: list[bytes], data_offset: int,
                    end: int) -> bytes:
    """Header and table of a file whose entries were packed (by :func:`_entry`) with data
    offsets relative to ``data_offset``: the names' offsets and the absolute data offsets are
    filled in here."""
    packed, name_offset = [], 0
    for name, entry in zip(names, entries, strict=True):
        fields = list(_ENTRY.unpack(entry))
        fields[0] = name_offset
        fields[4 + MAX_NDIM] += data_offset
        packed.append(_ENTRY.pack(*fields))
        name_offset += len(name)
    table = b"".join(packed) + b"".join(names)
    head = _HEADER.pack(MAGIC, VERSION, len(entries), _HEADER_BYTES, len(table), data_offset,
                        end, zlib.crc32(table), 0)[:52]
    return head + struct.pack("<IQ", zlib.crc32(head), 0) + table


def _data_offset(names: list[bytes]) -> int:
    return _aligned(_HEADER_BYTES + _ENTRY.size * len(names) + sum(len(n) for n in names))


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
    data_offset = _data_offset(names)
    offsets, end = [], data_offset
    for array in arrays:
        offsets.append(_aligned(end))
        end = offsets[-1] + array.nbytes
    entries = [_entry(name, array, offset - data_offset, zlib.crc32(memoryview(array).cast("B")))
               for name, array, offset in zip(names, arrays, offsets, strict=True)]
    require_space(path, end)
    with path.open("wb") as f:
        f.write(_head_and_table(names, entries, data_offset, end))
        for array, offset in zip(arrays, offsets, strict=True):
            f.seek(offset)
            f.write(memoryview(array).cast("B"))
        f.truncate(end)
    return end


class WeightFileWriter:
    """A weight file written one tensor at a time, byte for byte what :func:`write_weight_file`
    writes for the same tensors, without holding them: :meth:`add` appends a tensor's data to a
    spool file beside ``path`` (``<name>.data``) and keeps only its table entry; :meth:`close`
    writes the header and the table to ``path`` and moves the data behind them
    (``os.copy_file_range``, in the kernel). Used as a context manager, an error before
    :meth:`close` removes the spool and ``path``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._spool_path = self.path.with_name(self.path.name + ".data")
        self._spool = self._spool_path.open("w+b")
        self._names: list[bytes] = []
        self._entries: list[bytes] = []
        self._end = 0  # of the data in the spool

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, name: str, array: np.ndarray) -> int:
        """Write ``array`` as tensor ``name``; return its index (ValueError as
        :func:`write_weight_file`)."""
        array = np.array(array, order="C", copy=None)
        data = memoryview(array).cast("B")
        offset = _aligned(self._end)
        entry = _entry(name.encode(), array, offset, zlib.crc32(data))
        self._spool.seek(offset)
        self._spool.write(data)
        self._names.append(name.encode())
        self._entries.append(entry)
        self._end = offset + array.nbytes
        return len(self._entries) - 1

    def close(self) -> int:
        """Write ``path`` and remove the spool; return the file size in bytes."""
        data_offset = _data_offset(self._names)
        end = data_offset + self._end
        require_space(self.path, end)
        self._spool.flush()
        with self.path.open("wb") as f:
            f.write(_head_and_table(self._names, self._entries, data_offset, end))
            f.truncate(end)
            _copy_range(self._spool, f, self._end, data_offset)
        self._discard()
        return end

    def _discard(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)

    def __enter__(self) -> WeightFileWriter:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        if kind is not None:
            self._discard()
            self.path.unlink(missing_ok=True)


def _copy_range(src: io.BufferedRandom, dst: io.BufferedWriter, nbytes: int,
                dst_offset: int) -> None:
    """Copy ``src``'s first ``nbytes`` to ``dst`` at ``dst_offset``: in the kernel when it can,
    else through a 16 MiB buffer."""
    done = 0
    try:
        while done < nbytes:
            n = os.copy_file_range(src.fileno(), dst.fileno(), nbytes - done, done,
                                   dst_offset + done)
            if n == 0:
                raise OSError(errno.EIO, f"{src.name} ended after {done} of {nbytes} bytes")
            done += n
        return
    except (AttributeError, OSError) as err:
        if isinstance(err, OSError) and err.errno not in (errno.EXDEV, errno.ENOSYS,
                                                          errno.EINVAL, errno.EOPNOTSUPP):
            raise
    src.seek(done)
    dst.seek(dst_offset + done)
    while done < nbytes:
        chunk = src.read(min(16 << 20, nbytes - done))
        if not chunk:
            raise OSError(errno.EIO, f"{src.name} ended after {done} of {nbytes} bytes")
        dst.write(chunk)
        done += len(chunk)


def read_weight_file(path: Path) -> list[tuple[str, np.ndarray]]:
    """The named tensors of a weight file, in file order, as read-only views of its mapping.

    Raises
    ------
    ArtifactError
        The file is missing, truncated, corrupted or breaks the layout in any way (the message
        names the file and the problem); never a partly checked array.
    """
    mapped = None
    try:
        size = path.stat().st_size
        if size:
            with path.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = np.frombuffer(mapped, np.uint8) if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read weights {path}: {err}; recompile the model") from err

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{path} is corrupted: {problem}; recompile the model")

    if bytes(data[:len(_OLD_MAGIC)]) == _OLD_MAGIC:
        raise ArtifactError(f"{path} was written by an older sail (a JSON-headed weight file); "
                            "recompile the model")
    if size < _HEADER_BYTES:
        raise ArtifactError(f"{path} is truncated ({size} bytes, shorter than the 64-byte "
                            "header); recompile the model")
    head = bytes(data[:_HEADER_BYTES])
    (magic, version, count, table_offset, table_bytes, data_offset, file_bytes, table_crc,
     head_crc) = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ArtifactError(f"{path} is not a sail weight file (bad magic); recompile the model")
    if version != VERSION:
        raise ArtifactError(f"{path} has weight format {version}, this sail reads {VERSION}; "
                            "recompile the model")
    if zlib.crc32(head[:52]) != head_crc:
        raise bad("the header checksum does not match")
    if head[56:] != bytes(8):
        raise bad("reserved header bytes 56..63 are not zero")
    if file_bytes != size:
        raise ArtifactError(f"{path} is {'truncated' if size < file_bytes else 'damaged'}: the "
                            f"header says {file_bytes} bytes, the file has {size}; recompile "
                            "the model")
    table_end = table_offset + table_bytes
    if (table_offset < _HEADER_BYTES or table_end > size or count * _ENTRY.size > table_bytes
            or not table_end <= data_offset <= size):
        raise bad("the tensor table lies outside the file")
    table = bytes(data[table_offset:table_end])
    if zlib.crc32(table) != table_crc:
        raise bad("the tensor table checksum does not match")
    names = table[count * _ENTRY.size:]
    tensors, extents = [], []
    for i in range(count):
        (name_offset, name_bytes, dtype_code, ndim, *fields) = _ENTRY.unpack_from(table,
                                                                                  i * _ENTRY.size)
        dims, (offset, nbytes, crc, reserved) = fields[:MAX_NDIM], fields[MAX_NDIM:]
        if name_offset + name_bytes > len(names):
            raise bad(f"the name of tensor {i} lies outside the table")
        try:
            name = names[name_offset:name_offset + name_bytes].decode()
        except UnicodeDecodeError:
            raise bad(f"the name of tensor {i} is not UTF-8") from None
        if ndim > MAX_NDIM or reserved != 0:
            raise bad(f"tensor {i} has rank {ndim} or a nonzero reserved field")
        if any(dims[ndim:]):
            raise bad(f"tensor {i} has nonzero dims past its rank")
        if dtype_code not in _DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype code {dtype_code}")
        dtype, shape = _DTYPES[dtype_code], tuple(dims[:ndim])
        if (offset % ALIGN or offset < data_offset or offset + nbytes > size
                or nbytes != int(np.prod(shape, dtype=object)) * dtype.itemsize):
            raise bad(f"tensor {name!r} lies outside the data area or has the wrong size")
        raw = data[offset:offset + nbytes]
        if zlib.crc32(raw) != crc:
            raise bad(f"the checksum of tensor {name!r} does not match")
        _unmap_pages(mapped, offset, nbytes)
        tensors.append((name, raw.view(dtype).reshape(shape)))
        if nbytes:
            extents.append((offset, nbytes, name))
    extents.sort()
    for (a_offset, a_bytes, a), (b_offset, _, b) in zip(extents, extents[1:], strict=False):
        if b_offset < a_offset + a_bytes:
            raise bad(f"tensors {a!r} and {b!r} overlap")
    return tensors


def _unmap_pages(mapped: mmap.mmap | None, offset: int, nbytes: int) -> None:
    """Drop the pages of ``[offset, offset + nbytes)`` from this process's page tables once
    their checksum is read: the file stays in the page cache and a later access maps the page
    again, but checking a 4 GB file does not leave 4 GB resident in the reader (a simulator
    that never touches most weights then never holds them)."""
    if mapped is None or nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset - offset % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, start, offset + nbytes - start)


def write_weights(path: Path, arrays: list[np.ndarray]) -> int:
    """Write unnamed arrays (stored as ``weight_<i>``); return the file size in bytes."""
    return write_weight_file(path, [(f"weight_{i}", a) for i, a in enumerate(arrays)])


def read_weights(path: Path) -> list[np.ndarray]:
    """The arrays of a weight file in the order written (see :func:`read_weight_file`)."""
    return [array for _, array in read_weight_file(path)]
