"""ONNX -> Relax import: shape bindings, TVM's importer under our converter overrides.

The result is an IRModule whose ``main`` takes the model inputs in ONNX graph order (weights are
constants) and returns the outputs in ONNX order (a tuple when there are several). Every
initializer's constant carries the initializer's name in its span
(:func:`~sail_compiler.ops.quant_matmul.name_weight_ref`, ``sail.init:<name>``) when it holds
that initializer of the given model as it is (the preprocessing may fold or change some): the
``quantize`` stage finds each layer's weight by it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import onnx
import tvm
from onnx import external_data_helper, numpy_helper

from ..errors import ImportFailure, OptionError, tvm_message, valid_choices
from ..external_data import ExternalData, tvm_dlpack
from ..ops.quant_matmul import name_weight_ref
from ..quant.plan import weight_ref
from .converters import patched_converters, preprocess
from .signature import ModelSignature, signature_of


def parse_shape_binding(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x16`` (``NAME=`` for a scalar) into ``(NAME, (1, 16))``."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        values = tuple(int(d) for d in dims.split("x")) if dims else ()
        if any(v < 0 for v in values):
            raise ValueError
    except ValueError:
        raise OptionError(f"bad --shape '{text}': expected NAME=DIMS with non-negative integer "
                          "dims joined by 'x', e.g. --shape input_ids=1x16") from None
    return name, values


def bind_shapes(model: onnx.ModelProto, bindings: dict[str, tuple[int, ...]]) -> list[str]:
    """Fix the dims of graph inputs in place (on the caller's in-memory copy).

    Returns
    -------
    list[str]
        One message per binding that replaced a symbolic dim, for the user.
    """
    inputs = {v.name: v for v in model.graph.input}
    unknown = [n for n in bindings if n not in inputs]
    if unknown:
        raise OptionError(f"--shape names unknown input(s) {', '.join(unknown)}; "
                          f"{valid_choices(list([s.name for s in signature_of(model).inputs]))}")
    notes = []
    for name, dims in bindings.items():
        shape = inputs[name].type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise OptionError(f"--shape {name}: the input has rank {len(shape.dim)}, "
                              f"got {len(dims)} dims")
        for i, (dim, value) in enumerate(zip(shape.dim, dims, strict=True)):
            known = dim.HasField("dim_value") and dim.dim_value >= 0  # -1: unknown (paddle2onnx)
            if known and dim.dim_value != value:
                raise OptionError(f"--shape {name}: dim {i} is fixed to {dim.dim_value} by the "
                                  f"model, got {value}")
            if not known:
                notes.append(f"input {name}: dim {i} ('{dim.dim_param or '?'}') bound to "
                             f"{value}; the artifact accepts only that size there")
            dim.Clear()
            dim.dim_value = value
    return notes


@contextlib.contextmanager
def _node_tracker(failed: list[str]) -> Iterator[None]:
    """Record the name of the node whose conversion raised (TVM only prints the op type)."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    original = ONNXGraphImporter._convert_operator

    def tracked(self, op_name, inputs, attrs, opset):  # type: ignore[no-untyped-def]
        try:
            return original(self, op_name, inputs, attrs, opset)
        except Exception:
            failed.append(f"{op_name} node '{attrs['tvm_custom']['name']}'")
            raise

    ONNXGraphImporter._convert_operator = tracked
    try:
        yield
    finally:
        ONNXGraphImporter._convert_operator = original


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if (a.data_type, list(a.dims)) != (b.data_type, list(b.dims)):
        return False
    external = external_data_helper.uses_external_data
    if external(a) or external(b):
        return external(a) and external(b) and list(a.external_data) == list(b.external_data)
    if a.HasField("raw_data") and b.HasField("raw_data"):
        return a.raw_data == b.raw_data
    return numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


def _kept_initializers(model: onnx.ModelProto, prepared: onnx.ModelProto) -> set[str] | None:
    """The initializers of ``prepared`` that are ``model``'s as they are (same name, type,
    shape and bytes); None when ``prepared`` is ``model`` (a large model skips preprocessing).
    Onnxruntime's optimization keeps the names of the initializers it does not touch; one it
    folds into a new initializer gets a new name, but nothing else stops it from changing
    one under its old name."""
    if prepared is model:
        return None
    original = {t.name: t for t in model.graph.initializer}
    return {t.name for t in prepared.graph.initializer
            if t.name in original and _same_tensor(t, original[t.name])}


@contextlib.contextmanager
def _named_initializers(kept: set[str] | None) -> Iterator[None]:
    """Name the constant of every initializer of the main graph after it (module docstring),
    those in ``kept`` only unless it is None.

    TVM's importer makes them in ``_parse_graph_initializers`` (``relax.const``, which takes no
    span); the constants are renamed there, before any converter reads them. Left unnamed: an
    initializer the preprocessing made or changed (not in ``kept``), the initializers of ``If``
    branches (``_convert_subgraph``), and every constant a converter computes."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    original = ONNXGraphImporter._parse_graph_initializers

    def parse(self, graph):  # type: ignore[no-untyped-def]
        original(self, graph)
        for tensor in graph.initializer:
            const = self._nodes.get(tensor.name)
            if isinstance(const, tvm.ir.GenericConst) and (kept is None or tensor.name in kept):
                self._nodes[tensor.name] = name_weight_ref(const, weight_ref(tensor.name))

    ONNXGraphImporter._parse_graph_initializers = parse
    try:
        yield
    finally:
        ONNXGraphImporter._parse_graph_initializers = original


@contextlib.contextmanager
def _mapped_initializers(external: ExternalData) -> Iterator[None]:
    """Make the importer's constants of external initializers views of the mapped files (no
    copy; TVM takes a 64-byte aligned NumPy array as it is), or copies read from the file."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    original = ONNXGraphImporter._parse_array

    def parse(self, tensor):  # type: ignore[no-untyped-def]
        if tensor.name not in external or not external_data_helper.uses_external_data(tensor):
            return original(self, tensor)
        view = external.array(tensor.name)
        if view is None:
            return tvm.runtime.tensor(external.read(tensor.name))
        return tvm.runtime.from_dlpack(tvm_dlpack(view))

    ONNXGraphImporter._parse_array = parse
    try:
        yield
    finally:
        ONNXGraphImporter._parse_array = original


def import_onnx(model: onnx.ModelProto, external: ExternalData | None = None,
                ) -> tuple[tvm.IRModule, ModelSignature]:
    """Convert a checked model (see :func:`~.check.load_checked`) to a Relax IRModule.

    Parameters
    ----------
    model
        The ONNX model with its weights in memory, or with the external references of
        ``external``'s initializers. It is not modified.
    external
        The model's mapped external data: its initializers become constants that view the
        mapped files instead of copies.

    Returns
    -------
    (tvm.IRModule, ModelSignature)
        The module (weights as constants, symbolic dims kept) and the ONNX signature.
    """
    from tvm.relax.frontend.onnx import from_onnx

    signature = signature_of(model)
    prepared = preprocess(model)
    failed: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")  # TVM warns about every renamed input
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(patched_converters())
            stack.enter_context(_node_tracker(failed))
            stack.enter_context(_named_initializers(_kept_initializers(model, prepared)))
            if external is not None:
                stack.enter_context(_mapped_initializers(external))
            mod = from_onnx(prepared, keep_params_in_input=False)
    except Exception as err:
        raise _import_failure(failed, err) from err
    return mod, signature


def _import_failure(failed: list[str], err: Exception) -> ImportFailure:
    where = f" at {failed[0]}" if failed else ""
    first = tvm_message(err)
    return ImportFailure(
        f"TVM's ONNX importer failed{where}: {first}. If a dynamic dim is the cause, fix it "
        "with --shape NAME=DIMS (e.g. --shape input_ids=1x16); otherwise please report the model")
