"""ONNX -> Relax import: shape bindings, TVM's importer under our converter overrides.

The result is an IRModule whose ``main`` takes the model inputs in ONNX graph order (weights are
constants) and returns the outputs in ONNX order (a tuple when there are several).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import onnx
import tvm
from onnx import external_data_helper

from ..errors import ImportFailure, OptionError, tvm_message, valid_choices
from ..external_data import ExternalData, tvm_dlpack
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
