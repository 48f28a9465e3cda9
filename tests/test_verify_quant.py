"""Quantized compiles end to end: ref_exact against the NumPy reference at every width, plans
that reproduce a compile, --per-layer reports, and the option errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sail_compiler.cli import main
from sail_compiler.options import CompileOptions
from sail_compiler.quant.calibrate import CalibrationSpec
from sail_compiler.quant.scheme import QuantScheme
from sail_compiler.verify import InputPlan, verify_model

PLANS = [InputPlan(seq_len=1), InputPlan(seq_len=5)]


@pytest.mark.parametrize(("symmetric", "target", "act_group"), [
    (False, "llvm", "row"), (True, "llvm", "row"), (False, "llvm", 8), (True, "llvm", "group"),
    (False, "c", 8), (False, "pim-sim", 8)],
    ids=["zero-points", "symmetric", "blocks-of-8", "symmetric-group-blocks", "c-blocks-of-8",
         "pim-sim-blocks-of-8"])
def test_every_width_agrees_exactly_with_the_reference(micro_decoder: Path, tmp_path: Path,
                                                       symmetric: bool, target: str,
                                                       act_group: int | str) -> None:
    """One compile covers every width: the micro decoder's 8 layers get widths 1..8 (2..8 and
    a channel group when symmetric) through a bits plan; activations with one scale per row, per
    block of 8 (inside every group: the sums are split) or per weight group, on every target
    (c and pim-sim must also agree with the llvm build the reference check ran on)."""
    from sail_compiler.frontend import load_checked
    from sail_compiler.quant.plan import find_layers

    names = [layer.name for layer in find_layers(load_checked(micro_decoder))]
    assert len(names) == 8
    widths = [2, 3, 4, 5, 6, 7, 8, 8] if symmetric else list(range(1, 9))
    groups = [16, 32, "channel", 32, 16, 32, "channel", 32]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [
        {"match": n, "bits": b, "group_size": g, "symmetric": symmetric}
        for n, b, g in zip(names, widths, groups, strict=True)]}))
    extra = {"pim_config": "tiny", "nbw": 2} if target == "pim-sim" else {}
    options = CompileOptions(bits_plan=plan, target=target, act_group_size=act_group, **extra)
    report = verify_model(micro_decoder, options, PLANS, per_layer=True)
    ref = report["reference"]
    assert report["ref_exact"] and report["ok"]
    if target == "c":  # every LUT-GEMV of the library on its own activations, exactly
        assert ref["c_lut"]["exact"] and ref["c_lut"]["calls"] > 0
    elif target == "pim-sim":
        assert ref["probe_vs_artifact_rel_l2"] == 0.0
    assert ref["sums_checked"] > 0 and ref["sums_mismatched"] == 0
    assert ref["ref_max_rel_err"] <= 1e-5
    layers = {e["layer"]: e for e in report["quant"]["layers"]}
    for name, bits in zip(names, widths, strict=True):
        entry = layers[name]
        assert entry["bits"] == bits and entry["symmetric"] == symmetric
        # both runs (seq 1 and 5) reached the layer and every group sum was exact
        assert entry["sums_exact"] and entry["calls"] == 2
        assert entry["output_rel_err"] > 0  # really quantized
    assert report["outputs"][0]["rel_l2_err"] > 0


def test_error_against_the_float_model_falls_with_width(micro_decoder: Path) -> None:
    errors = {}
    for bits in (2, 4, 8):
        report = verify_model(micro_decoder, CompileOptions(quant=QuantScheme(bits, 32)),
                              [InputPlan(seq_len=6)], check_reference=False)
        assert report["ref_exact"] is None
        errors[bits] = report["outputs"][0]["rel_l2_err"]
    assert errors[8] < 0.05 and errors[8] < errors[4] < errors[2]


def test_the_written_plan_reproduces_a_calibrated_mixed_compile(micro_decoder: Path,
                                                                tmp_path: Path) -> None:
    first = tmp_path / "first"
    code = main(["compile", str(micro_decoder), "-o", str(first), "--avg-bits", "3.5",
                 "--group-size", "32", "--method", "gptq", "--calib-samples", "2",
                 "--calib-seq-len", "16"])
    assert code == 0
    plan = json.loads((first / "quant_plan.json").read_text())
    bits = [rule["bits"] for rule in plan["layers"]]
    assert len(set(bits)) > 1, "a budget between widths mixes widths"
    report = json.loads((first / "quant_report.json").read_text())
    assert report["average_bits"] <= 3.5
    second = tmp_path / "second"
    code = main(["compile", str(micro_decoder), "-o", str(second), "--bits-plan",
                 str(first / "quant_plan.json"), "--calib-samples", "2", "--calib-seq-len", "16"])
    assert code == 0
    assert (first / "weights.bin").read_bytes() == (second / "weights.bin").read_bytes()


def test_plan_rules_and_skip_pick_layers_by_onnx_name(micro_decoder: Path,
                                                      tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [
        {"match": "*mlp*", "bits": 3, "group_size": 16},
        {"match": "*self_attn*", "scheme": "w6channelsym"}]}))
    options = CompileOptions(quant=QuantScheme(8, 32), bits_plan=plan, skip=("logits",))
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=3)], per_layer=True)
    assert report["ref_exact"]
    by_name = {e["layer"]: e for e in report["quant"]["layers"]}
    assert by_name["logits"]["bits"] is None and by_name["logits"]["source"] == "skip"
    for name, entry in by_name.items():
        if "mlp" in name:
            assert (entry["bits"], entry["group_size"]) == (3, 16)
        elif "self_attn" in name:
            assert (entry["bits"], entry["group_size"], entry["symmetric"]) == \
                (6, "channel", True)


def test_per_layer_table(micro_decoder: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(micro_decoder), "--bits", "5", "--group-size", "32",
                 "--seq-len", "3", "--per-layer"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ref_exact True" in out and "OK" in out
    rows = [line for line in out.splitlines() if "mlp.down_proj" in line]
    assert len(rows) == 1 and " 5 " in rows[0] and "yes" in rows[0]


def test_reference_check_detects_a_wrong_group_sum(micro_decoder: Path) -> None:
    import tempfile

    from sail_compiler.driver import compile_model
    from sail_compiler.passes.expose_group_sums import RESULT, SUMS
    from sail_compiler.quant.reference import group_sums, quantize_activations
    from sail_compiler.reference_check import ReferenceCheck

    with tempfile.TemporaryDirectory() as tmp:
        quant = compile_model(micro_decoder, Path(tmp) / "a",
                              CompileOptions(quant=QuantScheme(4, 32))).quantization
    layer = next(q for q in quant.layers if q.qw is not None)
    x = np.random.default_rng(0).standard_normal((1, 2, layer.layer.k)).astype(np.float32)
    xq, _ = quantize_activations(x.reshape(2, -1))
    sums = group_sums(xq, layer.qw)
    from sail_compiler.quant.reference import quantized_matmul

    y = quantized_matmul(x, layer.qw)
    good = ReferenceCheck(quant, [layer.layer.name], {}, 8)
    good.add([(0, SUMS, sums, x), (0, RESULT, y, x)])
    assert good.layers[layer.layer.name].exact
    bad_sums = sums.copy()
    bad_sums[1, 0, 3] += 1
    bad = ReferenceCheck(quant, [layer.layer.name], {}, 8)
    bad.add([(0, SUMS, bad_sums, x), (0, RESULT, y, x)])
    assert not bad.layers[layer.layer.name].exact and not bad.exact
    off = ReferenceCheck(quant, [layer.layer.name], {}, 8)
    off.add([(0, SUMS, sums, x), (0, RESULT, y * np.float32(1 + 1e-4), x)])
    assert not off.layers[layer.layer.name].exact


@pytest.mark.parametrize("args,message", [
    (["--bits", "4", "--skip", "nothing*"], "--skip patterns ['nothing*'] match no layer"),
    (["--bits", "4", "--avg-bits", "3"], "not both"),
    (["--avg-bits", "9"], "[1, 8]"),
    (["--avg-bits", "1.5", "--sym"], "[2, 8]"),
    (["--method", "gptq"], "add --bits"),
    (["--bits", "4", "--act-bits", "1"], "activation bits"),
    (["--bits", "4", "--calib-text", "t.txt"], "go together"),
    (["--bits", "4", "--bits-plan", "missing.json"], "does not exist"),
])
def test_quantization_option_errors(micro_decoder: Path, tmp_path: Path, args: list[str],
                                    message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compile", str(micro_decoder), "-o", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_rule_matching_no_layer_and_bad_calibration_file(micro_decoder: Path,
                                                               tmp_path: Path) -> None:
    from sail_compiler.driver import compile_model
    from sail_compiler.errors import InputError, OptionError

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"match": "decoder.*", "bits": 2}]}))
    with pytest.raises(OptionError, match=r"match no layer.*model.layers.0"):
        compile_model(micro_decoder, tmp_path / "a", CompileOptions(bits_plan=plan))
    calib = tmp_path / "calib.npz"
    np.savez(calib, tokens=np.zeros((1, 4), np.int64))
    with pytest.raises(InputError, match="lacks input"):
        compile_model(micro_decoder, tmp_path / "b",
                      CompileOptions(quant=QuantScheme(4, 32), method="gptq",
                                     calib=CalibrationSpec(files=(calib,))))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_embedding_bits_quantize_the_token_table(micro_decoder: Path) -> None:
    options = CompileOptions(quant=QuantScheme(8, 32), embedding_bits=3)
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=4)], per_layer=True)
    assert report["ref_exact"]
    layers = {e["layer"]: e for e in report["quant"]["layers"]}
    table = [e for e in layers.values() if (e["k"], e["n"], e["bits"]) == (16, 50, 3)]
    assert len(table) == 1 and table[0]["source"] == "embedding"
    # only the token table: the rotary tables (Gather by computed positions) stay float
    assert sum(e["source"] == "embedding" for e in layers.values()) == 1
    float_table = verify_model(micro_decoder, CompileOptions(quant=QuantScheme(8, 32)),
                               [InputPlan(seq_len=4)], check_reference=False)
    # 3-bit embeddings add error on top of the 8-bit matmuls
    assert report["outputs"][0]["rel_l2_err"] > 2 * float_table["outputs"][0]["rel_l2_err"]


@pytest.mark.parametrize("sail, nbw, pim_types", [(False, 4, "auto"), (True, 3, "host"),
                                                  (True, 8, "pim")],
                         ids=["no-sail", "fused-nbw3", "pim-nbw8"])
def test_ref_exact_with_and_without_the_sail_stage(micro_decoder: Path, sail: bool, nbw: int,
                                                   pim_types: str) -> None:
    """The probe records the sums of sail.lut_gemv (split from a fused one when the
    dequantization runs on the host) or of the plain quantized matmul alike."""
    options = CompileOptions(quant=QuantScheme(3, 16), sail=sail, nbw=nbw, pim_types=pim_types)
    report = verify_model(micro_decoder, options, PLANS)
    ref = report["reference"]
    assert report["ref_exact"] and ref["sums_checked"] > 0 and ref["sums_mismatched"] == 0
    # the probe build runs the same kernels as the artifact, up to float rounding
    assert ref["probe_vs_artifact_rel_l2"] <= 1e-6


@pytest.mark.parametrize("target", ["llvm", "pim-sim"])
def test_float16_scales_on_llvm_and_pim_sim(micro_decoder: Path, target: str) -> None:
    """--scale-dtype float16 on the targets that keep the scales as float32 values: the
    float16-rounded scales reach them, and they reproduce the reference exactly."""
    options = CompileOptions(target=target, quant=QuantScheme(4, 16, True),
                             scale_dtype="float16")
    report = verify_model(micro_decoder, options, [InputPlan(seq_len=3)])
    assert report["ok"] and report["ref_exact"] is True
    assert report["quant"]["scale_dtype"] == "float16"
