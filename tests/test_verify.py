"""sail verify: the compiled llvm artifact against onnxruntime on the float model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sail_compiler import CompileOptions
from sail_compiler.cli import main
from sail_compiler.verify import InputPlan, compare, verify_model


def _by_run(report: dict) -> dict[tuple, list[dict]]:
    runs: dict[tuple, list[dict]] = {}
    for entry in report["outputs"]:
        runs.setdefault(tuple(sorted(entry["dims"].items())), []).append(entry)
    return runs


def test_decoder_two_sequence_lengths_one_artifact(tiny_decoder: Path, tmp_path: Path) -> None:
    plans = [InputPlan(batch=1, seq_len=3), InputPlan(batch=2, seq_len=11)]
    report = verify_model(tiny_decoder, CompileOptions(), plans, artifact_dir=tmp_path / "a")
    runs = _by_run(report)
    assert len(runs) == 2, runs.keys()
    assert {r[0]["dims"]["seq"] for r in runs.values()} == {3, 11}
    for entries in runs.values():
        (logits,) = entries
        assert logits["name"] == "logits"
        assert logits["rel_l2_err"] < 1e-4 and logits["cosine"] > 0.99999
    assert report["ok"]


def test_kv_decoder_prefill_and_decode_lengths(tiny_decoder_kv: Path) -> None:
    plans = [InputPlan(seq_len=5, past_len=0), InputPlan(seq_len=1, past_len=7),
             InputPlan(batch=2, seq_len=4, past_len=3)]
    report = verify_model(tiny_decoder_kv, CompileOptions(), plans)
    runs = _by_run(report)
    assert len(runs) == 3
    for entries in runs.values():
        assert len(entries) == 1 + 2 * 4  # logits + present key/value per layer
        assert all(e["rel_l2_err"] < 1e-4 for e in entries), entries
    assert report["ok"]


def test_cli_json_and_exit_code_on_tolerance(micro_decoder: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(micro_decoder), "--json", "--seq-len", "2,6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "llvm" and report["ok"] is True
    assert {"name", "max_abs_err", "rel_l2_err", "cosine"} <= set(report["outputs"][0])
    assert len(report["outputs"]) == 2
    # The fp32 results differ from onnxruntime's in the last bits: a zero tolerance fails.
    assert main(["verify", str(micro_decoder), "--tolerance", "1e-12"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_shape_binding_is_reported(micro_decoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(micro_decoder), "--shape", "input_ids=1x4",
                 "--shape", "attention_mask=1x4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    assert any("input_ids: dim 1 ('seq') bound to 4" in n for n in report["notes"])
    assert report["outputs"][0]["dims"] == {}


def test_compare_metrics_against_hand_computed_values() -> None:
    import numpy as np

    expected = np.array([3.0, 4.0])
    m = compare(np.array([3.0, 4.5]), expected)
    assert m["max_abs_err"] == pytest.approx(0.5)
    assert m["rel_l2_err"] == pytest.approx(0.5 / 5.0)
    assert m["cosine"] == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))
    assert compare(np.zeros(3), np.zeros(4))["rel_l2_err"] == float("inf")


def test_external_data_model_verifies(tmp_path: Path) -> None:
    from sail_compiler.testing.decoders import PRESETS, make_decoder, save_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = model_dir / "micro_ext.onnx"
    save_model(make_decoder(PRESETS["micro"]), path, external_data=True)
    assert (model_dir / "micro_ext.onnx.data").is_file()
    report = verify_model(path, CompileOptions(), [InputPlan(seq_len=5)])
    assert report["ok"] and report["outputs"][0]["rel_l2_err"] < 1e-4


FIXTURES = Path(__file__).parent / "fixtures" / "hf"


@pytest.mark.parametrize("name", ["llama_dynamo_kv", "gpt2_legacy_kv", "llama_legacy"])
def test_hugging_face_exports_verify(name: str) -> None:
    plans = [InputPlan(seq_len=6, past_len=0), InputPlan(seq_len=1, past_len=5)]
    report = verify_model(FIXTURES / f"{name}.onnx", CompileOptions(), plans)
    runs = _by_run(report)
    assert len(runs) == 2
    assert all(e["rel_l2_err"] < 1e-4 for e in report["outputs"]), report["outputs"]
    assert report["ok"]


@pytest.mark.parametrize("args,message", [
    (["--bits", "9"], "1..8"),
    (["--bits", "1", "--sym"], "1-bit"),
    (["--bits", "4", "--group-size", "abc"], "positive integer or 'channel'"),
    (["--bits", "4", "--group-size", "0"], "positive integer"),
    (["--skip", "matmul.0"], "add --bits"),
])
def test_quantization_option_errors(micro_decoder: Path, tmp_path: Path, args: list[str],
                                    message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compile", str(micro_decoder), "-o", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
