"""`sail export-onnx`: the quantized model as onnxruntime MatMulNBits, and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sail_compiler.cli import main
from sail_compiler.frontend import load_checked
from sail_compiler.frontend.signature import signature_of
from sail_compiler.options import CompileOptions
from sail_compiler.quant.calibrate import WeightSwapper
from sail_compiler.quant.plan import find_layers
from sail_compiler.quant.prepare import prepare_quantization
from sail_compiler.quant.reference import dequantize
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, generate_inputs, verify_model


def test_export_runs_in_onnxruntime_as_our_weights(micro_decoder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q4.onnx"
    code = main(["export-onnx", str(micro_decoder), "-o", str(out), "--bits", "4",
                 "--group-size", "32", "--method", "search"])
    assert code == 0, capsys.readouterr().err
    exported = onnx.load(out)
    assert sum(n.op_type == "MatMulNBits" for n in exported.graph.node) == 8
    # our weights, dequantized, in the float model on onnxruntime: the same function
    model = load_checked(micro_decoder)
    options = CompileOptions(quant=QuantScheme(4, 32), method="search")
    quant = prepare_quantization(model, signature_of(model), options)
    weights = {q.layer.name: dequantize(q.qw) for q in quant.layers}
    feed = generate_inputs(signature_of(model), InputPlan(seq_len=5))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = session.run(None, feed)[0]
    with WeightSwapper(model, find_layers(model)) as swapper:
        ours = swapper.run(feed, weights)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    # and the exported file compiles back into the same quantized layers (16-bit activations:
    # close to onnxruntime's float activations)
    report = verify_model(out, CompileOptions(act_bits=16), [InputPlan(seq_len=4)],
                          tolerance=1e-4, per_layer=True)
    assert report["ok"] and report["ref_exact"], report
    assert {e["source"] for e in report["quant"]["layers"]} == {"prequantized"}


@pytest.mark.parametrize("args,message", [
    (["--bits", "3"], "2, 4"),
    ([], "nothing to export"),
])
def test_export_errors(micro_decoder: Path, tmp_path: Path, args: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert main(["export-onnx", str(micro_decoder), "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_export_never_overwrites_the_model(micro_decoder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = micro_decoder.read_bytes()
    assert main(["export-onnx", str(micro_decoder), "-o", str(micro_decoder), "--bits", "4"]) == 2
    assert "input model" in capsys.readouterr().err
    assert micro_decoder.read_bytes() == before
