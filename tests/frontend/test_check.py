"""Checks before import: every problem reported at once, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sail_compiler.cli import main
from sail_compiler.errors import ModelCheckError, OptionError
from sail_compiler.frontend import bind_shapes, load_checked, parse_shape_binding
from sail_compiler.testing.decoders import DecoderConfig, make_decoder, save_model

SMALL = DecoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      ffn_size=24, max_positions=32)


def _unsupported_model(path: Path) -> Path:
    """A MatMulNBits node, a GRU node and two supported nodes."""
    w = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("MatMulNBits", ["h", "wq", "sc"], ["q"], name="layers.0.q_proj",
                         domain="com.microsoft", K=4, N=4, bits=4, block_size=32),
        helper.make_node("GRU", ["q", "gw", "gr"], ["y"], name="layers.0.gru", hidden_size=4),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def _sail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sail_compiler", *args], capture_output=True,
                          text=True, timeout=300)


def test_unsupported_ops_listed_with_node_names_exit_2(tmp_path: Path) -> None:
    model = _unsupported_model(tmp_path / "bad.onnx")
    proc = _sail("compile", str(model), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "com.microsoft.MatMulNBits at node 'layers.0.q_proj'" in proc.stderr
    assert "GRU at node 'layers.0.gru'" in proc.stderr
    assert "'fc'" not in proc.stderr and "'relu'" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_traceback_flag_shows_the_stack(tmp_path: Path) -> None:
    proc = _sail("--traceback", "compile", str(tmp_path / "missing.onnx"), "-o",
                 str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ModelCheckError" in proc.stderr


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    save_model(make_decoder(SMALL), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ModelCheckError, match="not a readable ONNX protobuf"):
        load_checked(path)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelCheckError):
        load_checked(text)


def test_missing_and_truncated_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    save_model(make_decoder(SMALL), path, external_data=True)
    data = tmp_path / "ext.onnx.data"
    payload = data.read_bytes()
    data.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ModelCheckError, match="is truncated") as info:
        load_checked(path)
    assert "ext.onnx.data" in str(info.value)
    data.unlink()
    with pytest.raises(ModelCheckError, match="not found next to the model"):
        load_checked(path)
    data.write_bytes(payload)
    model = load_checked(path)
    assert all(len(t.raw_data) or t.float_data or t.int64_data for t in model.graph.initializer)



def test_external_data_location_that_lies(tmp_path: Path) -> None:
    """Offsets past the end without a length, and lengths that are not what the tensor's
    shape and type need, are refused before anything is read, naming the file and sizes."""
    path = tmp_path / "ext.onnx"
    save_model(make_decoder(SMALL), path, external_data=True)
    size = (tmp_path / "ext.onnx.data").stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    need = int(np.prod(tensor.dims)) * 4  # float32
    entries = {e.key: e for e in tensor.external_data}
    entries["length"].value = str(need - 4)
    onnx.save(model, str(path))
    with pytest.raises(ModelCheckError, match=f"has length {need - 4}.*need {need} bytes"):
        load_checked(path)
    tensor.external_data.remove(entries["length"])
    entries["offset"].value = str(size + 64)
    onnx.save(model, str(path))
    with pytest.raises(ModelCheckError, match=f"ext.onnx.data' is truncated.*the file has {size}"):
        load_checked(path)

def test_all_problems_in_one_error(tmp_path: Path) -> None:
    path = _unsupported_model(tmp_path / "bad.onnx")
    with pytest.raises(ModelCheckError) as info:
        load_checked(path)
    assert len(info.value.problems) == 3  # two nodes and the fix


@pytest.mark.parametrize("text", ["input_ids", "=1x2", "input_ids=1xa", "input_ids=-1"])
def test_bad_shape_option(text: str) -> None:
    with pytest.raises(OptionError, match="NAME=DIMS"):
        parse_shape_binding(text)


def test_shape_binding_checks_names_and_ranks() -> None:
    model = make_decoder(SMALL)
    with pytest.raises(OptionError, match="valid choices are: attention_mask, input_ids"):
        bind_shapes(model, {"ids": (1, 4)})
    with pytest.raises(OptionError, match="rank 2"):
        bind_shapes(model, {"input_ids": (4,)})
    notes = bind_shapes(model, {"input_ids": (1, 4)})
    assert len(notes) == 2 and "('seq') bound to 4" in notes[1]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 4]
