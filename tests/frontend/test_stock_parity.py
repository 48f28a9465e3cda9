"""What stock TVM imports, sail's importer imports too, with the same outputs.

Each model goes through two importers: stock ``tvm.relax.frontend.onnx.from_onnx`` (no shape
dict, or every input fixed with ``shape_dict``) and sail's
:func:`~sail_compiler.frontend.importer.import_onnx` (``preprocess`` and the converter
overrides; fixed dims through ``bind_shapes``). Both modules are built by TVM's own
``relax.build`` for llvm, so a difference is the importer's. When the stock import builds and
its outputs match the reference (onnxruntime, or the ONNX node case's own outputs at its own
tolerances), sail's import must build and match it too. When stock TVM does not import or run
a model, the case is skipped with stock TVM's error: there is nothing to preserve.

The models:

* ONNX's backend node cases (``onnx.backend.test.case.node``, single ops and their
  ``_expanded`` function bodies), as written (``static``) and with every graph input dim
  replaced by a symbol (``symbolic``: what sail's shape converters are for). The fast tier
  runs the first case of each op that sail's converters override or that the decoders need;
  ``slow`` runs all of them.
* the committed Hugging Face fixtures and, when present, the corpus that
  ``examples/make_hf_fixtures.py --corpus`` writes (``benchmarks/frontend_corpus.py``'s default
  directory), with symbolic and with fixed dims; the Whisper encoders in the fast tier, the
  rest ``slow``. Measured on TVM 0.27: stock TVM imports the Whisper encoders (both
  exporters, both modes) and none of the other Hugging Face exports (Reshape of a computed
  shape, Expand of a rank-1 shape, ``NoneType`` in Gather); those cases are skipped until it
  does. The onnxruntime-genai fixtures are left out: stock TVM has no converter for their
  ``com.microsoft`` ops (``test_genai.py`` checks sail's import of them).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from sail_compiler.errors import SailError
from sail_compiler.frontend.importer import bind_shapes, import_onnx
from sail_compiler.frontend.signature import signature_of
from sail_compiler.verify import InputPlan, generate_inputs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

TESTS = Path(__file__).resolve().parent.parent
CORPUS = Path("/root/.cache/sail-frontend/corpus")
#: Ops whose converters sail overrides (frontend/converters.py), or whose import the HF and
#: genai exports depend on.
FAST_OPS = ("add", "sub", "mul", "div", "max", "min", "equal", "where", "reshape", "range",
            "expand", "gather", "unsqueeze", "cast", "shape", "slice", "concat",
            "constantofshape", "and", "matmul", "softmax", "transpose", "pow", "sqrt",
            "nonmaxsuppression")
FAST_PER_OP = 1
#: Relative L2 error allowed against onnxruntime for the float models.
MODEL_TOLERANCE = 1e-4
#: Ops whose stock import kills the process (a segfault in TVM 0.27's C++) when their inputs'
#: dims are symbolic: stock TVM is not run on those cases; sail's import must refuse them with
#: a SailError instead (measured: every NonMaxSuppression case, in all_class_non_max_suppression's
#: struct info inference).
STOCK_SEGFAULTS_SYMBOLIC = ("nonmaxsuppression",)


def _tvm_run(mod: tvm.IRModule, args: list[np.ndarray]) -> list[np.ndarray]:
    """Build ``mod`` with TVM's default pipeline for llvm and run ``main`` on ``args``."""
    executable = relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args])
    if isinstance(result, tvm.runtime.Tensor) or _is_shape(result):
        result = [result]
    # an output the importer left as a Relax shape value comes back as a tuple of ints
    return [o.numpy() if isinstance(o, tvm.runtime.Tensor) else np.array(list(o), np.int64)
            for o in result]


def _is_shape(value: object) -> bool:
    return not isinstance(value, tvm.runtime.Tensor) and all(isinstance(v, int) for v in value)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:200]


def _stock_import(model: onnx.ModelProto, shapes: dict | None) -> tvm.IRModule:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return from_onnx(copy, shape_dict=shapes, keep_params_in_input=False)


def _sail_import(model: onnx.ModelProto, shapes: dict | None) -> tvm.IRModule:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if shapes:
        bind_shapes(copy, shapes)
    return import_onnx(copy)[0]


def _check_parity(model: onnx.ModelProto, args: list[np.ndarray], shapes: dict | None,
                  matches: Callable[[list[np.ndarray]], str | None]) -> None:
    """Skip when stock TVM fails; otherwise sail's import must give matching outputs.

    ``matches(outputs)`` returns None when the outputs agree with the reference, else why not.
    """
    try:
        stock = _tvm_run(_stock_import(model, shapes), args)
    except Exception as err:  # stock TVM's failures are many kinds of exceptions
        pytest.skip(f"stock TVM fails: {_first_line(err)}")
    problem = matches(stock)
    if problem is not None:
        pytest.skip(f"stock TVM's outputs are wrong: {problem}")
    sail = _tvm_run(_sail_import(model, shapes), args)
    problem = matches(sail)
    assert problem is None, f"stock TVM matches the reference, sail's import does not: {problem}"


# --------------------------------------------------------------------------------------------
# ONNX backend node cases
# --------------------------------------------------------------------------------------------


def _array(value) -> np.ndarray:  # type: ignore[no-untyped-def]
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _op_of(name: str) -> str:
    return name.removeprefix("test_").split("_")[0]


def _node_params() -> list:
    cases = sorted((c for c in collect_testcases() if c.model is not None),
                   key=lambda c: c.name)
    per_op: dict[str, int] = {}
    params = []
    for case in cases:
        op = _op_of(case.name)
        fast = op in FAST_OPS and per_op.get(op, 0) < FAST_PER_OP
        if fast:
            per_op[op] = per_op.get(op, 0) + 1
        params.append(pytest.param(case, id=case.name,
                                   marks=() if fast else pytest.mark.slow))
    return params


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have a named symbol for every dim."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.type.WhichOneof("value") != "tensor_type":
            continue
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{value.name}_{i}"
    return copy


@pytest.mark.parametrize("dims", ["static", "symbolic"])
@pytest.mark.parametrize("case", _node_params())
def test_node_case(case, dims: str) -> None:  # type: ignore[no-untyped-def]
    (inputs, expected), = case.data_sets[:1]
    expected = [_array(e) for e in expected]

    def matches(outputs: list[np.ndarray]) -> str | None:
        if len(outputs) != len(expected):
            return f"{len(outputs)} outputs, expected {len(expected)}"
        for got, want in zip(outputs, expected, strict=True):
            if not isinstance(want, np.ndarray):
                return f"the reference output is a {type(want).__name__}, not a tensor"
            if got.shape != want.shape or got.dtype != want.dtype:
                return f"{got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
            try:
                np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
            except AssertionError as err:
                return str(err).strip().splitlines()[0]
        return None

    model = case.model if dims == "static" else _symbolic(case.model)
    if dims == "symbolic" and _op_of(case.name) in STOCK_SEGFAULTS_SYMBOLIC:
        with pytest.raises(SailError, match="--shape"):
            _sail_import(model, None)
        return
    _check_parity(model, [_array(x) for x in inputs], None, matches)


# --------------------------------------------------------------------------------------------
# Hugging Face exports, the corpus
# --------------------------------------------------------------------------------------------


def _model_paths() -> list[Path]:
    # not the onnxruntime-genai fixtures: stock TVM has no converter for their com.microsoft
    # ops, so there is nothing to preserve (and their raw files leave the head size symbolic,
    # kv_cache_dim, which generated inputs cannot guess); test_genai.py checks sail's import
    paths = sorted((TESTS / "fixtures" / "hf").glob("*.onnx"))
    if CORPUS.is_dir():
        paths += sorted(CORPUS.glob("*.onnx"))
    return paths


def _model_params() -> list:
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}",
                         marks=() if path.parent.name == "hf" and path.stem.startswith("whisper")
                         else pytest.mark.slow)
            for path in _model_paths()]


@pytest.mark.parametrize("mode", ["symbolic", "fixed"])
@pytest.mark.parametrize("path", _model_params())
def test_model(path: Path, mode: str) -> None:
    model = onnx.load(str(path))
    feeds = generate_inputs(signature_of(model), InputPlan(1, 3, 2))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()} if mode == "fixed" else None

    def matches(outputs: list[np.ndarray]) -> str | None:
        if len(outputs) != len(expected):
            return f"{len(outputs)} outputs, expected {len(expected)}"
        for got, want in zip(outputs, expected, strict=True):
            if got.shape != want.shape:
                return f"shape {list(got.shape)}, expected {list(want.shape)}"
            error = np.linalg.norm(got.astype(np.float64) - want) / max(
                float(np.linalg.norm(want)), 1e-30)
            if error >= MODEL_TOLERANCE:
                return f"relative L2 error {error:.2e}"
        return None

    _check_parity(model, [feeds[v.name] for v in model.graph.input], shapes, matches)
