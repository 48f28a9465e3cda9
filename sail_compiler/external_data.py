"""ONNX external data read in place: memory-mapped weights, never loaded whole.

A model whose weights live in external-data files (beside the ``.onnx``) can be compiled without
a float copy of the whole model in memory: :class:`ExternalData` maps each file once, read-only
(pages come from the page cache when touched; a read-only mapping is not charged against the
kernel's overcommit limit, which refused a 27 GB copy-on-write mapping on a 24 GB machine), and
hands out each initializer as a read-only NumPy view of its bytes (:meth:`~ExternalData.array`),
which the importer turns into a TVM constant without copying (:func:`tvm_dlpack`).
Quantization reads a weight with :meth:`~ExternalData.read` (``pread`` into a fresh array) so the
mapping's pages stay untouched and the float copy lives only while that one weight is quantized.

The IR names each initializer's constant after the initializer (the frontend, see
:func:`~sail_compiler.quant.plan.weight_ref`), so the ``quantize`` stage finds a mapped weight
without reading its bytes. The files are checked (present, long enough) by the frontend's
checks before any of this runs.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

#: TVM takes a tensor without copying only at this alignment (``FromDLPack``).
_TVM_ALIGN = 64

@dataclasses.dataclass(frozen=True)
class _Location:
    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return None


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's initializer data, in memory or external (without reading it)."""
    total = 0
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            dtype = _np_dtype(tensor)
            info = external_data_helper.ExternalDataInfo(tensor)
            if info.length is not None:
                total += info.length
            elif dtype is not None:
                total += int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
        else:
            total += len(tensor.raw_data)
    return total


def external_tensors(model: onnx.ModelProto) -> tuple[list[onnx.TensorProto], bool]:
    """The main graph's initializers stored as external data, and whether :class:`ExternalData`
    can serve all of the model's external tensors: none in subgraphs or ``Constant`` nodes, and
    each of a NumPy-native type (bfloat16 and the float8 types are not; TVM would not take them
    from DLPack)."""
    mapped = [t for t in model.graph.initializer if external_data_helper.uses_external_data(t)]
    inner = sum(1 for t in _inner_tensors(model.graph)
                if external_data_helper.uses_external_data(t))
    native = all(_np_dtype(t) is not None and _np_dtype(t).kind in "fiub" for t in mapped)
    return mapped, inner == 0 and native


def _inner_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Tensors of ``Constant``-style attributes and of subgraphs (initializers included)."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
            for sub in subgraphs:
                yield from sub.initializer
                yield from _inner_tensors(sub)


class ExternalData:
    """The external-data initializers of a model, each file mapped once.

    Parameters
    ----------
    model
        The model as loaded with ``load_external_data=False``; it is not modified.
    base_dir
        The folder of the ``.onnx`` file (external-data locations are relative to it).

    The mappings stay open while this object or any array handed out lives.
    """

    def __init__(self, model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> None:
        base = Path(base_dir)
        #: The folder external-data locations are relative to.
        self.base_dir = base
        self._locations: dict[str, _Location] = {}
        for tensor in external_tensors(model)[0]:
            info = external_data_helper.ExternalDataInfo(tensor)
            dtype = _np_dtype(tensor)
            assert dtype is not None, f"{tensor.name}: the checks refuse this element type"
            self._locations[tensor.name] = _Location(
                (base / info.location).resolve(), info.offset or 0, dtype,
                tuple(int(d) for d in tensor.dims))
        self._maps: dict[Path, mmap.mmap] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._locations

    def __len__(self) -> int:
        return len(self._locations)

    @property
    def nbytes(self) -> int:
        """Bytes of all mapped initializers."""
        return sum(loc.nbytes for loc in self._locations.values())

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with path.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = mapped
        return self._maps[path]

    def array(self, name: str) -> np.ndarray | None:
        """A read-only view of ``name``'s bytes in the mapped file, or None when its offset is
        not 64-byte aligned (TVM would copy it)."""
        loc = self._locations[name]
        if loc.offset % _TVM_ALIGN or loc.nbytes == 0:
            return None
        count = loc.nbytes // loc.dtype.itemsize
        flat = np.frombuffer(self._map(loc.path), loc.dtype, count=count, offset=loc.offset)
        return flat.reshape(loc.shape)

    def read(self, name: str) -> np.ndarray:
        """A fresh copy of ``name`` read from its file (the mapping's pages are not touched)."""
        loc = self._locations[name]
        count = loc.nbytes // loc.dtype.itemsize
        with loc.path.open("rb") as f:
            return np.fromfile(f, loc.dtype, count=count, offset=loc.offset).reshape(loc.shape)

    def close(self) -> None:
        """Drop this object's mappings (views handed out keep theirs alive)."""
        self._maps.clear()


def tvm_dlpack(view: np.ndarray) -> object:
    """A DLPack capsule of a read-only view for ``tvm.runtime.from_dlpack`` (no copy).

    NumPy exports a read-only array only as a versioned (DLPack 1.0) capsule, which carries the
    read-only flag; TVM takes it and never writes to a constant.
    """
    return view.__dlpack__(max_version=(1, 0))

