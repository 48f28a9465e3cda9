"""The input/output signature of a model: names, dtypes and (symbolic) dims.

The Relax function keeps only positions, so the artifact records the ONNX names, dtypes and dims
here; symbolic dims are strings (``"batch"``, ``"seq"``), fixed dims are ints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx
from onnx import helper

Dim = int | str


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: its ONNX name, NumPy dtype name and dims."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TensorSpec:
        return cls(obj["name"], obj["dtype"], tuple(obj["dims"]))

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model, in the order of the ONNX graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelSignature:
        return cls(tuple(TensorSpec.from_json(t) for t in obj["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in obj["outputs"]))

    def symbolic_dims(self) -> list[str]:
        """Names of the symbolic dims of the inputs, in order of first appearance."""
        names: list[str] = []
        for spec in self.inputs:
            names += [d for d in spec.dims if isinstance(d, str) and d not in names]
        return names


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    dims: list[Dim] = []
    for i, dim in enumerate(ttype.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype, tuple(dims))


def signature_of(model: onnx.ModelProto) -> ModelSignature:
    """The graph inputs (initializers excluded) and outputs of ``model``."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return ModelSignature(inputs, tuple(_spec(v) for v in model.graph.output))
