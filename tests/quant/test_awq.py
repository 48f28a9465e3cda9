"""--awq: activation-aware per-input-channel scales folded into the model (quant/awq.py).

The fold must leave the float model's function unchanged (checked with onnxruntime on the
folded model), the scale search must never raise the layers' output error above plain RTN's
(checked against the reference quantizer and the Hessian's quadratic form), and a compile with
--awq must agree with the NumPy reference exactly and with the float model closely."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sail_compiler.frontend import load_checked
from sail_compiler.frontend.signature import signature_of
from sail_compiler.options import CompileOptions
from sail_compiler.quant import awq
from sail_compiler.quant.calibrate import CalibrationSpec, calibration_feeds, collect_hessians
from sail_compiler.quant.plan import LayerChoice, find_layers, layer_weight
from sail_compiler.quant.reference import dequantize, quantize_weights_rtn
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, generate_inputs, verify_model


def _folded_model(model: onnx.ModelProto, folding: awq.Folding) -> onnx.ModelProto:
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    awq.apply_constants(folded, folding)
    inits = {t.name: t for t in folded.graph.initializer}
    for layer in find_layers(model):
        w = folding.weight(layer, layer_weight(model, layer, inits))
        t = inits[layer.weight_name]
        t.CopyFrom(onnx.numpy_helper.from_array(
            np.ascontiguousarray(w.T if layer.transposed else w), t.name))
    return folded


def _outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([model.graph.output[0].name], feed)[0]


def test_folding_keeps_the_float_model(micro_decoder: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Scales forced to alpha 1 (far from uniform) and folded into the norm weights and the up
    projection: onnxruntime gives the same logits as the original model."""
    search = awq.search_scales
    monkeypatch.setattr(awq, "search_scales",
                        lambda ws, h, scheme: search(ws, h, scheme, alphas=(1.0,)))
    model = load_checked(micro_decoder)
    layers = find_layers(model)
    feeds = calibration_feeds(CalibrationSpec(samples=2, seq_len=8), signature_of(model))
    hessians = collect_hessians(model, layers, feeds)
    scheme = QuantScheme.parse("w4g16sym")
    folding = awq.fold_scales(model, layers, [LayerChoice(scheme, "rtn")] * len(layers),
                              hessians, set(), scheme)
    names = {layer.name: layer.weight_name for layer in layers}
    # q/k/v, gate/up and the LM head read norms; down reads act(gate) * up; o reads attention
    scaled = sorted(names[n] for n in folding.row_scales)
    assert not any("o_proj" in n for n in scaled)
    assert sum("down_proj" in n for n in scaled) == 1 and len(folding.column_scales) == 1
    assert len(scaled) == len(layers) - 1 and len(folding.constants) == 3
    spread = [float(s.max() / s.min()) for s in folding.row_scales.values()]
    assert min(spread) > 1.4  # the test means something: the scales are far from uniform
    feed = generate_inputs(signature_of(model), InputPlan(seq_len=6, seed=7))
    want = _outputs(model, feed)
    got = _outputs(_folded_model(model, folding), feed)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_never_loses_to_rtn_and_wins_with_outlier_channels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n, t = 64, 48, 256
    x = rng.standard_normal((t, k))
    x[:, :3] *= 30.0  # outlier input channels, as in LLM activations
    h = x.T @ x
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    scheme = QuantScheme.parse("w3g16sym")

    def output_error(scale: np.ndarray) -> float:
        scaled = (w.astype(np.float64) * scale[:, None]).astype(np.float32)
        e = w - dequantize(quantize_weights_rtn(scaled, scheme)) / scale[:, None]
        return float(np.sum((x @ e) ** 2))

    alpha, s = awq.search_scales([w], h, scheme)
    plain = output_error(np.ones(k))
    assert output_error(s) <= plain * (1 + 1e-9)
    assert alpha > 0 and output_error(s) < 0.9 * plain
    # the channels with large activations get the larger scales
    assert s[:3].min() > s[3:].max()


def test_search_keeps_uniform_inputs_unscaled() -> None:
    """Equal activation RMS on every channel: every alpha gives the same scales, s = 1."""
    w = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    alpha, s = awq.search_scales([w], 5.0 * np.eye(32), QuantScheme.parse("w4g8"))
    np.testing.assert_array_equal(s, np.ones(32))


def test_compile_with_awq_is_exact_and_close_to_float(micro_decoder: Path) -> None:
    """The compiled model holds the folded constants (else it would be far from the float
    model: the scales spread widely) and agrees exactly with the NumPy
    reference."""
    options = CompileOptions(quant=QuantScheme.parse("w8g16sym"), awq=True,
                             calib=CalibrationSpec(samples=2, seq_len=8))
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=5)])
    assert report["ref_exact"]
    assert report["quant"]["awq"]["sites"] > 0
    out = report["outputs"][0]
    assert out["cosine"] > 0.999, out


def test_awq_needs_a_quantized_compile() -> None:
    from sail_compiler.errors import OptionError

    with pytest.raises(OptionError, match="--awq"):
        CompileOptions(awq=True)


def test_a_rescaled_constant_missing_from_the_module_is_an_error(micro_decoder: Path) -> None:
    """QuantizeWeights refuses to apply a fold whose constant it cannot find exactly once."""
    from sail_compiler.errors import SailError
    from sail_compiler.frontend import import_onnx
    from sail_compiler.passes.quantize_weights import QuantizeWeights
    from sail_compiler.quant.plan import weight_ref

    mod, _ = import_onnx(load_checked(micro_decoder))
    absent = np.arange(7, dtype=np.float32)
    with pytest.raises(SailError, match="rescaled constant"):
        QuantizeWeights(QuantScheme.parse("w8g16"),
                        constants={weight_ref("no such initializer"): absent})(mod)
