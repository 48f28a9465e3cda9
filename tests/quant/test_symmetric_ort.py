"""Symmetric RTN equals onnxruntime's symmetric MatMulNBits quantizer bit for bit.

The reference is onnxruntime's own C++ quantizer (``MlasQuantizeBlockwise`` through the
``quantize_matmul_{2,4,8}bits`` bindings that ``MatMulNBitsQuantizer`` calls): its codes and
float32 scales must equal SAIL's, on random weights and on the awkward ones (exact rounding ties,
ties between the largest positive and negative weight, all-zero groups, K not a multiple of the
group size). Its codes are unpacked here by shifts, independently of SAIL's packing.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import (
    quantize_matmul_2bits,
    quantize_matmul_4bits,
    quantize_matmul_8bits,
)

from sail_compiler.quant import QuantScheme, dequantize
from sail_compiler.quant.methods import quantize_weight

ORT_QUANTIZERS = {2: quantize_matmul_2bits, 4: quantize_matmul_4bits, 8: quantize_matmul_8bits}


def onnxruntime_symmetric(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's symmetric quantization of ``w[K, N]``: unsigned codes ``[K, N]`` (implicit
    zero point ``2**(bits-1)``) and float32 scales ``[ceil(K / block), N]``."""
    k, n = w.shape
    n_blocks = -(-k // block)
    packed = np.zeros((n, n_blocks, block * bits // 8), np.uint8)
    scales = np.zeros((n, n_blocks), np.float32)
    zero_points = np.zeros((n, -(-n_blocks * bits // 8)), np.uint8)
    ORT_QUANTIZERS[bits](packed, np.ascontiguousarray(w, np.float32), scales, zero_points, block,
                         n, k, True)
    per_byte = 8 // bits  # low bits first within each byte
    codes = np.stack([(packed >> (bits * i)) & ((1 << bits) - 1) for i in range(per_byte)], -1)
    return codes.reshape(n, n_blocks * block)[:, :k].T, scales.T


def awkward_weights(kind: str, rng: np.random.Generator, k: int, bits: int,
                    block: int) -> np.ndarray:
    """``[k, 6]`` float32 weights of one awkward kind."""
    half = 1 << (bits - 1)
    if kind == "normal":
        return rng.standard_normal((k, 6)).astype(np.float32)
    if kind == "heavy-tailed":  # Student-t, small magnitudes
        return (rng.standard_t(2, (k, 6)) * 1e-3).astype(np.float32)
    if kind == "exact ties":
        # steps of 0.5 (w* = -+half * 0.5): w / s lands on every integer and half-integer
        w = (rng.integers(-2 * half, 2 * half, (k, 6)) * 0.25).astype(np.float32)
        w[::block, :3] = -half * 0.5
        w[::block, 3:] = half * 0.5
        return w
    if kind == "near ties":
        # s = 0.37, inexact: w = (m + 0.5) * 0.37 makes w * (1 / s) and w / s fall on either
        # side of m + 0.5 or on it
        w = ((rng.integers(-half, half - 1, (k, 6)) + 0.5) * 0.37).astype(np.float32)
        w[::block] = np.float32(-half * 0.37)
        return w
    if kind == "zero groups":  # all-zero groups, an all-zero column, and sparse weights
        w = rng.standard_normal((k, 6)).astype(np.float32)
        w[rng.random((k, 6)) < 0.5] = 0
        w[:block] = 0
        w[:, 4] = 0
        return w
    assert kind == "max and min tie"  # |max| == |min|: onnxruntime takes the negative one
    w = rng.uniform(-1, 1, (k, 6)).astype(np.float32)
    w[::block] = 1.5
    w[1::block] = -1.5
    return w


KINDS = ["normal", "heavy-tailed", "exact ties", "near ties", "zero groups", "max and min tie"]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_symmetric_rtn_equals_onnxruntime(bits: int, block: int) -> None:
    rng = np.random.default_rng(bits * 1000 + block)
    for kind in KINDS:
        for k in (3 * block, 3 * block + 5, 7):  # whole groups, a partial last group, K < g
            w = awkward_weights(kind, rng, k, bits, block)
            want_q, want_scale = onnxruntime_symmetric(w, bits, block)
            qw = quantize_weight(w, QuantScheme(bits, block, symmetric=True), "rtn")
            assert qw.zero is None
            np.testing.assert_array_equal(qw.q[:k], want_q, err_msg=f"{kind}, K={k}")
            # onnxruntime's scale of an all-zero group is -0.0; SAIL's zero-scale rule writes 1,
            # and both give codes 2**(bits-1) and exact zeros
            zero = want_scale == 0
            assert np.array_equal(qw.scale[~zero].view(np.uint32),
                                  want_scale[~zero].view(np.uint32)), f"{kind}, K={k}"
            assert np.all(qw.scale[zero] == 1)
            if kind == "zero groups":
                assert zero[0].all() and zero[:, 4].all()
                np.testing.assert_array_equal(dequantize(qw)[:, 4], 0)


def test_the_awkward_cases_are_exercised() -> None:
    # the comparison above is only as strong as its inputs: the tie kinds must hit ties that
    # round-half-to-even gets wrong, and near ties that a division instead of onnxruntime's
    # multiplication by 1 / s gets wrong
    rng = np.random.default_rng(0)
    for kind in ("exact ties", "near ties"):
        w = awkward_weights(kind, rng, 256, 4, 32)
        want_q, want_scale = onnxruntime_symmetric(w, 4, 32)
        ratio = (w / np.repeat(want_scale, 32, axis=0)).astype(np.float64)
        half_even = np.clip(np.rint(ratio) + 8, 0, 15)
        assert np.count_nonzero(half_even != want_q) > 10, kind
        if kind == "near ties":
            half_up = np.clip(np.floor(ratio + 0.5) + 8, 0, 15)
            assert np.count_nonzero(half_up != want_q) > 10
    # all 2**b levels are used: w* maps to -2**(b-1), the other side reaches 2**(b-1) - 1
    want_q, want_scale = onnxruntime_symmetric(awkward_weights("normal", rng, 4096, 4, 128), 4,
                                               128)
    assert want_q.min() == 0 and want_q.max() == 15 and (want_scale < 0).any()
