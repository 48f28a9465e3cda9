"""The C target's LUT-GEMV kernels from Python: compile-time weight re-layout and a ctypes harness.

:func:`relayout` turns a :class:`~sail_compiler.quant.reference.QuantizedWeight` into the order
the C kernels read (``runtime/sail_lut.h`` documents it byte by byte): bit-plane indices of 4
weights, tiles of 16 columns, groups padded to blocks of 32 rows, scales and zero points in tile
order. :func:`load_runtime` compiles ``runtime/*.c`` with the system C compiler into a cache
directory and loads it with ctypes; :func:`lut_gemv` runs one quantized matmul through it. Tests
and ``benchmarks/gemv.py`` use these; the C target's emitter writes the same arrays into its
weight file.

Builds
------
``native``: ``-O3 -march=native``: the AVX2 kernels on x86-64 machines that have AVX2.
``portable``: ``-O3 -DSAIL_NO_SIMD``: the portable C kernels (same integers, slower).
``avx2``: ``-O3 -march=native`` without AVX-512 and AVX-VNNI (x86-64 with AVX2 only): the plain
AVX2 kernels a Zen 3 or Haswell-class CPU runs, so that a machine with VNNI tests them too.
Both use ``-ffp-contract=off`` so that the float epilogue rounds exactly as the NumPy reference.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ...errors import InputError, OptionError, SailError, valid_choices
from ...quant.packing import check_bits
from ...quant.reference import (
    MIN_ACT_BITS,
    ActBlocks,
    QuantizedWeight,
    check_act_bits,
    check_scale_dtype,
    float16_exact,
    split_groups,
)

#: The C sources of the runtime (package data).
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
# sail_attention.c holds the runtime's float16 conversions, which float16 scales use.
RUNTIME_SOURCES = ("sail_lut.c", "sail_lut_avx2.c", "sail_lut_neon.c", "sail_threads.c",
                   "sail_attention.c")
RUNTIME_HEADERS = ("sail_lut.h", "sail_threads.h", "sail_attention.h")

#: Columns per tile, rows per block and weights per table (NBW): sail_lut.h.
TILE_N, BLOCK_K, NBW = 16, 32, 4
#: Tile column of scale / zero point entry i (``SAIL_LUT_COLUMN_ORDER``).
COLUMN_ORDER = np.array([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15])
#: Code widths stored as codes rather than bit planes (``sail_lut_codes_layout``).
CODES_LAYOUT_BITS = (4, 8)
#: Widest activations the int8 kernels take (the narrowest is the reference's MIN_ACT_BITS).
MAX_ACT_BITS = 8
MAX_THREADS = 256
#: The runtime function a lowered c-target module calls for a LUT-GEMV (``R.call_dps_packed``).
LUT_SYMBOL = "sail_lut_gemv"
# The runtime's data movement (sail_model_rt.h), the c target's legalization of relax.concat
# (sail_rt_concat), reshape / expand_dims / squeeze (sail_rt_copy), permute_dims
# (sail_rt_transpose) and broadcast_to / tile (sail_rt_broadcast).
CONCAT_SYMBOL = "sail_concat"
COPY_SYMBOL = "sail_copy"
TRANSPOSE_SYMBOL = "sail_transpose"
BROADCAST_SYMBOL = "sail_broadcast"
MOVE_SYMBOLS = (CONCAT_SYMBOL, COPY_SYMBOL, TRANSPOSE_SYMBOL, BROADCAST_SYMBOL)
#: The runtime's attention kernel (sail_attention.h, sail_rt_attention): sail.attention.
ATTENTION_SYMBOL = "sail_attention"

_COMMON_FLAGS = ("-std=c11", "-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off")
#: Build name -> extra compiler flags.
BUILDS: dict[str, tuple[str, ...]] = {
    "native": ("-march=native",),
    "portable": ("-DSAIL_NO_SIMD",),
    "avx2": ("-march=native", "-mno-avx512f", "-mno-avxvnni"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class LutWeight:
    """A weight re-laid out for the C LUT-GEMV kernels (mirrors ``struct sail_lut_weight``).

    Attributes
    ----------
    bits, k, n, group_size
        Code width b (1..8), K, N and g of the stored groups (the source weight's g, or its sum
        blocks when :func:`relayout` regrouped it).
    planes
        uint8 ``[n_tiles * n_groups * blocks_per_group * bits * 64]``: the bit-plane index bytes
        or, for 4 and 8 bits, the codes themselves (``sail_lut.h``, codes layout).
    scales
        float32 or float16 ``[n_tiles, n_groups, 16]``, entry i of a tile for its column
        ``COLUMN_ORDER[i]``; padding columns have scale 0. float16 scales hold the quantizer's
        values exactly (``--scale-dtype float16``; :func:`relayout`): the kernels convert them
        to float32 before use, so the results are those of float32 scales of the same values.
    zeros
        uint8 ``[n_tiles, n_groups, 16]`` zero points in the same order, or None for symmetric
        weights (implicit zero point ``2**(bits-1)``).
    act_group
        Columns A per activation scale (None or above K: one per token, stored as K); the sum
        blocks (:class:`~sail_compiler.quant.reference.ActBlocks`) are g or a multiple of 32.
    """

    bits: int
    k: int
    n: int
    group_size: int
    planes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None
    act_group: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits, "weight bits")
        problems = []
        if min(self.k, self.n, self.group_size) < 1:
            problems.append(f"k, n and group_size must be >= 1, got {self.k}, {self.n}, "
                            f"{self.group_size}")
        else:
            blocks = ActBlocks(self.k, self.group_size,
                               self.k if self.act_group is None else self.act_group)
            object.__setattr__(self, "act_group", blocks.act_group)
            if blocks.sum_size != self.group_size and blocks.sum_size % BLOCK_K:
                problems.append(f"sums of {blocks.sum_size} rows inside groups of "
                                f"{self.group_size} must be a multiple of {BLOCK_K} (relayout "
                                "regroups such weights)")
            want = {"planes": ((self.n_tiles * self.n_groups * self.blocks_per_group
                                * self.bits * 64,), np.uint8),
                    "scales": ((self.n_tiles, self.n_groups, TILE_N),
                               np.float16 if self.scales_f16 else np.float32)}
            if self.zeros is not None:
                want["zeros"] = (want["scales"][0], np.uint8)
            for name, (shape, dtype) in want.items():
                a = getattr(self, name)
                if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype \
                        or not a.flags.c_contiguous:
                    got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                    problems.append(f"{name} must be C-contiguous {np.dtype(dtype)} {shape}, "
                                    f"got {got}")
        if problems:
            raise OptionError("invalid LUT-GEMV weight layout: " + "; ".join(problems))

    @property
    def scales_f16(self) -> bool:
        """True when the scales are stored as float16."""
        return isinstance(self.scales, np.ndarray) and self.scales.dtype == np.float16

    @property
    def n_groups(self) -> int:
        """``ceil(k / group_size)``."""
        return -(-self.k // self.group_size)

    @property
    def blocks_per_group(self) -> int:
        """``ceil(group_size / 32)``: each group is padded to whole blocks of 32 rows."""
        return -(-self.group_size // BLOCK_K)

    @property
    def n_tiles(self) -> int:
        """``ceil(n / 16)``."""
        return -(-self.n // TILE_N)

    @property
    def blocks(self) -> ActBlocks:
        """The activation blocks and sum blocks of the kernels' contract (``sail_lut.h``)."""
        return ActBlocks(self.k, self.group_size, self.act_group)

    @property
    def symmetric(self) -> bool:
        """True without stored zero points."""
        return self.zeros is None

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to store (``planes``, ``scales`` and, with zero points, ``zeros``)."""
        out = {"planes": self.planes, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    @property
    def nbytes(self) -> int:
        """Bytes the kernels read per call: planes, scales and zero points."""
        return sum(a.nbytes for a in self.arrays().values())


def vector_slots(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (0..15 in the tile) and bit plane of byte ``bp`` of index vector ``v``.

    Returns
    -------
    column, plane : numpy.ndarray
        int64 ``[bits, 16]`` each (``sail_lut.h``: adjacent bytes are two planes of one column;
        for odd ``bits`` the last vector holds the top plane of both 8-column subtiles).
    """
    bits = check_bits(bits, "weight bits")
    v, bp = np.meshgrid(np.arange(bits), np.arange(16), indexing="ij")
    pair = v < 2 * (bits // 2)
    column = np.where(pair, 8 * (v % 2) + bp // 2, 8 * (bp % 2) + bp // 2)
    plane = np.where(pair, 2 * (v // 2) + bp % 2, bits - 1)
    return column, plane


# Tiles re-laid out per step, to bound the temporary arrays (a few bytes per code bit).
_RELAYOUT_TILES_PER_STEP = 64


def _tile_planes(q: np.ndarray, bits: int, column: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Index bytes of codes ``q[G, bpg * 32, tiles * 16]`` (kernel rows, padded), in the
    order ``[tile, G, bpg, v, l, L, bp]``."""
    n_groups, rows, cols = q.shape
    bpg, tiles = rows // BLOCK_K, cols // TILE_N
    # rows -> (block, chunk pair cp = 2l + half, lane L, row j); columns -> (tile, column)
    q = q.reshape(n_groups, bpg, 2, 2, 2, NBW, tiles, TILE_N)
    weights = (1 << np.arange(NBW, dtype=np.uint8)).reshape(NBW, 1, 1)
    idx = np.stack([(((q >> i) & 1) * weights).sum(axis=5, dtype=np.uint8) for i in range(bits)],
                   axis=-1)                                   # [G, bpg, l, half, L, tiles, 16, b]
    idx = idx[..., column, plane]                             # [G, bpg, l, half, L, tiles, v, bp]
    packed = idx[:, :, :, 0] | (idx[:, :, :, 1] << 4)         # [G, bpg, l, L, tiles, v, bp]
    return packed.transpose(4, 0, 1, 5, 2, 3, 6)              # [tiles, G, bpg, v, l, L, bp]


def _tile_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Bytes of 4- or 8-bit codes ``q[G, bpg * 32, tiles * 16]`` (kernel rows, padded) in the
    codes layout. 4 bits, order ``[tile, G, bpg, q, i, r]``: byte ``4 i + r`` of vector ``q``
    holds row ``4 q + r`` of tile columns ``COLUMN_ORDER[i]`` (low nibble) and
    ``COLUMN_ORDER[8 + i]`` (high nibble). 8 bits, order ``[tile, G, bpg, q, h, i, r]``: byte
    ``4 i + r`` of vector ``2 q + h`` is row ``4 q + r`` of column ``COLUMN_ORDER[8 h + i]``."""
    n_groups, rows, cols = q.shape
    bpg, tiles = rows // BLOCK_K, cols // TILE_N
    q = q.reshape(n_groups, bpg, BLOCK_K // 4, 4, tiles, TILE_N)[..., COLUMN_ORDER]
    if bits == 4:
        packed = q[..., :8] | (q[..., 8:] << 4)               # [G, bpg, q, r, tiles, i]
        return packed.transpose(4, 0, 1, 2, 5, 3)             # [tiles, G, bpg, q, i, r]
    halves = q.reshape(n_groups, bpg, BLOCK_K // 4, 4, tiles, 2, 8)  # [G, bpg, q, r, tiles, h, i]
    return halves.transpose(4, 0, 1, 2, 5, 6, 3)              # [tiles, G, bpg, q, h, i, r]


def relayout(qw: QuantizedWeight, act_group: int | None = None,
             scale_dtype: str = "float32") -> LutWeight:
    """Re-lay out a quantized weight into the C kernels' order (compile time).

    Parameters
    ----------
    qw
        Codes ``q[K_pad, N]``, scales and (optional) zero points ``[n_groups, N]``.
    act_group
        Columns A per activation scale (None: one per token). When the sum blocks split the
        weight groups into pieces that are not whole blocks of 32 rows, the weight is stored
        regrouped into its sum blocks (:func:`~sail_compiler.quant.reference.split_groups`:
        each with its group's scale and zero point), so that every sum the kernels finish is one
        stored group.
    scale_dtype
        How the scales are stored: ``"float32"``, or ``"float16"`` (every scale must be a normal
        float16 value, :func:`~sail_compiler.quant.reference.float16_exact`, as
        ``--scale-dtype float16`` makes them: storing them so is exact).

    Returns
    -------
    LutWeight
        The bit-plane index bytes (4 and 8 bits: the codes themselves), scales and zero points
        in tile order (``sail_lut.h``).
        Rows past K and past each group's end, and columns past N, are padding with code 0
        (and scale 0 for columns).
    """
    blocks = ActBlocks(qw.k, qw.group_size, qw.k if act_group is None else act_group)
    half = check_scale_dtype(scale_dtype) == "float16"
    if half and not float16_exact(qw.scale):
        raise OptionError("float16 scales need every scale to be a normal float16 value "
                          "(quantize with scale_dtype='float16')")
    if blocks.sum_size != qw.group_size and blocks.sum_size % BLOCK_K:
        qw = split_groups(qw, blocks)
    bits, g, k, n = qw.bits, qw.group_size, qw.k, qw.n
    n_groups, bpg, n_tiles = qw.n_groups, -(-g // BLOCK_K), -(-n // TILE_N)
    column, plane = vector_slots(bits)
    q = qw.q.reshape(n_groups, g, n)
    # Rows past K hold the zero point in qw; the kernel needs no value there (their
    # activations are 0), so they are cleared like every other padding row.
    valid_rows = (np.arange(n_groups)[:, None] * g + np.arange(g)[None, :]) < k
    planes = np.empty((n_tiles, n_groups, bpg, bits * 64), np.uint8)
    for t0 in range(0, n_tiles, _RELAYOUT_TILES_PER_STEP):
        t1 = min(t0 + _RELAYOUT_TILES_PER_STEP, n_tiles)
        c0, c1 = t0 * TILE_N, min(t1 * TILE_N, n)
        step = np.zeros((n_groups, bpg * BLOCK_K, (t1 - t0) * TILE_N), np.uint8)
        step[:, :g, : c1 - c0] = np.where(valid_rows[:, :, None], q[:, :, c0:c1], 0)
        tiles = _tile_codes(step, bits) if bits in CODES_LAYOUT_BITS else \
            _tile_planes(step, bits, column, plane)
        planes[t0:t1] = tiles.reshape(t1 - t0, n_groups, bpg, bits * 64)

    def tiled(a: np.ndarray, dtype: type) -> np.ndarray:
        out = np.zeros((n_groups, n_tiles * TILE_N), dtype)
        out[:, :n] = a
        out = out.reshape(n_groups, n_tiles, TILE_N)[:, :, COLUMN_ORDER]
        return np.ascontiguousarray(out.transpose(1, 0, 2))

    zeros = None if qw.zero is None else tiled(qw.zero, np.uint8)
    scales = tiled(qw.scale, np.float16 if half else np.float32)
    return LutWeight(bits, k, n, g, planes.reshape(-1), scales, zeros, blocks.act_group)


# ---- ctypes harness ----------------------------------------------------------------------------


class _Weight(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_int), ("k", ctypes.c_int), ("n", ctypes.c_int),
                ("group_size", ctypes.c_int), ("n_groups", ctypes.c_int),
                ("blocks_per_group", ctypes.c_int), ("n_tiles", ctypes.c_int),
                ("act_group", ctypes.c_int), ("n_act_blocks", ctypes.c_int),
                ("sum_size", ctypes.c_int), ("n_sums", ctypes.c_int),
                ("planes", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("zeros", ctypes.c_void_p), ("scales_f16", ctypes.c_void_p)]


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def compiler() -> str:
    """The C compiler: ``$CC`` or ``cc``."""
    return os.environ.get("CC", "cc")


def cache_dir() -> Path:
    """Where built runtimes are kept: ``$XDG_CACHE_HOME/sail_compiler/c_runtime`` (default
    ``~/.cache``), or the temporary directory if the home directory is not writable."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "sail_compiler" / "c_runtime"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / f"sail_compiler-{os.getuid()}" / "c_runtime"
        path.mkdir(parents=True, exist_ok=True)
    return path


def build_flags(build: str) -> list[str]:
    """Compiler flags of a named build (see the module docstring)."""
    if build not in BUILDS:
        raise OptionError(f"unknown C runtime build {build!r}; {valid_choices(list(BUILDS))}")
    return [*_COMMON_FLAGS, *BUILDS[build]]


def compile_runtime(build: str = "native", *, extra_flags: tuple[str, ...] = (),
                    out_dir: Path | None = None) -> Path:
    """Compile the runtime into a shared library (reused while sources and flags are unchanged).

    Parameters
    ----------
    build
        ``native`` or ``portable``.
    extra_flags
        More compiler flags (e.g. sanitizers); they are part of the cache key.
    out_dir
        Directory of the cache; default :func:`cache_dir`.

    Returns
    -------
    Path
        The ``.so`` file.

    Raises
    ------
    OptionError
        Unknown build.
    SailError
        The compiler is missing or fails (its messages are included).
    """
    cc = compiler()
    flags = [*build_flags(build), *extra_flags]
    if shutil.which(cc) is None:
        raise SailError(f"C compiler {cc!r} not found; install one or set CC")
    key = hashlib.sha256()
    for name in (*RUNTIME_SOURCES, *RUNTIME_HEADERS):
        key.update((RUNTIME_DIR / name).read_bytes())
    key.update(" ".join([cc, *flags]).encode())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    key.update(version.stdout.encode())
    target = (out_dir or cache_dir()) / f"libsail_lut-{build}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *flags, "-o", tmp, *(str(RUNTIME_DIR / s) for s in RUNTIME_SOURCES), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        os.unlink(tmp)
        raise SailError(f"compiling the C runtime failed ({' '.join(cmd)}):\n{done.stderr}")
    os.replace(tmp, target)  # atomic: concurrent builders write the same bytes
    return target


class LutRuntime:
    """A loaded build of the C runtime.

    One instance may be used from one Python thread at a time (its thread pools and scratch
    buffers are shared by its calls). :func:`load_runtime` caches one per build.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        lib = ctypes.CDLL(str(self.path))
        lib.sail_lut_isa.restype = ctypes.c_char_p
        lib.sail_lut_isa.argtypes = []
        lib.sail_lut_check.argtypes = [ctypes.POINTER(_Weight)]
        lib.sail_lut_workspace_size.restype = ctypes.c_size_t
        lib.sail_lut_workspace_size.argtypes = [ctypes.POINTER(_Weight), ctypes.c_int]
        lib.sail_quantize_rows.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_void_p]
        lib.sail_lut_gemv.argtypes = [ctypes.POINTER(_Weight), ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p]
        lib.sail_pool_create.restype = ctypes.c_void_p
        lib.sail_pool_create.argtypes = [ctypes.c_int]
        lib.sail_pool_destroy.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._pools: dict[int, int] = {}
        self._workspace = np.empty(0, np.uint8)

    @property
    def isa(self) -> str:
        """``avx2`` or ``portable``: the kernels this build runs."""
        return self._lib.sail_lut_isa().decode()

    def close(self) -> None:
        """Stop the worker threads of this runtime's pools."""
        for pool in self._pools.values():
            self._lib.sail_pool_destroy(pool)
        self._pools.clear()

    def __del__(self) -> None:
        if getattr(self, "_pools", None):
            self.close()

    def pool(self, threads: int) -> int | None:
        """The pool of ``threads`` threads (created once; None for one thread)."""
        if isinstance(threads, bool) or not isinstance(threads, int | np.integer) \
                or not 1 <= threads <= MAX_THREADS:
            raise OptionError(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r}")
        if threads == 1:
            return None
        if threads not in self._pools:
            pool = self._lib.sail_pool_create(int(threads))
            if not pool:
                raise SailError(f"could not start a pool of {threads} threads")
            self._pools[int(threads)] = pool
        return self._pools[int(threads)]

    def quantize(self, x: np.ndarray, act_bits: int = 8,
                 act_group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """C ``sail_quantize_rows``: float32 ``x[T, K]`` -> (int8 ``xq[T, K]``, float32
        ``sx[T, ceil(K / act_group)]``; ``sx[T]`` for ``act_group=None``, one scale per row).

        Raises
        ------
        OptionError
            ``act_bits`` outside 2..8.
        InputError
            ``x`` is not a 2-D float array with K >= 1, or is not finite; ``act_group`` < 1.
        """
        act_bits = _check_act_bits(act_bits)
        if act_group is not None and (isinstance(act_group, bool) or act_group < 1):
            raise InputError(f"act_group must be a positive integer, got {act_group!r}")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"activations must be a 2-D float array [T, K], got {x.dtype} "
                             f"{x.shape}")
        x = np.ascontiguousarray(x, np.float32)
        if not np.all(np.isfinite(x)):
            raise InputError("activations hold inf or nan; quantization needs finite values")
        k = x.shape[1]
        a = k if act_group is None else min(int(act_group), k)
        xq = np.empty(x.shape, np.int8)
        sx = np.empty((x.shape[0], -(-k // a)), np.float32)
        rc = self._lib.sail_quantize_rows(_ptr(x), x.shape[0], k, act_bits, a, _ptr(xq),
                                          _ptr(sx))
        assert rc == 0, f"sail_quantize_rows returned {rc}"
        return xq, (sx[:, 0] if act_group is None else sx)

    def prepare(self, weight: LutWeight, rows: int, threads: int = 1, *,
                sums: bool = False) -> PreparedGemv:
        """A reusable call of ``weight`` on ``rows`` tokens (buffers allocated once)."""
        return PreparedGemv(self, weight, rows, threads, sums)


class PreparedGemv:
    """``sail_lut_gemv`` on one weight with fixed rows and threads: call with ``(xq, sx)``, or
    :meth:`matmul` on float activations (quantized by the C quantizer first).

    The returned arrays are reused by the next call.
    """

    def __init__(self, runtime: LutRuntime, weight: LutWeight, rows: int, threads: int,
                 sums: bool) -> None:
        if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
            raise InputError(f"rows must be a positive integer, got {rows!r}")
        self.runtime, self.weight, self.rows = runtime, weight, int(rows)
        self._pool = runtime.pool(threads)
        blocks = weight.blocks
        self._struct = _Weight(weight.bits, weight.k, weight.n, weight.group_size,
                               weight.n_groups, weight.blocks_per_group, weight.n_tiles,
                               blocks.act_group, blocks.n_blocks, blocks.sum_size,
                               blocks.n_sums, _ptr(weight.planes),
                               None if weight.scales_f16 else _ptr(weight.scales),
                               _ptr(weight.zeros),
                               _ptr(weight.scales) if weight.scales_f16 else None)
        lib = runtime._lib
        if lib.sail_lut_check(ctypes.byref(self._struct)) != 0:
            raise OptionError("the C runtime rejects this weight layout (sail_lut_check)")
        size = lib.sail_lut_workspace_size(ctypes.byref(self._struct), self.rows)
        raw = np.empty(size + 64, np.uint8)
        offset = -raw.ctypes.data % 64
        self._workspace = raw[offset: offset + size]
        self.y = np.empty((self.rows, weight.n), np.float32)
        self.sums = np.empty((self.rows, blocks.n_sums, weight.n), np.int32) if sums else None
        self._xq = np.empty((self.rows, weight.k), np.int8)
        self._sx = np.empty((self.rows, blocks.n_blocks), np.float32)

    def __call__(self, xq: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run on int8 ``xq[rows, K]`` and float32 ``sx[rows, ceil(K / act_group)]``
        (C-contiguous)."""
        rc = self.runtime._lib.sail_lut_gemv(
            ctypes.byref(self._struct), xq.ctypes.data, sx.ctypes.data, self.rows,
            self.y.ctypes.data, _ptr(self.sums), self._workspace.ctypes.data, self._pool)
        assert rc == 0, f"sail_lut_gemv returned {rc}"
        return self.y, self.sums

    def matmul(self, x: np.ndarray, act_bits: int = 8) -> tuple[np.ndarray, np.ndarray | None]:
        """Quantize C-contiguous float32 ``x[rows, K]`` (C ``sail_quantize_rows``) and run.

        No checks beyond the C library's own: this is the timed path of the benchmarks.
        """
        rc = self.runtime._lib.sail_quantize_rows(x.ctypes.data, self.rows, self.weight.k,
                                                  act_bits, self.weight.act_group,
                                                  self._xq.ctypes.data, self._sx.ctypes.data)
        assert rc == 0, f"sail_quantize_rows returned {rc}"
        return self(self._xq, self._sx)


def _check_act_bits(act_bits: int) -> int:
    """The reference's activation width check, narrowed to the int8 kernels' 2..8."""
    act_bits = check_act_bits(act_bits)
    if act_bits > MAX_ACT_BITS:
        raise OptionError(f"the C LUT-GEMV kernels take activation bits {MIN_ACT_BITS}.."
                          f"{MAX_ACT_BITS} (int8), got {act_bits}")
    return act_bits


_RUNTIMES: dict[str, LutRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def load_runtime(build: str = "native") -> LutRuntime:
    """The runtime of a named build, compiled on first use and cached (per process and on disk).

    Raises
    ------
    OptionError
        Unknown build.
    SailError
        The compiler is missing or fails.
    """
    with _RUNTIMES_LOCK:
        if build not in _RUNTIMES:
            _RUNTIMES[build] = LutRuntime(compile_runtime(build))
        return _RUNTIMES[build]


def lut_gemv(x: np.ndarray, weight: LutWeight, threads: int = 1, *, sx: np.ndarray | None = None,
             act_bits: int = 8, build: str = "native") -> tuple[np.ndarray, np.ndarray]:
    """One quantized matmul through the C kernels.

    Parameters
    ----------
    x
        float ``[T, K]`` activations (quantized by the C ``sail_quantize_rows`` with
        ``act_bits`` and the weight's ``act_group``), or integer ``[T, K]`` already quantized
        values in -128..127 (then ``sx`` is required).
    weight
        :func:`relayout` of the quantized weight.
    threads
        Threads of the call (1..256).
    sx
        float32 ``[T, ceil(K / act_group)]`` activation scales of integer ``x`` (``[T]`` for one
        per row).
    act_bits
        Activation width for float ``x``, 2..8.
    build
        ``native`` or ``portable``.

    Returns
    -------
    y : numpy.ndarray
        float32 ``[T, N]``.
    sums : numpy.ndarray
        int32 ``[T, J, N]``, the exact sums per sum block (per group for one scale per row).

    Raises
    ------
    InputError
        ``x`` is not ``[T, K]``, integer ``x`` lies outside int8 or comes without ``sx[T]``.
    OptionError
        ``act_bits``, ``threads`` or ``build`` out of range.
    """
    runtime = load_runtime(build)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != weight.k or x.shape[0] < 1:
        raise InputError(f"activations must be [T, {weight.k}] with T >= 1, got shape {x.shape}")
    n_blocks = weight.blocks.n_blocks
    if np.issubdtype(x.dtype, np.floating):
        xq, sx = runtime.quantize(x, act_bits, weight.act_group)
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < -128 or x.max() > 127):
            raise InputError(f"quantized activations must fit int8, got {x.min()}..{x.max()}")
        shapes = [(x.shape[0], n_blocks)] + ([(x.shape[0],)] if n_blocks == 1 else [])
        if sx is None or np.shape(sx) not in shapes:
            raise InputError(f"integer activations need scales sx of shape {shapes[0]}")
        xq = np.ascontiguousarray(x, np.int8)
        sx = np.ascontiguousarray(np.reshape(sx, (x.shape[0], n_blocks)), np.float32)
    else:
        raise InputError(f"activations must be float or integer, got {x.dtype}")
    y, sums = runtime.prepare(weight, x.shape[0], threads, sums=True)(xq, sx)
    return y.copy(), sums.copy()
