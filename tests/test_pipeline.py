"""The driver's pass contexts: user instruments keep seeing every pass."""

from __future__ import annotations

from pathlib import Path

import tvm

from sail_compiler import CompileOptions, compile_model
from sail_compiler.pipeline import STAGE_NAMES, STAGES


@tvm.ir.instrument.pass_instrument
class _Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        self.names.append(str(info.name))


def test_user_instruments_are_extended_not_replaced(micro_decoder: Path) -> None:
    recorder = _Recorder()
    with tvm.transform.PassContext(instruments=[recorder]):
        result = compile_model(micro_decoder, None, CompileOptions(emit="lower"))
    assert "LegalizeOps" in recorder.names and "FuseTIR" in recorder.names
    # Every pass the driver reports ran, in order, is among what the user's instrument saw.
    remaining = iter(recorder.names)
    assert all(name in remaining for name in result.passes_run)
    assert "ScheduleLLVM" in result.passes_run


def test_stages_in_order() -> None:
    assert STAGE_NAMES == ("import", "quantize", "sail", "lower")
    assert [s.name for s in STAGES] == list(STAGE_NAMES)
