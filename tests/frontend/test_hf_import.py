"""Hugging Face exports import with symbolic dims and match onnxruntime.

The fixtures in ``tests/fixtures/hf`` (made by ``examples/make_hf_fixtures.py``) are tiny
random-init Llama (grouped-query attention) and GPT-2 decoders exported by both torch
exporters, with and without KV cache, and a BERT encoder (``input_ids``,
``attention_mask``, ``token_type_ids``) exported by both. Each is imported once with
``preprocess`` and ``patched_converters`` and *no* shape dict, built once for llvm, and the
one executable is run at two batch sizes and two sequence lengths (and two past lengths for
the KV models, one of them a single-token decode step); every output must match
onnxruntime to a relative L2 error below 1e-4. BERT gets a padded attention mask (zeros at
the end of the last row) and token types 0/1.

Three small hand-built graphs cover what the fixtures do not: the patch is scoped and
version-checked, an unprovable ``seq == 1`` is not folded, and the overridden shape
converters (symbolic Slice, Div, Max, Range, Reshape with -1, ConstantOfShape, Expand)
agree with onnxruntime.

Run from the repository root (``python -m pytest``; pyproject puts ``.`` on the path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx, onnx_frontend

from sail_compiler.frontend import converters
from sail_compiler.frontend.converters import patched_converters, preprocess

pytestmark = pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hf"
MODELS = [
    f"{family}_{exporter}{suffix}"
    for family in ("llama", "gpt2")
    for exporter in ("legacy", "dynamo")
    for suffix in ("", "_kv")
] + ["bert_legacy", "bert_dynamo"]
VOCAB = 256  # every fixture's vocabulary (BERT: 2 token types)
# (batch, seq, past): two sequence lengths and, for KV models, two past lengths.
KV_CASES = [(1, 5, 3), (2, 1, 7)]
PLAIN_CASES = [(1, 5, 0), (2, 9, 0)]
TOLERANCE = 1e-4


@dataclass
class Compiled:
    """One fixture, imported and built once per module."""

    name: str
    model: onnx.ModelProto
    mod: tvm.IRModule
    vm: relax.VirtualMachine
    session: ort.InferenceSession

    @property
    def has_kv(self) -> bool:
        """Whether past key/values are graph inputs."""
        return any(i.name.startswith("past_key_values") for i in self.model.graph.input)


@pytest.fixture(scope="module", params=MODELS)
def compiled(request: pytest.FixtureRequest) -> Compiled:
    """Import (no shape dict), build and load one fixture."""
    name = request.param
    path = FIXTURES / f"{name}.onnx"
    if not path.exists():
        pytest.fail(f"missing fixture {path}; run examples/make_hf_fixtures.py")
    model = onnx.load(str(path))
    with patched_converters():
        mod = from_onnx(preprocess(model), keep_params_in_input=False)
    executable = relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return Compiled(name, model, mod, vm, session)


def _feeds(model: onnx.ModelProto, batch: int, seq: int, past: int) -> dict[str, np.ndarray]:
    """Inputs in graph order: token ids in the vocabulary, random past, and the mask: all
    ones for the decoders; for BERT (the model with ``token_type_ids``) the last row padded
    at the end, with token types 0 for the first half of the sequence and 1 for the rest."""
    rng = np.random.default_rng(seq * 100 + past)
    names = [value.name for value in model.graph.input]
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)
        elif value.name == "attention_mask":
            mask = np.ones((batch, past + seq), dtype=np.int64)
            if "token_type_ids" in names:
                mask[-1, seq - max(1, seq // 3) :] = 0
            feeds[value.name] = mask
        elif value.name == "token_type_ids":
            types = np.zeros((batch, seq), dtype=np.int64)
            types[:, seq // 2 :] = 1
            feeds[value.name] = types
        else:  # past_key_values.{i}.{key,value}: [batch, kv_heads, past, head_dim]
            shape = (batch, dims[1].dim_value, past, dims[3].dim_value)
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def test_input_dims_stay_symbolic(compiled: Compiled) -> None:
    """Every ONNX dim_param is a TIR variable in the Relax signature; static dims stay ints."""
    params = compiled.mod["main"].params
    assert len(params) == len(compiled.model.graph.input)
    for param, value in zip(params, compiled.model.graph.input, strict=True):
        shape = param.ty.shape
        assert isinstance(shape, relax.ShapeExpr), f"{value.name}: shape not known"
        dims = value.type.tensor_type.shape.dim
        assert len(shape.values) == len(dims)
        for dim, onnx_dim in zip(shape.values, dims, strict=True):
            if onnx_dim.dim_param:
                assert isinstance(dim, tvm.tirx.Var), f"{value.name}: {dim} is not symbolic"
            else:
                assert int(dim) == onnx_dim.dim_value


def test_output_shapes_are_symbolic_expressions(compiled: Compiled) -> None:
    """Outputs are typed in terms of the input variables (no fresh dims from the import)."""
    ret = compiled.mod["main"].body.ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    input_vars = {
        str(dim)
        for param in compiled.mod["main"].params
        for dim in param.ty.shape.values
        if isinstance(dim, tvm.tirx.Var)
    }
    for field in fields:
        assert isinstance(field.shape, relax.ShapeExpr)
        for dim in field.shape.values:
            for var in tvm.tirx.analysis.undefined_vars(dim):
                assert str(var) in input_vars, f"output dim {dim} uses a fresh variable"


def test_matches_onnxruntime(compiled: Compiled) -> None:
    """One executable, several lengths: every output within 1e-4 relative L2 of onnxruntime."""
    cases = KV_CASES if compiled.has_kv else PLAIN_CASES
    for batch, seq, past in cases:
        feeds = _feeds(compiled.model, batch, seq, past)
        expected = compiled.session.run(None, feeds)
        args = [tvm.runtime.tensor(feeds[v.name]) for v in compiled.model.graph.input]
        result = compiled.vm["main"](*args)
        actual = [result] if len(expected) == 1 else list(result)
        assert len(actual) == len(expected)
        for out, got, want in zip(compiled.model.graph.output, actual, expected, strict=True):
            got = got.numpy()
            assert got.shape == want.shape, f"{out.name} at {(batch, seq, past)}"
            error = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
            assert error < TOLERANCE, (
                f"{compiled.name} {out.name} at batch={batch} seq={seq} past={past}: "
                f"relative L2 error {error:.2e}"
            )


def test_patch_is_scoped_and_version_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stock converters come back after the context; another TVM version is refused."""
    stock = (onnx_frontend.Add._impl_v1, onnx_frontend.ONNXGraphImporter._construct_nodes)
    with patched_converters():
        assert onnx_frontend.Add._impl_v1 != stock[0]
    assert (onnx_frontend.Add._impl_v1, onnx_frontend.ONNXGraphImporter._construct_nodes) == stock
    monkeypatch.setattr(tvm, "__version__", "0.0.0")
    with pytest.raises(RuntimeError, match=converters.EXPECTED_TVM_VERSION):
        with patched_converters():
            pass


@pytest.mark.parametrize("rank", [0, 1])
def test_unprovable_equal_is_not_folded(rank: int) -> None:
    """``Where(Shape(x) == 1, 10, 20)`` must depend on the run-time length of x.

    The stock converter folds the rank-1 form to ``False`` (``seq`` is not structurally 1).
    """
    dims = [] if rank == 0 else [1]
    nodes = [helper.make_node("Shape", ["x"], ["shape"])]
    if rank == 0:
        nodes.append(helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0))
    nodes += [
        helper.make_node("Equal", ["n" if rank == 0 else "shape", "one"], ["is_one"]),
        helper.make_node("Where", ["is_one", "ten", "twenty"], ["y"]),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("one", TensorProto.INT64, dims, [1]),
        helper.make_tensor("ten", TensorProto.FLOAT, dims, [10.0]),
        helper.make_tensor("twenty", TensorProto.FLOAT, dims, [20.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "equal_seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with patched_converters():
        mod = from_onnx(model, keep_params_in_input=False)
    vm = relax.VirtualMachine(
        relax.build(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu()
    )
    for length, expected in ((1, 10.0), (3, 20.0)):
        x = tvm.runtime.tensor(np.zeros(length, dtype=np.float32))
        assert vm["main"](x).numpy().reshape(-1).tolist() == [expected]


def _int64(name: str, values: list[int], scalar: bool = False) -> onnx.TensorProto:
    """An int64 initializer (a scalar when ``scalar``)."""
    return helper.make_tensor(name, TensorProto.INT64, [] if scalar else [len(values)], values)


def test_symbolic_shape_arithmetic_matches_onnxruntime() -> None:
    """The overridden converters on one small graph: every output at three lengths of x."""
    node = helper.make_node
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "i0"], ["n"], axis=0),
        node("Sub", ["n", "two"], ["n_minus_2"]),
        node("Unsqueeze", ["n_minus_2", "axis0"], ["start"]),
        node("Slice", ["x", "start", "int64_max", "axis0"], ["tail"]),  # x[n-2:]
        node("Div", ["n", "two"], ["half"]),
        node("Unsqueeze", ["half", "axis0"], ["half_v"]),
        node("Slice", ["x", "zero_v", "half_v", "axis0"], ["head"]),  # x[:n//2]
        node("Range", ["half", "n", "one"], ["positions"]),  # [n//2, n)
        node("Concat", ["half_v", "minus1_v"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["folded"]),  # (n//2, -1)
        node("Max", ["n", "three"], ["rows"]),
        node("Unsqueeze", ["rows", "axis0"], ["rows_v"]),
        node("Concat", ["rows_v", "eight_v"], ["fill_shape"], axis=0),
        node(
            "ConstantOfShape",
            ["fill_shape"],
            ["filled"],
            value=helper.make_tensor("value", TensorProto.FLOAT, [1], [2.5]),
        ),
        node("Concat", ["two_v", "s"], ["expand_shape"], axis=0),
        node("Expand", ["row", "expand_shape"], ["expanded"]),  # [2, n, 8]
    ]
    inits = [
        _int64("i0", [0], scalar=True),
        _int64("one", [1], scalar=True),
        _int64("two", [2], scalar=True),
        _int64("three", [3], scalar=True),
        _int64("axis0", [0]),
        _int64("int64_max", [2**63 - 1]),
        _int64("zero_v", [0]),
        _int64("minus1_v", [-1]),
        _int64("eight_v", [8]),
        _int64("two_v", [2]),
        helper.make_tensor("row", TensorProto.FLOAT, [1, 8], list(range(8))),
    ]
    ranks = {"tail": 2, "head": 2, "positions": 1, "folded": 2, "filled": 2, "expanded": 3}
    outputs = [
        helper.make_tensor_value_info(
            name, TensorProto.INT64 if name == "positions" else TensorProto.FLOAT, [None] * rank
        )
        for name, rank in ranks.items()
    ]
    graph = helper.make_graph(
        nodes,
        "shape_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with patched_converters():
        mod = from_onnx(model, keep_params_in_input=False)
    for field in mod["main"].body.ty.fields:
        assert isinstance(field.shape, relax.ShapeExpr)  # no output lost its shape
    vm = relax.VirtualMachine(
        relax.build(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu()
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for length in (2, 4, 6):
        x = np.random.default_rng(length).standard_normal((length, 8)).astype(np.float32)
        expected = session.run(None, {"x": x})
        actual = vm["main"](tvm.runtime.tensor(x))
        for name, got, want in zip(ranks, actual, expected, strict=True):
            np.testing.assert_allclose(got.numpy(), want, err_msg=f"{name} at n={length}")
