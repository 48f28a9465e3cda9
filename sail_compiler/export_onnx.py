"""Export SAIL-quantized weights as onnxruntime ``com.microsoft.MatMulNBits`` nodes.

:func:`export_matmulnbits` writes a copy of a float model in which the chosen MatMuls read
their weights from SAIL :class:`~sail_compiler.quant.QuantizedWeight` codes, in onnxruntime's own
layout, so that onnxruntime (or any runtime that implements the contrib op) runs the same
quantized weights SAIL compiled. onnxruntime computes ``x @ dequantize(qw)`` with
``accuracy_level=0``.

Layout written for a weight ``W[K, N]`` quantized in groups of ``g`` along K with b-bit codes
(``n_blocks = ceil(K / g)``, ``K_pad = n_blocks * g``):

* ``B``: uint8 ``[N, n_blocks, g * b / 8]``: row n is SAIL's packed column n of ``qw.q``
  (:mod:`~sail_compiler.quant.packing`, little-endian bit stream along K, padding rows included),
  which is onnxruntime's "low bits first within each block" layout because every block fills whole
  bytes.
* ``scales``: float32 ``[N, n_blocks]`` = ``qw.scale.T``, sign included: symmetric scales are
  ``-w* / 2**(b-1)`` (negative where the group's largest-magnitude weight is positive), which is
  how onnxruntime's own symmetric quantizer writes them. A symmetric RTN export is therefore
  onnxruntime's ``MatMulNBitsQuantizer`` model bit for bit, except the codes of padding rows
  (k >= K), which SAIL writes as the zero point and onnxruntime leaves 0; neither reads them.
* ``zero_points`` (only with zero points): uint8 ``[N, ceil(n_blocks * b / 8)]``, row n the
  n_blocks zero points of column n packed the same way. Symmetric weights (``qw.zero`` None) write
  none: onnxruntime's default zero point ``2**(b - 1)`` is SAIL's implicit one.
* attributes ``K``, ``N``, ``bits``, ``block_size = g`` (and ``accuracy_level`` when asked).

onnxruntime runs only 2-, 4- and 8-bit MatMulNBits with block sizes that are powers of two >= 16;
other widths and group sizes stay in SAIL artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from .errors import OptionError
from .frontend import load_checked
from .frontend.prequantized import (
    MATMULNBITS_BITS,
    MIN_BLOCK_SIZE,
    MS_DOMAIN,
    fresh_name,
    remove_named,
)
from .frontend.signature import signature_of
from .options import CompileOptions
from .quant.packing import pack_bits
from .quant.prepare import prepare_quantization
from .quant.reference import QuantizedWeight

#: Protobuf cannot serialize 2 GB; models whose tensors reach this size use external data.
PROTOBUF_LIMIT_BYTES = 2_000_000_000
#: onnxruntime's accuracy_level values (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
_ONNX_DOMAINS = ("", "ai.onnx")
_SHOWN_NAMES = 8


def _matmulnbits_inputs(qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``B [N, n_blocks, blob]``, ``scales [N, n_blocks]`` and packed zero points (or None)."""
    blob = qw.group_size * qw.bits // 8
    b = pack_bits(np.ascontiguousarray(qw.q.T), qw.bits, axis=1).reshape(qw.n, qw.n_groups, blob)
    scales = np.ascontiguousarray(qw.scale.T, dtype=np.float32)
    zero = None
    if qw.zero is not None:
        zero = pack_bits(np.ascontiguousarray(qw.zero.T), qw.bits, axis=1)
    return b, scales, zero


def _weight_problems(name: str, qw: QuantizedWeight, b: onnx.TensorProto | None) -> list[str]:
    """Why the layer of MatMul ``name`` cannot be written as MatMulNBits (empty if it can)."""
    problems = []
    if qw.bits not in MATMULNBITS_BITS:
        problems.append(f"MatMul '{name}': {qw.bits}-bit weights cannot be written as "
                        "MatMulNBits, which onnxruntime runs with bits 2, 4 or 8 only; other "
                        "widths stay in SAIL artifacts")
    g = qw.group_size
    if g < MIN_BLOCK_SIZE or g & (g - 1):
        what = (f"one group per column (channel) with K={qw.k}" if qw.n_groups == 1 and g == qw.k
                else f"group size {g}")
        problems.append(f"MatMul '{name}': {what} cannot be written as MatMulNBits, whose "
                        f"block_size must be a power of two >= {MIN_BLOCK_SIZE} (16, 32, 64, "
                        "128, ...); quantize with such a group size")
    if b is None:
        problems.append(f"MatMul '{name}': its weight (input B) is not an initializer")
    elif b.data_type != onnx.TensorProto.FLOAT or tuple(b.dims) != (qw.k, qw.n):
        problems.append(
            f"MatMul '{name}': weight '{b.name}' is "
            f"{onnx.TensorProto.DataType.Name(b.data_type).lower()} {list(b.dims)}, the "
            f"quantized weight is float [{qw.k}, {qw.n}]; they must match (float32 models only)")
    return problems


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _external_files(model_path: Path) -> set[Path]:
    """The external-data files a saved model refers to (read without loading them)."""
    if not model_path.is_file():
        return set()
    header = onnx.load(str(model_path), load_external_data=False)
    return {model_path.parent / external_data_helper.ExternalDataInfo(t).location
            for t in header.graph.initializer
            if external_data_helper.uses_external_data(t)}


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data (ByteSize() itself fails above 2 GB)."""
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer)


def export_matmulnbits(model: onnx.ModelProto | str | os.PathLike[str],
                       layers: dict[str, QuantizedWeight], path: str | os.PathLike[str], *,
                       source_path: str | os.PathLike[str] | None = None,
                       accuracy_level: int = 0, external_data: bool | None = None) -> None:
    """Write ``model`` with the MatMuls named in ``layers`` as onnxruntime MatMulNBits nodes.

    Parameters
    ----------
    model
        The float model (its tensor data in memory), or the path of an ``.onnx`` file (then also
        the ``source_path``). It is not modified.
    layers
        MatMul node name -> the :class:`QuantizedWeight` of its float32 initializer ``B[K, N]``
        (2, 4 or 8 bits; group size a power of two >= 16).
    path
        The ``.onnx`` file to write; must not be the source model.
    source_path
        The file ``model`` was loaded from, if any, so that it is never overwritten.
    accuracy_level
        onnxruntime's ``accuracy_level`` attribute, 0..4: 0 (default) computes
        ``x @ dequantize(qw)`` in float32; 4 lets onnxruntime quantize activations to int8 (its
        fast path).
    external_data
        Write the tensors to ``<path>.data`` next to the model; default: when they exceed 2 GB.

    Raises
    ------
    OptionError
        A name is not a MatMul of the model (the message lists valid ones), a weight cannot be
        written as MatMulNBits (width other than 2, 4, 8; unsupported group size; mismatching
        weight), ``accuracy_level`` is out of range, or ``path`` is the source model.
    """
    if not isinstance(model, onnx.ModelProto):
        source_path = model
        model = onnx.load(str(model))
    out = Path(path)
    data_file = out.parent / (out.name + ".data")
    if source_path is not None:
        for file in [Path(source_path), *_external_files(Path(source_path))]:
            if _same_file(out, file) or _same_file(data_file, file):
                raise OptionError(f"refusing to overwrite {file}, part of the source model; "
                                  "give another output path")
    if accuracy_level not in ACCURACY_LEVELS:
        raise OptionError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got "
                          f"{accuracy_level!r}")
    if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise OptionError("the model's external data is not loaded; pass its path, or load it "
                          "with onnx.load(path) (load_external_data=True)")

    exported = onnx.ModelProto()
    exported.CopyFrom(model)
    graph = exported.graph
    matmuls = {n.name: i for i, n in enumerate(graph.node)
               if n.op_type == "MatMul" and n.domain in _ONNX_DOMAINS and n.name}
    unknown = sorted(set(layers) - set(matmuls))
    if unknown:
        shown = ", ".join(sorted(matmuls)[:_SHOWN_NAMES]) or "none (the model has no named MatMul)"
        more = f" (and {len(matmuls) - _SHOWN_NAMES} more)" if len(matmuls) > _SHOWN_NAMES else ""
        raise OptionError(f"not a MatMul node of the model: {', '.join(unknown)}; valid names "
                          f"include: {shown}{more}")
    initializers = {t.name: t for t in graph.initializer}
    problems = []
    for name, qw in layers.items():
        problems += _weight_problems(name, qw, initializers.get(graph.node[matmuls[name]].input[1]))
    if problems:
        raise OptionError("cannot export as MatMulNBits:\n" + "\n".join(f"  - {p}"
                                                                        for p in problems))

    taken = set(initializers) | {n for node in graph.node for n in [*node.input, *node.output]}
    replaced = set()
    for name, qw in layers.items():
        node = graph.node[matmuls[name]]
        weight = node.input[1]
        b, scales, zero = _matmulnbits_inputs(qw)
        inputs = [node.input[0], fresh_name(f"{weight}_Q{qw.bits}", taken),
                  fresh_name(f"{weight}_scales", taken)]
        graph.initializer.append(numpy_helper.from_array(b, inputs[1]))
        graph.initializer.append(numpy_helper.from_array(scales, inputs[2]))
        if zero is not None:
            inputs.append(fresh_name(f"{weight}_zero_points", taken))
            graph.initializer.append(numpy_helper.from_array(zero, inputs[3]))
        attrs = {"K": qw.k, "N": qw.n, "bits": qw.bits, "block_size": qw.group_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        graph.node[matmuls[name]].CopyFrom(helper.make_node(
            "MatMulNBits", inputs, list(node.output), name=name, domain=MS_DOMAIN, **attrs))
        replaced.add(weight)

    read = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    stale = replaced - read
    for field in (graph.initializer, graph.input, graph.value_info):
        remove_named(field, stale)
    if not any(o.domain == MS_DOMAIN for o in exported.opset_import):
        exported.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

    if external_data is None:
        external_data = _tensor_bytes(exported) > PROTOBUF_LIMIT_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(exported, str(out), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_file.name,
                        size_threshold=1024)
    else:
        onnx.save_model(exported, str(out))


def export_onnx_model(model_path: str | Path, output: str | Path,
                      options: CompileOptions) -> dict:
    """Quantize ``model_path``'s layers as a compile would and write them as onnxruntime
    ``com.microsoft.MatMulNBits`` nodes to ``output`` (:mod:`.export_onnx`).

    Only ``MatMul`` layers are written as MatMulNBits; quantized ``Gemm`` layers stay float in
    the exported file (noted). Returns ``{"layers", "schemes", "notes"}``.

    Raises
    ------
    OptionError
        Nothing is quantized, a width onnxruntime cannot run (not 2, 4 or 8) or a group size it
        cannot take, or ``output`` is the input model.
    """
    model_path, output = Path(model_path), Path(output)
    if output.resolve() == model_path.resolve():
        raise OptionError(f"-o {output} is the input model; write the export to a new file")
    prequantized: dict = {}
    model = load_checked(model_path, prequantized=prequantized)
    quant = prepare_quantization(model, signature_of(model), options, prequantized)
    if quant is None or not any(q.qw is not None for q in quant.layers):
        raise OptionError("nothing to export: no layer is quantized; add --bits 2, 4 or 8 (or "
                          "--bits-plan)")
    notes = list(quant.notes)
    if quant.folding is not None:
        from .quant.awq import apply_constants

        apply_constants(model, quant.folding)
    layers = {}
    for q in quant.layers:
        if q.qw is None:
            continue
        if q.layer.op_type != "MatMul":
            notes.append(f"{q.layer.name} is a {q.layer.op_type}, kept float in the export")
            continue
        model.graph.node[q.layer.node_index].name = q.layer.name  # unnamed nodes get theirs
        layers[q.layer.name] = q.qw
    export_matmulnbits(model, layers, output, source_path=model_path)
    schemes = sorted({f"w{qw.bits}g{qw.group_size}{'sym' if qw.symmetric else ''}"
                      for qw in layers.values()})
    return {"layers": len(layers), "schemes": schemes, "notes": notes}
