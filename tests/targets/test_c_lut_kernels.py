"""The C target's LUT-GEMV kernels (targets/c/runtime) against the NumPy reference.

Both builds (AVX2 via -march=native, and the portable C path) must give the exact int32 group
sums of ``reference.group_sums`` and y within 1e-5 of ``reference.quantized_matmul``, for every
weight width, with and without zero points, for group sizes that do not divide K, N that is not
a multiple of the tile width, several batch sizes and 1 or 2 threads. The sources must compile
warning-free and run clean under AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.errors import InputError, OptionError
from sail_compiler.quant.reference import (
    ActBlocks,
    QuantizedWeight,
    block_sums,
    group_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.c import kernels
from sail_compiler.targets.c.kernels import LutWeight, load_runtime, lut_gemv, relayout

if shutil.which(kernels.compiler()) is None:
    pytest.skip("no C compiler", allow_module_level=True)

RNG = np.random.default_rng(20250925)

def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.is_file():
        return set()
    return {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


# "avx2" (AVX-512 and AVX-VNNI off) runs the plain AVX2 kernels, which a CPU with VNNI would
# otherwise never run; on a CPU with AVX2 only it is the native build again.
CPU_FLAGS = _cpu_flags()
BUILDS = ["native", "portable"] + (
    ["avx2"] if "avx2" in CPU_FLAGS and CPU_FLAGS & {"avx512f", "avx_vnni"} else [])
# (group size, symmetric): K = 200 is a multiple of none of them; None is one group per column.
GROUPINGS = [(32, False), (64, True), (128, False), (None, True), (None, False)]
K, N = 200, 37
BATCHES = (1, 2, 3, 8, 17)


def _weight(bits: int, group_size: int | None, symmetric: bool, k: int = K, n: int = N,
            rng: np.random.Generator = RNG) -> QuantizedWeight:
    symmetric = symmetric and bits > 1  # symmetric 1-bit weights do not exist
    w = rng.standard_normal((k, n)).astype(np.float32)
    return quantize_weights_rtn(w, QuantScheme(bits, group_size, symmetric))


def _activations(rows: int, k: int = K) -> np.ndarray:
    x = RNG.standard_normal((rows, k)).astype(np.float32)
    x[:, RNG.integers(0, k, size=3)] *= 20  # outliers, as LLM activations have
    return x


def _check(x: np.ndarray, qw: QuantizedWeight, y: np.ndarray, sums: np.ndarray,
           what: str) -> None:
    xq, _ = quantize_activations(x)
    np.testing.assert_array_equal(sums, group_sums(xq, qw), err_msg=f"sums {what}")
    np.testing.assert_allclose(y, quantized_matmul(x, qw), rtol=1e-5, atol=0,
                               err_msg=f"y {what}")


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_every_width_matches_reference(build: str, bits: int) -> None:
    for group_size, symmetric in GROUPINGS:
        qw = _weight(bits, group_size, symmetric)
        lw = relayout(qw)
        for rows in BATCHES:
            x = _activations(rows)
            for threads in (1, 2):
                y, sums = lut_gemv(x, lw, threads, build=build)
                _check(x, qw, y, sums, f"{build} b={bits} g={group_size} sym={symmetric} "
                                       f"rows={rows} threads={threads}")


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_prefill_row_blocks_match_reference(bits: int) -> None:
    """A prefill-sized call (K = 6000: the AVX2 kernels' 3- and 4-bit passes sweep the tiles in
    row blocks of 192 KiB / K = 32 tokens; 75 rows: two whole blocks and a partial one of 11;
    8 bits: the plain loop) gives the reference's exact sums and outputs."""
    k = 6000
    qw = _weight(bits, 32, True, k=k, n=21)
    x = _activations(75, k)
    for threads in (1, 2):
        y, sums = lut_gemv(x, relayout(qw), threads)
        _check(x, qw, y, sums, f"b={bits} rows=75 k={k} threads={threads}")


# (group size, act_group): blocks equal to the groups, whole kernel blocks inside them (the
# kernels finish a sum every act_group / 32 blocks), pieces of 16 rows (stored regrouped),
# blocks spanning two groups, one group per column split by blocks that do not divide K.
BLOCKINGS = [(32, 32), (128, 32), (128, 64), (64, 16), (32, 64), (None, 32), (None, 24)]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_block_scales_match_reference(build: str, bits: int) -> None:
    """Per-block activation scales: the C quantizer's scales, the exact sums per sum block and
    y bit for bit as the reference computes them."""
    runtime = load_runtime(build)
    for i, (group_size, act_group) in enumerate(BLOCKINGS):
        qw = _weight(bits, group_size, i % 2 == 1)
        blocks = ActBlocks(K, qw.group_size, act_group)
        lw = relayout(qw, act_group)
        regrouped = blocks.sum_size % 32 != 0 and blocks.sum_size != qw.group_size
        assert lw.group_size == (blocks.sum_size if regrouped else qw.group_size)
        for rows in (1, 3, 8):
            x = _activations(rows)
            xq, sx = quantize_activations(x, 8, act_group)
            got_q, got_s = runtime.quantize(x, 8, act_group)
            np.testing.assert_array_equal(got_s, sx)
            np.testing.assert_array_equal(got_q, xq)
            for threads in (1, 2):
                what = f"{build} b={bits} g={group_size} a={act_group} rows={rows} t={threads}"
                y, sums = lut_gemv(x, lw, threads, build=build)
                np.testing.assert_array_equal(sums, block_sums(xq, qw, blocks), err_msg=what)
                np.testing.assert_array_equal(y, quantized_matmul(x, qw, 8, act_group),
                                              err_msg=what)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_float16_scales_match_reference(build: str, bits: int) -> None:
    """Weights quantized with float16 scales are stored with 2-byte scales; the kernels give the
    reference's exact sums and, bit for bit, the outputs of the same values stored as float32
    (one scale per row, per-block scales, several group sizes)."""
    runtime = load_runtime(build)
    for i, (group_size, act_group) in enumerate([(32, None), (64, None), (None, None),
                                                 (128, 32), (32, 64)]):
        symmetric = i % 2 == 0 and bits > 1
        # scale 0.1: every group's scale (the last one of 8 rows too) in float16's normal range
        w = (RNG.standard_normal((K, N)) * 0.1).astype(np.float32)
        qw = quantize_weights_rtn(w, QuantScheme(bits, group_size, symmetric), "float16")
        blocks = ActBlocks(K, qw.group_size, K if act_group is None else act_group)
        lw, lw32 = relayout(qw, act_group, "float16"), relayout(qw, act_group)
        assert lw.scales.dtype == np.float16 and lw32.scales.dtype == np.float32
        assert lw32.nbytes - lw.nbytes == 2 * lw.scales.size
        for rows in (1, 3, 17):
            x = _activations(rows)
            xq, sx = quantize_activations(x, 8, act_group)
            for threads in (1, 2):
                what = f"{build} b={bits} g={group_size} a={act_group} rows={rows} t={threads}"
                y, sums = lut_gemv(x, lw, threads, build=build)
                y32, _ = runtime.prepare(lw32, rows, threads)(*runtime.quantize(x, 8, act_group))
                np.testing.assert_array_equal(sums, block_sums(xq, qw, blocks), err_msg=what)
                np.testing.assert_array_equal(y, y32, err_msg=what)
                if act_group is None:
                    np.testing.assert_allclose(y, quantized_matmul(x, qw), rtol=1e-5, atol=0,
                                               err_msg=what)
                else:
                    np.testing.assert_array_equal(y, quantized_matmul(x, qw, 8, act_group),
                                                  err_msg=what)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels")
def test_float16_scales_without_f16c(tmp_path: Path) -> None:
    """An AVX2 build without F16C converts the float16 scales with the runtime's portable
    conversion: the same outputs as float32 scales of the same values."""
    runtime = kernels.LutRuntime(kernels.compile_runtime("native", extra_flags=("-mno-f16c",),
                                                         out_dir=tmp_path))
    assert runtime.isa == "avx2"
    for bits, group_size in ((2, 32), (4, 64), (8, 32)):
        w = (RNG.standard_normal((K, N)) * 0.1).astype(np.float32)
        qw = quantize_weights_rtn(w, QuantScheme(bits, group_size, True), "float16")
        x = _activations(3)
        xq, sx = runtime.quantize(x)
        y16, _ = runtime.prepare(relayout(qw, scale_dtype="float16"), 3)(xq, sx)
        y16 = y16.copy()
        y32, _ = runtime.prepare(relayout(qw), 3)(xq, sx)
        np.testing.assert_array_equal(y16, y32, err_msg=f"b={bits} g={group_size}")
    runtime.close()


def test_float16_scales_need_float16_values() -> None:
    qw = _weight(4, 32, False)  # float32 scales: not float16 values
    with pytest.raises(OptionError, match="every scale to be a normal float16 value"):
        relayout(qw, scale_dtype="float16")
    with pytest.raises(OptionError, match="unknown scale dtype 'half'"):
        relayout(qw, scale_dtype="half")


@pytest.mark.parametrize("build", BUILDS)
def test_builds_run_their_kernels(build: str) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if build == "native" and not cpuinfo.is_file():
        pytest.skip("cannot tell whether this CPU has AVX2")
    want = ("avx2" if build in ("native", "avx2") and " avx2" in cpuinfo.read_text()
            else "portable")
    assert load_runtime(build).isa == want


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_extreme_values_are_exact(build: str, bits: int) -> None:
    """The widest table entries (4 x -128, 4 x 127), all-max and all-zero codes, zero rows,
    and a group long enough to flush the int16 sums several times."""
    k, n = 1000, 40
    rows = np.stack([np.full(k, 127), np.full(k, -127), np.full(k, -128), np.zeros(k, int),
                     np.where(np.arange(k) % 2, 127, -128), RNG.integers(-128, 128, size=k)])
    sx = np.linspace(0.5, 2, len(rows)).astype(np.float32)
    top = (1 << bits) - 1
    for group_size in (None, 96):
        n_groups = -(-k // (group_size or k))
        for codes in (np.full((k, n), top), np.zeros((k, n)), RNG.integers(0, top + 1, (k, n))):
            g = group_size or k
            q = np.zeros((n_groups * g, n), np.uint8)
            q[:k] = codes
            zero = np.where(RNG.random((n_groups, n)) < 0.5, 0, top).astype(np.uint8)
            q[k:] = zero[-1]
            qw = QuantizedWeight(q, np.full((n_groups, n), 0.25, np.float32), zero, bits, g, k)
            y, sums = lut_gemv(rows, relayout(qw), 2, sx=sx, build=build)
            want = group_sums(rows, qw)
            np.testing.assert_array_equal(sums, want, err_msg=f"{build} b={bits} g={g}")
            y_want = (qw.scale[None] * sx[:, None, None] * want.astype(np.float32)).sum(
                axis=1, dtype=np.float32)
            np.testing.assert_allclose(y, y_want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("build", BUILDS)
def test_quantizer_matches_reference(build: str) -> None:
    runtime = load_runtime(build)
    x = _activations(6, 301)
    x[1] = 0  # sx = 1, xq = 0
    x[2] = 1e-42  # a subnormal maximum
    x[3, :8] = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 127, -127]  # ties round to even
    for act_bits in range(2, 9):
        xq, sx = runtime.quantize(x, act_bits)
        want_q, want_s = quantize_activations(x, act_bits)
        np.testing.assert_array_equal(sx, want_s)
        np.testing.assert_array_equal(xq, want_q)


def _decode_codes(lw: LutWeight) -> np.ndarray:
    """``_decode_planes`` for the codes layout of 4 and 8 bits, byte by byte as ``sail_lut.h``
    states it. 4 bits: byte b of vector q holds row 4 q + b % 4 of tile columns order[b / 4]
    (low nibble) and order[8 + b / 4] (high nibble); 8 bits: byte b of vector 2 q + h is row
    4 q + b % 4 of column order[8 h + b / 4]."""
    bpg, order = lw.blocks_per_group, kernels.COLUMN_ORDER
    data = lw.planes.reshape(lw.n_tiles, lw.n_groups, bpg, 2 * lw.bits, 32)
    q = np.zeros((lw.n_groups, bpg, 32, lw.n_tiles, 16), np.int64)
    for vq in range(8):
        for b in range(32):
            row = 4 * vq + b % 4
            if lw.bits == 4:
                byte = data[:, :, :, vq, b].transpose(1, 2, 0)              # G, bpg, tile
                q[:, :, row, :, order[b // 4]] = byte & 15
                q[:, :, row, :, order[8 + b // 4]] = byte >> 4
            else:
                for h in range(2):
                    byte = data[:, :, :, 2 * vq + h, b].transpose(1, 2, 0)
                    q[:, :, row, :, order[8 * h + b // 4]] = byte
    return q.reshape(lw.n_groups * bpg * 32, lw.n_tiles * 16)


def _decode_planes(lw: LutWeight) -> np.ndarray:
    """Codes ``[n_groups * 32 * blocks_per_group, n_tiles * 16]`` read back from the bytes,
    following the layout as ``sail_lut.h`` states it."""
    b, bpg = lw.bits, lw.blocks_per_group
    if b in (4, 8):
        return _decode_codes(lw)
    planes = lw.planes.reshape(lw.n_tiles, lw.n_groups, bpg, b, 2, 2, 16)  # v, l, L, bp
    column, plane = kernels.vector_slots(b)
    q = np.zeros((lw.n_groups, bpg, 2, 2, 2, 4, lw.n_tiles, 16), np.int64)  # l, half, L, j
    for half in range(2):
        nibbles = (planes >> (4 * half)) & 15
        for v in range(b):
            for bp in range(16):
                for j in range(4):
                    bit = (nibbles[:, :, :, v, :, :, bp] >> j) & 1          # tile, G, bpg, l, L
                    q[:, :, :, half, :, j, :, column[v, bp]] += \
                        bit.transpose(1, 2, 3, 4, 0) << plane[v, bp]
    return q.reshape(lw.n_groups * bpg * 32, lw.n_tiles * 16)


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_relayout_round_trips(bits: int) -> None:
    qw = _weight(bits, 48, False, k=100, n=20)
    lw = relayout(qw)
    assert (lw.n_groups, lw.blocks_per_group, lw.n_tiles) == (3, 2, 2)
    codes = _decode_planes(lw).reshape(3, 64, 32)
    q = qw.q.reshape(3, 48, 20)
    np.testing.assert_array_equal(codes[:, :48, :20][:, :, :], np.where(
        (np.arange(3)[:, None] * 48 + np.arange(48))[:, :, None] < 100, q, 0))
    assert not codes[:, 48:].any() and not codes[:, :, 20:].any()
    order = kernels.COLUMN_ORDER
    np.testing.assert_array_equal(lw.scales[0][:, np.argsort(order)], qw.scale[:, :16])
    np.testing.assert_array_equal(lw.zeros[1][:, np.argsort(order)][:, :4], qw.zero[:, 16:])
    assert not lw.scales[1][:, np.argsort(order)][:, 4:].any()


def test_bad_input_is_reported() -> None:
    qw = _weight(4, 32, False)
    lw = relayout(qw)
    with pytest.raises(OptionError, match="weight bits must be an integer in 1..8, got 9"):
        LutWeight(9, lw.k, lw.n, lw.group_size, lw.planes, lw.scales, lw.zeros)
    with pytest.raises(OptionError, match="planes must be C-contiguous uint8"):
        LutWeight(4, lw.k, lw.n, lw.group_size, lw.planes[:-1], lw.scales, lw.zeros)
    with pytest.raises(InputError, match=r"activations must be \[T, 200\]"):
        lut_gemv(np.zeros((2, 199), np.float32), lw)
    with pytest.raises(OptionError, match="activation bits 2..8"):
        lut_gemv(np.zeros((2, K), np.float32), lw, act_bits=9)
    with pytest.raises(OptionError, match="threads must be an integer in 1..256"):
        lut_gemv(np.zeros((2, K), np.float32), lw, 0)
    with pytest.raises(InputError, match="need scales sx"):
        lut_gemv(np.zeros((2, K), np.int32), lw)
    with pytest.raises(InputError, match="must fit int8"):
        lut_gemv(np.full((2, K), 128), lw, sx=np.ones(2, np.float32))
    with pytest.raises(OptionError, match="valid choices are: avx2, native, portable"):
        lut_gemv(np.zeros((2, K), np.float32), lw, build="neon")
    with pytest.raises(OptionError, match="does not fit weight groups of 32"):
        relayout(qw, 48)
    with pytest.raises(OptionError, match="sums of 16 rows inside groups of 32 must be a multiple"):
        LutWeight(4, lw.k, lw.n, lw.group_size, lw.planes, lw.scales, lw.zeros, 16)
    blocked = relayout(qw, 8)  # stored in groups of 8: one per sum
    assert (blocked.group_size, blocked.act_group) == (8, 8)
    with pytest.raises(InputError, match=r"need scales sx of shape \(2, 25\)"):
        lut_gemv(np.zeros((2, K), np.int32), blocked, sx=np.ones(2, np.float32))


@pytest.mark.parametrize("build", BUILDS)
def test_sources_compile_without_warnings(build: str, tmp_path: Path) -> None:
    flags = [f for f in kernels.build_flags(build) if f != "-shared"]
    for source in kernels.RUNTIME_SOURCES:
        done = subprocess.run([kernels.compiler(), *flags, "-Wall", "-Wextra", "-Werror",
                               "-Wpedantic", "-c", str(kernels.RUNTIME_DIR / source),
                               "-o", str(tmp_path / (source + ".o"))],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr


# The x86 kernel families a build can choose (sail_lut_avx2.c): plain AVX2, AVX-VNNI's VEX
# vpdpbusd (Alder Lake and later clients; its inline assembly once failed to assemble there) and
# AVX512-VNNI's EVEX one, on 256-bit vectors and, with AVX512BW, the prefill kernels' 512-bit
# ones. Compiled and assembled whatever CPU runs the tests.
X86_FAMILIES = {"avx2": ("-mavx2", "-mfma"), "avx-vnni": ("-mavx2", "-mfma", "-mavxvnni"),
                "avx512-vnni": ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512vnni"),
                "avx512-vnni-bw": ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512vnni",
                                   "-mavx512bw")}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels")
@pytest.mark.parametrize("family", X86_FAMILIES)
def test_x86_kernel_families_assemble(family: str, tmp_path: Path) -> None:
    out = tmp_path / "sail_lut_avx2.o"
    done = subprocess.run([kernels.compiler(), "-std=c11", "-O1", *X86_FAMILIES[family], "-Wall",
                           "-Wextra", "-Werror", "-c", str(kernels.RUNTIME_DIR /
                                                           "sail_lut_avx2.c"), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    code = subprocess.run(["objdump", "-d", str(out)], capture_output=True, text=True,
                          check=True).stdout
    assert ("vpdpbusd" in code) == (family != "avx2")
    assert ("vpdpbusd %zmm" in code) == (family == "avx512-vnni-bw")


_SANITIZED_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from sail_compiler.quant.reference import (group_sums, quantize_activations,
                                               quantize_weights_rtn, quantized_matmul)
    from sail_compiler.quant.scheme import QuantScheme
    from sail_compiler.targets.c.kernels import LutRuntime, relayout

    runtime = LutRuntime(sys.argv[1])
    rng = np.random.default_rng(0)
    for bits, group, sym, rows, k, n in [(1, 32, False, 3, 100, 19), (4, 64, True, 9, 200, 40),
                                         (7, None, False, 2, 97, 33), (8, 128, True, 1, 300, 16)]:
        qw = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                                  QuantScheme(bits, group, sym))
        x = rng.standard_normal((rows, k)).astype(np.float32)
        xq, sx = runtime.quantize(x)
        for threads in (1, 2):
            y, sums = runtime.prepare(relayout(qw), rows, threads, sums=True)(xq, sx)
            assert np.array_equal(sums, group_sums(quantize_activations(x)[0], qw))
            assert np.allclose(y, quantized_matmul(x, qw), rtol=1e-5, atol=0)
        qw16 = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                                    QuantScheme(bits, group, sym), "float16")
        y, _ = runtime.prepare(relayout(qw16, scale_dtype="float16"), rows, 2)(xq, sx)
        assert np.allclose(y, quantized_matmul(x, qw16), rtol=1e-5, atol=0)
        act_group = 32 if group else 48  # per-block scales: sums finished inside the groups
        xq, sx = runtime.quantize(x, 8, act_group)
        y, sums = runtime.prepare(relayout(qw, act_group), rows, 2, sums=True)(xq, sx)
        assert np.array_equal(y, quantized_matmul(x, qw, 8, act_group))
    runtime.close()
    print("sanitized run ok")
""")


@pytest.mark.parametrize("build", BUILDS)
def test_runs_clean_under_sanitizers(build: str, tmp_path: Path) -> None:
    cc = kernels.compiler()
    libasan, libstdcxx = (subprocess.run([cc, f"-print-file-name={name}"], capture_output=True,
                                         text=True, check=False).stdout.strip()
                          for name in ("libasan.so", "libstdc++.so.6"))
    if not Path(libasan).is_file():
        pytest.skip(f"{cc} has no AddressSanitizer runtime")
    # ASan must come first; libstdc++ right after it lets ASan intercept the C++ exceptions of
    # the extension modules the package imports (tvm_ffi), which it cannot when loaded later.
    preload = " ".join(p for p in (libasan, libstdcxx) if Path(p).is_file())
    lib = kernels.compile_runtime(build, out_dir=tmp_path, extra_flags=(
        "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined"))
    env = dict(os.environ, LD_PRELOAD=preload,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    done = subprocess.run([sys.executable, "-c", _SANITIZED_RUN, str(lib)], env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    report = done.stdout + done.stderr
    assert done.returncode == 0 and "sanitized run ok" in report, report
    assert "runtime error" not in report and "AddressSanitizer" not in report, report
