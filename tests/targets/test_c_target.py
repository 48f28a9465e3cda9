"""The c target: the generated C library builds with cc, runs without Python or TVM, matches
onnxruntime (float) and the llvm build (quantized), and fails cleanly on damaged weights."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tvm import relax

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.cli import main
from sail_compiler.errors import ArtifactError, SailError
from sail_compiler.frontend.signature import ModelSignature, TensorSpec
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.c.emit import emit_model
from sail_compiler.targets.c.target import CTarget, build_library
from sail_compiler.verify import (
    TARGET_AGREEMENT,
    InputPlan,
    OnnxRuntimeReference,
    compare,
    generate_inputs,
    verify_model,
)
from sail_compiler.weights_file import read_weight_file

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the c target builds with make and cc")

WERROR = "WARNINGS=-Wall -Wextra -Werror"
# -O0: UBSan at -O1 takes minutes on the kernels' 700 KB of C.
SANITIZE = "CFLAGS=-O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all"
UNBUILT = shutil.ignore_patterns("build", "lib*", "sail_main")


@pytest.fixture(scope="module")
def float_artifact(tiny_decoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float tiny decoder for c, built with -Wall -Wextra -Werror on sail's own files."""
    out = tmp_path_factory.mktemp("c") / "tiny"
    compile_model(tiny_decoder, out, CompileOptions(target="c"))
    build_library(out, make_args=(WERROR,))
    return out


def _main_args(artifact: Path, inputs: dict[str, np.ndarray], tmp: Path) -> list[str]:
    args = []
    for name, value in inputs.items():
        np.save(tmp / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp / name}.npy"]
    return [str(artifact / "sail_main"), str(artifact / "weights.bin"), *args]


def test_float_decoder_matches_onnxruntime(float_artifact: Path, tiny_decoder: Path) -> None:
    artifact = Artifact(float_artifact)
    reference = OnnxRuntimeReference(tiny_decoder)
    for plan in (InputPlan(batch=1, seq_len=1), InputPlan(batch=2, seq_len=7)):
        inputs = generate_inputs(artifact.signature, plan)
        logits = artifact.run(inputs)["logits"]
        assert logits.shape == (plan.batch, plan.seq_len, 1024)
        assert compare(logits, reference.run(inputs)["logits"])["rel_l2_err"] < 1e-4


def test_generated_c_reads_like_the_graph(float_artifact: Path) -> None:
    model_c = (float_artifact / "model.c").read_text()
    assert "SAIL_CALL(" in model_c and "sail_rt_release(model, &b->" in model_c
    assert "#include \"sail_tvm_shim.h\"" in (float_artifact / "kernels.c").read_text()
    assert "tvm/" not in (float_artifact / "kernels.c").read_text().split("#include <math.h>")[0]
    header = (float_artifact / "model.h").read_text()
    assert "input_ids: int64[batch, seq]" in header and "SAIL_MODEL_NUM_OUTPUTS 1" in header


def test_kv_decoder_several_lengths_one_artifact(tiny_decoder_kv: Path) -> None:
    plans = [InputPlan(seq_len=5, past_len=0), InputPlan(seq_len=1, past_len=7),
             InputPlan(batch=2, seq_len=3, past_len=4)]
    report = verify_model(tiny_decoder_kv, CompileOptions(target="c"), plans)
    assert report["ok"] and report["target"] == "c"
    assert len({tuple(e["dims"].items()) for e in report["outputs"]}) == 3
    assert all(e["rel_l2_err"] < 1e-4 for e in report["outputs"]), report["outputs"]


@pytest.mark.parametrize(("bits", "model", "act_group", "scale_dtype"), [
    (4, "tiny_decoder_kv", "row", "float32"), (3, "micro_decoder", "row", "float32"),
    # per-block scales: sums of 32 rows inside groups of 128 (K = 128, 352), blocks of 8 in
    # groups of 16 and 8 (K = 16, 24: stored regrouped)
    (4, "tiny_decoder_kv", 32, "float32"), (2, "micro_decoder", 8, "float32"),
    # float16 scales, stored in 2 bytes by the c target, as float32 values by llvm
    (4, "tiny_decoder_kv", 32, "float16"), (8, "micro_decoder", "row", "float16")])
def test_quantized_matches_llvm(bits: int, model: str, act_group: int | str, scale_dtype: str,
                                request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The c artifact computes what llvm does: verify's reference check runs on an llvm build
    of the same quantized weights and compares its outputs with the c artifact's."""
    options = CompileOptions(target="c", quant=QuantScheme(bits, 128), act_group_size=act_group,
                             scale_dtype=scale_dtype)
    plans = [InputPlan(seq_len=4, past_len=0), InputPlan(seq_len=1, past_len=5)]
    report = verify_model(request.getfixturevalue(model), options, plans,
                          artifact_dir=tmp_path / "c")
    assert report["ref_exact"] is True and report["ok"]
    assert report["reference"]["probe_vs_artifact_rel_l2"] <= TARGET_AGREEMENT
    c_lut = report["reference"]["c_lut"]  # every LUT-GEMV of the library, exactly
    assert c_lut["exact"] and c_lut["calls"] > 0 and c_lut["mismatched"] == 0
    model_c = (tmp_path / "c" / "model.c").read_text()
    # every quantized matmul runs the runtime's kernels on a re-laid-out weight, and the
    # packed weight the llvm target reads is not stored a second time
    assert "/* layer model.layers.0.self_attn.k_proj: sail_lut_gemv(" in model_c
    assert model_c.count("SAIL_TRY(sail_rt_lut_gemv(") == model_c.count(".lut_planes\"")
    assert '{"model.layers.0.self_attn.k_proj.lut_planes", SAIL_UINT8,' in model_c
    assert ".packed\"" not in model_c
    scales = f'{{"model.layers.0.self_attn.k_proj.lut_scales", SAIL_{scale_dtype.upper()},'
    assert scales in model_c


def test_float16_scales_halve_the_scale_bytes(micro_decoder: Path, tmp_path: Path) -> None:
    """--scale-dtype float16: the c weight file stores every LUT weight's scales as float16
    (the rest unchanged in size), the reports record it, and a library refuses the weight file
    of the float32 build (its scale tensors have the wrong dtype)."""
    builds = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        compile_model(micro_decoder, out, CompileOptions(target="c", quant=QuantScheme(4, 16,
                                                                                       True),
                                                         scale_dtype=dtype))
        builds[dtype] = out
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["scale_dtype"] == dtype
        assert json.loads((out / "quant_plan.json").read_text())["scale_dtype"] == dtype
        report = json.loads((out / "quant_report.json").read_text())
        assert {layer["scale_dtype"] for layer in report["layers"]} == {dtype}
    f32, f16 = (dict(read_weight_file(builds[d] / "weights.bin")) for d in builds)
    assert f32.keys() == f16.keys()
    scale_names = [name for name in f32 if name.endswith(".lut_scales")]
    assert len(scale_names) == 8  # 7 per layer and the LM head
    aligned = 0
    for name in f32:
        a, b = f32[name], f16[name]
        assert a.shape == b.shape, name
        if name in scale_names:
            assert (a.dtype, b.dtype) == (np.float32, np.float16)
            aligned += -(-a.nbytes // 64) * 64 - -(-b.nbytes // 64) * 64
        else:
            assert a.dtype == b.dtype, name
    assert aligned > 0
    sizes = {d: (builds[d] / "weights.bin").stat().st_size for d in builds}
    assert sizes["float32"] - sizes["float16"] == aligned
    build_library(builds["float16"])
    inputs = generate_inputs(Artifact(builds["float16"]).signature, InputPlan(seq_len=2))
    command = _main_args(builds["float16"], inputs, tmp_path)
    command[1] = str(builds["float32"] / "weights.bin")
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "lut_scales" in proc.stderr and "float16" in proc.stderr, proc.stderr


def test_damaged_weights_are_reported(float_artifact: Path, tmp_path: Path) -> None:
    weights = (float_artifact / "weights.bin").read_bytes()
    inputs = generate_inputs(Artifact(float_artifact).signature, InputPlan(seq_len=2))
    command = _main_args(float_artifact, inputs, tmp_path)
    flipped = bytearray(weights)
    flipped[-5] ^= 0x10
    cases = {"truncated": (weights[: len(weights) // 3], "is truncated"),
             "header": (weights[:40], "is truncated"),
             "magic": (b"NOTSAIL\0" + weights[8:], "bad magic"),
             # format 1 held 4- and 8-bit LUT weights as bit planes: read as codes they would
             # be silently wrong, so the loader must refuse them
             "version": (weights[:8] + (1).to_bytes(4, "little") + weights[12:],
                         "has weight format 1, this model reads format 2; recompile"),
             "data": (bytes(flipped), "checksum of tensor"),
             "table": (weights[:80] + bytes([weights[80] ^ 1]) + weights[81:], "table checksum")}
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        proc = subprocess.run([command[0], str(path), *command[2:]], capture_output=True,
                              text=True)
        assert proc.returncode == 1, (name, proc.stderr)
        assert expected in proc.stderr and str(path) in proc.stderr, (name, proc.stderr)
    # Through Python: a damaged weight file is the artifact's error, found when it loads.
    copy = tmp_path / "artifact"
    shutil.copytree(float_artifact, copy)
    (copy / "weights.bin").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ArtifactError, match="is truncated"):
        Artifact(copy).run(inputs)


def test_one_run_under_address_and_ub_sanitizers(float_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "asan"
    shutil.copytree(float_artifact, copy, ignore=UNBUILT)
    build_library(copy, make_args=(SANITIZE, "sail_main"))
    inputs = generate_inputs(Artifact(copy).signature, InputPlan(batch=2, seq_len=3))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([*_main_args(copy, inputs, tmp_path), "--output-dir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "runtime error" not in proc.stderr and "Sanitizer" not in proc.stderr
    assert np.load(out / "logits.npy").shape == (2, 3, 1024)
    (tmp_path / "short.bin").write_bytes((copy / "weights.bin").read_bytes()[:1000])
    proc = subprocess.run([str(copy / "sail_main"), str(tmp_path / "short.bin"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "is truncated" in proc.stderr
    assert "Sanitizer" not in proc.stderr


def test_inconsistent_inputs_are_rejected(float_artifact: Path, tmp_path: Path) -> None:
    inputs = generate_inputs(Artifact(float_artifact).signature, InputPlan(seq_len=3))
    inputs["attention_mask"] = np.ones((1, 4), np.int64)  # seq is 3 in input_ids
    proc = subprocess.run(_main_args(float_artifact, inputs, tmp_path), capture_output=True,
                          text=True)
    assert proc.returncode == 3
    assert "attention_mask: dim 1 ('seq') is 4, but another input gave it 3" in proc.stderr
    inputs["attention_mask"] = np.ones((1, 3), np.int64)
    inputs["input_ids"] = np.array([[1, 2, 5000]], np.int64)
    proc = subprocess.run(_main_args(float_artifact, inputs, tmp_path), capture_output=True,
                          text=True)
    assert proc.returncode == 3 and "values must lie in [0, 1024), got 5000" in proc.stderr


def test_failed_build_shows_the_compiler(float_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(float_artifact, copy, ignore=UNBUILT)
    (copy / "model.c").write_text("#error sail test: broken model.c\n")
    with pytest.raises(ArtifactError, match="broken model.c"):
        build_library(copy, make_args=("build/model.o",))


def test_cli_build_and_run(float_artifact: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(float_artifact)]) == 0
    assert "sail_main" in capsys.readouterr().out
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3]], np.int64))
    np.save(tmp_path / "mask.npy", np.ones((1, 3), np.int64))
    assert main(["run", str(float_artifact), "--input", f"input_ids={tmp_path / 'ids.npy'}",
                 "--input", f"attention_mask={tmp_path / 'mask.npy'}",
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "logits.npy").shape == (1, 3, 1024)
    llvm = tmp_path / "llvm"
    shutil.copytree(float_artifact, llvm, ignore=shutil.ignore_patterns("*.c", "build", "lib*"))
    manifest = (llvm / "manifest.json").read_text()
    (llvm / "manifest.json").write_text(manifest.replace('"target": "c"', '"target": "llvm"'))
    assert main(["build", str(llvm)]) == 2
    assert "sail build builds c artifacts" in capsys.readouterr().err


def test_build_depends_on_the_module_only(micro_decoder: Path, tmp_path: Path) -> None:
    """A module lowered by the compiler's own c target object, built by another one that never
    lowered anything, gives the artifact ``compile_model`` writes, byte for byte, with every
    weight named after its layer (the names come from the module: a table kept on the lowering
    target object left this build's weights ``const_<i>`` and its LUT-GEMVs ``lut_<i>``)."""
    options = CompileOptions(target="c", quant=QuantScheme.parse("w4g16"))
    compile_model(micro_decoder, tmp_path / "compiled", options)
    lowered = compile_model(micro_decoder, None, dataclasses.replace(options, emit="lower"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    CTarget().build(lowered.module, lowered.signature, fresh, options)
    for name in ("model.c", "model.h", "kernels.c", "weights.bin"):
        assert (fresh / name).read_bytes() == (tmp_path / "compiled" / name).read_bytes(), name
    model_c = (fresh / "model.c").read_text()
    for layer in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert f'{{"model.layers.0.{layer}.lut_planes", SAIL_UINT8,' in model_c, layer
    assert '{"lut_' not in model_c
    assert "/* layer model.layers.0.mlp.down_proj: sail_lut_gemv(" in model_c


def test_unsupported_bindings_are_listed() -> None:
    """A module that was not lowered: every binding the emitter cannot write is named."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            z = bb.emit_output(relax.op.multiply(y, x))
        bb.emit_func_output(z)
    signature = ModelSignature((TensorSpec("x", "float32", (4,)),),
                               (TensorSpec("z", "float32", (4,)),))
    with pytest.raises(SailError, match=r"2 binding\(s\)") as info:
        emit_model(bb.get(), signature, "test")
    assert "relax.add" in str(info.value) and "relax.multiply" in str(info.value)


def test_concatenations_copy_runs(tmp_path: Path) -> None:
    """``relax.concat`` runs as the runtime's ``sail_rt_concat`` (memcpy of contiguous runs):
    three parts with a weight among them, on the first, middle and last axis, with an empty
    part, equal to NumPy's concatenate; an int64 concatenation too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)[:, :, :2] - 5.0
    nodes = [helper.make_node("Concat", ["a", "w", "b"], ["y1"], axis=2),
             helper.make_node("Concat", ["a", "a"], ["y0"], axis=0),
             helper.make_node("Concat", ["a", "b2"], ["y3"], axis=-1),
             helper.make_node("Concat", ["i", "i"], ["yi"], axis=1)]
    graph = helper.make_graph(nodes, "concat", [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, "s", 4]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, "p", 4]),
        helper.make_tensor_value_info("b2", TensorProto.FLOAT, [1, 2, "s", 3]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [2, 5])], [
        helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 2, "s1", 4]),
        helper.make_tensor_value_info("y0", TensorProto.FLOAT, [2, 2, "s", 4]),
        helper.make_tensor_value_info("y3", TensorProto.FLOAT, [1, 2, "s", 7]),
        helper.make_tensor_value_info("yi", TensorProto.INT64, [2, 10])],
        [numpy_helper.from_array(np.broadcast_to(weight, (1, 2, 2, 4)).copy(), "w")])
    model = tmp_path / "concat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "c"
    compile_model(model, out, CompileOptions(target="c"))
    model_c = (out / "model.c").read_text()
    assert model_c.count("SAIL_TRY(sail_rt_concat(") == 4 and "concatenate" not in model_c
    rng = np.random.default_rng(3)
    for s, p in ((3, 0), (1, 5)):
        x = {"a": rng.standard_normal((1, 2, s, 4)).astype(np.float32),
             "b": rng.standard_normal((1, 2, p, 4)).astype(np.float32),
             "b2": rng.standard_normal((1, 2, s, 3)).astype(np.float32),
             "i": rng.integers(-9, 9, (2, 5))}
        got = Artifact(out).run(x)
        w = np.broadcast_to(weight, (1, 2, 2, 4))
        np.testing.assert_array_equal(got["y1"], np.concatenate([x["a"], w, x["b"]], axis=2))
        np.testing.assert_array_equal(got["y0"], np.concatenate([x["a"], x["a"]], axis=0))
        np.testing.assert_array_equal(got["y3"], np.concatenate([x["a"], x["b2"]], axis=-1))
        np.testing.assert_array_equal(got["yi"], np.concatenate([x["i"], x["i"]], axis=1))


def test_reshapes_and_transposes_copy(tmp_path: Path) -> None:
    """``reshape`` / ``expand_dims`` / ``squeeze`` run as ``sail_rt_copy`` and ``permute_dims``
    as ``sail_rt_transpose``: every permutation of a 4-d tensor with a symbolic dim (at two
    lengths, one of them 1), a weight transposed, and int64 data, all equal to
    NumPy."""
    import itertools

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    perms = list(itertools.permutations(range(4)))
    dims = [2, "s", 3, 5]
    nodes = [helper.make_node("Transpose", ["x"], [f"t{i}"], perm=list(p))
             for i, p in enumerate(perms)]
    nodes += [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
              helper.make_node("Squeeze", ["u", "ax"], ["q"]),
              helper.make_node("Reshape", ["x", "shape"], ["r"]),
              helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
              helper.make_node("Add", ["wt", "v"], ["wv"]),
              helper.make_node("Transpose", ["i"], ["it"], perm=[2, 0, 1])]
    outputs = [helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, [dims[a] for a in p])
               for i, p in enumerate(perms)]
    outputs += [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims),
                helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, "s", 15]),
                helper.make_tensor_value_info("wv", TensorProto.FLOAT, [4, 3]),
                helper.make_tensor_value_info("it", TensorProto.INT64, [7, 2, 3])]
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(nodes, "moves", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [4, 3]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3, 7])], outputs, [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ax"),
        numpy_helper.from_array(np.array([2, -1, 15], dtype=np.int64), "shape")])
    model = tmp_path / "moves.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "c"
    compile_model(model, out, CompileOptions(target="c"))
    model_c = (out / "model.c").read_text()
    assert model_c.count("SAIL_TRY(sail_rt_transpose(") >= len(perms)
    assert "SAIL_TRY(sail_rt_copy(" in model_c
    rng = np.random.default_rng(4)
    for s in (4, 1):
        x = {"x": rng.standard_normal((2, s, 3, 5)).astype(np.float32),
             "v": rng.standard_normal((4, 3)).astype(np.float32),
             "i": rng.integers(-99, 99, (2, 3, 7))}
        got = Artifact(out).run(x)
        for i, p in enumerate(perms):
            np.testing.assert_array_equal(got[f"t{i}"], x["x"].transpose(p), err_msg=str(p))
        np.testing.assert_array_equal(got["q"], x["x"])
        np.testing.assert_array_equal(got["r"], x["x"].reshape(2, -1, 15))
        np.testing.assert_array_equal(got["wv"], weight.T + x["v"])
        np.testing.assert_array_equal(got["it"], x["i"].transpose(2, 0, 1))
