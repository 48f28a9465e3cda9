"""The NumPy reference semantics of quantized matmuls (DESIGN.md section 3).

Every target must reproduce :func:`group_sums` exactly and :func:`quantized_matmul` within 1e-5
relative error. All float arithmetic below is float32 with IEEE division (``a / b``, never
``a * (1 / b)``) and round-half-to-even (``np.rint``, C's ``nearbyintf`` in the default rounding
mode), except symmetric weight codes, which follow onnxruntime's quantizer step for step (below);
a target that follows the same steps gets bit-identical codes.

Weights ``W[K, N]`` (y = x @ W), groups of g consecutive k per column n, b-bit codes:

* **Padding.** K is padded with zero weights up to ``K_pad = ceil(K / g) * g``. A zero weight
  quantizes to exactly its group's zero point, so padding rows have ``q - z = 0`` and contribute
  exactly 0 to every sum whatever activation they meet; :func:`dequantize` drops them.
* **Symmetric** (b >= 2), full range, as onnxruntime's MatMulNBits quantizer
  (``MlasQuantizeBlockwise``) and llama.cpp's Q4_0: ``w*`` is the group's value of largest
  magnitude with its sign (the negative one on a tie), ``s = -w* / 2**(b-1)`` (exact; s may be
  negative), so ``w*`` maps to ``-2**(b-1)``. The unsigned code is
  ``q = clip(roundf(w * r + 2**(b-1)), 0, 2**b - 1)`` with ``r = 1 / s``, each step rounded to
  float32 and ``roundf`` rounding halves away from zero (as C's): bit for bit onnxruntime's codes.
  (Where ``1 / s`` overflows, for a subnormal s, ``w / s`` replaces ``w * r``.) The signed code is
  ``q - 2**(b-1)`` in ``[-2**(b-1), 2**(b-1) - 1]``; the implicit zero point ``2**(b-1)`` makes
  packing and the group sum ``(q - z) * xq`` the same for both kinds
  (:attr:`QuantizedWeight.zero` is None). Symmetric 1-bit is rejected by
  :class:`~sail_compiler.quant.scheme.QuantScheme`.
* **With zero points**: the group's range is widened to include 0 (as GPTQ's and gemmlowp's
  quantizers do, so 0 is exact): ``lo = min(min w, 0)``, ``hi = max(max w, 0)``,
  ``s = (hi - lo) / (2**b - 1)``, ``z = clip(rint(-lo / s), 0, 2**b - 1)``,
  ``q = clip(rint(w / s) + z, 0, 2**b - 1)``.
* **Zero scale.** A group whose computed scale is 0 (all weights zero, or so small that the
  division underflows) gets ``s = 1``: nothing divides by zero, its codes are the zero point and
  it dequantizes to exactly 0.
* **float16 scales** (``scale_dtype="float16"``, :func:`round_scales`): each scale whose
  magnitude lies in float16's normal range ``[2**-14, 65504]`` is rounded to the nearest float16
  value (half to even) and the codes (and zero points) are computed against the rounded scale
  by the same steps as above; a scale outside that range keeps its float32 value. The scales stay
  float32 arrays; a layer all of whose scales are float16 values (:func:`float16_exact`) can be
  stored with 2 bytes per scale, exactly.

Activations ``x[T, K]``: symmetric, ``b_a`` bits, one scale per token and per block of A
consecutive k (``act_group``; A = K is one scale per row, the last block may be partial):
``sx[t, blk] = max|x[t, blk]| / (2**(b_a-1) - 1)``,
``xq = clip(rint(x / sx[t, k // A]), -(2**(b_a-1) - 1), 2**(b_a-1) - 1)`` (the clip never changes
a normal block; -2**(b_a-1) never occurs). A block whose computed ``sx`` is 0 (all zeros, or an
underflowing maximum) gets ``sx = 1``, so its ``xq`` are 0.

Blocks and groups (:class:`ActBlocks`): A must be a multiple of g, a divisor of g, or cover K or
a whole weight group that covers K (one block, or one group). The sums are taken over *sum
blocks* of ``B`` rows, where each lies inside one weight group and one activation block:
``B = g`` when A is a multiple of g (or A = K), else ``B = A`` (a weight group spans several
activation blocks and its sums are split at their boundaries). Sum block ``j`` covers rows
``j*B .. (j+1)*B - 1``, of weight group ``j*B // g`` and activation block ``j*B // A``.

Output: ``S[t, j, n] = sum_{k in j} (q[k, n] - z[grp(j), n]) * xq[t, k]`` exactly (int32),
``y[t, n] = sum_j (s[grp(j), n] * sx[t, blk(j)]) * S[t, j, n]`` in float32, summed in order of j.
With one block per row, ``B = g`` and this is ``sum_grp s[grp, n] * sx[t] * S[t, grp, n]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import OptionError
from .packing import check_bits, pack_bits, unpack_bits
from .scheme import QuantScheme

#: Valid activation widths: 1 bit has no symmetric range (its scale divides by 2**0 - 1 = 0).
MIN_ACT_BITS, MAX_ACT_BITS = 2, 16
_INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight matrix ``W[K, N]`` quantized in groups along K.

    Attributes
    ----------
    q
        uint8 ``[K_pad, N]`` unsigned codes in ``[0, 2**bits - 1]``; ``K_pad = n_groups *
        group_size``. Rows ``k .. K_pad - 1`` are padding and equal their group's zero point.
    scale
        float32 ``[n_groups, N]``, nonzero. Symmetric scales may be negative (``-w* / 2**(b-1)``,
        as onnxruntime's); the quantizers' scales with zero points are positive.
    zero
        uint8 ``[n_groups, N]`` zero points in ``[0, 2**bits - 1]``, or None for symmetric
        quantization (implicit zero point ``2**(bits-1)``).
    bits
        Code width, 1..8.
    group_size
        Rows of ``q`` per group (for a "channel" scheme: K).
    k
        The original K, ``K_pad - group_size < k <= K_pad``.

    Raises
    ------
    ValueError
        The arrays' dtypes or shapes disagree with each other, a code or zero point does not fit
        in ``bits``, or a padding row is not its group's zero point.
    OptionError
        ``bits`` is outside 1..8, or symmetric with 1 bit.
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    bits: int
    group_size: int
    k: int

    def __post_init__(self) -> None:
        bits = check_bits(self.bits, "weight bits")
        object.__setattr__(self, "bits", bits)
        for name in ("q", "scale", "zero"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, np.asarray(getattr(self, name)))
        if self.zero is None and bits == 1:
            raise OptionError("symmetric 1-bit weights are not supported; use zero points")
        problems = []
        if self.q.dtype != np.uint8 or self.q.ndim != 2:
            problems.append(f"q must be 2-D uint8, got {self.q.ndim}-D {self.q.dtype}")
        if self.scale.dtype != np.float32 or self.scale.ndim != 2:
            problems.append(f"scale must be 2-D float32, got {self.scale.ndim}-D "
                            f"{self.scale.dtype}")
        if self.zero is not None and (self.zero.dtype != np.uint8 or self.zero.ndim != 2):
            problems.append(f"zero must be 2-D uint8 or None, got {self.zero.ndim}-D "
                            f"{self.zero.dtype}")
        if self.group_size < 1 or self.k < 1:
            problems.append(f"group_size and k must be >= 1, got {self.group_size}, {self.k}")
        if problems:
            raise ValueError("invalid QuantizedWeight: " + "; ".join(problems))
        n_groups = -(-self.k // self.group_size)
        want = {"q": (n_groups * self.group_size, self.q.shape[1]),
                "scale": (n_groups, self.q.shape[1])}
        if self.zero is not None:
            want["zero"] = want["scale"]
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                problems.append(f"{name} has shape {getattr(self, name).shape}, expected {shape} "
                                f"for k={self.k} in groups of {self.group_size}")
        if problems:
            raise ValueError("invalid QuantizedWeight: " + "; ".join(problems))
        for name in ("q", "zero"):
            a = getattr(self, name)
            if a is not None and a.size and int(a.max()) >= 1 << bits:
                problems.append(f"{name} holds {int(a.max())}, which does not fit in {bits} bits")
        if self.k < self.q.shape[0] and \
                np.any(self.q[self.k:] != self.zero_points()[-1].astype(np.uint8)):
            problems.append("padding rows of q (k..K_pad-1) must equal their group's zero point")
        if problems:
            raise ValueError("invalid QuantizedWeight: " + "; ".join(problems))

    @property
    def n(self) -> int:
        """Number of output columns N."""
        return self.q.shape[1]

    @property
    def n_groups(self) -> int:
        """Groups per column: ``ceil(k / group_size)``."""
        return self.scale.shape[0]

    @property
    def k_padded(self) -> int:
        """Rows of :attr:`q`: ``n_groups * group_size``."""
        return self.q.shape[0]

    @property
    def symmetric(self) -> bool:
        """True when there are no stored zero points."""
        return self.zero is None

    def zero_points(self) -> np.ndarray:
        """int32 ``[n_groups, N]``: the stored zero points, or ``2**(bits-1)`` if symmetric."""
        if self.zero is None:
            return np.full(self.scale.shape, 1 << (self.bits - 1), dtype=np.int32)
        return self.zero.astype(np.int32)

    def packed(self) -> np.ndarray:
        """uint8 ``[ceil(K_pad * bits / 8), N]``: :attr:`q` packed along K (see ``packing``)."""
        return pack_bits(self.q, self.bits, axis=0)


#: Alignment of :class:`PackedWeight`'s arrays (TVM takes 64-byte aligned arrays without a copy).
_ALIGN = 64


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on a :data:`_ALIGN`-byte boundary."""
    raw = np.empty(a.nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A :class:`QuantizedWeight` kept as its packed codes: ``bits / 8`` bytes a weight instead
    of one, for compiles that hold every layer's weights at once (a large model).

    It answers what the passes and reports ask of a :class:`QuantizedWeight` (:meth:`packed`,
    :meth:`zero_points`, ``scale``, ``zero``, ``bits``, ``group_size``, ``k``, ``n``,
    ``symmetric``, ``n_groups``); :attr:`q` and :meth:`unpack` unpack the codes on demand. The
    arrays are 64-byte aligned, so the IR's constants can share them.
    """

    packed_codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    bits: int
    group_size: int
    k: int

    @classmethod
    def of(cls, qw: QuantizedWeight) -> PackedWeight:
        zero = None if qw.zero is None else _aligned_copy(qw.zero)
        return cls(_aligned_copy(qw.packed()), _aligned_copy(qw.scale), zero, qw.bits,
                   qw.group_size, qw.k)

    @property
    def n(self) -> int:
        return self.scale.shape[1]

    @property
    def n_groups(self) -> int:
        return self.scale.shape[0]

    @property
    def k_padded(self) -> int:
        return self.n_groups * self.group_size

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def q(self) -> np.ndarray:
        """The unpacked codes (a new array on every access)."""
        return unpack_bits(self.packed_codes, self.bits, self.k_padded, axis=0)

    def unpack(self) -> QuantizedWeight:
        return QuantizedWeight(self.q, self.scale, self.zero, self.bits, self.group_size, self.k)

    def zero_points(self) -> np.ndarray:
        """int32 ``[n_groups, N]``, as :meth:`QuantizedWeight.zero_points`."""
        if self.zero is None:
            return np.full(self.scale.shape, 1 << (self.bits - 1), dtype=np.int32)
        return self.zero.astype(np.int32)

    def packed(self) -> np.ndarray:
        """The packed codes themselves (not a copy)."""
        return self.packed_codes


def _as_float32(a: np.ndarray, name: str, ndim: int | None = None) -> np.ndarray:
    """``a`` as a finite float32 array (other float dtypes are rounded to float32 first)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(a)))} non-finite values "
                         "(inf or nan); quantization needs finite numbers")
    return a


def _nonzero_scale(scale: np.ndarray) -> np.ndarray:
    """``scale`` with zeros replaced by 1 (see the module docstring), checked finite."""
    if not np.all(np.isfinite(scale)):
        raise ValueError("a scale overflowed float32: the values span more than float32 allows")
    return np.where(scale == 0, np.float32(1), scale).astype(np.float32)


#: The dtypes a weight's scales may be rounded to (``--scale-dtype``).
SCALE_DTYPES: tuple[str, ...] = ("float32", "float16")
#: float16's smallest normal and largest finite magnitudes: scales in this range are rounded.
_F16_MIN_NORMAL, _F16_MAX = np.float32(2.0**-14), np.float32(65504.0)


def check_scale_dtype(scale_dtype: str) -> str:
    """``scale_dtype`` if it is one of :data:`SCALE_DTYPES`.

    Raises
    ------
    OptionError
        Another value; the message lists the valid ones.
    """
    if scale_dtype not in SCALE_DTYPES:
        raise OptionError(f"unknown scale dtype {scale_dtype!r}; valid: "
                          f"{', '.join(SCALE_DTYPES)}")
    return scale_dtype


def round_scales(scale: np.ndarray, scale_dtype: str) -> np.ndarray:
    """float32 ``scale`` with every value in float16's normal range (``2**-14 <= |s| <= 65504``)
    rounded to the nearest float16 value (``scale_dtype="float16"``); others, and every value for
    ``"float32"``, unchanged. Returns a new float32 array of the same shape."""
    scale = np.asarray(scale, np.float32)
    if check_scale_dtype(scale_dtype) == "float32":
        return scale.copy()
    magnitude = np.abs(scale)
    inside = (magnitude >= _F16_MIN_NORMAL) & (magnitude <= _F16_MAX)
    with np.errstate(over="ignore"):  # outside values are not used
        rounded = scale.astype(np.float16).astype(np.float32)
    return np.where(inside & np.isfinite(rounded), rounded, scale).astype(np.float32)


def float16_exact(scale: np.ndarray) -> bool:
    """True if every value of ``scale`` is a normal float16 value (so storing it as float16 is
    exact and :func:`round_scales` leaves it alone)."""
    scale = np.asarray(scale, np.float32)
    magnitude = np.abs(scale)
    if not np.all((magnitude >= _F16_MIN_NORMAL) & (magnitude <= _F16_MAX)):
        return False
    return bool(np.array_equal(scale.astype(np.float16).astype(np.float32), scale))


def quantize_weights_rtn(w: np.ndarray, scheme: QuantScheme,
                         scale_dtype: str = "float32") -> QuantizedWeight:
    """Round-to-nearest (half to even) quantization of ``W[K, N]`` with ``scheme``.

    Parameters
    ----------
    w
        ``[K, N]`` floating-point weights (y = x @ w), K >= 1, all finite; rounded to float32.
    scheme
        Bits, group size along K, symmetric or with zero points.
    scale_dtype
        ``"float16"``: scales rounded by :func:`round_scales` before the codes are computed
        against them (module docstring).

    Returns
    -------
    QuantizedWeight
        Codes ``[K_pad, N]``, scales (and zero points) ``[n_groups, N]``; see the module
        docstring for the formulas, padding and zero-scale groups.

    Raises
    ------
    ValueError
        ``w`` is not a 2-D floating-point array with K >= 1, or holds inf or nan.
    """
    w = _as_float32(w, "weights", ndim=2)
    k, n = w.shape
    if k < 1:
        raise ValueError(f"weights must have K >= 1 rows, got shape {w.shape}")
    g, n_groups = scheme.group_size_for(k), scheme.n_groups(k)
    padded = np.zeros((n_groups * g, n), dtype=np.float32)
    padded[:k] = w
    groups = padded.reshape(n_groups, g, n)
    b = scheme.bits
    if scheme.symmetric:
        half = np.float32(1 << (b - 1))
        hi, lo = groups.max(axis=1), groups.min(axis=1)
        scale = _nonzero_scale(-np.where(np.abs(hi) > np.abs(lo), hi, lo) / half)
        scale = round_scales(scale, scale_dtype)
        with np.errstate(over="ignore"):  # 1 / s overflows only for a subnormal s
            inverse = np.float32(1) / scale
        finite = np.isfinite(inverse)
        scaled = np.where(finite[:, None, :], groups * np.where(finite, inverse, 0)[:, None, :],
                          groups / scale[:, None, :])
        # C roundf(x) = floor(x + 0.5) for float32 x >= -0.5 (exact in float64); lower x clip to 0
        shifted = (scaled + half).astype(np.float64)
        q = np.clip(np.floor(shifted + 0.5), 0, 2 * half - 1).astype(np.uint8)
        zero = None
    else:
        qmax = (1 << b) - 1
        lo = np.minimum(groups.min(axis=1), np.float32(0))
        hi = np.maximum(groups.max(axis=1), np.float32(0))
        with np.errstate(over="ignore"):  # an overflowing range is reported just below
            scale = _nonzero_scale((hi - lo) / np.float32(qmax))
        scale = round_scales(scale, scale_dtype)
        zero_f = np.clip(np.rint(-lo / scale), 0, qmax)
        q = np.clip(np.rint(groups / scale[:, None, :]) + zero_f[:, None, :], 0, qmax)
        q = q.astype(np.uint8)
        zero = zero_f.astype(np.uint8)
    return QuantizedWeight(q.reshape(n_groups * g, n), scale, zero, b, g, k)


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """float32 ``[K, N]``: ``s[grp, n] * (q[k, n] - z[grp, n])`` with the padding rows dropped."""
    q = qw.q.reshape(qw.n_groups, qw.group_size, qw.n).astype(np.int32)
    w = (q - qw.zero_points()[:, None, :]).astype(np.float32) * qw.scale[:, None, :]
    return w.reshape(qw.k_padded, qw.n)[: qw.k]


def check_act_bits(act_bits: int) -> int:
    """Validate an activation width (2..16) and return it as an ``int``.

    Raises
    ------
    OptionError
        ``act_bits`` is not an integer in 2..16.
    """
    if isinstance(act_bits, bool) or not isinstance(act_bits, int | np.integer) \
            or not MIN_ACT_BITS <= act_bits <= MAX_ACT_BITS:
        raise OptionError(f"activation bits must be an integer in {MIN_ACT_BITS}..{MAX_ACT_BITS}, "
                          f"got {act_bits!r}")
    return int(act_bits)


#: ``--act-group-size`` values besides a positive integer: one scale per token row, or blocks
#: as long as each layer's weight groups.
ACT_GROUP_ROW, ACT_GROUP_WEIGHT = "row", "group"
ACT_GROUP_KEYWORDS = (ACT_GROUP_ROW, ACT_GROUP_WEIGHT)


def check_act_group_size(value: int | str) -> int | str:
    """Validate an ``--act-group-size`` value: a positive integer, ``row`` or ``group``.

    ``0`` (and ``"0"``) mean ``row``; a numeric string is converted to ``int``.

    Raises
    ------
    OptionError
        Anything else.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        if value == 0:
            return ACT_GROUP_ROW
        if value > 0:
            return int(value)
    elif value in ACT_GROUP_KEYWORDS:
        return str(value)
    raise OptionError(f"activation group size must be a positive integer, 'row' (0: one scale "
                      f"per token row) or 'group' (each layer's weight group size), got {value!r}")


@dataclasses.dataclass(frozen=True)
class ActBlocks:
    """How the activation blocks and the weight groups of one layer cut K (module docstring).

    Parameters
    ----------
    k
        The reduction length K.
    group_size
        The weight group size g.
    act_group
        Rows A per activation scale, >= 1; values above K are stored as K (one block per row).

    Raises
    ------
    OptionError
        A and g do not nest: A is neither a multiple nor a divisor of g, and neither one block
        nor one group covers K. The message names the valid values.
    ValueError
        ``k``, ``group_size`` or ``act_group`` below 1.
    """

    k: int
    group_size: int
    act_group: int

    def __post_init__(self) -> None:
        k, g, a = (int(v) for v in (self.k, self.group_size, self.act_group))
        if min(k, g, a) < 1:
            raise ValueError(f"k, group_size and act_group must be >= 1, got {k}, {g}, {a}")
        a = min(a, k)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "group_size", g)
        object.__setattr__(self, "act_group", a)
        if a % g and g % a and k > g and a < k:
            raise OptionError(
                f"activation group size {a} does not fit weight groups of {g} (K = {k}): "
                f"use a divisor of {g} ({', '.join(map(str, _divisors(g)))}), a multiple of "
                f"{g}, {k} or more (one scale per row), or 'group'")

    @classmethod
    def resolve(cls, value: int | str, k: int, group_size: int) -> ActBlocks:
        """The blocks of a layer for an ``--act-group-size`` value (:func:`check_act_group_size`):
        ``row`` is one block of K, ``group`` blocks of g."""
        value = check_act_group_size(value)
        size = {ACT_GROUP_ROW: k, ACT_GROUP_WEIGHT: group_size}.get(value, value)
        return cls(k, group_size, size)

    @property
    def per_row(self) -> bool:
        """One block covers K: one scale per token row."""
        return self.act_group == self.k

    @property
    def n_blocks(self) -> int:
        """Activation scales per token: ``ceil(K / A)``."""
        return -(-self.k // self.act_group)

    @property
    def sum_size(self) -> int:
        """Rows B of one sum block: g when A is a multiple of g (or A = K), else A."""
        a, g = self.act_group, self.group_size
        return g if a % g == 0 or a == self.k else a

    @property
    def n_sums(self) -> int:
        """Sum blocks J per token and column: ``ceil(K / B)``."""
        return -(-self.k // self.sum_size)

    def group_of(self) -> np.ndarray:
        """int64 ``[J]``: the weight group of each sum block."""
        return np.arange(self.n_sums) * self.sum_size // self.group_size

    def block_of(self) -> np.ndarray:
        """int64 ``[J]``: the activation block of each sum block."""
        return np.arange(self.n_sums) * self.sum_size // self.act_group


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def split_groups(qw: QuantizedWeight, blocks: ActBlocks) -> QuantizedWeight:
    """``qw`` regrouped into the sum blocks of ``blocks``: groups of B rows, each with the scale
    and zero point of the weight group holding it. Its :func:`group_sums` are the sums
    ``S[t, j, n]`` of the module docstring; ``qw`` itself when ``B = g``.

    Raises
    ------
    ValueError
        ``blocks`` is for another K or group size.
    """
    if (blocks.k, blocks.group_size) != (qw.k, qw.group_size):
        raise ValueError(f"blocks for K={blocks.k}, g={blocks.group_size} applied to a weight "
                         f"with K={qw.k}, g={qw.group_size}")
    size = blocks.sum_size
    if size == qw.group_size:
        return qw
    groups = blocks.group_of()
    rows = blocks.n_sums * size
    zero = qw.zero_points()[groups]
    q = np.repeat(zero.astype(np.uint8), size, axis=0)  # padding rows hold the zero point
    kept = min(rows, qw.k_padded)
    q[:kept] = qw.q[:kept]
    return QuantizedWeight(q, qw.scale[groups], None if qw.zero is None else qw.zero[groups],
                           qw.bits, size, qw.k)


def quantize_activations(x: np.ndarray, act_bits: int = 8,
                         act_group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric quantization of activations, one scale per row and block of K.

    Parameters
    ----------
    x
        ``[T, K]`` floating-point activations, all finite; rounded to float32.
    act_bits
        Activation width b_a, 2..16.
    act_group
        Rows A per scale (>= 1; the last block may be partial; A >= K is one block); None: one
        scale per row, returned without the blocks axis.

    Returns
    -------
    xq : numpy.ndarray
        int32 ``[T, K]`` in ``[-(2**(b_a-1) - 1), 2**(b_a-1) - 1]``.
    sx : numpy.ndarray
        float32 ``[T, ceil(K / A)]`` (``[T]`` for ``act_group=None``), positive:
        ``max|x[t, blk]| / (2**(b_a-1) - 1)``, or 1 where that is 0.

    Raises
    ------
    OptionError
        ``act_bits`` is outside 2..16.
    ValueError
        ``x`` is not a 2-D floating-point array, or holds inf or nan; ``act_group`` below 1.
    """
    qmax = (1 << (check_act_bits(act_bits) - 1)) - 1
    x = _as_float32(x, "activations", ndim=2)
    t, k = x.shape
    a = k if act_group is None else int(act_group)
    if a < 1:
        raise ValueError(f"act_group must be >= 1, got {act_group}")
    a = max(min(a, k), 1)
    n_blocks = -(-k // a) if k else 1
    padded = np.zeros((t, n_blocks * a), np.float32)
    padded[:, :k] = np.abs(x)
    amax = padded.reshape(t, n_blocks, a).max(axis=2, initial=np.float32(0))
    sx = _nonzero_scale(amax / np.float32(qmax))
    per_k = np.repeat(sx, a, axis=1)[:, :k]
    xq = np.clip(np.rint(x / per_k), -qmax, qmax).astype(np.int32)
    return xq, (sx[:, 0] if act_group is None else sx)


def group_sums(xq: np.ndarray, qw: QuantizedWeight) -> np.ndarray:
    """Exact group sums ``S[t, grp, n] = sum_{k in grp} (q[k, n] - z[grp, n]) * xq[t, k]``.

    Parameters
    ----------
    xq
        Integer ``[T, K]`` quantized activations (K = ``qw.k``).
    qw
        The quantized weight.

    Returns
    -------
    numpy.ndarray
        int32 ``[T, n_groups, N]``, computed in int64.

    Raises
    ------
    ValueError
        ``xq`` is not a 2-D integer array with ``qw.k`` columns.
    OptionError
        A sum does not fit in int32 (use smaller groups or fewer activation bits).
    """
    xq = np.asarray(xq)
    if not np.issubdtype(xq.dtype, np.integer) or xq.ndim != 2 or xq.shape[1] != qw.k:
        raise ValueError(f"quantized activations must be 2-D integers [T, {qw.k}], got "
                         f"{xq.dtype} {xq.shape}")
    t = xq.shape[0]
    x_pad = np.zeros((t, qw.k_padded), dtype=np.int64)
    x_pad[:, : qw.k] = xq
    q = qw.q.reshape(qw.n_groups, qw.group_size, qw.n).astype(np.int64)
    q -= qw.zero_points()[:, None, :]
    sums = np.einsum("tgk,gkn->tgn", x_pad.reshape(t, qw.n_groups, qw.group_size), q)
    if sums.size and int(np.abs(sums).max()) > _INT32_MAX:
        raise OptionError(f"a group sum reaches {int(np.abs(sums).max())}, beyond int32; use a "
                          f"smaller group size than {qw.group_size} or fewer activation bits")
    return sums.astype(np.int32)


def block_sums(xq: np.ndarray, qw: QuantizedWeight, blocks: ActBlocks) -> np.ndarray:
    """Exact sums per sum block (module docstring): int32 ``[T, J, N]``, the
    :func:`group_sums` of :func:`split_groups` (``[T, n_groups, N]`` when ``B = g``)."""
    return group_sums(xq, split_groups(qw, blocks))


def combine_sums(sums: np.ndarray, sx: np.ndarray, scale: np.ndarray,
                 blocks: ActBlocks) -> np.ndarray:
    """float32 ``[T, N]``: ``sum_j (s[grp(j), n] * sx[t, blk(j)]) * float32(S[t, j, n])`` in
    order of j, from int32 ``sums[T, J, N]``, ``sx[T, n_blocks]`` (or ``[T]``: one block) and
    ``scale[n_groups, N]``."""
    s = np.asarray(scale, np.float32)[blocks.group_of()]
    sx = np.asarray(sx, np.float32).reshape(len(sums), -1)
    factor = s[None, :, :] * sx[:, blocks.block_of(), None]
    return (factor * np.asarray(sums).astype(np.float32)).sum(axis=1, dtype=np.float32)


def quantized_matmul(x: np.ndarray, qw: QuantizedWeight, act_bits: int = 8,
                     act_group: int | None = None) -> np.ndarray:
    """The reference quantized ``x @ W``.

    Parameters
    ----------
    x
        ``[..., K]`` floating-point activations; the leading dims are flattened to T rows.
    qw
        The quantized weight ``W[K, N]``.
    act_bits
        Activation width b_a, 2..16.
    act_group
        Rows A per activation scale (:class:`ActBlocks`); None: one scale per row.

    Returns
    -------
    numpy.ndarray
        float32 ``[..., N]``: ``y[t, n] = sum_j (s[grp(j), n] * sx[t, blk(j)]) * S[t, j, n]``.

    Raises
    ------
    ValueError
        ``x`` does not end in K = ``qw.k`` or is not finite floating point.
    OptionError
        ``act_bits`` is outside 2..16, ``act_group`` does not nest with the weight groups, or
        a group sum overflows int32.
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != qw.k:
        raise ValueError(f"activations must have shape [..., {qw.k}], got {x.shape}")
    lead = x.shape[:-1]
    blocks = ActBlocks(qw.k, qw.group_size, qw.k if act_group is None else act_group)
    xq, sx = quantize_activations(x.reshape(-1, qw.k), act_bits, blocks.act_group)
    y = combine_sums(block_sums(xq, qw, blocks), sx, qw.scale, blocks)
    return y.reshape(*lead, qw.n)
