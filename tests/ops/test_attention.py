"""sail.attention: type inference, printing, operand checks, and the llvm legalization against
the NumPy reference (grouped, multi-query and multi-head; masks; decode and prefill; symbolic
dims)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from sail_compiler.errors import OptionError, SailError
from sail_compiler.ops.attention import attention, is_attention, reference_attention

RNG = np.random.default_rng(7)
MIN = np.finfo(np.float32).min


def _var(name: str, shape: list, dtype: str = "float32") -> relax.Var:
    return relax.Var(name, relax.TensorType(shape, dtype))


def _module(hq: int, hkv: int, d: int, dv: int, mask_shape: list | None, *, scale: float,
            softcap: float = 0.0) -> tvm.IRModule:
    """``main(q, k, v[, mask])`` with symbolic batch, query length and key length."""
    b, s, t = (tirx.Var(n, "int64") for n in ("b", "s", "t"))
    names = {"b": b, "s": s, "t": t}
    params = [_var("q", [b, hq, s, d]), _var("k", [b, hkv, t, d]), _var("v", [b, hkv, t, dv])]
    if mask_shape is not None:
        params.append(_var("mask", [names.get(x, x) for x in mask_shape]))
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(attention(*params, scale=scale, softcap=softcap))
        bb.emit_func_output(out)
    return bb.get()


def _mask(kind: str, batch: int, s: int, t: int) -> np.ndarray:
    """Causal (queries at the end of the keys), causal + left padding, or a sliding window."""
    query_pos = np.arange(t - s, t)[:, None]
    key_pos = np.arange(t)[None, :]
    allowed = np.broadcast_to(key_pos <= query_pos, (batch, 1, s, t)).copy()
    if kind == "padding":
        allowed[0, ..., :2] = False
    elif kind == "window":
        allowed &= key_pos > query_pos - 3
    return np.where(allowed, 0.0, MIN).astype(np.float32)


def test_type_inference_and_printing() -> None:
    mod = _module(8, 2, 16, 12, ["b", 1, "s", "t"], scale=0.25)
    ty = mod["main"].ret_ty
    b, h, s, dv = ty.shape
    assert (str(b), int(h), str(s), int(dv), ty.dtype) == ("b", 8, "s", 12, "float32")
    text = mod.script()
    assert '"sail.attention"' in text and '"scale": 0.25' in text and '"softcap": 0.0' in text
    assert is_attention(mod["main"].body.blocks[0].bindings[0].value)


@pytest.mark.parametrize(("shapes", "message"), [
    (([1, 4, 2, 8], [1, 3, 5, 8], [1, 3, 5, 8], None), r"k has 3 heads, which must divide"),
    (([1, 4, 2, 8], [1, 2, 5, 4], [1, 2, 6, 8], None),
     r"head dim of k is 4, expected 8; length of v is 6, expected 5"),
    (([1, 4, 2, 8], [1, 2, 5, 8], [1, 2, 5, 8], [1, 3, 2, 5]), r"mask dim 1 is 3; it must be 1"),
    (([1, 4, 2, 8], [1, 2, 5, 8], [1, 2, 5, 8, 1], None), r"v must be 4-D, got 5"),
])
def test_rejects_inconsistent_operands(shapes: tuple, message: str) -> None:
    params = [_var(n, s) for n, s in zip("qkvm", shapes, strict=True) if s is not None]
    bb = relax.BlockBuilder()
    with pytest.raises(SailError, match=message), bb.function("f", params):
        bb.emit(attention(*params, scale=1.0))


def test_rejects_bad_dtype_and_attributes() -> None:
    q, k = _var("q", [1, 2, 1, 4], "float16"), _var("k", [1, 2, 3, 4])
    bb = relax.BlockBuilder()
    with pytest.raises(SailError, match="q must be float32, got float16"), \
            bb.function("f", [q, k]):
        bb.emit(attention(q, k, k, scale=1.0))
    with pytest.raises(OptionError, match="scale must be finite and nonzero"):
        attention(k, k, k, scale=float("inf"))
    with pytest.raises(OptionError, match="softcap must be finite and >= 0"):
        attention(k, k, k, scale=1.0, softcap=-1.0)


# (Hq, Hkv, D, Dv, mask kind, mask shape as the graph broadcasts it, softcap)
CASES = [
    (8, 2, 16, 16, "causal", ["b", 1, "s", "t"], 0.0),    # grouped-query
    (4, 1, 32, 16, "padding", ["b", 1, "s", "t"], 0.0),   # multi-query, Dv != D
    (4, 4, 8, 8, "window", ["b", 1, "s", "t"], 0.0),      # multi-head
    (6, 3, 16, 16, "causal", ["s", "t"], 30.0),           # rank-2 mask, soft-capping
    (4, 2, 8, 8, None, None, 0.0),                        # no mask
]


@pytest.mark.parametrize(("hq", "hkv", "d", "dv", "kind", "mask_shape", "softcap"), CASES)
def test_llvm_matches_reference(hq: int, hkv: int, d: int, dv: int, kind: str | None,
                                mask_shape: list | None, softcap: float) -> None:
    scale = 1.0 / np.sqrt(d)
    mod = _module(hq, hkv, d, dv, mask_shape, scale=scale, softcap=softcap)
    mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})),
                              tvm.cpu())
    for batch, s, t in ((2, 1, 9), (1, 5, 5), (2, 3, 11)):  # decode and prefill, one compile
        q = RNG.standard_normal((batch, hq, s, d)).astype(np.float32)
        k = RNG.standard_normal((batch, hkv, t, d)).astype(np.float32)
        v = RNG.standard_normal((batch, hkv, t, dv)).astype(np.float32)
        args = [q, k, v]
        if kind is not None:
            mask = _mask(kind, batch, s, t)
            args.append(mask[0, 0] if len(mask_shape) == 2 else mask)
        want = reference_attention(*args, scale=scale, softcap=softcap)
        got = vm["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"batch {batch}, s {s}, t {t}")


def test_reference_repeats_heads_as_repeat_interleave() -> None:
    """The reference against an explicit loop over query heads (head h reads h // R)."""
    q = RNG.standard_normal((1, 6, 2, 4)).astype(np.float32)
    k = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    v = RNG.standard_normal((1, 2, 3, 5)).astype(np.float32)
    got = reference_attention(q, k, v, scale=0.5)
    for h in range(6):
        x = q[0, h] @ k[0, h // 3].T * 0.5
        p = np.exp(x - x.max(-1, keepdims=True))
        np.testing.assert_allclose(got[0, h], (p / p.sum(-1, keepdims=True)) @ v[0, h // 3],
                                   rtol=1e-5)
