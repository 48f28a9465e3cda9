"""The c target's token loop (``sail_generate`` / ``sail generate``) and its LUT-GEMV runtime:
greedy ids equal an independent greedy loop (onnxruntime for float, the llvm build for the
quantized model), threads change nothing, and the quantized library is clean under the address
and undefined-behaviour sanitizers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.cli import main
from sail_compiler.errors import InputError, OptionError
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.targets.c.check import lut_reference_check
from sail_compiler.targets.c.target import build_library, generate
from sail_compiler.verify import InputPlan, generate_inputs

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="the c target builds with make and cc")

PROMPT = [3, 17, 256, 9, 1000]
TOKENS = 8
SANITIZE = "CFLAGS=-O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all"
SANITIZE_RUNTIME = "RUNTIME_OPT=-O1"


def _greedy(run, inputs: list[str], kv_shape: dict[str, tuple[int, ...]],
            prompt: list[int] = PROMPT) -> list[int]:
    """Greedy ids of a decoder given ``run(feeds) -> {name: array}`` (the independent loop)."""
    past = {name: np.zeros(shape, np.float32) for name, shape in kv_shape.items()}
    ids, out = list(prompt), []
    step_ids = np.array([prompt], np.int64)
    for _ in range(TOKENS):
        feeds = {"input_ids": step_ids,
                 "attention_mask": np.ones((1, len(ids)), np.int64), **past}
        result = run({k: v for k, v in feeds.items() if k in inputs})
        token = int(np.argmax(result["logits"][0, -1]))
        out.append(token)
        ids.append(token)
        step_ids = np.array([[token]], np.int64)
        past = {name: result["present." + name.removeprefix("past_key_values.")]
                for name in past}
    return out


def _kv_shapes(model: Path) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    shapes = {i.name: (1, i.shape[1], 0, i.shape[3]) for i in session.get_inputs()
              if i.name.startswith("past_key_values.")}
    return names, shapes


@pytest.fixture(scope="module")
def float_kv(tiny_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "float"
    compile_model(tiny_decoder_kv, out, CompileOptions(target="c"))
    build_library(out)
    return out


#: The compile result (its quantization: the reference weights) of each quant_kv artifact.
QUANT_RESULTS: dict[Path, object] = {}


@pytest.fixture(scope="module")
def quant_kv(tiny_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "w3"
    QUANT_RESULTS[out] = compile_model(tiny_decoder_kv, out,
                                       CompileOptions(target="c", quant=QuantScheme(3, 32)))
    build_library(out, make_args=("WARNINGS=-Wall -Wextra -Werror",))
    return out


def test_float_generate_matches_onnxruntime(float_kv: Path, tiny_decoder_kv: Path) -> None:
    names, shapes = _kv_shapes(tiny_decoder_kv)
    session = ort.InferenceSession(str(tiny_decoder_kv), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    expected = _greedy(lambda feeds: dict(zip(outputs, session.run(None, feeds), strict=True)),
                       names, shapes)
    report = generate(float_kv, Artifact(float_kv).manifest, PROMPT, TOKENS)
    assert report["ids"] == expected
    assert report["prompt_ids"] == PROMPT and report["prefill_tokens"] == len(PROMPT)
    assert report["decode_steps"] == TOKENS - 1 and report["decode_tokens_per_second"] > 0


def test_quantized_generate_matches_a_python_loop(quant_kv: Path,
                                                  tiny_decoder_kv: Path) -> None:
    """The C token loop (present -> past, arg-max) picks the ids a Python loop picks over the
    same library one call at a time, on 1 and 2 threads. (Against the llvm build ids may
    part at a near-tie: the non-LUT kernels of two compilers differ in the last bits, see
    test_lut_layers_equal_the_reference.)"""
    model_c = (quant_kv / "model.c").read_text()
    assert model_c.count("SAIL_TRY(sail_rt_lut_gemv(") == 4 * 7 + 1  # every quantized matmul
    names, shapes = _kv_shapes(tiny_decoder_kv)
    expected = _greedy(Artifact(quant_kv).run, names, shapes)
    one = generate(quant_kv, Artifact(quant_kv).manifest, PROMPT, TOKENS, threads=1)
    two = generate(quant_kv, Artifact(quant_kv).manifest, PROMPT, TOKENS, threads=2)
    assert one["ids"] == expected
    assert two["ids"] == expected and two["threads"] == 2


def test_lut_layers_equal_the_reference(quant_kv: Path) -> None:
    """Every LUT-GEMV of the library, on the activations that reached it, returns exactly the
    NumPy reference's dequantized group sums (integers exact, float order the reference's)."""
    result = QUANT_RESULTS[quant_kv]
    runs = [generate_inputs(Artifact(quant_kv).signature, plan)
            for plan in (InputPlan(batch=2, seq_len=5, past_len=3), InputPlan(seq_len=1,
                                                                            past_len=9))]
    check = lut_reference_check(quant_kv, Artifact(quant_kv).manifest, result.quantization,
                                runs)
    assert check["exact"] and check["calls"] == 2 * 29 and check["mismatched"] == 0
    assert set(check["layers"]) == {q.layer.name for q in result.quantization.layers
                                    if q.qw is not None and q.layer.op_type == "MatMul"}


def test_quantized_outputs_identical_across_threads(quant_kv: Path, tmp_path: Path) -> None:
    inputs = generate_inputs(Artifact(quant_kv).signature,
                             InputPlan(batch=3, seq_len=5, past_len=4))
    results = []
    for threads in (1, 2):
        args = []
        for name, value in inputs.items():
            np.save(tmp_path / f"{name}.npy", value)
            args += ["--input", f"{name}={tmp_path / name}.npy"]
        out = tmp_path / f"out{threads}"
        out.mkdir()
        proc = subprocess.run([str(quant_kv / "sail_main"), str(quant_kv / "weights.bin"),
                               *args, "--threads", str(threads), "--output-dir", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results.append(np.load(out / "logits.npy"))
    np.testing.assert_array_equal(results[0], results[1])


def test_split_kernels_give_the_same_outputs_in_any_number_of_parts(quant_kv: Path,
                                                                     tmp_path: Path) -> None:
    """The kernels kernels.c splits over the thread pool (tir_codegen: a root block that is one
    parallel loop) give bit-identical logits and presents in 1, 2 or 3 threads. The copy is built
    with SAIL_PAR_MIN_ELEMENTS=1 so that even these small outputs take the pool path."""
    kernels = (quant_kv / "kernels.c").read_text()
    split = re.findall(r"const int8_t sail_parallel_(\w+) = 1;", kernels)
    assert len(split) >= 5 and any("mean" in name for name in split), split
    pooled = tmp_path / "pooled"
    shutil.copytree(quant_kv, pooled, ignore=shutil.ignore_patterns("build", "*.a", "*.so",
                                                                   "sail_main", "sail_generate"))
    build_library(pooled, make_args=("CFLAGS=-O2 -march=native -DSAIL_PAR_MIN_ELEMENTS=1",))
    inputs = generate_inputs(Artifact(quant_kv).signature,
                             InputPlan(batch=3, seq_len=7, past_len=4))
    args = []
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    results = {}
    for artifact, threads in ((quant_kv, 1), (pooled, 1), (pooled, 2), (pooled, 3)):
        out = tmp_path / f"out_{artifact.name}_{threads}"
        out.mkdir()
        proc = subprocess.run([str(artifact / "sail_main"), str(artifact / "weights.bin"),
                               *args, "--threads", str(threads), "--output-dir", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results[artifact.name, threads] = {p.stem: np.load(p) for p in out.glob("*.npy")}
    reference = results[quant_kv.name, 1]
    assert "logits" in reference and len(reference) > 1
    for key, outputs in results.items():
        assert outputs.keys() == reference.keys(), key
        for name, value in outputs.items():
            np.testing.assert_array_equal(value, reference[name], err_msg=f"{key} {name}")


def test_generate_cli_and_bad_input(quant_kv: Path, tiny_decoder: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(quant_kv), "--prompt-ids", "1,2,3", "-n", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["ids"]) == 4 and report["threads"] == 1
    assert main(["generate", str(quant_kv), "--prompt-ids", "1,2,3", "-n", "3"]) == 0
    printed = capsys.readouterr()
    assert len(printed.out.split()) == 3  # the ids on stdout, the speed on stderr
    assert "tokens/s (1 thread)" in printed.err
    with pytest.raises(InputError, match="5000 is not a token id of this model"):
        generate(quant_kv, Artifact(quant_kv).manifest, [1, 5000], 2)
    with pytest.raises(OptionError, match="--threads must be"):
        generate(quant_kv, Artifact(quant_kv).manifest, [1], 2, threads=0)
    no_cache = tmp_path / "nokv"
    compile_model(tiny_decoder, no_cache, CompileOptions(target="c"))
    assert main(["generate", str(no_cache), "--prompt-ids", "1"]) == 2
    assert "it has no KV cache" in capsys.readouterr().err
    # the binary checks the same (a user may run it without Python)
    build_library(no_cache, make_args=("sail_generate",))
    proc = subprocess.run([str(no_cache / "sail_generate"), str(no_cache / "weights.bin"),
                           "--prompt-ids", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "it has no KV cache" in proc.stderr


def test_lut_runtime_under_address_and_ub_sanitizers(quant_kv: Path, tmp_path: Path) -> None:
    copy = tmp_path / "asan"
    shutil.copytree(quant_kv, copy, ignore=shutil.ignore_patterns("build", "lib*", "sail_main",
                                                                   "sail_generate"))
    build_library(copy, make_args=(SANITIZE, SANITIZE_RUNTIME, "sail_main", "sail_generate"))
    inputs = generate_inputs(Artifact(copy).signature, InputPlan(batch=2, seq_len=3, past_len=2))
    args = []
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    out = tmp_path / "out"
    out.mkdir()
    for command in ([str(copy / "sail_main"), str(copy / "weights.bin"), *args, "--threads",
                     "2", "--output-dir", str(out)],
                    [str(copy / "sail_generate"), str(copy / "weights.bin"), "--prompt-ids",
                     "5,6,7", "-n", "3", "--threads", "2"],
                    # the sampler's paths: the widening top-p window, penalties, eos, repeats
                    [str(copy / "sail_generate"), str(copy / "weights.bin"), "--prompt-ids",
                     "5,6,7,5", "-n", "6", "--temperature", "0.9", "--top-k", "0", "--top-p",
                     "0.9", "--min-p", "0.01", "--repeat-penalty", "1.3", "--seed", "5",
                     "--eos-ids", "1,2", "--repeat", "2", "--json"],
                    [str(copy / "sail_generate"), str(copy / "weights.bin"), "--prompt-ids",
                     "5", "-n", "50", "--temperature", "1.5", "--top-k", "7", "--stream"]):
        proc = subprocess.run(command, capture_output=True, text=True, input="stop\n")
        assert proc.returncode == 0, proc.stderr
        assert "runtime error" not in proc.stderr and "Sanitizer" not in proc.stderr
    assert np.load(out / "logits.npy").shape == (2, 3, 1024)


def test_no_sail_keeps_tvm_kernels(tiny_decoder: Path, tmp_path: Path) -> None:
    """--no-sail keeps sail.quant_matmul: the c library then runs TVM's kernels, not the
    runtime's LUT-GEMV, and stores the packed weights."""
    out = tmp_path / "nosail"
    compile_model(tiny_decoder, out, CompileOptions(target="c", quant=QuantScheme(4, 32),
                                                    sail=False))
    model_c = (out / "model.c").read_text()
    assert "sail_rt_lut_gemv(model" not in model_c and ".lut_planes" not in model_c
    assert '.packed", SAIL_UINT8' in model_c
    assert Artifact(out).manifest["lut_layers"] == []


def test_the_token_loops_find_inputs_by_role(tmp_path: Path) -> None:
    """``sail_generate`` and the Python token loop feed the inputs the signature gave the roles
    ids, mask and past (model.c's io specs carry them), not inputs of fixed names: the micro
    decoder with its ids and mask renamed generates what onnxruntime's greedy loop over the
    original model does, on llvm and c."""
    import onnx

    from sail_compiler.model import load
    from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model

    original = tmp_path / "micro_kv.onnx"
    save_model(make_decoder(PRESETS["micro"], kv_cache=True), original)
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    renames = {"input_ids": "decoder_input_ids", "attention_mask": "attn_mask"}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    for value in model.graph.input:
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(model)
    renamed = tmp_path / "renamed.onnx"
    save_model(model, renamed)
    prompt = [3, 17, 25, 9]
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    names, shapes = _kv_shapes(original)
    expected = _greedy(lambda feeds: dict(zip(outputs, session.run(None, feeds), strict=True)),
                       names, shapes, prompt)
    for target in ("llvm", "c"):
        out = tmp_path / target
        compile_model(renamed, out, CompileOptions(target=target))
        assert [(s.name, s.role) for s in Artifact(out).signature.inputs[:2]] == [
            ("decoder_input_ids", "ids"), ("attn_mask", "mask")]
        assert load(out).generate(prompt, TOKENS).ids == expected, target
    assert '"decoder_input_ids", SAIL_INT64, 2, {-1, -1}, {"batch", "seq"}, 50, SAIL_ROLE_IDS, ' \
           "-1}" in (tmp_path / "c" / "model.c").read_text()
