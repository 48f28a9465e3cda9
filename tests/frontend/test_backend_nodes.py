"""ONNX's own backend node tests for every op the example decoder uses.

The cases come from ``onnx.backend.test.case.node.collect_testcases`` (models and expected
outputs generated in memory; the wheel no longer ships their data). Each is imported through our
frontend, built for llvm and run on the Relax VM; outputs must match ONNX's reference outputs at
the case's own tolerances. Cases TVM cannot run are listed in ``KNOWN_FAILURES`` with the reason
and run as strict xfails, so a fix upstream shows up as a failure to clean the list.

Some cases feed an op's shape parameters (Reshape's shape, Slice's starts/ends/axes/steps,
ReduceMean's axes, Unsqueeze's axes) as graph inputs. Real models hold them as constants (or
compute them from ``Shape``, which the decoder tests cover); TVM needs them at compile time. Those
inputs are made initializers with the case's own values, so the op itself is what is tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases

from sail_compiler import Artifact, CompileOptions, compile_model
from sail_compiler.errors import ModelCheckError
from sail_compiler.testing.decoders import PRESETS, make_decoder


def _decoder_ops() -> list[str]:
    model = make_decoder(PRESETS["micro"], kv_cache=True)
    return sorted({n.op_type for n in model.graph.node})


OPS = _decoder_ops()
# Inputs (by position) that hold shape parameters, per op.
SHAPE_PARAMETER_INPUTS = {"Reshape": {1}, "Slice": {1, 2, 3, 4}, "ReduceMean": {1},
                          "Unsqueeze": {1}}
KNOWN_FAILURES = {
    name: "ONNX's Range is a function op; for float16/bfloat16 onnxruntime's optimizer (our "
          "preprocessing) inlines its Loop body, and TVM's importer has no Loop"
    for name in ("test_range_float16_type_positive_delta",
                 "test_range_bfloat16_type_positive_delta")}
# Element types that TVM runs with wrong values (or not at all): the checks must reject them.
REJECTED_TYPES = ("FLOAT8", "INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
# Cases that kill the process, so they cannot run even as xfails; each is a reported TVM bug.
CRASHES = {
    "test_reshape_allowzero_reordered":
        "SIGFPE in the TVM runtime reshaping a zero-element tensor (0x3x4 -> 3x4x0)",
}


def _cases() -> list:
    selected = []
    for case in collect_testcases():
        if case.model is None or case.name.endswith("_expanded"):
            continue
        ops = {n.op_type for n in case.model.graph.node}
        if len(ops) == 1 and ops <= set(OPS) and case.name not in CRASHES:
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


def _array(value) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Cases store exotic dtypes as TensorProto."""
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _freeze_shape_parameters(model: onnx.ModelProto,
                             inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn shape-parameter graph inputs into initializers; return the remaining inputs."""
    (node,) = model.graph.node
    frozen = {node.input[i] for i in SHAPE_PARAMETER_INPUTS.get(node.op_type, set())
              if i < len(node.input) and node.input[i] in inputs}
    for name in frozen:
        model.graph.initializer.append(numpy_helper.from_array(inputs[name], name))
    kept = [v for v in model.graph.input if v.name not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return {k: v for k, v in inputs.items() if k not in frozen}


def _rejected_type(case) -> str | None:  # type: ignore[no-untyped-def]
    parts = case.name.upper().split("_")
    return next((p for p in parts if p.startswith(REJECTED_TYPES)), None)


@pytest.mark.parametrize("case", _params())
def test_node_case(case, tmp_path: Path) -> None:
    rejected = _rejected_type(case)
    if rejected is not None:
        path = tmp_path / "model.onnx"
        onnx.save(case.model, str(path))
        with pytest.raises(ModelCheckError, match=f"unsupported tensor type {rejected}"):
            compile_model(path, tmp_path / "out", CompileOptions())
        assert not (tmp_path / "out").exists()
        return
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    (inputs, expected), = case.data_sets
    names = [v.name for v in model.graph.input]
    feeds = _freeze_shape_parameters(
        model, {n: _array(x) for n, x in zip(names, inputs, strict=True)})
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    compile_model(path, tmp_path / "out", CompileOptions())
    outputs = Artifact(tmp_path / "out").run(feeds)
    assert len(outputs) == len(expected)
    for actual, want in zip(outputs.values(), expected, strict=True):
        want = _array(want)
        assert actual.dtype == want.dtype
        np.testing.assert_allclose(actual, want, rtol=case.rtol, atol=case.atol)
