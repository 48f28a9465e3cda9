"""Bad input to a decoder is an error naming the input and the limit, never a wrap-around or a
wrong answer (issue 14, "Bad input"), on every target:

* positions beyond the model's position table: the micro decoder computes its positions as
  ``Range(past, past + seq)`` into rotary tables of 32 rows. In range, every target equals
  onnxruntime; past + seq > 32 is refused before the run (naming the inputs and the 32 rows)
  and, should the check before the run be bypassed, by the compiled model itself (llvm and
  pim-sim: the checked ``take`` legalization; c: its runtime) instead of wrapping to row 0;
* a decoder whose rotary angles are computed (no table) keeps working far beyond any table;
* an attention mask whose length is not past + seq, and pasts of different lengths;
* a prompt and ``max_tokens`` that need more KV-cache positions than ``ctx`` (``--ctx``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

import sail_compiler
from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.cli import main
from sail_compiler.errors import InputError, OptionError
from sail_compiler.frontend.signature import position_table_rows, signature_of
from sail_compiler.lowering import host_target, lowering_passes
from sail_compiler.testing.decoders import PRESETS, make_decoder

TARGETS = ["llvm", "c", "pim-sim"]
ROWS = PRESETS["micro"].max_positions  # 32
_NO_CC = shutil.which("cc") is None or shutil.which("make") is None


@pytest.fixture(scope="module")
def artifacts(micro_decoder_kv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("positions_art")
    out = {}
    for target in TARGETS:
        if target == "c" and _NO_CC:
            continue
        out[target] = tmp / target
        compile_model(micro_decoder_kv, out[target], CompileOptions(target=target))
    return out


def _artifact(artifacts: dict[str, Path], target: str) -> Path:
    if target not in artifacts:
        pytest.skip("the c target builds with make and cc")
    return artifacts[target]


def _feeds(past: int, seq: int, mask: int | None = None,
           value_past: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(past * 100 + seq)
    hd = PRESETS["micro"].head_dim
    return {"input_ids": rng.integers(0, PRESETS["micro"].vocab_size, (1, seq)),
            "attention_mask": np.ones((1, past + seq if mask is None else mask), np.int64),
            "past_key_values.0.key": rng.standard_normal((1, 1, past, hd)).astype(np.float32),
            "past_key_values.0.value": rng.standard_normal(
                (1, 1, past if value_past is None else value_past, hd)).astype(np.float32)}


def test_position_table_rows_of_the_generated_decoder(micro_decoder_kv: Path) -> None:
    assert position_table_rows(onnx.load(micro_decoder_kv)) == ROWS


@pytest.mark.parametrize("target", TARGETS)
def test_positions_in_range_match_onnxruntime(artifacts: dict[str, Path], micro_decoder_kv: Path,
                                              target: str) -> None:
    model = sail_compiler.load(_artifact(artifacts, target))
    assert model.manifest["position_table_rows"] == ROWS
    session = ort.InferenceSession(str(micro_decoder_kv), providers=["CPUExecutionProvider"])
    for past, seq in ((0, 5), (28, 4), (31, 1)):  # the last row of the table
        feeds = _feeds(past, seq)
        expected = session.run(["logits"], feeds)[0]
        np.testing.assert_allclose(model(**feeds)["logits"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_positions_beyond_the_table_are_refused(artifacts: dict[str, Path], micro_decoder_kv: Path,
                                                target: str) -> None:
    session = ort.InferenceSession(str(micro_decoder_kv), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Gather"):  # the reference refuses them too
        session.run(["logits"], _feeds(30, 4))
    model = sail_compiler.load(_artifact(artifacts, target))
    for past, seq in ((30, 4), (32, 1), (40, 3)):
        with pytest.raises(InputError, match=rf"past \+ seq is {past + seq} positions "
                                             rf"\(past_key_values.0.key has past = {past}, "
                                             rf"input_ids seq = {seq}\), but the model's "
                                             rf"position table has {ROWS} rows"):
            model(**_feeds(past, seq))


@pytest.mark.parametrize("target", TARGETS)
def test_the_compiled_model_checks_positions_itself(artifacts: dict[str, Path],
                                                    target: str) -> None:
    """Past the check before the run (the runner alone): the model's gather of the rotary
    table fails instead of wrapping to the table's first rows."""
    artifact = Artifact(_artifact(artifacts, target))
    order = [s.name for s in artifact.signature.inputs]
    feeds = _feeds(30, 4)
    with pytest.raises(Exception, match=rf"outside the {ROWS} rows of rope_(cos|sin)") as info:
        artifact.runner.run([feeds[name] for name in order])
    assert "index" in str(info.value)
    inside = _feeds(28, 4)
    assert np.isfinite(artifact.runner.run([inside[name] for name in order])[0]).all()


@pytest.mark.parametrize("target", TARGETS)
def test_mask_and_past_lengths_must_agree(artifacts: dict[str, Path], target: str) -> None:
    model = sail_compiler.load(_artifact(artifacts, target))
    for mask in (5, 7):
        with pytest.raises(InputError, match=rf"attention_mask: dim 1 is {mask}, but it must be "
                                             r"past \+ seq = 6 \(past_key_values.0.key has "
                                             r"past = 4, input_ids seq = 2\)"):
            model(**_feeds(4, 2, mask=mask))
    with pytest.raises(InputError, match=r"past_key_values.0.value: dim 2 \('past'\) is 5, but "
                                         r"another input has 'past' = 4"):
        model(**_feeds(4, 2, value_past=5))
    if target == "c":  # the C runtime checks the same by itself (sail_main, the C API)
        artifact = Artifact(artifacts[target])
        feeds = _feeds(4, 2, mask=5)
        with pytest.raises(Exception, match=r"input attention_mask: dim 1 is 5, but it must be "
                                            r"past \+ seq = 6 \(past_key_values.0.key has "
                                            r"past = 4, input_ids seq = 2\)"):
            artifact.runner.run([feeds[s.name] for s in artifact.signature.inputs])


def _greedy_onnxruntime(model: Path, prompt: list[int], tokens: int) -> list[int]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    hd = PRESETS["micro"].head_dim
    past = {f"past_key_values.0.{kv}": np.zeros((1, 1, 0, hd), np.float32)
            for kv in ("key", "value")}
    ids, step, out = list(prompt), list(prompt), []
    for _ in range(tokens):
        logits, key, value = session.run(None, {
            "input_ids": np.array([step], np.int64),
            "attention_mask": np.ones((1, len(ids)), np.int64), **past})
        token = int(np.argmax(logits[0, -1]))
        out.append(token)
        ids.append(token)
        step = [token]
        past = {"past_key_values.0.key": key, "past_key_values.0.value": value}
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_generation_within_the_kv_capacity(artifacts: dict[str, Path], micro_decoder_kv: Path,
                                           target: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = _artifact(artifacts, target)
    model = sail_compiler.load(path)
    prompt = [3, 17, 9]
    expected = _greedy_onnxruntime(micro_decoder_kv, prompt, 5)
    # 3 + 5 - 1 = 7 positions: exactly the capacity
    assert model.generate(prompt, 5, ignore_eos=True, ctx=7).ids == expected
    with pytest.raises(InputError, match=r"the prompt \(3 tokens\) and 5 new tokens need a KV "
                                         r"cache of 7 positions, more than --ctx 6: raise --ctx "
                                         r"to 7 or ask for at most 4 new tokens"):
        model.generate(prompt, 5, ctx=6)
    with pytest.raises(InputError, match=r"ask for a prompt of at most 2 tokens"):
        model.generate(prompt, 1, ctx=2)
    with pytest.raises(OptionError, match=r"--ctx \(ctx\) must be an integer >= 1, not 0"):
        model.generate(prompt, 1, ctx=0)
    assert main(["generate", str(path), "--prompt-ids", "3,17,9", "-n", "5", "--ctx", "6"]) == 2
    assert "more than --ctx 6" in capsys.readouterr().err
    # the position table bounds the generation: it stops when the context is full
    result = model.generate(list(range(1, 30)), 8, ignore_eos=True)
    assert len(result.ids) == ROWS - 29 and result.stop_reason == "context"


def _computed_rotary(path: Path) -> None:
    """cos(position * inv_freq) with positions Range(past, past + seq): a rotary embedding
    computed from its angles (Gemma's export), no table to run out of."""
    inv_freq = (1.0 / 10000 ** (np.arange(4) / 4)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["past_key_values.0.key"], ["past_shape"]),
        helper.make_node("Gather", ["past_shape", "two"], ["past"], axis=0),
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq"], axis=0),
        helper.make_node("Add", ["past", "seq"], ["total"]),
        helper.make_node("Range", ["past", "total", "one"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["positions_f", "axes"], ["column"]),
        helper.make_node("Mul", ["column", "inv_freq"], ["angles"]),
        helper.make_node("Cos", ["angles"], ["cos"]),
    ]
    graph = helper.make_graph(nodes, "computed_rotary", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                      ["batch", 1, "past", 4])],
        [helper.make_tensor_value_info("cos", TensorProto.FLOAT, ["seq", 4])], [
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
        helper.make_tensor("two", TensorProto.INT64, [], [2]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("inv_freq", TensorProto.FLOAT, [4], inv_freq)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_computed_rotary_has_no_position_limit(tmp_path: Path) -> None:
    path = tmp_path / "rotary.onnx"
    _computed_rotary(path)
    assert position_table_rows(onnx.load(path)) is None
    compile_model(path, tmp_path / "llvm", CompileOptions(target="llvm"))
    model = sail_compiler.load(tmp_path / "llvm")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.zeros((1, 3), np.int64),
             "past_key_values.0.key": np.zeros((1, 1, 5000, 4), np.float32)}
    np.testing.assert_allclose(model(**feeds)["cos"], session.run(["cos"], feeds)[0],
                               rtol=1e-5, atol=1e-5)


def _take_module(mode: str, rank: int = 1, table_input: bool = False) -> tvm.IRModule:
    """take(table [8, 2], indices) with ``indices`` an input (a computed index, as far as the
    lowering can tell) of ``rank`` dims; the table a constant, or an input [rows, 2] with
    symbolic rows."""
    shape = [tvm.tirx.Var(f"n{k}", "int64") for k in range(rank)]
    indices = relax.Var("indices", relax.TensorType(shape, "int64"))
    params = [indices]
    if table_input:
        table = relax.Var("table", relax.TensorType([tvm.tirx.Var("rows", "int64"), 2],
                                                     "float32"))
        params.append(table)
    else:
        table = relax.const(np.arange(16, dtype=np.float32).reshape(8, 2))
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.take(table, indices, axis=0, mode=mode)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mode", ["wrap", "fast"])
def test_checked_take_legalization(mode: str) -> None:
    """The llvm lowering's take: ONNX's range ([-rows, rows) for wrap, [0, rows) for fast)
    reads the right rows, anything else is an error naming the table's rows."""
    target = host_target(1)
    mod = tvm.transform.Sequential(lowering_passes(target))(_take_module(mode))
    assert any(gv.name_hint.startswith("check_indices") for gv in mod.get_global_vars())
    vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
    table = np.arange(16, dtype=np.float32).reshape(8, 2)
    valid = [0, 7, 3] + ([-1, -8] if mode == "wrap" else [])
    got = vm["main"](tvm.runtime.tensor(np.array(valid, np.int64))).numpy()
    np.testing.assert_array_equal(got, table[valid])
    allowed = "-8 .. 7" if mode == "wrap" else "0 .. 7"
    for bad in ([8], [2, 100], [-9] if mode == "wrap" else [-1]):
        with pytest.raises(Exception, match=rf"outside the 8 rows of a table, which takes "
                                            rf"{allowed}"):
            vm["main"](tvm.runtime.tensor(np.array(bad, np.int64)))
    unchecked = tvm.transform.Sequential(lowering_passes(target, check_indices=False))(
        _take_module(mode))
    assert not any(gv.name_hint.startswith("check_indices")
                   for gv in unchecked.get_global_vars())


def test_checked_take_of_any_rank_and_symbolic_rows() -> None:
    """Indices of rank 0 and 2, and a table whose rows are a symbolic dim (read from the
    table's shape at run time)."""
    target = host_target(1)
    table = np.arange(16, dtype=np.float32).reshape(8, 2)
    for rank, index in ((0, np.array(5)), (2, np.array([[1, -2], [7, 0]]))):
        mod = tvm.transform.Sequential(lowering_passes(target))(_take_module("wrap", rank))
        vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(index)).numpy(),
                                      table[index])
        with pytest.raises(Exception, match="outside the 8 rows"):
            vm["main"](tvm.runtime.tensor(index + 8))
    mod = tvm.transform.Sequential(lowering_passes(target))(_take_module("wrap", 1, True))
    vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
    for rows in (8, 3):
        data = tvm.runtime.tensor(table[:rows].copy())
        index = np.array([0, rows - 1, -rows])
        np.testing.assert_array_equal(
            vm["main"](tvm.runtime.tensor(index), data).numpy(), table[:rows][index])
        with pytest.raises(Exception, match=r"outside the rows of a table \(its dim 0\)"):
            vm["main"](tvm.runtime.tensor(np.array([rows])), data)


def test_signature_relates_the_mask_to_past_and_seq() -> None:
    """By the inputs' roles, without compiling: the mask's own dim name (past_plus_seq) must
    be past + seq; pasts of different lengths (an encoder-decoder's two caches) leave the
    mask to the checks by name."""
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    signature = signature_of(model)
    assert signature.context_of(_feeds(4, 2)) == (6, "past_key_values.0.key has past = 4, "
                                                     "input_ids seq = 2")
    signature.check_inputs(_feeds(4, 2))
    signature.check_inputs(_feeds(0, 3))
    with pytest.raises(InputError, match=r"attention_mask: dim 1 is 7, but it must be past \+ "
                                         r"seq = 6"):
        signature.check_inputs(_feeds(4, 2, mask=7))
    for value in model.graph.input:  # the value cache gets a length of its own
        if value.name == "past_key_values.0.value":
            value.type.tensor_type.shape.dim[2].dim_param = "encoder_seq"
    encoder_decoder = signature_of(model)
    assert encoder_decoder.context_of(_feeds(4, 2)) is None
    encoder_decoder.check_inputs(_feeds(4, 2, mask=7))
