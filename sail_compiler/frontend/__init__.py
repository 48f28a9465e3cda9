"""ONNX frontend: checks, shape bindings and import into Relax."""

from .check import load_checked
from .importer import bind_shapes, import_onnx, parse_shape_binding
from .signature import ModelSignature, TensorSpec, signature_of

__all__ = ["ModelSignature", "TensorSpec", "bind_shapes", "import_onnx", "load_checked",
           "parse_shape_binding", "signature_of"]
