"""The c target's attention: the runtime kernel ``sail_attention.c`` against the NumPy reference
of ``sail.attention`` (grouped, multi-query, multi-head; masks; decode and prefill; key/value
rows read in place from a larger cache; float16 keys and values; one and two threads, so both
work splits run), its float32 <-> float16 conversions bit for bit against NumPy, and
compiled models against onnxruntime (a Hugging Face export and a generated decoder with a KV
cache): no ``broadcast_to`` left in the generated code, the kernel called once per layer."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.ops.attention import reference_attention
from sail_compiler.targets.c.target import RUNTIME_DIR

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                 reason="needs a C compiler"),
              pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
MIN = np.finfo(np.float32).min
RNG = np.random.default_rng(23)


class _Args(ctypes.Structure):
    """``sail_attention_args`` (sail_attention.h)."""

    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("mask", ctypes.c_void_p), ("y", ctypes.c_void_p),
                *((name, ctypes.c_int64) for name in ("batch", "q_heads", "kv_heads", "q_len",
                                                      "kv_len", "head_dim", "value_dim")),
                ("k_strides", ctypes.c_int64 * 3), ("v_strides", ctypes.c_int64 * 3),
                ("mask_strides", ctypes.c_int64 * 4), ("scale", ctypes.c_float),
                ("softcap", ctypes.c_float), ("k16", ctypes.c_void_p), ("v16", ctypes.c_void_p)]


def _native_has_avx512() -> bool:
    """Whether ``-march=native`` builds the AVX-512 prefill tiles (sail_attention.c)."""
    done = subprocess.run([os.environ.get("CC", "cc"), "-march=native", "-dM", "-E", "-x", "c",
                           os.devnull], capture_output=True, text=True, check=False)
    return "__AVX512F__" in done.stdout


_X86 = platform.machine() in ("x86_64", "AMD64")
# native; on an AVX-512 machine also the AVX2 build (the nominal target: 8-lane tiles, 16
# registers), which native does not test there; portable C
BUILDS = {"native": ["-march=native"], "portable": ["-DSAIL_NO_SIMD"]}
if _X86 and shutil.which(os.environ.get("CC", "cc")) and _native_has_avx512():
    BUILDS["avx2"] = ["-march=native", "-mno-avx512f"]


@pytest.fixture(scope="module", params=list(BUILDS))
def kernel(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """sail_attention.c and the thread pool, built as the artifacts' Makefile builds them, with
    -DSAIL_NO_SIMD (plain arrays instead of GNU C vectors), and without AVX-512 where native
    has it."""
    out = tmp_path_factory.mktemp("attention") / "libsail_attention.so"
    sources = [str(RUNTIME_DIR / name) for name in ("sail_attention.c", "sail_threads.c")]
    flags = BUILDS[request.param]
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O3", *flags,
                    "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra",
                    "-Werror", "-o", str(out), *sources, "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    lib.sail_pool_create.restype = ctypes.c_void_p
    lib.sail_pool_destroy.argtypes = [ctypes.c_void_p]
    lib.sail_attention.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p]
    for name in ("sail_f16_from_f32", "sail_f32_from_f16"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _run(lib: ctypes.CDLL, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
         *, scale: float, softcap: float = 0.0, threads: int = 1, kv_len: int | None = None,
         dv: int | None = None) -> np.ndarray:
    """Call the kernel; ``k``/``v`` may hold more rows than ``kv_len`` (a cache with room) and
    be float16 (passed as ``k16``/``v16``)."""
    b, hq, s, d = q.shape
    kv_len = k.shape[2] if kv_len is None else kv_len
    dv = v.shape[3] if dv is None else dv
    y = np.full((b, hq, s, dv), np.nan, np.float32)
    args = _Args(q.ctypes.data, None, None, None if mask is None else mask.ctypes.data,
                 y.ctypes.data, b, hq, k.shape[1], s, kv_len, d, dv)
    if k.dtype == np.float16:
        args.k16 = k.ctypes.data
    else:
        args.k = k.ctypes.data
    if v.dtype == np.float16:
        args.v16 = v.ctypes.data
    else:
        args.v = v.ctypes.data
    args.k_strides[:] = [x // k.itemsize for x in k.strides[:3]]
    args.v_strides[:] = [x // v.itemsize for x in v.strides[:3]]
    if mask is not None:
        full = np.broadcast_to(mask, (b, hq, s, kv_len)).strides
        args.mask_strides[:] = [x // 4 for x in full]
    args.scale, args.softcap = scale, softcap
    pool = lib.sail_pool_create(threads) if threads > 1 else None
    try:
        status = lib.sail_attention(ctypes.byref(args), pool)
    finally:
        if pool:
            lib.sail_pool_destroy(pool)
    assert status == 0
    return y


def _mask(kind: str, b: int, s: int, t: int) -> np.ndarray | None:
    if kind == "none":
        return None
    allowed = np.arange(t)[None, :] <= np.arange(t - s, t)[:, None]
    if kind == "window":
        allowed &= np.arange(t)[None, :] > np.arange(t - s, t)[:, None] - 40
    allowed = np.broadcast_to(allowed, (b, 1, s, t)).copy()
    if kind == "padding":
        allowed[0, ..., :3] = False
    mask = np.where(allowed, 0.0, MIN).astype(np.float32)
    return mask[0, 0] if kind == "causal_2d" else mask


# (Hq, Hkv, D, Dv) x (batch, S, T) x mask
HEADS = [(8, 2, 64, 64), (4, 1, 256, 256), (4, 4, 16, 24), (9, 3, 36, 36)]
LENGTHS = [(1, 1, 1), (2, 1, 300), (1, 7, 7), (1, 37, 90), (2, 3, 150)]
MASKS = ["causal", "padding", "window", "none", "causal_2d"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads", HEADS)
def test_kernel_matches_reference(kernel: ctypes.CDLL, heads: tuple, threads: int) -> None:
    hq, hkv, d, dv = heads
    for (b, s, t), kind in zip(LENGTHS * 2, MASKS * 2, strict=False):
        q = RNG.standard_normal((b, hq, s, d)).astype(np.float32)
        k = RNG.standard_normal((b, hkv, t, d)).astype(np.float32)
        v = RNG.standard_normal((b, hkv, t, dv)).astype(np.float32)
        mask = _mask(kind, b, s, t)
        scale = 1.0 / np.sqrt(d)
        want = reference_attention(q, k, v, mask, scale=scale)
        got = _run(kernel, q, k, v, mask, scale=scale, threads=threads)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"b {b} s {s} t {t} mask {kind}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("seq", "d", "dv", "kind"),
                         [(1, 32, 32, "padding"), (20, 40, 24, "causal")],
                         ids=["decode", "prefill"])
def test_kernel_reads_rows_in_place_and_soft_caps(kernel: ctypes.CDLL, seq: int, d: int, dv: int,
                                                  kind: str, threads: int) -> None:
    """Keys and values of the first 300 rows of a cache with room for 512, whose unused rows
    hold NaN (never read); soft-capping. A decode step, and a prefill (20 query rows per kv
    head: the transposed-key tiles) with head dim 40 and value dim 24 (not whole tiles of 16)."""
    q = RNG.standard_normal((2, 4, seq, d)).astype(np.float32) * 4
    cache_k = np.full((2, 2, 512, d), np.nan, np.float32)
    cache_v = np.full((2, 2, 512, dv), np.nan, np.float32)
    cache_k[:, :, :300] = RNG.standard_normal((2, 2, 300, d))
    cache_v[:, :, :300] = RNG.standard_normal((2, 2, 300, dv))
    mask = _mask(kind, 2, seq, 300)
    want = reference_attention(q, cache_k[:, :, :300], cache_v[:, :, :300], mask, scale=0.5,
                               softcap=20.0)
    got = _run(kernel, q, cache_k, cache_v, mask, scale=0.5, softcap=20.0, threads=threads,
               kv_len=300)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _prefill_mask(kind: str, b: int, hq: int, s: int, t: int) -> np.ndarray:
    """Additive masks of a prefill continuing a cache of t - s keys: causal with row 0 of the
    batch left-padded by 3 keys (its first query rows see no key when nothing is cached), a
    17-key window, a window per query head (5 + 7 h keys: consecutive query rows have
    different masks), a causal mask passed transposed (its keys not contiguous), and two live
    keys per row, its own and one at random (the vectorized mask scans find it at any
    offset)."""
    pos = np.arange(t - s, t)[:, None]
    keys = np.arange(t)[None, :]
    if kind == "sparse":
        allowed = (keys == pos) | (keys == np.random.default_rng(s).integers(0, t, (s, 1)))
        allowed = np.broadcast_to(allowed, (b, 1, s, t)).copy()
    elif kind == "per_head":
        allowed = np.stack([(keys <= pos) & (keys > pos - 5 - 7 * h) for h in range(hq)])
        allowed = np.broadcast_to(allowed, (b, hq, s, t)).copy()
    else:
        allowed = keys <= pos
        if kind == "window":
            allowed &= keys > pos - 17
        allowed = np.broadcast_to(allowed, (b, 1, s, t)).copy()
        if kind == "padding":
            allowed[0, ..., :3] = False
    mask = np.where(allowed, 0.0, MIN).astype(np.float32)
    if kind == "transposed":
        return mask.swapaxes(2, 3).copy().swapaxes(2, 3)
    return mask


@pytest.mark.parametrize(("hq", "hkv", "d", "dv"), [(4, 1, 256, 48), (6, 2, 40, 72)])
@pytest.mark.parametrize("kind", ["padding", "window", "per_head", "transposed", "sparse"])
def test_prefill_tiles_edges(kernel: ctypes.CDLL, hq: int, hkv: int, d: int, dv: int,
                             kind: str) -> None:
    """Prefills on the transposed-key tiles whose query rows, keys and values are not whole
    blocks: query rows per kv head not a multiple of a unit or a register block, key counts
    not a multiple of a tile, window edges inside tiles, value dims past the last whole tile,
    rows with every key masked, masks that differ per head or are read with a stride; against
    the reference on 1, 2 and 3 threads, which give the same bits (a row's sums do not depend
    on which thread runs it)."""
    for b, s, past in [(1, 61, 0), (2, 13, 50), (1, 30, 97)]:
        q = RNG.standard_normal((b, hq, s, d)).astype(np.float32)
        k = RNG.standard_normal((b, hkv, past + s, d)).astype(np.float32)
        v = RNG.standard_normal((b, hkv, past + s, dv)).astype(np.float32)
        mask = _prefill_mask(kind, b, hq, s, past + s)
        scale = 1.0 / np.sqrt(d)
        want = reference_attention(q, k, v, mask, scale=scale)
        got = [_run(kernel, q, k, v, mask, scale=scale, threads=n) for n in (1, 2, 3)]
        np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"b {b} s {s} past {past}")
        for other in got[1:]:
            np.testing.assert_array_equal(other, got[0])


@pytest.mark.parametrize("kind", ["padding", "window", "per_head"])
def test_prefill_in_pieces_gives_the_same_bits(kernel: ctypes.CDLL, kind: str) -> None:
    """A prefill's later query rows run as a call of their own (the earlier rows' keys as the
    cache): the same bits as in the whole call, though the rows sharing a unit, and so the
    span of keys it scores, differ (the softmax sums lanes by key index)."""
    hq, hkv, d, s, cut = 4, 1, 64, 70, 29
    q = RNG.standard_normal((1, hq, s, d)).astype(np.float32)
    k = RNG.standard_normal((1, hkv, s, d)).astype(np.float32)
    v = RNG.standard_normal((1, hkv, s, d)).astype(np.float32)
    mask = _prefill_mask(kind, 1, hq, s, s)
    whole = _run(kernel, q, k, v, mask, scale=0.125)
    later = _run(kernel, q[:, :, cut:].copy(), k, v, mask[:, :, cut:].copy(), scale=0.125)
    np.testing.assert_array_equal(later, whole[:, :, cut:])


@pytest.mark.skipif(not _X86, reason="x86-64 builds")
@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
def test_prefill_tiles_width(avx512: bool, tmp_path: Path) -> None:
    """The prefill tiles' fused multiply-adds (the only ones in the file) are 16-lane (zmm) in
    AVX-512 builds and 8-lane (ymm) otherwise: compiled for AVX2 + FMA with and without
    -mavx512f, whatever CPU runs the tests."""
    out = tmp_path / "sail_attention.s"
    flags = ["-mavx2", "-mfma", "-mf16c", *(["-mavx512f"] if avx512 else [])]
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O3", *flags, "-ffp-contract=off",
                    "-Wall", "-Wextra", "-Werror", "-S", "-o", str(out),
                    str(RUNTIME_DIR / "sail_attention.c")], check=True)
    fmas = [line for line in out.read_text().splitlines() if "vfmadd" in line]
    assert fmas
    assert all(("zmm" in line) == avx512 and ("ymm" in line) != avx512 for line in fmas)


def test_kernel_edge_cases(kernel: ctypes.CDLL) -> None:
    q = RNG.standard_normal((1, 2, 3, 8)).astype(np.float32)
    empty = np.zeros((1, 1, 0, 8), np.float32)
    assert np.all(_run(kernel, q, empty, empty, None, scale=1.0) == 0.0)  # no keys: zeros
    k = RNG.standard_normal((1, 1, 4, 8)).astype(np.float32)
    masked = np.full((1, 1, 3, 4), MIN, np.float32)  # every key masked: uniform, as the graph
    np.testing.assert_allclose(_run(kernel, q, k, k, masked, scale=1.0),
                               reference_attention(q, k, k, masked, scale=1.0), rtol=1e-6)
    args = _Args()
    args.q_heads, args.kv_heads = 4, 3  # 3 does not divide 4
    assert kernel.sail_attention(ctypes.byref(args), None) == -1


def _halves_and_floats() -> tuple[np.ndarray, np.ndarray]:
    """Every float16 bit pattern; float32 inputs: every float16 value, the midpoints between
    neighbours and one float32 ulp either side (ties to even), the subnormal and overflow
    boundaries, infinities, quiet NaNs with payloads, and 2^20 random bit patterns."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    exact = halves.view(np.float16).astype(np.float32)
    finite = np.sort(exact[np.isfinite(exact) & (exact >= 0)])
    mid = (finite[:-1].astype(np.float64) + finite[1:]) / 2
    mid = np.concatenate([mid, [65504.0 + 16.0]]).astype(np.float32)  # 65520: to inf
    near = np.concatenate([mid, np.nextafter(mid, np.float32(0)),
                           np.nextafter(mid, np.float32(np.inf))])
    special = np.array([0.0, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-26, 3 * 2.0**-26, 1e-45,
                        65504.0, 65519.99, 65520.0, 1e30, np.inf], np.float32)
    bits = RNG.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    quiet_nans = (RNG.integers(0, 1 << 22, 64, dtype=np.uint32) | np.uint32(0x7FC00000))
    floats = np.concatenate([exact, near, special, bits.view(np.float32),
                             quiet_nans.view(np.float32)])
    return halves, np.concatenate([floats, -floats]).astype(np.float32)


def _signaling(x: np.ndarray) -> np.ndarray:
    """Which float32 elements are signaling NaNs (NaN with the quiet bit clear)."""
    b = x.view(np.uint32)
    return ((b & 0x7F800000) == 0x7F800000) & ((b & 0x7FFFFF) != 0) & ((b & 0x400000) == 0)


def test_f16_conversions_match_numpy(kernel: ctypes.CDLL) -> None:
    """float32 -> float16 (round to nearest even) and back, bit for bit against NumPy, built
    with F16C (native) and in portable C: the KV cache's storage. The one difference is on
    purpose: a signaling NaN becomes a quiet NaN (as F16C's vcvtps2ph does; NumPy keeps the
    signaling bit), so both builds store the same bits."""
    halves, floats = _halves_and_floats()
    got = np.empty(floats.size, np.uint16)
    kernel.sail_f16_from_f32(got.ctypes.data, floats.ctypes.data, floats.size)
    want = floats.astype(np.float16).view(np.uint16)
    snan = _signaling(floats)
    assert snan.any()
    np.testing.assert_array_equal(got[~snan], want[~snan])
    bits = floats[snan].view(np.uint32)  # quiet, the payload's top 10 bits (NumPy adds 1 when
    quiet = (bits >> 16 & 0x8000) | 0x7E00 | (bits >> 13 & 0x3FF)  # they are all 0)
    np.testing.assert_array_equal(got[snan], quiet.astype(np.uint16))
    back = np.empty(halves.size, np.float32)
    kernel.sail_f32_from_f16(back.ctypes.data, halves.ctypes.data, halves.size)
    want = halves.view(np.float16).astype(np.float32)
    snan = _signaling(want)
    np.testing.assert_array_equal(back.view(np.uint32)[~snan], want.view(np.uint32)[~snan])
    np.testing.assert_array_equal(back.view(np.uint32)[snan], want.view(np.uint32)[snan]
                                  | 0x400000)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads", HEADS)
def test_kernel_reads_f16_keys_and_values(kernel: ctypes.CDLL, heads: tuple, threads: int) -> None:
    """float16 keys and/or values (a KV cache stored as halves, read in place from a cache with
    room for more rows): the same bits as float32 keys and values holding the rounded numbers
    (the conversion is exact and the sums run in the same order), and the NumPy reference on
    the rounded numbers within the float32 tests' tolerance; decode, prefill (transposed key
    tiles), grouped heads, masks, and the decode's split over two threads."""
    hq, hkv, d, dv = heads
    for (b, s, t), kind in zip(LENGTHS * 2, MASKS * 2, strict=False):
        q = RNG.standard_normal((b, hq, s, d)).astype(np.float32)
        k16 = np.full((b, hkv, t + 9, d), np.nan, np.float16)
        v16 = np.full((b, hkv, t + 9, dv), np.nan, np.float16)
        k16[:, :, :t] = RNG.standard_normal((b, hkv, t, d))
        v16[:, :, :t] = RNG.standard_normal((b, hkv, t, dv))
        k32, v32 = k16.astype(np.float32), v16.astype(np.float32)
        mask = _mask(kind, b, s, t)
        scale = 1.0 / np.sqrt(d)
        want = reference_attention(q, k32[:, :, :t], v32[:, :, :t], mask, scale=scale)
        same = _run(kernel, q, k32, v32, mask, scale=scale, threads=threads, kv_len=t)
        for k, v in ((k16, v16), (k16, v32), (k32, v16)):
            got = _run(kernel, q, k, v, mask, scale=scale, threads=threads, kv_len=t)
            np.testing.assert_array_equal(got, same, err_msg=f"b {b} s {s} t {t} mask {kind} "
                                          f"{k.dtype} {v.dtype}")
        np.testing.assert_allclose(same, want, rtol=2e-5, atol=2e-6)


# -- compiled models --------------------------------------------------------------------------


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto, batch: int, seq: int, past: int, vocab: int,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids, a mask with row 0 left-padded, random pasts."""
    feeds = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
        elif value.name == "attention_mask":
            mask = np.ones((batch, past + seq), dtype=np.int64)
            mask[0, 0] = 0
            feeds[value.name] = mask
        else:
            shape = (batch, dims[1].dim_value, past, dims[3].dim_value)
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize(("model", "vocab"), [("llama_dynamo_kv", 256), ("tiny_kv", 1024)])
def test_compiled_model_matches_onnxruntime(model: str, vocab: int, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    """Float compile for the c target: sail_rt_attention once per layer, no broadcast_to, and
    prefill and decode steps within 1e-4 relative L2 of onnxruntime."""
    path = request.getfixturevalue("tiny_decoder_kv") if model == "tiny_kv" \
        else FIXTURES / f"{model}.onnx"
    out = tmp_path / "artifact"
    compile_model(path, out, CompileOptions(target="c"))
    model_c = (out / "model.c").read_text()
    layers = 4 if model == "tiny_kv" else 2
    assert model_c.count("SAIL_TRY(sail_rt_attention(") == layers
    assert "broadcast_to" not in model_c
    artifact = Artifact(out)
    onnx_model = onnx.load(str(path))
    session = _session(path)
    rng = np.random.default_rng(5)
    for batch, seq, past in [(2, 4, 3), (2, 1, 80)]:
        feeds = _feeds(onnx_model, batch, seq, past, vocab, rng)
        want = session.run(None, feeds)
        got = artifact.run(feeds)
        for name, w in zip([o.name for o in onnx_model.graph.output], want, strict=True):
            g = got[name]
            err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
            assert err < 1e-4, f"{model} {name} batch {batch} seq {seq} past {past}: {err}"


def test_broadcasts_copy(tmp_path: Path) -> None:
    """``broadcast_to`` (ONNX Expand) runs as ``sail_rt_broadcast``: repeats of inner, middle
    and outer axes, a new leading axis, a symbolic dim (at two lengths, one of them 1) and int64
    data, equal to NumPy. (The importer writes ONNX Tile as a TE kernel of its own; the c
    target's ``relax.tile`` legalization takes the same runtime path.)"""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"e1": [2, 1, 1, 5], "e2": [3, 1, 4, 1], "e3": [2, 2, 1, 3]}
    nodes = [helper.make_node("Expand", ["x", "e1"], ["y1"]),  # [1, s, 1, 1] -> [2, s, 1, 5]
             helper.make_node("Expand", ["x", "e2"], ["y2"]),  # -> [3, s, 4, 1]
             helper.make_node("Expand", ["i", "e3"], ["y3"])]  # int64 [2, s, 1] -> [2, 2, s, 3]
    graph = helper.make_graph(nodes, "broadcasts", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 1, 1]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [2, "s", 1])], [
        helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, "s", 1, 5]),
        helper.make_tensor_value_info("y2", TensorProto.FLOAT, [3, "s", 4, 1]),
        helper.make_tensor_value_info("y3", TensorProto.INT64, [2, 2, "s", 3])],
        [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in consts.items()])
    model = tmp_path / "broadcasts.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "c"
    compile_model(model, out, CompileOptions(target="c"))
    model_c = (out / "model.c").read_text()
    assert model_c.count("SAIL_TRY(sail_rt_broadcast(") == 3
    rng = np.random.default_rng(6)
    for s in (3, 1):
        x = {"x": rng.standard_normal((1, s, 1, 1)).astype(np.float32),
             "i": rng.integers(-99, 99, (2, s, 1))}
        got = Artifact(out).run(x)
        np.testing.assert_array_equal(got["y1"], np.broadcast_to(x["x"], (2, s, 1, 5)))
        np.testing.assert_array_equal(got["y2"], np.broadcast_to(x["x"], (3, s, 4, 1)))
        np.testing.assert_array_equal(got["y3"], np.broadcast_to(x["i"], (2, 2, s, 3)))
