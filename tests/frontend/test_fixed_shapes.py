"""Exports that import with symbolic dims also compile and verify with every dim fixed."""

from __future__ import annotations

from pathlib import Path

from sail_compiler import CompileOptions
from sail_compiler.verify import InputPlan, verify_model

HF = Path(__file__).resolve().parent.parent / "fixtures" / "hf"


def test_legacy_causal_mask_and_at_fixed_shapes(tmp_path: Path) -> None:
    # The legacy exporter's causal mask ANDs a constant bool tensor with the mask; at fixed
    # shapes TVM's LLVM codegen used to emit an invalid module for it (the And override).
    options = CompileOptions(target="llvm",
                             shapes={"input_ids": (1, 3), "attention_mask": (1, 3)})
    report = verify_model(HF / "llama_legacy.onnx", options, [InputPlan(1, 3, 0)],
                          tolerance=1e-5, artifact_dir=tmp_path / "out")
    assert report["ok"], report["outputs"]
