"""Weight quantization methods: round to nearest, a per-group scale search, and GPTQ.

Every method returns a :class:`~.reference.QuantizedWeight` in exactly the reference
representation (codes ``q[K_pad, N]``, float32 scales and optional zero points per group, padding
rows equal to their group's zero point), so a compiled model computes with
:func:`~.reference.dequantize` semantics whichever method chose the numbers. The methods differ
only in *which* codes, scales and zero points they pick for a group:

``rtn``
    :func:`~.reference.quantize_weights_rtn`: the scale spans the group's range. Symmetric codes
    use all 2**b levels, bit for bit as onnxruntime's MatMulNBits quantizer:
    ``s = -w* / 2**(b-1)`` for the group's largest-magnitude value ``w*``, so s may be negative.
``search``
    Per group and column, a search over scales (the idea behind llama.cpp's ``make_qkx``
    scale search and HQQ): a log-spaced grid of candidate scales from well below the group's
    RMS-based optimum to 1.1 times its range, each with three zero points (keep the low end, the
    high end, or centre the window) for schemes with zero points; each candidate's codes are
    rounded, then its scale is refitted by least squares for those codes. The symmetric grid
    ``[-2**(b-1), 2**(b-1) - 1] * s`` has one more level on one side; the search tries both
    orientations (positive scales put it on the negative weights' side, negative scales on the
    positive ones'), and RTN's scale as a candidate. Two rounds of re-rounding and refitting
    polish the best candidate. The objective is the squared error weighted per element by
    ``d[k] * (sigma2[n] + w[k, n]**2)``, with ``d[k]`` the Hessian's diagonal
    ``H[k, k] = sum_t x[t, k]**2`` when a Hessian is given (inputs with large activations
    matter more), else 1, and ``sigma2[n]`` the column's mean ``w**2`` (llama.cpp weights its
    ``make_qx_quants`` search by ``w**2``): the error on a group's largest weights costs in
    proportion to their square. Real LLMs' largest weights sit on a few outlier input
    channels (80% of the column maxima of Gemma 3's LM head on 3 of its 640 inputs), where an
    error costs the most. A group keeps its RTN parameters unless the search is strictly
    better, and, without a Hessian, unless it also clips no weight (every weight within half a
    step of its level); so it is never worse than RTN on any group *in that objective*. The
    unweighted weight error and the layer's output error are not guaranteed to be lower, and
    on Gemma 3 270M the search still loses to RTN without calibration (w4g128sym, eval-ppl
    window 256, 512 tokens, float 20.14; RTN 40.59): 45.78 as described; 52.14 without the
    no-clipping rule; 90.13 weighted by ``sqrt(sigma2 + w**2)`` (llama.cpp's importance-matrix
    weighting); 78.36 with the plain squared error, which lowered the weight error of the
    layers by 12-21% but clipped their largest weights (5-125x RTN's error on the top 0.1%).
``gptq``
    GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
    Transformers", 2022): rows k of W are quantized in order and each row's rounding error is
    spread over the rows not yet quantized through the inverse Hessian, minimising the output
    error ``||X W - X W_hat||``; lazy updates in blocks of 128 rows, 1% damping, dead inputs
    (``H[k, k] = 0``) zeroed. A group's scale and zero point are chosen by the search above
    (its error weighted by the Hessian's diagonal only, not by ``|w|``) when the row loop enters
    the group, from the current, error-compensated rows. Choosing them by search rather than by
    RTN lowers GPTQ's output error
    (512 x 512 Gaussian and Student-t weights, correlated inputs, g = 32, 128 and channel): with
    zero points by 6-55% at 3-4 bits and 1.5-7.5x at 2 bits, within 1% at 8 bits; symmetric
    (full range) by 6-53% at 3-4 bits and 1.3-2.6x at 2 bits, from 2% higher to 19% lower at 8.
    ``act_order`` (the paper's "act-order", AutoGPTQ's ``desc_act``) quantizes the rows in order
    of decreasing ``H[k, k]``, so the inputs with the largest activations are rounded first,
    while the most rows remain to absorb their error. A group stays ``g`` consecutive rows in
    the original order, with one scale and zero point, so the weight layout is unchanged; its
    parameters are chosen, as above, when the loop first reaches one of its rows, from its
    rows as compensated so far. Choosing them instead from the original weights before the loop
    (AutoGPTQ's ``static_groups``) gave the same output error within 1.5% (mean 0.1-1.4% higher)
    on 256 x 128 Student-t layers with correlated inputs and 4 outlier channels (x5, x20), and a
    higher perplexity on Gemma 3 270M (every layer w3g64, ``--awq``, sequential Hessians; the
    issue 15 protocol): 1.636 times float against 1.590 (row order: 1.650). Against row order,
    act-order lowered the output error of those synthetic layers by 5-34% at w3g64 and w4g128
    and changed it by -6% to +2% at w2g32.

The Hessian of a layer ``y = x @ W`` is ``H = sum_t x[t]^T x[t]`` (float64 ``[K, K]``, a sum
over calibration rows; its scale does not matter). :func:`reconstruction_error` turns it into the
relative output error used to rank layers for mixed precision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import OptionError, SailError, valid_choices
from .reference import (
    QuantizedWeight,
    check_scale_dtype,
    dequantize,
    quantize_weights_rtn,
    round_scales,
)
from .scheme import QuantScheme

#: The weight quantization methods, in order of cost.
METHODS: tuple[str, ...] = ("rtn", "search", "gptq")

#: GPTQ adds this fraction of the mean of the Hessian's diagonal to the diagonal (the paper's 1%);
#: a Hessian that is still not positive definite is retried with 10x and 100x as much.
GPTQ_DAMPING = 0.01
#: Rows of W whose updates GPTQ applies to the rest of W lazily, at once (the paper's B = 128).
_GPTQ_BLOCK = 128

#: Step, in standard deviations, of the uniform quantizer with 2**b levels that minimises the
#: mean squared error on a Gaussian (computed numerically; up to 16 levels they agree with Max,
#: "Quantizing for minimum distortion", 1960). Half of it is the smallest scale searched.
_GAUSSIAN_STEP = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569,
                  8: 0.0308}
#: Candidate scales per group: log-spaced from the smallest to 1.1 times the range-covering scale
#: (a larger scale can put the grid on the weights better once the zero point is rounded), plus
#: the range-covering scale itself. 10 points come within 1.7% of an 80-point grid's error at 2-4
#: bits, and within 12% at 6-8 bits where the gain over RTN is itself small (measured on
#: Gaussian and Student-t weights with g = 32, 128 and channel groups).
_SEARCH_POINTS = 10
_SEARCH_MAX_FACTOR = 1.1
_SEARCH_REFINE_ROUNDS = 2
#: Elements of W searched at once: tiles of columns small enough for the caches. (Threads over
#: tiles were slower on a loaded 2-core machine: the loops are memory-bound.)
_TILE_ELEMENTS = 1 << 18


def quantize_weight(w: np.ndarray, scheme: QuantScheme, method: str = "rtn",
                    hessian: np.ndarray | None = None,
                    act_order: bool = False, scale_dtype: str = "float32") -> QuantizedWeight:
    """Quantize ``W[K, N]`` (y = x @ w) with ``scheme`` by ``method``.

    Parameters
    ----------
    w
        ``[K, N]`` floating-point weights, K >= 1, all finite; rounded to float32 first.
    scheme
        Bits, group size along K, symmetric or with zero points.
    method
        One of :data:`METHODS` (see the module docstring).
    hessian
        float ``[K, K]``: ``sum_t x[t]^T x[t]`` over calibration rows (not averaged), symmetric
        positive semidefinite. ``search`` weights each k by its diagonal; ``gptq`` requires it;
        ``rtn`` ignores it (it is still checked).
    act_order
        ``gptq`` only: quantize the rows in order of decreasing Hessian diagonal (GPTQ's
        "act-order"); the groups, and so the weight layout, stay the same.
    scale_dtype
        ``"float16"``: every scale in float16's normal range is rounded to float16
        (:func:`~.reference.round_scales`) when it is chosen, and the codes are computed against
        the rounded scale (GPTQ's error feedback included); see the module docstring.

    Returns
    -------
    QuantizedWeight
        Codes ``[K_pad, N]``, float32 scales (and uint8 zero points unless symmetric)
        ``[n_groups, N]``, padding rows equal to their group's zero point.

    Raises
    ------
    OptionError
        ``method`` is unknown; ``gptq`` without a Hessian; ``act_order`` with another method;
        the Hessian is not a finite,
        symmetric ``[K, K]`` matrix with a non-negative diagonal, or (``gptq``) not positive
        semidefinite.
    SailError
        ``w`` holds inf or nan.
    ValueError
        ``w`` is not a 2-D floating-point array with K >= 1.
    """
    if method not in METHODS:
        raise OptionError(f"unknown weight quantization method {method!r}; "
                          f"{valid_choices(METHODS)}")
    if act_order and method != "gptq":
        raise OptionError(f"act-order is an order of GPTQ's rows; method {method!r} has none "
                          "(use method 'gptq', or leave act_order off)")
    check_scale_dtype(scale_dtype)
    w = _checked_weights(w)
    h = None if hessian is None else _checked_hessian(hessian, w.shape[0])
    if method == "rtn":
        return quantize_weights_rtn(w, scheme, scale_dtype)
    if method == "search":
        return _quantize_search(w, scheme, h, scale_dtype)
    if h is None:
        raise OptionError("gptq needs calibration data: pass the layer's Hessian (the sum of "
                          "x^T x over calibration rows), or use method 'search' or 'rtn'")
    return _quantize_gptq(w, scheme, h, _searched_params, act_order, scale_dtype)


def reconstruction_error(w: np.ndarray, qw: QuantizedWeight,
                         hessian: np.ndarray | None = None) -> float:
    """Relative error of a quantized weight: on the layer's output with a Hessian, else on W.

    Parameters
    ----------
    w
        ``[K, N]`` floating-point original weights.
    qw
        Its quantization (K = ``qw.k``, N = ``qw.n``).
    hessian
        float ``[K, K]``: ``X^T X`` of calibration inputs ``X[T, K]``, or None.

    Returns
    -------
    float
        With a Hessian: ``||X (W - W_hat)||_F^2 / ||X W||_F^2``, computed as
        ``trace(E^T H E) / trace(W^T H W)`` with ``E = W - dequantize(qw)``; without one:
        ``||E||_F^2 / ||W||_F^2``. 0 when both are 0, inf when only the denominator is.

    Raises
    ------
    OptionError
        The Hessian is not a finite, symmetric ``[K, K]`` matrix with a non-negative diagonal.
    SailError
        ``w`` holds inf or nan.
    ValueError
        ``w`` is not a floating-point array of shape ``[qw.k, qw.n]``.
    """
    w = _checked_weights(w)
    if w.shape != (qw.k, qw.n):
        raise ValueError(f"weights of shape {w.shape} do not match the quantized weight's "
                         f"({qw.k}, {qw.n})")
    w64 = w.astype(np.float64)
    err = w64 - dequantize(qw)
    if hessian is None:
        num, den = np.vdot(err, err), np.vdot(w64, w64)
    else:
        h = _checked_hessian(hessian, qw.k)
        num, den = np.vdot(err, h @ err), np.vdot(w64, h @ w64)
    num = max(float(num), 0.0)  # H is semidefinite: a negative sum is rounding
    if den <= 0:
        return 0.0 if num == 0 else float("inf")
    return num / float(den)


def _checked_weights(w: np.ndarray) -> np.ndarray:
    """``w`` as a finite float32 ``[K, N]`` array, K >= 1."""
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights must be a floating-point array, got {w.dtype}")
    if w.ndim != 2 or w.shape[0] < 1:
        raise ValueError(f"weights must be 2-D [K, N] with K >= 1, got shape {w.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        w = w.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(w)))
    if bad:
        raise SailError(f"weights hold {bad} non-finite values (inf or nan, or beyond float32); "
                        "quantization needs finite numbers")
    return w


def _checked_hessian(hessian: np.ndarray, k: int) -> np.ndarray:
    """``hessian`` as a float64 ``[k, k]`` array, checked finite, symmetric, diagonal >= 0."""
    h = np.asarray(hessian)
    if h.shape != (k, k) or not (np.issubdtype(h.dtype, np.floating)
                                 or np.issubdtype(h.dtype, np.integer)):
        raise OptionError(f"the Hessian must be a real array of shape ({k}, {k}) (K x K, the sum "
                          f"of x^T x over calibration rows), got {h.dtype} {h.shape}")
    h = h.astype(np.float64, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(h)))
    if bad:
        raise OptionError(f"the Hessian holds {bad} non-finite values (inf or nan); collect it "
                          "from finite calibration activations")
    scale = float(np.abs(h).max(initial=0.0))
    if np.any(np.abs(h - h.T) > 1e-6 * scale):
        raise OptionError("the Hessian is not symmetric; pass the sum of x^T x over calibration "
                          "rows")
    if np.any(np.diag(h) < 0):
        raise OptionError("the Hessian has negative diagonal entries, so it is not a sum of "
                          "x^T x; pass the sum of x^T x over calibration rows")
    return h


def _padded_groups(w: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    """float64 ``[n_groups, g, N]``: ``w`` padded with zero rows to whole groups."""
    k, n = w.shape
    padded = np.zeros((scheme.padded_k(k), n), np.float64)
    padded[:k] = w
    return padded.reshape(scheme.n_groups(k), scheme.group_size_for(k), n)


def _importance(hessian: np.ndarray | None, scheme: QuantScheme, k: int) -> np.ndarray:
    """float64 ``[n_groups, g, 1]``: the weight of each k in the error, 0 on padding rows."""
    padded = np.zeros(scheme.padded_k(k), np.float64)
    padded[:k] = 1.0 if hessian is None else np.diag(hessian)
    return padded.reshape(scheme.n_groups(k), scheme.group_size_for(k), 1)


def _quantize_search(w: np.ndarray, scheme: QuantScheme, hessian: np.ndarray | None,
                     scale_dtype: str = "float32") -> QuantizedWeight:
    """The ``search`` method: searched parameters per group, RTN's where they are no better
    in the search's objective (importance per k times :func:`_magnitude_weights`). With
    ``scale_dtype="float16"`` both candidates are compared as stored: searched scales rounded
    (:func:`~.reference.round_scales`) with their codes re-rounded against them, and RTN's
    own float16 form."""
    k, n = w.shape
    groups = _padded_groups(w, scheme)
    importance = _importance(hessian, scheme, k)
    scale, zero, codes = _search(groups, importance, scheme.bits, scheme.symmetric,
                                 protect=True)
    scale32 = scale.astype(np.float32)
    valid = np.isfinite(scale32) & (scale32 != 0)  # a scale may underflow or overflow float32
    scale32[~valid] = 1
    if scale_dtype != "float32":
        scale32 = round_scales(scale32, scale_dtype)
        qmax = (1 << scheme.bits) - 1
        codes = np.clip(np.rint(groups / scale32[:, None, :]), -zero[:, None, :],
                        qmax - zero[:, None, :]).astype(np.int64)
    codes[np.broadcast_to(~valid[:, None, :], codes.shape)] = 0
    q = (codes + zero[:, None, :]).astype(np.uint8).reshape(-1, n)
    searched = QuantizedWeight(q, scale32, None if scheme.symmetric else zero.astype(np.uint8),
                               scheme.bits, groups.shape[1], k)
    rtn = quantize_weights_rtn(w, scheme, scale_dtype)
    errors, clipped = _group_errors(groups, searched, importance)
    errors[~valid] = np.inf
    if hessian is None:
        errors[clipped] = np.inf  # without calibration, the search may not clip any weight
    use_rtn = ~(errors < _group_errors(groups, rtn, importance)[0])
    q = np.where(np.repeat(use_rtn, groups.shape[1], axis=0), rtn.q, searched.q)
    scale32 = np.where(use_rtn, rtn.scale, searched.scale)
    zero8 = None if scheme.symmetric else np.where(use_rtn, rtn.zero, searched.zero)
    return QuantizedWeight(q, scale32, zero8, scheme.bits, groups.shape[1], k)


def _magnitude_weights(w: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """float64 ``[G, g, n]``: the search's error weight of each element of ``w[G, g, n]``,
    ``importance[k] * (sigma2[n] + w**2)`` with ``sigma2[n]`` the mean of ``w**2`` over the
    column's inputs of nonzero importance (llama.cpp weights its ``make_qx_quants`` search by
    ``w**2``). The error on a group's large weights costs in proportion to their square, so the
    search does not clip them; the unweighted error did, and lost to RTN on real models."""
    live = np.broadcast_to(importance > 0, w.shape)
    count = np.maximum(live.sum(axis=(0, 1)), 1)
    sigma2 = np.einsum("gkn,gkn->n", np.where(live, w, 0), w) / count
    return importance * (sigma2 + w * w)


def _group_errors(groups: np.ndarray, qw: QuantizedWeight,
                  importance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``[n_groups, N]``: ``sum_k v[k, n] * (w - dequantize(qw))**2`` per group, with
    ``v`` the element weights of :func:`_magnitude_weights`; and bool ``[n_groups, N]``: some
    weight of the group is further than half a step from its level (clipped); in tiles of
    columns."""
    approx = np.zeros((groups.shape[0] * groups.shape[1], groups.shape[2]), np.float64)
    approx[: qw.k] = dequantize(qw)
    approx = approx.reshape(groups.shape)
    n = groups.shape[2]
    step = max(1, _TILE_ELEMENTS // (groups.shape[0] * groups.shape[1]))
    errors = np.empty((groups.shape[0], n), np.float64)
    clipped = np.empty((groups.shape[0], n), bool)
    half_step = 0.5 * np.abs(qw.scale.astype(np.float64)) * (1 + 1e-6)
    for lo in range(0, n, step):
        tile = groups[:, :, lo: lo + step]
        diff = tile - approx[:, :, lo: lo + step]
        weights = _magnitude_weights(tile, importance)
        errors[:, lo: lo + step] = np.einsum("gkn,gkn->gn", diff * weights, diff)
        clipped[:, lo: lo + step] = np.abs(diff).max(axis=1) > half_step[:, lo: lo + step]
    return errors, clipped


def _search(groups: np.ndarray, importance: np.ndarray, bits: int, symmetric: bool,
            protect: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search scales and zero points for every group and column (see the module docstring).

    Parameters
    ----------
    groups
        float64 ``[G, g, N]`` weights.
    importance
        float64 ``[G, g, 1]`` non-negative weight of each k in the squared error.
    bits, symmetric
        The code grid: unsigned codes ``0 .. 2**bits - 1`` minus a zero point in that range, or
        the fixed zero point ``2**(bits-1)``.
    protect
        Weight the error of each element by :func:`_magnitude_weights` (the ``search``
        method), not by ``importance`` alone (GPTQ's choice of parameters).

    Returns
    -------
    scale : numpy.ndarray
        float64 ``[G, N]``: positive with zero points, of either sign when symmetric.
    zero : numpy.ndarray
        int64 ``[G, N]`` zero points (``2**(bits-1)`` everywhere when symmetric).
    codes : numpy.ndarray
        int64 ``[G, g, N]`` signed codes ``q - zero``; rows of zero weights get 0.
    """
    n = groups.shape[2]
    step = max(1, _TILE_ELEMENTS // (groups.shape[0] * groups.shape[1]))
    scale = np.empty(groups.shape[::2], np.float64)
    zero = np.empty(groups.shape[::2], np.int64)
    codes = np.empty(groups.shape, np.int64)
    for lo in range(0, n, step):
        tile = np.ascontiguousarray(groups[:, :, lo: lo + step])
        weights = _magnitude_weights(tile, importance) if protect else importance
        scale[:, lo: lo + step], zero[:, lo: lo + step], codes[:, :, lo: lo + step] = \
            _search_tile(tile, weights, bits, symmetric)
    return scale, zero, codes


def _search_tile(w: np.ndarray, d: np.ndarray, bits: int,
                 symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_search` on one tile of columns ``w[G, g, n]``, with error weights ``d`` of shape
    ``[G, g, 1]`` (per k) or ``[G, g, n]`` (per element).

    The candidates are evaluated in float32 (half the memory traffic of float64) on the weights
    divided by their group's ``max|w|``, so nothing overflows or underflows; the sums of each
    candidate are combined in float64.
    """
    qmax = (1 << bits) - 1
    peak = np.abs(w).max(axis=1)
    empty = peak == 0
    peak = np.where(empty, 1.0, peak)
    unit = (w / peak[:, None, :]).astype(np.float32)
    d = (d / max(float(d.max()), np.finfo(np.float64).tiny)).astype(np.float32)
    dw = d * unit
    energy = np.einsum("gkn,gkn->gn", dw, unit, dtype=np.float64)
    mass = np.maximum(d.sum(axis=1, dtype=np.float64), np.finfo(np.float64).tiny)
    counted = np.where(d > 0, unit, 0)  # k with zero importance do not widen the range
    lo = np.minimum(counted.min(axis=1), 0).astype(np.float64)
    hi = np.maximum(counted.max(axis=1), 0).astype(np.float64)
    candidates = []  # (scale, zero) pairs; symmetric scales carry the grid's orientation
    if symmetric:
        half = 1 << (bits - 1)
        spread = np.sqrt(energy / mass)
        # RTN's scale -w* / 2**(b-1): w* (the largest |w|, negative on a tie) is +-1 here
        top, bottom = unit.max(axis=1), unit.min(axis=1)
        rtn_sign = np.where(np.abs(top) > np.abs(bottom), -1.0, 1.0)
        candidates.append((rtn_sign / half, np.full_like(spread, half)))
        # the smallest |scale| that clips nothing with the extra code -2**(b-1) on the side of
        # the negative weights (positive scales) or of the positive ones (negative scales)
        for sign, cover in ((1.0, np.maximum(hi / (half - 1), -lo / half)),
                            (-1.0, np.maximum(-lo / (half - 1), hi / half))):
            candidates += [(sign * scale, np.full_like(scale, half))
                           for scale in _candidate_scales(cover, spread, bits)]
    else:
        mean = dw.sum(axis=1, dtype=np.float64) / mass
        spread = np.sqrt(np.maximum(energy / mass - mean**2, 0.0))
        for scale in _candidate_scales((hi - lo) / qmax, spread, bits):
            low_end, high_end = -lo / scale, qmax - hi / scale
            candidates += [(scale, np.clip(np.rint(z), 0, qmax))
                           for z in (low_end, high_end, (low_end + high_end) / 2)]

    codes = np.empty_like(unit)
    uniform = bool(np.all((d == 1) | ((d == 0) & (unit == 0))))
    weighted = None if uniform else np.empty_like(unit)

    def fit(scale: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Round the weights to codes with ``scale`` and ``zero`` (into ``codes``), refit the
        scale by weighted least squares; return the refitted scale and its squared error."""
        np.multiply(unit, (1.0 / scale).astype(np.float32)[:, None, :], out=codes)
        np.rint(codes, out=codes)
        np.maximum(codes, (-zero).astype(np.float32)[:, None, :], out=codes)
        np.minimum(codes, (qmax - zero).astype(np.float32)[:, None, :], out=codes)
        cross = np.einsum("gkn,gkn->gn", dw, codes).astype(np.float64)
        if weighted is None:
            power = np.einsum("gkn,gkn->gn", codes, codes).astype(np.float64)
        else:
            np.multiply(codes, d, out=weighted)
            power = np.einsum("gkn,gkn->gn", weighted, codes).astype(np.float64)
        fits = (cross * scale > 0) & (power > 0)  # a refit keeps the scale's sign
        refit = np.where(fits, cross / np.where(fits, power, 1.0), scale)
        return refit, energy - 2 * refit * cross + refit**2 * power

    best_error = np.full(energy.shape, np.inf)
    best_scale = np.ones_like(energy)
    best_zero = np.zeros_like(energy)
    for scale, zero in candidates:
        refit, error = fit(scale, zero)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, refit, best_scale)
        best_zero = np.where(better, zero, best_zero)
    for _ in range(_SEARCH_REFINE_ROUNDS):
        # rounding to the refitted scale and refitting again never increases the error
        best_scale, _ = fit(best_scale, best_zero)
    # an all-zero group gets RTN's parameters: scale 1 and (with zero points) zero point 0
    best_scale = np.where(empty, 1.0, best_scale * peak)
    best_zero = np.where(empty & (not symmetric), 0, best_zero)
    return best_scale, best_zero.astype(np.int64), codes.astype(np.int64)


def _candidate_scales(cover: np.ndarray, spread: np.ndarray, bits: int) -> list[np.ndarray]:
    """The searched scale magnitudes ``[G, n]``: log-spaced from ``_GAUSSIAN_STEP / 2`` times the
    weights' ``spread`` to 1.1 times ``cover`` (the scale that clips nothing), and ``cover``."""
    cover = np.where(cover > 0, cover, 1.0)  # all zero: any scale, every code is 0
    smallest = np.clip(0.5 * _GAUSSIAN_STEP[bits] * spread / cover, 0.02, 0.9)
    return [smallest * (_SEARCH_MAX_FACTOR / smallest) ** t * cover
            for t in np.linspace(0.0, 1.0, _SEARCH_POINTS)] + [cover]


def _searched_params(rows: np.ndarray, importance: np.ndarray, bits: int,
                     symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's choice of one group's parameters: the search on its current rows.

    Parameters
    ----------
    rows
        float64 ``[r, N]``, ``r <= g``: the group's rows of the error-compensated weights.
    importance
        float64 ``[r]``: the Hessian's diagonal on those rows (0 for dead inputs).
    bits, symmetric
        The code grid, as in :func:`_search`.

    Returns
    -------
    scale : numpy.ndarray
        float32 ``[N]``, nonzero (signed as in :func:`_search`); RTN's where the searched scale
        does not fit in float32.
    zero : numpy.ndarray
        int64 ``[N]`` zero points (``2**(bits-1)`` when symmetric).
    """
    scale, zero, _ = _search(rows[None], importance[None, :, None], bits, symmetric)
    scale32, zero = scale[0].astype(np.float32), zero[0]
    valid = np.isfinite(scale32) & (scale32 != 0)
    if not valid.all():
        rtn = quantize_weights_rtn(rows.astype(np.float32), QuantScheme(bits, None, symmetric))
        scale32 = np.where(valid, scale32, rtn.scale[0])
        zero = np.where(valid, zero, rtn.zero_points()[0])
    return scale32, zero


def _gptq_upper_factor(hessian: np.ndarray) -> np.ndarray:
    """GPTQ's factor of the damped inverse Hessian: :func:`_inverse_factor` of
    ``H + damping * mean(diag H) * I`` (H with dead inputs' diagonal set to 1)."""
    mean_diag = float(np.mean(np.diag(hessian)))
    for damping in (GPTQ_DAMPING, 10 * GPTQ_DAMPING, 100 * GPTQ_DAMPING):
        try:
            return _inverse_factor(hessian + damping * mean_diag * np.eye(len(hessian)))
        except np.linalg.LinAlgError:
            continue
    raise OptionError("the Hessian is not positive semidefinite (its Cholesky factorisation "
                      f"fails even with {100 * GPTQ_DAMPING:g} x its mean diagonal added); pass "
                      "the sum of x^T x over calibration rows")


def _inverse_factor(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with ``U^T U = h^-1``, for a symmetric positive definite h.

    With ``h = R R^T``, R upper triangular, ``U = R^-1``. By halves ``h = [[A, B], [B^T, C]]``:
    ``R22 = factor of C``, ``R12 = B R22^-T``, ``R11 = factor of A - R12 R12^T``, and
    ``U = [[U11, -U11 R12 U22], [0, U22]]``: mostly matrix products, 2-3x faster for K = 2048
    than LAPACK's Cholesky and inverse on a loaded 2-core machine (where OpenBLAS's threaded
    Cholesky slows down 5x).

    Raises
    ------
    numpy.linalg.LinAlgError
        ``h`` is not positive definite.
    """
    n = len(h)
    if n <= 128:
        # the Cholesky factor of h with rows and columns reversed, reversed back, is R
        return np.linalg.inv(np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1])
    m = n // 2
    u22 = _inverse_factor(h[m:, m:])
    r12 = h[:m, m:] @ u22.T
    u11 = _inverse_factor(h[:m, :m] - r12 @ r12.T)
    u = np.zeros_like(h)
    u[:m, :m], u[m:, m:] = u11, u22
    u[:m, m:] = -(u11 @ r12) @ u22
    return u


def _gptq_blocks(k: int, g: int) -> list[tuple[int, int]]:
    """Row ranges updated lazily together: whole groups when ``g <= 128``, else 128-row slices
    of one group, so every group starts where all earlier rows' updates have been applied."""
    if g <= _GPTQ_BLOCK:
        step = g * (_GPTQ_BLOCK // g)
        return [(a, min(a + step, k)) for a in range(0, k, step)]
    return [(a, min(a + _GPTQ_BLOCK, start + g, k))
            for start in range(0, k, g) for a in range(start, min(start + g, k), _GPTQ_BLOCK)]


ParamChoice = Callable[[np.ndarray, np.ndarray, int, bool], tuple[np.ndarray, np.ndarray]]


def _quantize_gptq(w: np.ndarray, scheme: QuantScheme, hessian: np.ndarray,
                   choose_params: ParamChoice, act_order: bool = False,
                   scale_dtype: str = "float32") -> QuantizedWeight:
    """GPTQ with the group parameters from ``choose_params`` (signature of
    :func:`_searched_params`), chosen when the row loop first reaches a row of the group, from
    the group's rows as the error compensation has left them then; the scale is rounded to
    ``scale_dtype`` (:func:`~.reference.round_scales`) right there, so every row of the group is
    rounded, and its error fed back, against the scale that is stored.

    Rows are quantized in order, or with ``act_order`` in order of decreasing Hessian diagonal
    (stable, so ties keep their order); a group is always ``g`` consecutive rows in the original
    order. In row order the loop enters a group at its first row with every earlier update
    applied (:func:`_gptq_blocks`); in activation order the group's rows lie anywhere after the
    current one, and those past the current lazy block get the block's pending updates first.
    """
    k, n = w.shape
    g, n_groups, qmax = scheme.group_size_for(k), scheme.n_groups(k), (1 << scheme.bits) - 1
    h = (hessian + hessian.T) / 2
    importance = np.diag(h).copy()
    dead = importance == 0
    h[dead, dead] = 1
    if act_order:
        order = np.argsort(-importance, kind="stable")
        blocks = [(a, min(a + _GPTQ_BLOCK, k)) for a in range(0, k, _GPTQ_BLOCK)]
        weights = np.empty((k, n), np.float64)
        for j, row in enumerate(order):  # by rows: one float64 copy of W at a time, not two
            weights[j] = w[row]
        h = h[np.ix_(order, order)]
    else:
        order, blocks = np.arange(k), _gptq_blocks(k, g)
        weights = w.astype(np.float64)
    weights[dead[order]] = 0  # no calibration input reaches them: quantize them to 0
    position = np.empty(k, np.int64)  # where each original row sits in the loop's order
    position[order] = np.arange(k)
    upper = _gptq_upper_factor(h)

    q = np.empty((n_groups * g, n), np.uint8)
    scale = np.empty((n_groups, n), np.float32)
    zero = np.empty((n_groups, n), np.int64)
    entered = np.zeros(n_groups, bool)
    for start, stop in blocks:
        block = weights[start:stop]  # a view: in-block updates land in ``weights``
        errors = np.empty_like(block)
        for i in range(stop - start):
            j = start + i
            row = order[j]
            grp = row // g
            if not entered[grp]:
                lo, hi = grp * g, min((grp + 1) * g, k)
                rows = weights[position[lo:hi]]  # a copy
                if i:  # rows past the block lack the updates of its rows before this one
                    later = position[lo:hi] >= stop
                    rows[later] -= upper[start:j, position[lo:hi][later]].T @ errors[:i]
                chosen, zero[grp] = choose_params(rows, importance[lo:hi], scheme.bits,
                                                  scheme.symmetric)
                scale[grp] = round_scales(chosen, scale_dtype)
                entered[grp] = True
            step, offset = scale[grp].astype(np.float64), zero[grp]
            codes = np.clip(np.rint(block[i] / step) + offset, 0, qmax)
            q[row] = codes
            errors[i] = (block[i] - step * (codes - offset)) / upper[j, j]
            block[i + 1:] -= np.outer(upper[j, j + 1: stop], errors[i])
        weights[stop:] -= upper[start:stop, stop:].T @ errors
    q[k:] = zero[-1]
    return QuantizedWeight(q, scale, None if scheme.symmetric else zero.astype(np.uint8),
                           scheme.bits, g, k)
