"""The c target's AArch64 NEON LUT-GEMV kernels (runtime/sail_lut_neon.c), cross-compiled and
run under qemu-user, against the NumPy reference.

Two builds: ``aarch64`` (armv8-a: tbl and widening multiply-adds) run on a Cortex-A72, which has
no dot product instructions (a stray sdot would stop it with SIGILL), and ``aarch64-dotprod``
(armv8.2-a+dotprod: sdot for 4 and 8 bits) run on a Neoverse N1 and on qemu's ``max`` CPU. For
every width 1..8, with and without zero points, groups that do not divide an odd K, per-block
activation scales and batches of 1, 3, 8 and 17 tokens on 1 and 2 threads, the C quantizer's
int8 activations and scales, the exact int32 sums and y must equal the reference's bit for bit.
A small quantized decoder built with ``--cross`` passes its ``--dump-lut`` check under qemu and
its LUT-GEMV results equal the x86 build's wherever the two saw the same activations.

Without the cross toolchain and qemu the tests skip, saying what to install (CI installs them:
.ci/run).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.errors import OptionError, SailError
from sail_compiler.inputs import InputPlan, generate_inputs
from sail_compiler.ops.sail_ops import reference_dequantize
from sail_compiler.quant.reference import (
    ActBlocks,
    QuantizedWeight,
    block_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.c import cross
from sail_compiler.targets.c.check import lut_reference_check
from sail_compiler.targets.c.kernels import RUNTIME_DIR, LutWeight, relayout
from sail_compiler.targets.c.target import MainRunner, build_library
from sail_compiler.verify import compare

AARCH64 = cross.CROSS_TARGETS["aarch64"]
DOTPROD = cross.CROSS_TARGETS["aarch64-dotprod"]
HAVE_TOOLCHAIN = shutil.which(AARCH64.cc) is not None and shutil.which(AARCH64.qemu) is not None
needs_toolchain = pytest.mark.skipif(
    not HAVE_TOOLCHAIN, reason=f"no AArch64 cross C compiler ({AARCH64.cc}) or qemu-user: "
                               f"apt-get install {cross.DEBIAN_PACKAGES}")

RNG = np.random.default_rng(20261206)
K, N = 203, 37  # odd K, N not a multiple of the tile width
GROUPINGS = [(32, False), (64, True), (128, False), (None, True), (None, False)]
BATCHES = (1, 3, 8, 17)
# (group size, act_group): sums equal to groups, several per group, regrouped, split groups
BLOCKINGS = [(128, 32), (64, 16), (32, 64), (None, 32), (None, 24)]

# Reads cases (header, weight, float activations or int8 ones with their scales) from argv[1],
# writes for each the C quantizer's xq and sx and the kernels' y and sums to argv[2]; prints
# sail_lut_isa().
DRIVER = textwrap.dedent(r"""
    #include <stdio.h>
    #include <stdlib.h>
    #include "sail_lut.h"
    static void *take(FILE *f, size_t n) {
        void *p = malloc(n ? n : 1);
        if (!p || fread(p, 1, n, f) != n) { fprintf(stderr, "short input\n"); exit(2); }
        return p;
    }
    int main(int argc, char **argv) {
        if (argc != 3) return 2;
        FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
        if (!in || !out) return 2;
        printf("%s\n", sail_lut_isa());
        int32_t h[10];
        while (fread(h, sizeof h, 1, in) == 1 && h[0] != 0) {
            sail_lut_weight w = {0};
            w.bits = h[0]; w.k = h[1]; w.n = h[2]; w.group_size = h[3]; w.act_group = h[4];
            const int rows = h[5], zeros = h[6], threads = h[7], given = h[8], half = h[9];
            if (sail_lut_derive(&w) != SAIL_OK) return 3;
            const size_t per_tile = (size_t)w.n_tiles * w.n_groups * SAIL_LUT_TILE_N;
            w.planes = take(in, (size_t)w.n_tiles * w.n_groups * w.blocks_per_group * w.bits * 64);
            if (half)
                w.scales_f16 = take(in, per_tile * sizeof(uint16_t));
            else
                w.scales = take(in, per_tile * sizeof(float));
            w.zeros = zeros ? take(in, per_tile) : NULL;
            float *x = given ? NULL : take(in, (size_t)rows * w.k * sizeof(float));
            int8_t *xq = given ? take(in, (size_t)rows * w.k) : malloc((size_t)rows * w.k);
            float *sx = given ? take(in, (size_t)rows * w.n_act_blocks * sizeof(float))
                              : malloc((size_t)rows * w.n_act_blocks * sizeof(float));
            float *y = malloc((size_t)rows * w.n * sizeof(float));
            int32_t *sums = malloc((size_t)rows * w.n_sums * w.n * sizeof(int32_t));
            if (!given && sail_quantize_rows(x, rows, w.k, 8, w.act_group, xq, sx) != SAIL_OK)
                return 4;
            sail_pool *pool = threads > 1 ? sail_pool_create(threads) : NULL;
            if (sail_lut_gemv(&w, xq, sx, rows, y, sums, NULL, pool) != SAIL_OK) return 5;
            if (pool) sail_pool_destroy(pool);
            fwrite(xq, 1, (size_t)rows * w.k, out);
            fwrite(sx, sizeof(float), (size_t)rows * w.n_act_blocks, out);
            fwrite(y, sizeof(float), (size_t)rows * w.n, out);
            fwrite(sums, sizeof(int32_t), (size_t)rows * w.n_sums * w.n, out);
            free((void *)w.planes); free((void *)w.scales); free((void *)w.scales_f16);
            free((void *)w.zeros);
            free(x); free(xq); free(sx); free(y); free(sums);
        }
        return fclose(out) == 0 ? 0 : 2;
    }
""")


@dataclass
class Case:
    qw: QuantizedWeight
    lw: LutWeight
    x: np.ndarray  # float activations, or int8 ones with their scales sx
    threads: int
    what: str
    sx: np.ndarray | None = None


def _weight(bits: int, group_size: int | None, symmetric: bool, k: int = K,
            n: int = N) -> QuantizedWeight:
    symmetric = symmetric and bits > 1  # symmetric 1-bit weights do not exist
    w = RNG.standard_normal((k, n)).astype(np.float32)
    return quantize_weights_rtn(w, QuantScheme(bits, group_size, symmetric))


def _activations(rows: int, k: int = K) -> np.ndarray:
    x = RNG.standard_normal((rows, k)).astype(np.float32)
    x[:, RNG.integers(0, k, size=3)] *= 20  # outliers, as LLM activations have
    return x


def _encode(case: Case) -> bytes:
    lw = case.lw
    header = struct.pack("<10i", lw.bits, lw.k, lw.n, lw.group_size, lw.act_group,
                         case.x.shape[0], lw.zeros is not None, case.threads, case.sx is not None,
                         lw.scales_f16)
    parts = [header, lw.planes.tobytes(), lw.scales.tobytes()]
    if lw.zeros is not None:
        parts.append(lw.zeros.tobytes())
    if case.sx is None:
        parts.append(np.ascontiguousarray(case.x, np.float32).tobytes())
    else:
        parts += [case.x.astype(np.int8).tobytes(), case.sx.astype(np.float32).tobytes()]
    return b"".join(parts)


def build_driver(target: cross.CrossTarget, out: Path, extra: tuple[str, ...] = ()) -> Path:
    """The driver and the runtime's LUT-GEMV sources compiled for ``target`` (-O3, as the
    artifact's Makefile builds the runtime)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "driver.c").write_text(DRIVER)
    binary = out / "driver"
    sources = [RUNTIME_DIR / s for s in ("sail_lut.c", "sail_lut_neon.c", "sail_threads.c",
                                         "sail_attention.c")]
    cmd = [target.cc, "-std=c11", "-O3", "-ffp-contract=off", f"-march={target.march}", *extra,
           "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{RUNTIME_DIR}", "-o", str(binary),
           str(out / "driver.c"), *map(str, sources), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return binary


def run_cases(binary: Path, cases: list[Case], cpu: str, tmp: Path
              ) -> tuple[str, list[tuple[np.ndarray, ...]]]:
    """Run every case in one qemu process; return sail_lut_isa() and each case's xq, sx, y,
    sums."""
    (tmp / "in.bin").write_bytes(b"".join(map(_encode, cases)) + struct.pack("<9i", *[0] * 9))
    proc = subprocess.run([*AARCH64.qemu_command(cpu), str(binary), str(tmp / "in.bin"),
                           str(tmp / "out.bin")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"driver on {cpu} exited {proc.returncode}: {proc.stderr}"
    data = (tmp / "out.bin").read_bytes()
    results, at = [], 0
    for case in cases:
        rows, blocks = case.x.shape[0], case.lw.blocks
        shapes = [((rows, case.lw.k), np.int8), ((rows, blocks.n_blocks), np.float32),
                  ((rows, case.lw.n), np.float32), ((rows, blocks.n_sums, case.lw.n), np.int32)]
        out = []
        for shape, dtype in shapes:
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out.append(np.frombuffer(data, dtype, int(np.prod(shape)), at).reshape(shape))
            at += count
        results.append(tuple(out))
    assert at == len(data), "the driver wrote more than the cases hold"
    return proc.stdout.strip(), results


def _check(case: Case, got: tuple[np.ndarray, ...]) -> None:
    xq_got, sx_got, y, sums = got
    blocks = ActBlocks(case.qw.k, case.qw.group_size, case.lw.act_group)
    if case.sx is None:
        xq, sx = quantize_activations(case.x, 8, blocks.act_group)
        y_want = quantized_matmul(case.x, case.qw, 8, blocks.act_group)
    else:
        xq, sx = case.x.astype(np.int8), case.sx
        y_want = reference_dequantize(block_sums(xq, case.qw, blocks), sx, case.qw.scale, blocks)
    np.testing.assert_array_equal(xq_got, xq, err_msg=f"xq {case.what}")
    np.testing.assert_array_equal(sx_got, np.reshape(sx, sx_got.shape), err_msg=f"sx {case.what}")
    np.testing.assert_array_equal(sums, block_sums(xq, case.qw, blocks),
                                  err_msg=f"sums {case.what}")
    np.testing.assert_array_equal(y, y_want, err_msg=f"y {case.what}")


def _cases(bits: int) -> list[Case]:
    cases = []
    for group_size, symmetric in GROUPINGS:
        qw = _weight(bits, group_size, symmetric)
        lw = relayout(qw)
        for rows in BATCHES:
            for threads in (1, 2):
                cases.append(Case(qw, lw, _activations(rows), threads,
                                  f"b={bits} g={group_size} sym={symmetric} rows={rows} "
                                  f"threads={threads}"))
    for i, (group_size, act_group) in enumerate(BLOCKINGS):
        qw = _weight(bits, group_size, i % 2 == 1)
        lw = relayout(qw, act_group)
        for rows in (1, 3, 8):
            cases.append(Case(qw, lw, _activations(rows), 1,
                              f"b={bits} g={group_size} a={act_group} rows={rows}"))
    for group_size, act_group in ((32, None), (128, 32)):  # float16 scales (vcvt_f32_f16)
        w = (RNG.standard_normal((K, N)) * 0.1).astype(np.float32)
        qw = quantize_weights_rtn(w, QuantScheme(bits, group_size, bits > 1), "float16")
        lw = relayout(qw, act_group, "float16")
        for rows in (1, 3):
            cases.append(Case(qw, lw, _activations(rows), 2,
                              f"f16 scales b={bits} g={group_size} a={act_group} rows={rows}"))
    return cases


def _extreme_cases(bits: int) -> list[Case]:
    """The widest table entries and products (4 x -128, 4 x 127, -128 against the largest
    codes), all-max and all-zero codes, zero rows, and a group long enough to flush the int16
    sums several times."""
    k, n = 1001, 40
    cases = []
    top = (1 << bits) - 1
    rows = np.stack([np.full(k, 127), np.full(k, -127), np.full(k, -128), np.zeros(k, int),
                     np.where(np.arange(k) % 2, 127, -128), RNG.integers(-128, 128, size=k)])
    sx = np.linspace(0.5, 2, len(rows)).astype(np.float32)[:, None]
    for group_size in (None, 96):
        g = group_size or k
        n_groups = -(-k // g)
        for codes in (np.full((k, n), top), np.zeros((k, n)), RNG.integers(0, top + 1, (k, n))):
            q = np.zeros((n_groups * g, n), np.uint8)
            q[:k] = codes
            zero = np.where(RNG.random((n_groups, n)) < 0.5, 0, top).astype(np.uint8)
            q[k:] = zero[-1]
            qw = QuantizedWeight(q, np.full((n_groups, n), 0.25, np.float32), zero, bits, g, k)
            cases.append(Case(qw, relayout(qw), rows, 2, f"extreme b={bits} g={g}", sx))
    return cases


@pytest.fixture(scope="module")
def drivers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("neon")
    return {name: build_driver(target, root / name)
            for name, target in cross.CROSS_TARGETS.items()}


# (build, qemu CPU, the kernels sail_lut_isa() must name)
RUNS = [("aarch64", "cortex-a72", "neon"), ("aarch64-dotprod", "neoverse-n1", "neon-dotprod"),
        ("aarch64-dotprod", "max", "neon-dotprod")]


@needs_toolchain
@pytest.mark.parametrize(("build", "cpu", "isa"), RUNS)
def test_every_width_matches_reference(drivers: dict[str, Path], build: str, cpu: str, isa: str,
                                       tmp_path: Path) -> None:
    cases = [c for bits in range(1, 9) for c in _cases(bits) + _extreme_cases(bits)]
    got_isa, results = run_cases(drivers[build], cases, cpu, tmp_path)
    assert got_isa == isa
    for case, got in zip(cases, results, strict=True):
        _check(case, got)


@needs_toolchain
def test_plain_build_has_no_dot_products(drivers: dict[str, Path], tmp_path: Path) -> None:
    """The dotprod build's codes kernels do use sdot: a CPU without it stops them (SIGILL),
    while the plain build runs there (the test above)."""
    qw = _weight(4, 32, False)
    case = Case(qw, relayout(qw), _activations(1), 1, "4 bits")
    with pytest.raises(AssertionError, match="exited -4"):  # SIGILL
        run_cases(drivers["aarch64-dotprod"], [case], "cortex-a72", tmp_path)
    objdump = shutil.which(f"{AARCH64.triple}-objdump")
    if objdump:
        text = subprocess.run([objdump, "-d", str(drivers["aarch64"])], capture_output=True,
                              text=True, check=True).stdout
        assert "sdot" not in text and "tbl" in text


def test_missing_toolchain_names_the_packages(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from sail_compiler.targets.c.target import build_library

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **kw: None if "aarch64" in name else real_which(name))
    with pytest.raises(SailError, match="apt-get install crossbuild-essential-arm64 qemu-user"):
        build_library(tmp_path, cross="aarch64")
    with pytest.raises(SailError, match="needs qemu-aarch64 .* apt-get install "
                                        "crossbuild-essential-arm64 qemu-user"):
        DOTPROD.qemu_command()
    with pytest.raises(OptionError, match="unknown --cross target 'armv7'"):
        build_library(tmp_path, cross="armv7")
    with pytest.raises(OptionError, match="--portable and --cross"):
        build_library(tmp_path, portable=True, cross="aarch64")


def _dump(out: Path, manifest: dict, inputs: dict[str, np.ndarray], where: Path
          ) -> dict[str, np.ndarray]:
    where.mkdir()
    runner = MainRunner(out, manifest)
    outputs = runner.run([inputs[spec.name] for spec in runner.signature.inputs],
                         ("--dump-lut", str(where)))
    return dict(zip((spec.name for spec in runner.signature.outputs), outputs, strict=True))


@needs_toolchain
def test_cross_built_decoder_matches_reference_and_x86(micro_decoder: Path,
                                                       tmp_path: Path) -> None:
    """A quantized decoder built for aarch64-dotprod: under qemu every LUT-GEMV equals the
    reference (the --dump-lut check of sail verify), each one whose activations equal the x86
    build's gives its result bit for bit, and the logits agree to float rounding."""
    out = tmp_path / "c"
    result = compile_model(micro_decoder, out, CompileOptions(
        target="c", quant=QuantScheme(3, 128, symmetric=False), act_group_size=8))
    manifest = Artifact(out).manifest
    inputs = generate_inputs(Artifact(out).signature, InputPlan(batch=2, seq_len=5))
    build_library(out)
    x86 = _dump(out, manifest, inputs, tmp_path / "x86")
    build_library(out, cross="aarch64-dotprod")
    assert cross.elf_machine(out / "sail_main") == cross.EM_AARCH64
    arm = _dump(out, manifest, inputs, tmp_path / "arm")
    checked = lut_reference_check(out, manifest, result.quantization, [inputs])
    assert checked["exact"] and checked["calls"] == len(manifest["lut_layers"])
    same = 0
    for i in range(len(manifest["lut_layers"])):
        a, b = (tmp_path / d for d in ("arm", "x86"))
        if all(np.array_equal(np.load(a / f"lut{i}.{n}.npy"), np.load(b / f"lut{i}.{n}.npy"))
               for n in ("xq", "sx")):
            same += 1
            np.testing.assert_array_equal(np.load(a / f"lut{i}.y.npy"),
                                          np.load(b / f"lut{i}.y.npy"), err_msg=f"lut{i}")
    assert same >= 1  # at least the first layer sees the same embedding rows
    for name, value in arm.items():
        assert compare(value, x86[name])["rel_l2_err"] < 1e-5, name
