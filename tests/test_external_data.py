"""Streaming compile: external data stays memory-mapped through import and quantization.

A model counts as large above the preprocessing limit (1 GB); the tests lower that limit to 0
so that the tiny decoder takes the streaming path, and compare with the in-memory path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

from sail_compiler import driver
from sail_compiler.driver import compile_model
from sail_compiler.errors import ModelCheckError
from sail_compiler.external_data import ExternalData
from sail_compiler.frontend import converters, import_onnx, load_checked
from sail_compiler.frontend.check import can_map_external
from sail_compiler.ops.quant_matmul import weight_ref_of
from sail_compiler.options import CompileOptions
from sail_compiler.quant.plan import INITIALIZER_PREFIX
from sail_compiler.quant.reference import PackedWeight
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model, write_decoder


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    save_model(make_decoder(PRESETS["tiny"], kv_cache=True), path, external_data=True)
    return path


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model is 'large': the preprocessing is skipped and external data may stay mapped."""
    monkeypatch.setattr(converters, "_ORT_MAX_BYTES", 0)


def _artifact(path: Path) -> dict[str, bytes]:
    files = {f.name: f.read_bytes() for f in path.iterdir()}
    report = json.loads(files.pop("quant_report.json"))
    report.pop("seconds")  # wall time
    files["quant_report.json"] = json.dumps(report).encode()
    return files


def test_streaming_compile_equals_in_memory(external_model: Path, large: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The c artifact of the mapped path equals the in-memory path's byte for byte; the mapped
    path read every quantized weight from its file, one at a time, and kept it packed."""
    options = CompileOptions(target="c", quant=QuantScheme.parse("w4g128"))
    reads: list[str] = []
    original_read = ExternalData.read

    def read(self: ExternalData, name: str) -> np.ndarray:
        reads.append(name)
        return original_read(self, name)

    monkeypatch.setattr(ExternalData, "read", read)
    streamed = compile_model(external_model, tmp_path / "streamed", options)
    assert streamed.quantization is not None
    quantized = [q.layer.weight_name for q in streamed.quantization.layers if q.qw is not None]
    assert len(quantized) == 29 and sorted(reads) == sorted(quantized)
    assert all(isinstance(q.qw, PackedWeight) for q in streamed.quantization.layers if q.qw)

    monkeypatch.setattr(driver, "_weights_may_stay_in_files", lambda options: False)
    reads.clear()
    in_memory = compile_model(external_model, tmp_path / "in_memory", options)
    assert reads == []
    assert _artifact(tmp_path / "streamed") == _artifact(tmp_path / "in_memory")
    # both find the weights by the initializer names the IR carries, not by content or place
    assert [q.key for q in in_memory.quantization.layers] == \
        [q.key for q in streamed.quantization.layers]


def test_import_views_the_file(external_model: Path, large: None) -> None:
    """The imported constants of external initializers are the mapped bytes (no copy) and the
    loaded model holds no weight data."""
    model = load_checked(external_model, map_external=True)
    assert can_map_external(model)
    external = ExternalData(model, external_model.parent)
    assert len(external) > 0
    assert not any(t.raw_data for t in model.graph.initializer
                   if external_data_helper.uses_external_data(t))
    mod, _ = import_onnx(model, external)
    views = []

    import tvm
    from tvm import relax

    def visit(expr: object) -> None:
        if isinstance(expr, tvm.ir.GenericConst):
            views.append((weight_ref_of(expr), np.from_dlpack(expr.value)))

    relax.analysis.post_order_visit(mod["main"], visit)
    large_views = [(ref, v) for ref, v in views if v.nbytes >= 4096]
    assert len(large_views) >= len(external) - 4  # the few unaligned ones are copies
    # each is named after its initializer and views that initializer's bytes in the file
    for ref, view in large_views:
        assert ref is not None and ref.startswith(INITIALIZER_PREFIX)
        mapped = external.array(ref[len(INITIALIZER_PREFIX):])
        assert mapped is not None and np.shares_memory(view, mapped)


def test_small_or_rewritten_models_load_in_memory(external_model: Path) -> None:
    """Below the preprocessing limit the model is loaded as before (the preprocessing
    serializes it)."""
    model = load_checked(external_model, map_external=True)
    assert not any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_views_outlive_close(external_model: Path) -> None:
    model = onnx.load(str(external_model), load_external_data=False)
    external = ExternalData(model, external_model.parent)
    name = "model.layers.0.mlp.down_proj.weight"
    view, copy = external.array(name), external.read(name)
    assert view is not None and np.array_equal(view, copy) and not np.shares_memory(view, copy)
    external.close()
    assert float(view[0, 0]) == float(copy[0, 0])  # the view keeps its mapping

def test_bad_external_data_refused_before_work(external_model: Path, large: None,
                                               tmp_path: Path) -> None:
    """Missing or truncated external data is refused by the checks, before a weight is read or
    an artifact directory made."""
    data = external_model.parent / (external_model.name + ".data")
    payload = data.read_bytes()
    options = CompileOptions(target="c", quant=QuantScheme.parse("w4g128"))
    data.write_bytes(payload[: len(payload) - 1])
    with pytest.raises(ModelCheckError, match="is truncated"):
        compile_model(external_model, tmp_path / "out", options)
    data.unlink()
    with pytest.raises(ModelCheckError, match="not found next to the model"):
        compile_model(external_model, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_write_decoder_streams_the_same_weights(tmp_path: Path) -> None:
    """write_decoder (the 7b/13b presets' writer) writes make_decoder's tensors, one at a time,
    64-byte aligned, and the model maps without a copy."""
    path = tmp_path / "streamed.onnx"
    write_decoder(PRESETS["tiny"], path, kv_cache=True, seed=3)
    streamed = onnx.load(str(path))
    built = make_decoder(PRESETS["tiny"], kv_cache=True, seed=3)
    assert [t.name for t in streamed.graph.initializer] == [t.name for t in built.graph.initializer]
    for a, b in zip(streamed.graph.initializer, built.graph.initializer, strict=True):
        assert np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)), a.name
    external = ExternalData(onnx.load(str(path), load_external_data=False), tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    names = [t.name for t in model.graph.initializer
             if external_data_helper.uses_external_data(t)]
    assert names and all(external.array(name) is not None for name in names)


def test_what_stays_in_memory(external_model: Path, large: None) -> None:
    """Models whose rewrite reads tensors, or whose external tensors ExternalData cannot serve,
    are loaded in memory as before."""
    model = onnx.load(str(external_model), load_external_data=False)
    assert can_map_external(model)
    dq = onnx.load(str(external_model), load_external_data=False)
    dq.graph.node.append(onnx.helper.make_node("DequantizeLinear", ["a", "b"], ["c"]))
    assert not can_map_external(dq)
    bf16 = onnx.load(str(external_model), load_external_data=False)
    next(t for t in bf16.graph.initializer
         if external_data_helper.uses_external_data(t)).data_type = onnx.TensorProto.BFLOAT16
    assert not can_map_external(bf16)


@pytest.mark.parametrize("calibrated", [
    {"method": "gptq", "awq": True},
    {"avg_bits": 3.5},
    {"method": "gptq", "awq": True, "gptq_sequential": True},
], ids=["awq_gptq", "avg_bits", "awq_gptq_sequential"])
def test_streaming_calibrated_compile_equals_in_memory(large: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       calibrated: dict) -> None:
    """A calibrated compile of a mapped model runs onnxruntime on the external references (no
    weight data in the model it is given), spills the Hessians beside the artifact and removes
    them, and writes the artifact the in-memory path writes, byte for byte."""
    from sail_compiler.options import CalibrationSpec
    from sail_compiler.quant import calibrate

    external_model = tmp_path / "micro.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True), external_model, external_data=True)
    options = CompileOptions(target="c", quant=QuantScheme.parse("w4g8"),
                             calib=CalibrationSpec(samples=2, seq_len=8), **calibrated)
    sessions: list[tuple[bool, bool]] = []
    spills: list[Path] = []
    original_session, original_init = calibrate._session, calibrate.HessianStore.__init__

    def session(model: onnx.ModelProto, base_dir: Path | None = None):  # type: ignore[no-untyped-def]
        sessions.append((base_dir is not None, any(t.raw_data for t in model.graph.initializer
                                                   if np.prod(t.dims) >= 256)))
        return original_session(model, base_dir)

    def init(self, inputs, feeds, work_dir=None):  # type: ignore[no-untyped-def]
        original_init(self, inputs, feeds, work_dir)
        spills.append(self._dir)

    monkeypatch.setattr(calibrate, "_session", session)
    monkeypatch.setattr(calibrate.HessianStore, "__init__", init)
    compile_model(external_model, tmp_path / "streamed", options)
    assert sessions and all(sessions_ == (True, False) for sessions_ in sessions)
    (spill,) = spills
    assert spill is not None and spill.parent == tmp_path and not spill.exists()

    monkeypatch.setattr(driver, "_weights_may_stay_in_files", lambda options: False)
    sessions.clear()
    spills.clear()
    compile_model(external_model, tmp_path / "in_memory", options)
    assert sessions and all(s == (False, True) for s in sessions) and spills == [None]
    assert _artifact(tmp_path / "streamed") == _artifact(tmp_path / "in_memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in_memory", "micro.onnx",
                                                          "micro.onnx.data", "streamed"]
