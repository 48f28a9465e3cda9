"""ONNX's own backend node tests for every op the example decoder uses.

The cases come from ``onnx.backend.test.case.node.collect_testcases`` (models and expected
outputs generated in memory; the wheel no longer ships their data). Each is imported through our
frontend, built for llvm and run on the Relax VM; outputs must match ONNX's reference outputs at
the case's own tolerances. Cases TVM cannot run are listed in ``KNOWN_FAILURES`` with the reason
and run as strict xfails, so a fix upstream shows up as a failure to clean the list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from make_decoder import PRESETS, make_decoder
from onnx.backend.test.case.node import collect_testcases

from sail_compiler import Artifact, CompileOptions, compile_model
from sail_compiler.frontend.signature import signature_of


def _decoder_ops() -> list[str]:
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    return sorted({n.op_type for n in model.graph.node})


OPS = _decoder_ops()
KNOWN_FAILURES: dict[str, str] = {}


def _cases() -> list:
    selected = []
    for case in collect_testcases():
        if case.model is None or case.name.endswith("_expanded"):
            continue
        ops = {n.op_type for n in case.model.graph.node}
        if len(ops) == 1 and ops <= set(OPS):
            selected.append(case)
    return selected


CASES = _cases()


def _params() -> list:
    return [pytest.param(c, id=c.name, marks=pytest.mark.xfail(
        reason=KNOWN_FAILURES[c.name], strict=True)) if c.name in KNOWN_FAILURES
        else pytest.param(c, id=c.name) for c in CASES]


def test_every_decoder_op_has_cases() -> None:
    covered = {n.op_type for c in CASES for n in c.model.graph.node}
    assert covered == set(OPS)


@pytest.mark.parametrize("case", _params())
def test_node_case(case, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(case.model, str(path))
    compile_model(path, tmp_path / "out", CompileOptions())
    artifact = Artifact(tmp_path / "out")
    (inputs, expected), = case.data_sets
    names = [s.name for s in signature_of(case.model).inputs]
    outputs = artifact.run(dict(zip(names, inputs, strict=True)))
    assert len(outputs) == len(expected)
    for actual, want in zip(outputs.values(), expected, strict=True):
        np.testing.assert_allclose(actual, want, rtol=case.rtol, atol=case.atol)
