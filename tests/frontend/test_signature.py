"""Signatures: symbolic dims and the index bounds that guard TVM's gather."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from sail_compiler import Artifact, CompileOptions, compile_model
from sail_compiler.errors import InputError
from sail_compiler.frontend.signature import signature_of

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hf"


@pytest.mark.parametrize("name", ["gpt2_legacy", "gpt2_dynamo", "llama_dynamo_kv",
                                  "bert_legacy"])
def test_vocabulary_bound_found_through_reshapes(name: str) -> None:
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    specs = {s.name: s for s in signature_of(model).inputs}
    assert specs["input_ids"].index_bound == 256  # every fixture's vocabulary
    assert specs["attention_mask"].index_bound is None
    if "token_type_ids" in specs:
        assert specs["token_type_ids"].index_bound == 2  # BERT's type_vocab_size


def test_out_of_range_ids_are_rejected_before_running(micro_decoder: Path,
                                                      tmp_path: Path) -> None:
    compile_model(micro_decoder, tmp_path / "a", CompileOptions())
    artifact = Artifact(tmp_path / "a")
    vocab = artifact.signature.inputs[0].index_bound
    assert vocab == 50
    for bad in (vocab, -1):
        ids = np.array([[1, bad, 2]], np.int64)
        with pytest.raises(InputError, match=r"values must lie in \[0, 50\)"):
            artifact.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def test_optional_tensor_input_is_its_tensor_and_a_sequence_is_refused() -> None:
    """An optional tensor is described by its tensor type (TVM imports it as the tensor); a
    sequence input gets an ImportFailure naming it, not a KeyError from onnx's type tables."""
    from onnx import TensorProto, helper

    from sail_compiler.errors import ImportFailure

    tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, ["n", 3])
    optional = helper.make_value_info("x", helper.make_optional_type_proto(tensor))
    out = helper.make_tensor_value_info("y", TensorProto.BOOL, [])
    graph = helper.make_graph([helper.make_node("OptionalHasElement", ["x"], ["y"])], "g",
                              [optional], [out])
    spec = signature_of(helper.make_model(graph)).inputs[0]
    assert (spec.name, spec.dtype, spec.dims) == ("x", "float32", ("n", 3))

    sequence = helper.make_value_info("s", helper.make_sequence_type_proto(tensor))
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["y"])], "g",
                              [sequence], [out])
    with pytest.raises(ImportFailure, match="'s' is a sequence_type, not a tensor"):
        signature_of(helper.make_model(graph))


def test_dim_value_minus_one_is_unknown() -> None:
    """paddle2onnx writes ``dim_value: -1`` for an unknown dim (e.g. rapidocr's classifier):
    the signature names it and ``--shape`` may bind it; a real fixed dim still may not change."""
    from onnx import TensorProto, helper

    from sail_compiler.errors import OptionError
    from sail_compiler.frontend.importer import bind_shapes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]))
    assert signature_of(model).inputs[0].dims == ("x_dim0", 3)
    notes = bind_shapes(model, {"x": (2, 3)})
    assert len(notes) == 1 and "dim 0" in notes[0]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3]
    with pytest.raises(OptionError, match="dim 1 is fixed to 3 by the model, got 4"):
        bind_shapes(model, {"x": (2, 4)})


@pytest.mark.parametrize("name", ["llama_legacy_kv", "gpt2_dynamo_kv", "bert_legacy",
                                  "whisper_legacy"])
def test_input_roles_of_exports(name: str) -> None:
    """Roles are decided at import: the token ids, the mask, each past with the index of its
    present; BERT's token_type_ids and Whisper's features are other inputs."""
    signature = signature_of(onnx.load(str(FIXTURES / f"{name}.onnx")))
    roles = {s.name: s.role for s in signature.inputs}
    outputs = [s.name for s in signature.outputs]
    expected = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "other",
                "input_features": "other"}
    assert {n: r for n, r in roles.items() if n in expected} == \
        {n: r for n, r in expected.items() if n in roles}
    pasts = signature.inputs_of("past")
    assert len(pasts) == (4 if name.endswith("_kv") else 0)
    for spec in pasts:
        assert outputs[spec.present] == "present." + spec.name.removeprefix("past_key_values.")
    assert signature.kv_pairs() == {s.name: outputs[s.present] for s in pasts}
    assert all(s.present is None for s in signature.inputs if s.role != "past")


def test_roles_name_rules() -> None:
    """The first matching rule wins (mask, position, ids, past/cache); with input_ids other ids
    are other inputs; a past without its present output has none."""
    from onnx import TensorProto, helper

    from sail_compiler.frontend.signature import ModelSignature

    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.INT64, ["n"])

    names = ["input_ids", "token_type_ids", "position_ids", "cache_position", "attention_mask",
             "past_key_values.0.key", "past_key_values.1.key", "extra"]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    outs = [value("logits"), value("present.0.key")]
    nodes += [helper.make_node("Identity", ["input_ids"], ["logits"]),
              helper.make_node("Identity", ["input_ids"], ["present.0.key"])]
    graph = helper.make_graph(nodes, "g", [value(n) for n in names], outs)
    signature = signature_of(helper.make_model(graph))
    assert [(s.role, s.present) for s in signature.inputs] == [
        ("ids", None), ("other", None), ("positions", None), ("positions", None),
        ("mask", None), ("past", 1), ("past", None), ("other", None)]
    # the manifest carries them; a manifest written before roles gets them from the names
    assert ModelSignature.from_json(signature.to_json()) == signature
    legacy = signature.to_json()
    for spec in legacy["inputs"]:
        del spec["role"], spec["present"]
    assert ModelSignature.from_json(legacy) == signature
    # without input_ids, every ids-like input is a candidate (the tools refuse to guess)
    graph = helper.make_graph([helper.make_node("Add", ["token_type_ids", "decoder_ids"],
                                                ["logits"])], "g",
                              [value("token_type_ids"), value("decoder_ids")], outs[:1])
    signature = signature_of(helper.make_model(graph))
    assert [s.role for s in signature.inputs] == ["ids", "ids"]
    assert signature.input_of("ids") is None
