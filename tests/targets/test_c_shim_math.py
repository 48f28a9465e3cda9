"""The libm replacements of ``sail_tvm_shim.h`` that TVM's C kernels call (``expf``, ``tanhf``
and ``powf`` through the header's macros) against NumPy in float64: exp within 1 ulp of the
float32 rounding of the exact value wherever that is a normal float, within one subnormal step
below, inf above; tanh within 2 ulp over a sweep of floats (both signs, both branches, the clamp,
-0, +-inf, NaN), powf bit-exact for exponent 2, within 1 ulp for 3 and for others (glibc's)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.targets.c.target import RUNTIME_DIR

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="needs a C compiler")

HARNESS = r"""
#include "sail_tvm_shim.h"
#include <stdio.h>
#include <stdlib.h>
/* reads float32 x from argv[1], writes tanhf(x), powf(x, 2), powf(x, 3), powf(|x|, 0.5),
 * expf(x) */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) return 2;
    float x;
    while (fread(&x, sizeof x, 1, in) == 1) {
        float y[5] = {tanhf(x), powf(x, 2.0f), powf(x, 3.0f), powf(fabsf(x), 0.5f), expf(x)};
        fwrite(y, sizeof y, 1, out);
    }
    fclose(in);
    return fclose(out) != 0;
}
"""


def _ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 spacing at the rounded exact value."""
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_shim_math_accuracy(tmp_path: Path) -> None:
    (tmp_path / "harness.c").write_text(HARNESS)
    exe = tmp_path / "harness"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-march=native",
                    "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME_DIR}",
                    "-o", str(exe), str(tmp_path / "harness.c"), "-lm"], check=True)
    rng = np.random.default_rng(5)
    sweep = np.concatenate([
        np.linspace(0, 12, 400001), np.geomspace(1e-30, 1e-3, 2000), rng.uniform(-50, 50, 20000),
        [0.625, np.nextafter(np.float32(0.625), 0), 10.0, np.nextafter(np.float32(10), 0)]])
    x = np.concatenate([sweep, -sweep]).astype(np.float32)
    specials = np.array([np.inf, -np.inf, np.nan, -0.0, 1e30, -1e30], np.float32)
    x.tofile(tmp_path / "x.bin")
    specials.tofile(tmp_path / "s.bin")
    subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], check=True)
    subprocess.run([str(exe), str(tmp_path / "s.bin"), str(tmp_path / "t.bin")], check=True)
    y = np.fromfile(tmp_path / "y.bin", np.float32).reshape(-1, 5)
    x64 = x.astype(np.float64)
    assert _ulps(y[:, 0], np.tanh(x64)).max() <= 2.0
    np.testing.assert_array_equal(y[:, 1], x * x)
    cube = x64 ** 3
    finite = np.abs(cube) < np.finfo(np.float32).max
    assert _ulps(y[finite, 2], cube[finite]).max() <= 1.0
    assert np.all(np.isinf(y[~finite, 2]))
    assert _ulps(y[:, 3], np.sqrt(np.abs(x64))).max() <= 1.0  # powf(., 0.5): glibc's
    t = np.fromfile(tmp_path / "t.bin", np.float32).reshape(-1, 5)
    np.testing.assert_array_equal(t[:, 0], [1.0, -1.0, np.nan, -0.0, 1.0, -1.0])
    assert np.signbit(t[3, 0])
    np.testing.assert_array_equal(t[:, 4], [np.inf, 0.0, np.nan, 1.0, np.inf, 0.0])


def test_shim_expf_over_its_range(tmp_path: Path) -> None:
    (tmp_path / "harness.c").write_text(HARNESS)
    exe = tmp_path / "harness"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-ffp-contract=off",
                    f"-I{RUNTIME_DIR}", "-o", str(exe), str(tmp_path / "harness.c"), "-lm"],
                   check=True)
    rng = np.random.default_rng(6)
    # every float bit pattern step 997 from -110 to 95 (both ends beyond exp's float range),
    # the rounding boundaries of k = x / ln 2 and the overflow / underflow edges
    bits = np.arange(0, 2**31, 997, dtype=np.int64).astype(np.uint32).view(np.float32)
    bits = bits[bits < 110]  # no inf / NaN patterns
    x = np.concatenate([bits, -bits, rng.uniform(-110, 95, 20000).astype(np.float32),
                        (np.arange(-160, 130) + 0.5) * np.float32(np.log(2)),
                        [88.72, 88.73, -87.33, -103.97, -103.98]]).astype(np.float32)
    x = x[(x > -110) & (x < 95)]
    x.tofile(tmp_path / "x.bin")
    subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], check=True)
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(-1, 5)[:, 4].astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    tiny = np.finfo(np.float32).tiny
    normal = (exact >= tiny) & (exact <= np.finfo(np.float32).max)
    assert normal.sum() > 100000
    assert _ulps(got[normal], exact[normal]).max() <= 1.0
    below = exact < tiny
    assert np.abs(got[below] - exact[below]).max() <= 1.5 * 2.0**-149
    assert np.all(np.isinf(got[exact > np.finfo(np.float32).max]))
