"""Input dims named by expressions of other dims (``past + seq``, as Hugging Face / optimum
exports name the attention mask's length) are checked by their value on every target, never
as fixed sizes: consistent inputs run and match onnxruntime, a mask of the wrong length is
rejected with the expected length, and the c target's token loop accepts the model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sail_compiler import CompileOptions, compile_model
from sail_compiler.artifact import Artifact
from sail_compiler.errors import InputError
from sail_compiler.frontend.signature import dim_sum, signature_of
from sail_compiler.targets.c.target import generate
from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model
from sail_compiler.verify import InputPlan, generate_inputs

EXPRESSION = "past + seq"


@pytest.fixture(scope="module")
def expr_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro decoder with a KV cache whose ``past_plus_seq`` dims are named ``past + seq``."""
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "past_plus_seq":
                dim.dim_param = EXPRESSION
    path = tmp_path_factory.mktemp("expr") / "expr_kv.onnx"
    save_model(model, path)
    return path


def test_dim_sum_parses_sums_only() -> None:
    dims = ["batch", "past", "seq", "past_sequence_length"]
    assert dim_sum("past + seq", dims) == [("past", 1), ("seq", 1)]
    assert dim_sum("past_sequence_length + 1", dims) == [("past_sequence_length", 1), ("", 1)]
    assert dim_sum("past - 1 + seq", dims) == [("past", 1), ("", -1), ("seq", 1)]
    # plain names, unknown names, products and calls stay independent dims
    for name in ("total_sequence_length", "past + cache", "past * seq", "max(past, seq)",
                 "past +", "seq"):
        assert dim_sum(name, dims) is None, name


def _inputs(model: Path, past: int, seq: int) -> dict[str, np.ndarray]:
    return generate_inputs(signature_of(onnx.load(model)),
                           InputPlan(batch=1, seq_len=seq, past_len=past))


@pytest.mark.parametrize("target", ["llvm", "c", "pim-sim"])
def test_expression_dims_checked_by_value(expr_decoder: Path, tmp_path: Path,
                                          target: str) -> None:
    if target == "c" and (shutil.which("cc") is None or shutil.which("make") is None):
        pytest.skip("the c target builds with make and cc")
    out = tmp_path / target
    compile_model(expr_decoder, out, CompileOptions(target=target))
    artifact = Artifact(out)
    session = ort.InferenceSession(str(expr_decoder), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for past, seq in ((0, 5), (6, 1)):
        inputs = _inputs(expr_decoder, past, seq)
        assert inputs["attention_mask"].shape == (1, past + seq)
        ours = artifact.run(inputs)
        theirs = dict(zip(names, session.run(None, inputs), strict=True))
        for name, expected in theirs.items():
            err = np.linalg.norm(ours[name] - expected) / np.linalg.norm(expected)
            assert err < 1e-4, (target, past, seq, name, err)
    inputs = _inputs(expr_decoder, 4, 2)
    inputs["attention_mask"] = np.ones((1, 5), np.int64)  # past + seq is 6
    with pytest.raises(InputError, match=r"attention_mask: dim 1 \('past \+ seq'\) is 5.*"
                                         r"must be 6"):
        artifact.run(inputs)


def test_c_runtime_checks_expression_dims(expr_decoder: Path, tmp_path: Path) -> None:
    """The C library itself (not only the Python wrapper) takes the dim by its value, and its
    token loop runs the model."""
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.skip("the c target builds with make and cc")
    out = tmp_path / "c"
    compile_model(expr_decoder, out, CompileOptions(target="c"))
    artifact = Artifact(out)
    good = _inputs(expr_decoder, 3, 2)
    runner_outputs = artifact.runner.run([good[s.name] for s in artifact.signature.inputs])
    assert runner_outputs[0].shape[:2] == (1, 2)
    bad = dict(good, attention_mask=np.ones((1, 4), np.int64))
    with pytest.raises(Exception, match=r"attention_mask: dim 1 is 4, the model requires 5"):
        artifact.runner.run([bad[s.name] for s in artifact.signature.inputs])
    report = generate(out, artifact.manifest, [3, 17, 9], 4)
    assert len(report["ids"]) == 4
