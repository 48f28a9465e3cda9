"""A c artifact's ``libmodel.so`` in this process, through ctypes (``sail_model_api.h``).

:class:`ModelLibrary` loads the library and the weight file once (``sail_model_load``) and runs
the model on NumPy arrays (``sail_model_run``); inputs are checked against the signature first,
the runtime checks them again, and every output is copied into NumPy and released.

The library is loaded from a private copy with ``RTLD_DEEPBIND``: TVM, loaded in the same
process, exports functions of the same names as the library's TVM shim
(``TVMBackendAllocWorkspace``, ...), and without it the library's calls would bind to TVM's;
the copy keeps a rebuilt artifact at the same path from being served from the old mapping.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError, InputError, OptionError
from ...frontend.signature import ModelSignature
from .kernels import MAX_THREADS

SHARED_LIBRARY = "libmodel.so"
MAX_NDIM = 8  # SAIL_MAX_NDIM
#: sail_dtype (sail_model_api.h) by NumPy dtype name.
DTYPES = {"bool": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "uint8": 6, "uint16": 7,
          "uint32": 8, "uint64": 9, "float16": 10, "float32": 11, "float64": 12}
NUMPY_DTYPES = {code: np.dtype(name) for name, code in DTYPES.items()}


class SailTensor(ctypes.Structure):
    """``sail_tensor``."""

    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * MAX_NDIM)]


class ModelLibrary:
    """``libmodel.so`` of a c artifact with its weights loaded.

    Parameters
    ----------
    out_dir, manifest
        The artifact (target c); it is built (``make``) if ``libmodel.so`` is missing.
    threads
        Threads of the LUT-GEMV kernels (1..256); None: ``SAIL_NUM_THREADS`` or 1.

    Raises
    ------
    ArtifactError
        The build failed, the library does not load, or the weight file is damaged.
    """

    def __init__(self, out_dir: Path, manifest: dict[str, Any], threads: int | None = None
                 ) -> None:
        from .target import build_library

        self.signature = ModelSignature.from_json(manifest["signature"])
        library = out_dir / SHARED_LIBRARY
        if not library.is_file():
            build_library(out_dir)
        with tempfile.TemporaryDirectory(prefix="sail-lib-") as tmp:
            copy = Path(tmp) / SHARED_LIBRARY
            shutil.copyfile(library, copy)
            mode = os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
            try:
                self._lib = ctypes.CDLL(str(copy), mode=mode)
            except OSError as err:
                raise ArtifactError(f"cannot load {library}: {err}; rebuild it with: sail build "
                                    f"{out_dir}") from None
        lib = self._lib
        lib.sail_model_load.restype = ctypes.c_void_p
        lib.sail_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.sail_model_run.restype = ctypes.c_int
        lib.sail_model_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(SailTensor),
                                       ctypes.POINTER(SailTensor)]
        lib.sail_model_error.restype = ctypes.c_char_p
        lib.sail_model_error.argtypes = [ctypes.c_void_p]
        lib.sail_model_set_threads.restype = ctypes.c_int
        lib.sail_model_set_threads.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.sail_model_threads.restype = ctypes.c_int
        lib.sail_model_threads.argtypes = [ctypes.c_void_p]
        lib.sail_model_free.restype = None
        lib.sail_model_free.argtypes = [ctypes.c_void_p]
        lib.sail_tensor_release.restype = None
        lib.sail_tensor_release.argtypes = [ctypes.POINTER(SailTensor)]
        self._libc = ctypes.CDLL(None)
        self._libc.free.argtypes = [ctypes.c_void_p]
        n_inputs = ctypes.c_int.in_dll(lib, "sail_model_num_inputs").value
        n_outputs = ctypes.c_int.in_dll(lib, "sail_model_num_outputs").value
        if (n_inputs, n_outputs) != (len(self.signature.inputs), len(self.signature.outputs)):
            raise ArtifactError(f"{library} has {n_inputs} inputs and {n_outputs} outputs, the "
                                "manifest another count; recompile the model")

        err = ctypes.c_void_p()
        weights = out_dir / manifest["weights"]
        handle = lib.sail_model_load(str(weights).encode(), ctypes.byref(err))
        if not handle:
            message = ctypes.string_at(err.value).decode(errors="replace") if err.value else \
                "could not load the model"
            if err.value:
                self._libc.free(err)
            raise ArtifactError(message)
        self._model = ctypes.c_void_p(handle)
        if threads is not None:
            self.set_threads(threads)

    @property
    def threads(self) -> int:
        return int(self._lib.sail_model_threads(self._model))

    def set_threads(self, threads: int) -> None:
        """Run the LUT-GEMV kernels on ``threads`` threads (1..256)."""
        if not 1 <= threads <= MAX_THREADS:
            raise OptionError(f"threads must be 1..{MAX_THREADS}, not {threads}")
        if self._lib.sail_model_set_threads(self._model, threads) != 0:
            raise OptionError(self._error())

    def _error(self) -> str:
        return self._lib.sail_model_error(self._model).decode(errors="replace")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run once; ``inputs`` follow the signature's order (checked by the caller), and so do
        the returned outputs."""
        if self._model is None:
            raise ArtifactError("the model was closed")
        arrays = [np.ascontiguousarray(x, dtype=spec.dtype)
                  for x, spec in zip(inputs, self.signature.inputs, strict=True)]
        tensors = (SailTensor * len(arrays))()
        for tensor, x in zip(tensors, arrays, strict=True):
            if x.ndim > MAX_NDIM:
                raise InputError(f"an input has {x.ndim} dims; the c runtime takes up to "
                                 f"{MAX_NDIM}")
            tensor.data = x.ctypes.data
            tensor.dtype = DTYPES[x.dtype.name]
            tensor.ndim = x.ndim
            for d, size in enumerate(x.shape):
                tensor.shape[d] = size
        outputs = (SailTensor * len(self.signature.outputs))()
        if self._lib.sail_model_run(self._model, tensors, outputs) != 0:
            raise InputError(self._error())
        results = []
        try:
            for tensor in outputs:
                dtype = NUMPY_DTYPES[tensor.dtype]
                shape = tuple(tensor.shape[d] for d in range(tensor.ndim))
                count = int(np.prod(shape, dtype=np.int64))
                if count == 0 or not tensor.data:
                    results.append(np.zeros(shape, dtype))
                    continue
                buffer = (ctypes.c_char * (count * dtype.itemsize)).from_address(tensor.data)
                results.append(np.frombuffer(buffer, dtype=dtype).reshape(shape).copy())
        finally:
            for tensor in outputs:
                self._lib.sail_tensor_release(ctypes.byref(tensor))
        return results

    def close(self) -> None:
        """Free the model (its weights); the object cannot run afterwards."""
        if getattr(self, "_model", None) is not None:
            self._lib.sail_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
