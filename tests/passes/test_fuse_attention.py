"""FuseAttention: the exporters' attention becomes one sail.attention.

A ``Before``/``Expected`` pair; the forms it sees through (head repeats by Expand, Tile,
repeat_interleave and single-head broadcasts; scales on the query, the key or the scores;
soft-capping; boolean masks; the generated decoders' grouped 5-D form), each checked against the
unfused graph on the llvm target; a "does not fire" case per guard; and the real exports in
``tests/fixtures/hf`` and the generated decoders: one fused attention per layer, nothing of the
repeats left, and the compiled model against onnxruntime (padded masks, prefill and decode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax, tirx
from tvm.script import ir as I  # noqa: E741
from tvm.script import relax as R
from tvm.script import tirx as T

from sail_compiler.frontend.importer import import_onnx
from sail_compiler.lowering import build_pipeline, host_target, lowering_passes
from sail_compiler.ops.attention import attention, is_attention
from sail_compiler.passes import FuseAttention, WrapGatherIndices

pytestmark = pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
RNG = np.random.default_rng(11)
MIN = float(np.finfo(np.float32).min)


@I.ir_module
class Before:
    @R.function
    def main(q: R.Tensor(("b", 4, "s", 8), "float32"), k: R.Tensor(("b", 2, "t", 8), "float32"),
             v: R.Tensor(("b", 2, "t", 8), "float32"),
             mask: R.Tensor(("b", 1, "s", "t"), "float32")) -> R.Tensor(("b", 4, "s", 8),
                                                                         "float32"):
        b, t = T.int64(), T.int64()
        with R.dataflow():
            k5 = R.expand_dims(k, axis=[2])
            k6 = R.broadcast_to(k5, R.shape([b, 2, 2, t, 8]))
            kr = R.reshape(k6, R.shape([b, 4, t, 8]))
            kt = R.permute_dims(kr, axes=[0, 1, 3, 2])
            scores = R.matmul(q, kt)
            scaled = R.multiply(scores, R.const(0.125, "float32"))
            masked = R.add(scaled, mask)
            probs = R.nn.softmax(masked, axis=-1)
            v5 = R.expand_dims(v, axis=[2])
            v6 = R.broadcast_to(v5, R.shape([b, 2, 2, t, 8]))
            vr = R.reshape(v6, R.shape([b, 4, t, 8]))
            out = R.matmul(probs, vr)
            R.output(out)
        return out


def _expected() -> tvm.IRModule:
    b, s, t = (tirx.Var(n, "int64") for n in ("b", "s", "t"))
    q = relax.Var("q", relax.TensorType([b, 4, s, 8], "float32"))
    k = relax.Var("k", relax.TensorType([b, 2, t, 8], "float32"))
    v = relax.Var("v", relax.TensorType([b, 2, t, 8], "float32"))
    mask = relax.Var("mask", relax.TensorType([b, 1, s, t], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, v, mask]):
        with bb.dataflow():
            out = bb.emit_output(attention(q, k, v, mask, scale=0.125))
        bb.emit_func_output(out)
    return bb.get()


def test_before_expected() -> None:
    fuse = FuseAttention()
    after = fuse(Before)
    tvm.ir.assert_structural_equal(after, _expected())
    assert fuse.fused == ["4 query heads, 2 KV heads, scale 0.125"]


# -- the forms it sees through, against the unfused graph -------------------------------------


def _graph(form: str) -> tuple[tvm.IRModule, int, float]:
    """``main(q, k, v, mask)`` written in one of the exporters' forms; returns the module, the
    expected KV head count and the expected scale of the fused operator."""
    hq, d, batch_dim = 4, 16, tirx.Var("b", "int64")
    s, t = tirx.Var("s", "int64"), tirx.Var("t", "int64")
    hkv = {"tile_mqa": 1, "broadcast_mqa": 1, "mha": 4}.get(form, 2)
    rep = hq // hkv
    f32 = "float32"

    def ty(*shape: object) -> relax.TensorType:
        return relax.TensorType(list(shape), f32)

    q = relax.Var("q", ty(batch_dim, hq, s, d))
    k = relax.Var("k", ty(batch_dim, hkv, t, d))
    v = relax.Var("v", ty(batch_dim, hkv, t, d))
    mask = relax.Var("mask", ty(batch_dim, 1, s, t))
    op = relax.op
    scale, expected_scale = relax.const(0.25, f32), 0.25
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, v, mask]):
        with bb.dataflow():
            def repeat(x: relax.Expr) -> relax.Expr:
                if form in ("expand", "scale_on_qk", "softcap", "bool_mask", "divide"):
                    x5 = bb.emit(op.expand_dims(x, [2]))
                    x5 = bb.emit(op.broadcast_to(x5, [batch_dim, hkv, rep, t, d]))
                    return bb.emit(op.reshape(x5, [batch_dim, hq, t, d]))
                if form == "tile":
                    x5 = bb.emit(op.reshape(x, [batch_dim, hkv, 1, t, d]))
                    x5 = bb.emit(op.tile(x5, [1, 1, rep, 1, 1]))
                    return bb.emit(op.reshape(x5, [batch_dim, hq, t, d]))
                if form == "repeat":
                    return bb.emit(op.repeat(x, rep, axis=1))
                if form == "tile_mqa":
                    return bb.emit(op.tile(x, [1, hq, 1, 1]))
                if form == "broadcast_mqa":
                    return bb.emit(op.broadcast_to(x, [batch_dim, hq, t, d]))
                return x  # mha

            query, key = q, repeat(k)
            if form == "transpose_first":  # the key transposed before its repeat
                key = bb.emit(op.permute_dims(k, [0, 1, 3, 2]))
                key = bb.emit(op.repeat(key, rep, axis=1))
            else:
                key = bb.emit(op.permute_dims(key, [0, 1, 3, 2]))
            if form == "scale_on_qk":  # torch's SDPA decomposition: sqrt(scale) on each side
                root = relax.const(0.5, f32)
                query = bb.emit(op.multiply(q, root))
                key = bb.emit(op.multiply(key, root))
            scores = bb.emit(op.matmul(query, key))
            if form == "divide":
                scores = bb.emit(op.divide(scores, relax.const(4.0, f32)))
            elif form != "scale_on_qk":
                scores = bb.emit(op.multiply(scale, scores))
            if form == "softcap":
                capped = bb.emit(op.tanh(bb.emit(op.divide(scores, relax.const(5.0, f32)))))
                scores = bb.emit(op.multiply(capped, relax.const(5.0, f32)))
            if form == "bool_mask":
                allowed = bb.emit(op.greater_equal(mask, relax.const(0.0, f32)))
                logits = bb.emit(op.where(allowed, scores, relax.const(MIN, f32)))
            else:
                logits = bb.emit(op.add(mask, scores))
            probs = bb.emit(op.nn.softmax(logits, axis=-1))
            value = bb.emit(op.repeat(v, rep, axis=1)) if form == "transpose_first" \
                else repeat(v)
            out = bb.emit_output(op.matmul(probs, value))
        bb.emit_func_output(out)
    return bb.get(), hkv, expected_scale


def _build(mod: tvm.IRModule) -> relax.VirtualMachine:
    target = host_target(1)
    for lowering in lowering_passes(target):
        mod = lowering(mod)
    return relax.VirtualMachine(relax.build(mod, target=target,
                                            relax_pipeline=build_pipeline(target)), tvm.cpu())


def _fused_calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls: list[relax.Call] = []
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: calls.append(e) if is_attention(e) else None)
    return calls


FORMS = ["expand", "tile", "repeat", "tile_mqa", "broadcast_mqa", "mha", "transpose_first",
         "scale_on_qk", "divide", "softcap", "bool_mask"]


@pytest.mark.parametrize("form", FORMS)
def test_forms_fuse_and_keep_the_result(form: str) -> None:
    before, hkv, scale = _graph(form)
    after = FuseAttention()(before)
    calls = _fused_calls(after)
    assert len(calls) == 1, after.script()
    call = calls[0]
    assert int(call.args[1].ty.shape[1]) == hkv
    assert float(call.attrs["scale"]) == pytest.approx(scale, rel=1e-7)
    assert float(call.attrs["softcap"]) == (5.0 if form == "softcap" else 0.0)
    text = after.script()
    assert "broadcast_to" not in text and "R.tile" not in text and "softmax" not in text
    batch, s, t = 2, 3, 7
    q = RNG.standard_normal((batch, 4, s, 16)).astype(np.float32)
    k = RNG.standard_normal((batch, hkv, t, 16)).astype(np.float32)
    v = RNG.standard_normal((batch, hkv, t, 16)).astype(np.float32)
    mask = np.where(RNG.random((batch, 1, s, t)) < 0.3, MIN, 0.0).astype(np.float32)
    mask[..., -1] = 0.0  # every row attends to something
    args = [tvm.runtime.tensor(a) for a in (q, k, v, mask)]
    want = _build(before)["main"](*args).numpy()
    got = _build(after)["main"](*args).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -- what it leaves alone ---------------------------------------------------------------------


def _unfusable(case: str) -> tvm.IRModule:
    b, s, t = (tirx.Var(n, "int64") for n in ("b", "s", "t"))
    f32, op = "float32", relax.op
    q = relax.Var("q", relax.TensorType([b, 4, s, 8], f32))
    k = relax.Var("k", relax.TensorType([b, 2, t, 8], f32))
    mask = relax.Var("mask", relax.TensorType([b, 1, s, t], f32))
    c = relax.Var("c", relax.TensorType([], f32))
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, mask, c]):
        with bb.dataflow():
            # tile along the heads: head h reads KV head h mod 2, not h // 2
            kr = bb.emit(op.tile(k, [1, 2, 1, 1]) if case == "tile_heads"
                         else op.repeat(k, 2, axis=1))
            scores = bb.emit(op.matmul(q, bb.emit(op.permute_dims(kr, [0, 1, 3, 2]))))
            if case == "mask_before_scale":
                scores = bb.emit(op.multiply(bb.emit(op.add(scores, mask)),
                                             relax.const(0.5, f32)))
            elif case == "scale_not_constant":
                scores = bb.emit(op.add(bb.emit(op.multiply(scores, c)), mask))
            else:
                scores = bb.emit(op.add(bb.emit(op.multiply(scores, relax.const(0.5, f32))),
                                        mask))
            probs = bb.emit(op.nn.softmax(scores, axis=-2 if case == "softmax_axis" else -1))
            out = bb.emit_output(op.matmul(probs, kr))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("case", ["mask_before_scale", "scale_not_constant", "softmax_axis"])
def test_does_not_fire(case: str) -> None:
    before = _unfusable(case)
    fuse = FuseAttention()
    tvm.ir.assert_structural_equal(fuse(before), before)
    assert fuse.fused == []


def test_tile_of_several_kv_heads_stays_materialized() -> None:
    """Head h of ``tile(k, [1, R, 1, 1])`` is KV head ``h mod Hkv``, not ``h // R``: the tile
    is not seen through; the operator reads the tiled keys as multi-head attention."""
    before = _unfusable("tile_heads")
    after = FuseAttention()(before)
    (call,) = _fused_calls(after)
    assert int(call.args[1].ty.shape[1]) == 4 and "R.tile(" in after.script()
    q = RNG.standard_normal((1, 4, 2, 8)).astype(np.float32)
    k = RNG.standard_normal((1, 2, 5, 8)).astype(np.float32)
    mask = np.zeros((1, 1, 2, 5), np.float32)
    args = [tvm.runtime.tensor(a) for a in (q, k, mask, np.float32(1.0))]
    np.testing.assert_allclose(_build(after)["main"](*args).numpy(),
                               _build(before)["main"](*args).numpy(), rtol=1e-5, atol=1e-6)


def test_does_not_fire_on_a_per_group_mask_of_the_grouped_form() -> None:
    """The 5-D form with a mask that differs between the heads of a group stays as it is."""
    b, s, t = (tirx.Var(n, "int64") for n in ("b", "s", "t"))
    f32, op = "float32", relax.op
    q = relax.Var("q", relax.TensorType([b, 2, 2, s, 8], f32))
    k = relax.Var("k", relax.TensorType([b, 2, t, 8], f32))
    mask = relax.Var("mask", relax.TensorType([b, 1, 2, s, t], f32))
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k, mask]):
        with bb.dataflow():
            k5 = bb.emit(op.expand_dims(k, [2]))
            kt = bb.emit(op.permute_dims(k5, [0, 1, 2, 4, 3]))
            logits = bb.emit(op.add(bb.emit(op.matmul(q, kt)), mask))
            out = bb.emit_output(op.matmul(bb.emit(op.nn.softmax(logits, axis=-1)), k5))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(FuseAttention()(before), before)


# -- real exports and the generated decoders --------------------------------------------------


def _import(path: Path) -> tuple[tvm.IRModule, FuseAttention]:
    mod, _ = import_onnx(onnx.load(str(path)))
    fuse = FuseAttention()
    return fuse(WrapGatherIndices()(mod)), fuse


def _left_over(mod: tvm.IRModule) -> list[str]:
    """Float head repeats and softmaxes still in ``mod``."""
    lines = mod.script().splitlines()
    return [line.strip()[:120] for line in lines
            if ("R.broadcast_to(" in line or "R.tile(" in line or "R.repeat(" in line)
            and 'dtype="float32") =' in line or "R.nn.softmax(" in line]


HF_MODELS = [f"{family}_{exporter}{kv}" for family in ("llama", "gpt2")
             for exporter in ("legacy", "dynamo") for kv in ("", "_kv")] \
    + ["bert_legacy", "bert_dynamo"]


@pytest.mark.parametrize("name", HF_MODELS)
def test_fires_on_every_layer_of_the_hf_exports(name: str) -> None:
    mod, fuse = _import(FIXTURES / f"{name}.onnx")
    assert len(fuse.fused) == 2, fuse.fused  # two layers each
    assert len(_fused_calls(mod)) == 2
    assert _left_over(mod) == []
    if name.startswith("llama"):
        assert all(line.startswith("4 query heads, 2 KV heads") for line in fuse.fused)


def _feeds(model: onnx.ModelProto, batch: int, seq: int, past: int,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids, a left-padded mask (row 0 pads its first position) and random pasts."""
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(0, 256, (batch, seq), dtype=np.int64)
        elif value.name == "attention_mask":
            mask = np.ones((batch, past + seq), dtype=np.int64)
            mask[0, 0] = 0
            feeds[value.name] = mask
        elif value.name == "token_type_ids":
            feeds[value.name] = np.zeros((batch, seq), dtype=np.int64)
        else:
            shape = (batch, dims[1].dim_value, past, dims[3].dim_value)
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", ["llama_dynamo_kv", "llama_legacy_kv", "gpt2_dynamo_kv",
                                  "gpt2_legacy", "bert_dynamo"])
def test_fused_exports_match_onnxruntime(name: str) -> None:
    """One llvm build per export, a prefill and a one-token decode step (and, for the
    encoder, two lengths): every output within 1e-4 relative L2 of onnxruntime."""
    path = FIXTURES / f"{name}.onnx"
    model = onnx.load(str(path))
    mod, fuse = _import(path)
    assert fuse.fused
    vm = _build(mod)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    has_past = any(i.name.startswith("past_key_values") for i in model.graph.input)
    rng = np.random.default_rng(3)
    for batch, seq, past in ([(2, 4, 3), (2, 1, 9)] if has_past else [(2, 5, 0), (1, 9, 0)]):
        feeds = _feeds(model, batch, seq, past, rng)
        want = session.run(None, feeds)
        result = vm["main"](*(tvm.runtime.tensor(feeds[i.name]) for i in model.graph.input))
        got = [result] if len(want) == 1 else list(result)
        for out, g, w in zip(model.graph.output, got, want, strict=True):
            err = np.linalg.norm(g.numpy() - w) / max(np.linalg.norm(w), 1e-30)
            assert err < 1e-4, f"{name} {out.name} batch {batch} seq {seq} past {past}: {err}"


@pytest.mark.parametrize("fixture", ["tiny_decoder", "tiny_decoder_kv", "micro_decoder"])
def test_fires_on_the_generated_decoders(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    mod, fuse = _import(path)
    layers = 1 if fixture == "micro_decoder" else 4
    assert len(fuse.fused) == layers and len(_fused_calls(mod)) == layers
    assert _left_over(mod) == []


GEMMA3 = Path.home() / ".cache" / "sail-models" / "gemma3_270m"


@pytest.mark.skipif(not (GEMMA3 / "gemma3_270m_kv.onnx").exists(),
                    reason="Gemma 3 270M not built (bash ../shared/models/gemma3_270m/build.sh)")
@pytest.mark.parametrize("name", ["gemma3_270m_kv", "gemma3_270m"])
def test_fires_on_every_layer_of_gemma3(name: str) -> None:
    """The real export (multi-query: 4 query heads, 1 KV head of 256; sliding-window and full
    layers share the graph's masks): all 18 layers fused, no head repeat left."""
    path = GEMMA3 / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not built")
    mod, _ = import_onnx(onnx.load(str(path), load_external_data=False))
    fuse = FuseAttention()
    mod = fuse(mod)
    assert fuse.fused == ["4 query heads, 1 KV heads, scale 0.0625"] * 18
    assert _left_over(mod) == []
