"""float16 weight scales (``scale_dtype="float16"``, ``--scale-dtype``): every scale in float16's
normal range is a float16 value, and the codes are those of the same method against that rounded
scale (computed here independently of the package); scales outside the range keep float32."""

from __future__ import annotations

import numpy as np
import pytest

from sail_compiler.errors import OptionError
from sail_compiler.quant.methods import _quantize_gptq, quantize_weight
from sail_compiler.quant.plan import BitsPlan
from sail_compiler.quant.reference import float16_exact, quantize_weights_rtn, round_scales
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(16)
SCHEMES = [QuantScheme(b, g, s) for b in range(1, 9) for g in (32, 64, None)
           for s in (False, True) if not (s and b == 1)]


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _rtn_f16(w: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """(codes [K_pad, N], scales) of RTN against float16-rounded scales, from DESIGN.md
    section 3's formulas (float64 where the float32 steps are exact)."""
    k, n = w.shape
    g = scheme.group_size_for(k)
    groups = np.zeros((scheme.padded_k(k), n), np.float32)
    groups[:k] = w
    groups = groups.reshape(-1, g, n)
    if scheme.symmetric:
        half = 1 << (scheme.bits - 1)
        hi, lo = groups.max(axis=1), groups.min(axis=1)
        s = _f16(-np.where(np.abs(hi) > np.abs(lo), hi, lo) / np.float32(half))
        r = (np.float32(1) / s)[:, None, :]
        q = np.clip(np.floor((groups * r + np.float32(half)).astype(np.float64) + 0.5),
                    0, 2 * half - 1)
    else:
        qmax = (1 << scheme.bits) - 1
        lo = np.minimum(groups.min(axis=1), 0)
        hi = np.maximum(groups.max(axis=1), 0)
        s = _f16((hi - lo) / np.float32(qmax))
        z = np.clip(np.rint(-lo / s), 0, qmax)
        q = np.clip(np.rint(groups / s[:, None, :]) + z[:, None, :], 0, qmax)
    return q.reshape(-1, n).astype(np.uint8), s


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_codes_are_rtn_against_the_rounded_scale(scheme: QuantScheme) -> None:
    w = (RNG.standard_normal((160, 24)) * 0.03).astype(np.float32)
    qw = quantize_weights_rtn(w, scheme, "float16")
    q, s = _rtn_f16(w, scheme)
    assert float16_exact(qw.scale)
    np.testing.assert_array_equal(qw.scale, s)
    np.testing.assert_array_equal(qw.q, q)
    # the float32 quantizer gives other scales: the rounding is not a no-op here
    assert not float16_exact(quantize_weights_rtn(w, scheme).scale)


@pytest.mark.parametrize("scheme", [QuantScheme(2, 32, True), QuantScheme(4, 32, False),
                                    QuantScheme(8, 64, True)], ids=str)
def test_search_and_gptq_store_float16_scales_and_codes_against_them(
        scheme: QuantScheme) -> None:
    k, n = 128, 20
    w = (RNG.standard_normal((k, n)) * 0.05).astype(np.float32)
    x = RNG.standard_normal((256, k))
    hessian = x.T @ x
    for method in ("search", "gptq"):
        qw = quantize_weight(w, scheme, method, hessian, scale_dtype="float16")
        assert float16_exact(qw.scale), method
    # search: each code is its weight rounded to the grid of its (rounded) scale, clipped to
    # the code range (ties, where RTN's and the search's rounding may differ, left out)
    w = (RNG.standard_normal((k, 400)) * 0.05).astype(np.float32)
    for h in (None, hessian):
        qw = quantize_weight(w, scheme, "search", h, scale_dtype="float16")
        g = scheme.group_size_for(k)
        level = (w.reshape(-1, g, 400).astype(np.float64) / qw.scale[:, None, :]
                 + qw.zero_points()[:, None, :])
        want = np.clip(np.rint(level), 0, (1 << scheme.bits) - 1)
        q = qw.q.reshape(-1, g, 400)
        clear = np.abs(np.abs(level - np.floor(level)) - 0.5) > 1e-4
        np.testing.assert_array_equal(q[clear], want[clear])


def test_gptq_feeds_back_the_error_of_the_rounded_scale() -> None:
    """GPTQ rounds a group's scale when it chooses it: the result equals GPTQ whose parameter
    choice returns the rounded scales itself (so every row's error is fed back against them),
    not GPTQ rounded afterwards."""
    k, n, scheme = 96, 12, QuantScheme(3, 32, False)
    w = RNG.standard_normal((k, n))
    x = RNG.standard_normal((300, k)) @ (np.eye(k) + RNG.standard_normal((k, k)) / 4)
    hessian = x.T @ x

    def choose(rows: np.ndarray, importance: np.ndarray, bits: int,
               symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
        scale = (rows.max(axis=0) - rows.min(axis=0)) / 7 * np.float32(1.0001)
        return scale.astype(np.float32), np.full(rows.shape[1], 3)

    def choose_rounded(*args: object) -> tuple[np.ndarray, np.ndarray]:
        scale, zero = choose(*args)  # type: ignore[arg-type]
        return _f16(scale), zero

    got = _quantize_gptq(w, scheme, hessian, choose, scale_dtype="float16")
    want = _quantize_gptq(w, scheme, hessian, choose_rounded)
    unrounded = _quantize_gptq(w, scheme, hessian, choose)
    np.testing.assert_array_equal(got.scale, want.scale)
    np.testing.assert_array_equal(got.q, want.q)
    assert float16_exact(got.scale) and not float16_exact(unrounded.scale)


def test_scales_outside_float16_keep_float32() -> None:
    """A scale below float16's smallest normal (2^-14) or above 65504 is not rounded (it would
    lose precision, flush to 0 or overflow); such a layer is not float16_exact, so the c target
    stores its scales as float32."""
    w = (RNG.standard_normal((64, 3)) * 0.05).astype(np.float32)
    w[:32, 0] *= 1e-4       # group 0 of column 0: scale ~1e-6, a float16 subnormal
    w[32:, 1] *= 1e8        # group 1 of column 1: scale ~1e6, beyond float16
    for scheme in (QuantScheme(8, 32, True), QuantScheme(4, 32, False)):
        f32 = quantize_weights_rtn(w, scheme)
        qw = quantize_weights_rtn(w, scheme, "float16")
        assert qw.scale[0, 0] == f32.scale[0, 0] and qw.scale[1, 1] == f32.scale[1, 1]
        inside = np.ones(qw.scale.shape, bool)
        inside[0, 0] = inside[1, 1] = False
        np.testing.assert_array_equal(qw.scale[inside], _f16(f32.scale[inside]))
        assert not float16_exact(qw.scale)
    assert round_scales(np.array([65504, 70000, 2.0**-14, 2.0**-15, -1.0001], np.float32),
                        "float16").tolist() == [65504, 70000, 2.0**-14, 2.0**-15, -1.0]


def test_bad_scale_dtype_is_reported() -> None:
    w = RNG.standard_normal((8, 2)).astype(np.float32)
    with pytest.raises(OptionError, match="unknown scale dtype 'bfloat16'; valid: float32, "
                                          "float16"):
        quantize_weight(w, QuantScheme(4, 8), scale_dtype="bfloat16")


def test_bits_plan_records_and_checks_the_scale_dtype() -> None:
    rules = {"layers": [{"match": "*", "bits": 4}]}
    assert BitsPlan.parse({**rules, "scale_dtype": "float16"}).scale_dtype == "float16"
    assert BitsPlan.parse(rules).scale_dtype is None
    with pytest.raises(OptionError, match="scale_dtype must be one of float32, float16, got "
                                          "'half'"):
        BitsPlan.parse({**rules, "scale_dtype": "half"}, "p.json")
