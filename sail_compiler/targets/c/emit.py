"""The Relax ``main`` of a lowered module -> ``model.c`` and ``model.h``.

After the ``c`` target's lowering, ``main`` is a flat sequence of bindings: ``R.call_tir`` of
scheduled PrimFuncs (the kernels, written to ``kernels.c`` by :mod:`.tir_codegen`), tuple
projections of multi-output calls, ``R.match_cast`` (a dim check), aliases, constants (the
weights) and a tuple of outputs. :func:`emit_model` turns it into C that reads like the graph:

* each kernel call is one ``SAIL_CALL(kernel, args...)`` line, commented with its result (name,
  dtype, symbolic shape) and, for SAIL operators, the ONNX layer it computes;
* buffers are named after the Relax variables and live in one ``struct buffers``; each
  intermediate buffer is allocated (``sail_rt_alloc``) right before the call that writes it and
  given back (``sail_rt_release``) right after its last reader: liveness-based; the model keeps
  freed blocks for the next allocations. Outputs are handed to the caller without a copy;
* symbolic dims (``batch``, ``seq``, ``past + seq``) are ``int64_t`` locals taken from the
  inputs; every shape is a C expression over them, and each ``match_cast`` becomes a check;
* every constant becomes a tensor of ``weights.bin`` (:mod:`.weight_file`), named after the
  layer and operand the constant itself names (:func:`~sail_compiler.ops.quant_matmul.
  constant_name`: the quantizing passes name the weights they make), else ``const_<i>``;
  constants sharing one buffer are stored once;
* a LUT-GEMV left as ``R.call_dps_packed("sail_lut_gemv", ...)`` by the c target's lowering
  becomes a ``sail_rt_lut_gemv`` call of the runtime's kernels (``sail_lut.h``); its weight is
  re-laid out here (:func:`.kernels.relayout`) into three tensors of ``weights.bin`` (bit-plane
  indices, scales, zero points), described by an entry of ``LUTS[]`` that loading checks.
* data movement left as ``R.call_dps_packed("sail_concat" | "sail_copy" | "sail_transpose" |
  "sail_broadcast", ...)`` (concatenations, reshapes, transposes, broadcasts and tiles) becomes a
  call of the runtime's ``sail_rt_concat``, ``sail_rt_copy``, ``sail_rt_transpose`` or
  ``sail_rt_broadcast`` (``memcpy`` of contiguous runs);
* ``R.call_dps_packed("sail_attention", (q, k, v[, mask], scale, softcap))`` (``sail.attention``)
  becomes a ``sail_rt_attention`` call of the runtime's attention kernel (``sail_attention.h``);
* a KV cache in place: when every present output is its past input (the signature pairs them:
  ``present.<name>``, ``past_key_values.<name>``) with the new positions concatenated, the past
  read by nothing else and the present only by the attention, ``sail_model_run_cached``
  (``sail_model_api.h``) appends the new positions to one preallocated buffer per present
  (``sail_rt_cache_append``) instead of concatenating, and the attention reads the cache there
  (a strided view); ``CACHE[]`` lists the pairs, or ``CACHE_UNSUPPORTED`` says why there are
  none.

Anything else in ``main`` is reported at once (every unsupported binding with its variable).
The runtime these files are written against is ``runtime/sail_model_rt.h``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import tvm
from tvm import relax, sym, tirx

from ...errors import SailError
from ...frontend.signature import ModelSignature, TensorSpec
from ...ops.quant_matmul import constant_name, initializer_of
from ...quant.packing import unpack_bits
from ...quant.reference import QuantizedWeight
from .kernels import (
    ATTENTION_SYMBOL,
    BROADCAST_SYMBOL,
    CONCAT_SYMBOL,
    COPY_SYMBOL,
    LUT_SYMBOL,
    MOVE_SYMBOLS,
    TRANSPOSE_SYMBOL,
    relayout,
)
from .weight_file import DTYPE_CODES, MAX_NDIM, WeightFileWriter

__all__ = ["EmittedModel", "emit_model"]

#: NumPy dtype name -> ``enum sail_dtype`` constant of the runtime.
_C_DTYPES = {name: f"SAIL_{name.upper()}" for name in DTYPE_CODES}
_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Bool _Complex _Imaginary bool true false NULL".split())
#: Names ``sail_model_run`` uses: no symbolic dim (a local there) may shadow them.
_RUN_LOCALS = frozenset({"model", "inputs", "outputs", "b", "dims", "status", "fail", "buffers",
                         "calloc", "free", "cache", "model_run"})
_LINE = 100


@dataclasses.dataclass
class EmittedModel:
    """What :func:`emit_model` produced.

    Attributes
    ----------
    model_c, model_h
        The texts of ``model.c`` and ``model.h``.
    kernels
        Kernel name -> PrimFunc, every kernel ``model.c`` calls (for :mod:`.tir_codegen`).
    weights
        ``(name, array)`` of every tensor of ``weights.bin``, in file order; when a
        :class:`~sail_compiler.weights_file.WeightFileWriter` took them, ``array`` is a stand-in
        of the tensor's dtype and shape (a broadcast of its first element).
    calls
        Kernel calls per run (TVM's kernels and the runtime's LUT-GEMVs).
    lut_calls
        The runtime LUT-GEMV calls among them.
    lut_layers
        The layer of each entry of ``LUTS[]`` (``sail_main --dump-lut`` numbers files by it).
    """

    model_c: str
    model_h: str
    kernels: dict[str, tirx.PrimFunc]
    weights: list[tuple[str, np.ndarray]]
    calls: int
    lut_calls: int
    lut_layers: list[str]


@dataclasses.dataclass(eq=False)
class _Buffer:
    """A tensor of the run: an input, a weight or an intermediate (a kernel's output)."""

    name: str  # member of ``struct buffers``, or "w<i>" for weight i
    dtype: str
    shape: list[tirx.PrimExpr]
    kind: str  # "input" | "weight" | "temp"
    index: int = -1  # weight index

    @property
    def ref(self) -> str:
        """The buffer as a C lvalue inside ``sail_model_run``."""
        return f"model->weights[{self.index}]" if self.kind == "weight" else f"b->{self.name}"

    @property
    def arg(self) -> str:
        """The buffer as a kernel argument."""
        return f"SAIL_W({self.index})" if self.kind == "weight" else f"SAIL_T(b->{self.name})"


@dataclasses.dataclass
class _Weight:
    name: str
    array: np.ndarray
    layer: str | None


@dataclasses.dataclass
class _Scalar:
    """A scalar kernel argument: its C argument and how the comment shows it."""

    arg: str
    shown: str


@dataclasses.dataclass
class _Call:
    kernel: str
    args: list[_Buffer | _Scalar]  # PrimFunc parameter order: inputs, outputs, scalars
    outputs: list[_Buffer]
    layers: list[str]
    lut: int | None = None  # a runtime LUT-GEMV: index in LUTS[] (args: xq, sx, y)


@dataclasses.dataclass
class _Lut:
    """One ``sail_lut_spec`` of model.c: a weight re-laid out for the runtime's kernels."""

    layer: str
    bits: int
    k: int
    n: int
    group_size: int
    act_group: int  # columns per activation scale (K: one per token)
    planes: int  # weight indices
    scales: int
    zeros: int  # -1: symmetric (implicit zero point 2**(bits-1))


@dataclasses.dataclass
class _CachePair:
    """A present.* output model.c can keep in a KV cache: ``past`` (input ``input``)
    concatenated with new positions along ``axis`` by ``step``, read only by the attention."""

    name: str  # the past input's name
    output: int
    input: int
    axis: int
    step: _Call


@dataclasses.dataclass
class _Check:
    """The C lines of a ``match_cast``: dim definitions and checks."""

    comment: str
    lines: list[str]


# Fields through which _gathers walks a PrimFunc (statements and expressions of tvm.tirx, which
# has no visitor in Python).
_TIR_FIELDS = ("body", "seq", "block", "init", "then_case", "else_case", "condition", "value",
               "indices", "a", "b", "args", "true_value", "false_value", "iter_values")


_LOAD = tvm.ir.expr.TensorLoad  # what tirx.BufferLoad(...) builds in apache-tvm 0.27


def _gathers(func: tirx.PrimFunc) -> list[tuple[int, int, int, bool]]:
    """The table lookups of a kernel: (parameter index of the integer tensor that indexes a
    table, parameter index of the table, its rows, whether the kernel wraps negative indices)
    for every load of a
    tensor parameter whose index along a static axis reads another tensor parameter (a
    legalized ``take``: an embedding, a position table indexed by ``Range(past, past + seq)``).
    TVM's ``take`` wraps or does not check such indices at all (docs/tvm_notes.md)."""
    def param(buffer: object) -> int | None:  # tensor params are the loads' sources in 0.27
        return next((i for i, p in enumerate(func.params) if p.same_as(buffer)), None)

    found: dict[int, tuple[int, int, bool]] = {}

    def loads(node: object, out: list) -> None:
        if node is None or isinstance(node, (int, float, str)):
            return
        if isinstance(node, (list, tuple, tvm.ir.Array)):
            for item in node:
                loads(item, out)
            return
        if isinstance(node, _LOAD):
            out.append(node)
        for name in _TIR_FIELDS:
            child = getattr(node, name, None)
            if child is not None and child is not node:
                loads(child, out)

    every: list = []
    loads(func.body, every)
    for load in every:
        table = param(load.source)
        if table is None:
            continue
        for axis, index in enumerate(load.indices):
            inner: list = []
            loads(index, inner)
            rows = load.source.shape[axis]
            for source in inner:
                i = param(source.source)
                if i is None or i == table or not hasattr(rows, "value") or \
                        not str(source.source.dtype).startswith("int"):
                    continue
                wraps = any(op in str(index) for op in ("floormod", "truncmod", "%"))
                known = found.get(i)
                if known is None or int(rows) < known[1]:
                    found[i] = (table, int(rows), wraps and (known[2] if known else True))
    return [(i, table, rows, wraps) for i, (table, rows, wraps) in sorted(found.items())]


class _Names:
    """Unique C identifiers made from arbitrary names."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.used = set(_C_KEYWORDS) | set(reserved)

    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", hint) or "t"
        if base[0].isdigit():
            base = "_" + base
        name, n = base, 1
        while name in self.used:
            name = f"{base}_{n}"
            n += 1
        self.used.add(name)
        return name


def _c_string(text: str) -> str:
    """A C string literal of ``text`` (UTF-8; other than printable ASCII escaped in octal)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127 and char != "?":  # '?' could start a trigraph
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _int_literal(value: int) -> str:
    return str(value) if -(2**31) < value < 2**31 else f"INT64_C({value})"


def _dims_text(shape: Sequence[tirx.PrimExpr]) -> str:
    return ", ".join(str(int(d.value)) if isinstance(d, tirx.IntImm) else str(d) for d in shape)


class _Graph:
    """``main`` read into buffers, kernel calls and checks (no C text yet)."""

    def __init__(self, mod: tvm.IRModule, signature: ModelSignature,
                 writer: WeightFileWriter | None = None) -> None:
        self.mod = mod
        self.writer = writer
        self.main = mod["main"]
        self.signature = signature
        self.members = _Names()
        self.dim_names = _Names(_RUN_LOCALS)
        self.analyzer = sym.Analyzer()
        self.dims: dict[tirx.Var, str] = {}  # symbolic var -> C local
        self.input_dims: list[tirx.Var] = []  # the dims the inputs define, in order
        self.values: dict[relax.Var, _Buffer | list[_Buffer]] = {}
        self.inputs: list[_Buffer] = []
        self.weights: list[_Weight] = []
        self.weight_buffers: dict[int, _Buffer] = {}
        #: weight index -> the ONNX initializer it holds, when the importer named it (messages)
        self.initializers: dict[int, str] = {}
        self.temps: list[_Buffer] = []
        self.steps: list[_Call | _Check] = []
        self.kernels: dict[str, tirx.PrimFunc] = {}
        self.luts: list[_Lut] = []
        self.problems: list[str] = []
        self.tuple_names: dict[tuple[relax.Var, int], str] = {}
        self.outputs: list[_Buffer] = []

    # -- expressions -------------------------------------------------------------------------

    def expr(self, value: tirx.PrimExpr) -> str:
        """C text of an integer shape expression over the symbolic dims."""
        if isinstance(value, tirx.IntImm):
            return _int_literal(int(value.value))
        if isinstance(value, tirx.Var):
            if value not in self.dims:
                raise SailError(f"the c target cannot compute the symbolic dim '{value.name}' "
                                "from the model inputs (a data-dependent shape)")
            return self.dims[value]
        infix = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.Div: "/", tirx.Mod: "%"}
        for node, op in infix.items():
            if isinstance(value, node):
                return f"({self.expr(value.a)} {op} {self.expr(value.b)})"
        calls = {tirx.FloorDiv: "sail_rt_floordiv", tirx.FloorMod: "sail_rt_floormod",
                 tirx.Min: "sail_rt_min", tirx.Max: "sail_rt_max"}
        for node, fn in calls.items():
            if isinstance(value, node):
                return f"{fn}({self.expr(value.a)}, {self.expr(value.b)})"
        if isinstance(value, tirx.Cast) and "int" in str(value.ty.dtype):
            return f"(int64_t)({self.expr(value.value)})"
        raise SailError(f"the c target cannot compute the shape expression {value} in C")

    def scalar(self, value: tirx.PrimExpr) -> _Scalar:
        if isinstance(value, tirx.FloatImm) and math.isfinite(float(value.value)):
            # repr is the shortest decimal that reads back as the same double, in C too
            return _Scalar(f"SAIL_F64({float(value.value)!r})", repr(float(value.value)))
        if str(value.ty.dtype).startswith("float"):
            raise SailError(f"the c target cannot pass the float expression {value} to a kernel")
        return _Scalar(f"SAIL_I64({self.expr(value)})", str(value))

    # -- values ------------------------------------------------------------------------------

    def define_dim(self, var: tirx.Var) -> str:
        self.dims[var] = self.dim_names.fresh(var.name)
        return self.dims[var]

    def weight(self, const: tvm.ir.GenericConst) -> _Buffer:
        key = const.value.data_ptr()  # one buffer (e.g. a tied weight) is stored once
        if key in self.weight_buffers:
            return self.weight_buffers[key]
        layer, operand = constant_name(const) or (None, None)
        buffer = self.add_weight(const.value.numpy(), layer, operand)
        self.weight_buffers[key] = buffer
        initializer = initializer_of(const)
        if initializer is not None:
            self.initializers[buffer.index] = initializer
        return buffer

    def add_weight(self, array: np.ndarray, layer: str | None, operand: str | None) -> _Buffer:
        """A new tensor of the weight file, named ``layer.operand`` (or ``const_<i>``)."""
        if array.dtype.name not in DTYPE_CODES or array.ndim > MAX_NDIM:
            raise SailError(f"the c target cannot store a {array.dtype} constant of shape "
                            f"{list(array.shape)} (dtypes: {', '.join(DTYPE_CODES)}; up to "
                            f"{MAX_NDIM} dims)")
        index = len(self.weights)
        name = f"{layer}.{operand}" if layer else f"const_{index}"
        if any(w.name == name for w in self.weights):
            name = f"{name}.{index}"
        if self.writer is not None:  # written now, not held until the end
            self.writer.add(name, array)
            array = array.copy() if array.size <= 1 else \
                np.broadcast_to(array.reshape(-1)[:1].copy(), array.shape)
        self.weights.append(_Weight(name, array, layer))
        shape = [tirx.IntImm("int64", int(d)) for d in array.shape]
        return _Buffer(f"w{index}", array.dtype.name, shape, "weight", index)

    def value(self, expr: relax.Expr, where: str) -> _Buffer | list[_Buffer] | None:
        """The buffer (or tuple of buffers) ``expr`` denotes; None after noting a problem."""
        if isinstance(expr, tvm.ir.GenericConst):
            return self.weight(expr)
        if isinstance(expr, relax.Var) and expr in self.values:
            return self.values[expr]
        if isinstance(expr, relax.Tuple):
            fields = [self.value(f, where) for f in expr.fields]
            if all(isinstance(f, _Buffer) for f in fields):
                return fields  # type: ignore[return-value]
            self.problems.append(f"{where}: a nested tuple")
            return None
        self.problems.append(f"{where}: unsupported operand {type(expr).__name__} {expr}")
        return None

    def temp(self, hint: str, ty: relax.Type) -> _Buffer:
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise SailError(f"the c target needs the dtype and shape of every tensor; {hint} "
                            f"is {ty}")
        buffer = _Buffer(self.members.fresh(hint), str(ty.dtype), list(ty.shape.values), "temp")
        self.temps.append(buffer)
        return buffer

    # -- bindings ----------------------------------------------------------------------------

    def bind_inputs(self) -> None:
        params, specs = list(self.main.params), self.signature.inputs
        if len(params) != len(specs):
            raise SailError(f"main takes {len(params)} parameters, the model has {len(specs)} "
                            "inputs (the c target keeps the weights as constants)")
        for param, spec in zip(params, specs, strict=True):
            ty = param.ty
            if str(ty.dtype) != spec.dtype or ty.shape is None:
                raise SailError(f"input {spec.name}: the compiled model takes {ty}, the ONNX "
                                f"model {spec.dtype}{list(spec.dims)}")
            buffer = _Buffer(self.members.fresh(param.name), spec.dtype, list(ty.shape.values),
                             "input")
            self.inputs.append(buffer)
            self.values[param] = buffer
            for dim in buffer.shape:
                if isinstance(dim, tirx.Var) and dim not in self.dims:
                    self.define_dim(dim)
                    self.input_dims.append(dim)

    def call_tir(self, var: relax.Var, call: relax.Call) -> None:
        gvar, operands = call.args[0], call.args[1]
        where = f"{var.name} = R.call_tir({gvar.name_hint}, ...)"
        func = self.mod[gvar]
        if not isinstance(func, tirx.PrimFunc):
            self.problems.append(f"{where}: calls a function that is not TIR")
            return
        args: list[_Buffer | _Scalar] = []
        for field in operands.fields:
            if isinstance(field.ty, relax.TensorType):
                tensor = self.value(field, where)
                if isinstance(tensor, _Buffer):
                    args.append(tensor)
            elif isinstance(field.ty, tvm.ir.PrimType):
                args.append(self.scalar(field))
            else:
                self.problems.append(f"{where}: unsupported argument {type(field).__name__} "
                                     f"{field}")
        out_ty = call.ty_args[0]
        if isinstance(out_ty, relax.TupleType):
            outputs = [self.temp(self.tuple_names.get((var, i), f"{var.name}_{i}"), t)
                       for i, t in enumerate(out_ty.fields)]
            self.values[var] = outputs
        else:
            outputs = [self.temp(var.name, out_ty)]
            self.values[var] = outputs[0]
        tir_vars = [self.scalar(v) for v in call.args[2].values] if len(call.args) > 2 else []
        layers = list(dict.fromkeys(self.weights[a.index].layer for a in args
                                    if isinstance(a, _Buffer) and a.kind == "weight"
                                    and self.weights[a.index].layer))
        self.kernels[gvar.name_hint] = func
        for index, table_index, rows, wraps in _gathers(func):
            source = args[index] if index < len(args) else None
            if not isinstance(source, _Buffer) or source.kind == "weight":
                continue
            held = args[table_index] if table_index < len(args) else None
            named = "a table"
            if isinstance(held, _Buffer) and held.kind == "weight":
                named = self.weights[held.index].name
                if held.index in self.initializers:
                    named = f"{self.initializers[held.index]} ({named})"
            table = f"the {rows} rows of {named} (kernel {gvar.name_hint})"
            self.steps.append(_Check(
                f"{source.name}: indices into {rows} rows ({gvar.name_hint})",
                _try("sail_rt_check_indices", [
                    "model", _c_string(table), f"&{source.ref}",
                    f"{-rows if wraps else 0}LL", f"{rows}LL"])))
        self.steps.append(_Call(gvar.name_hint, [*args, *outputs, *tir_vars], outputs, layers))

    def lut_call(self, var: relax.Var, call: relax.Call) -> None:
        """``R.call_dps_packed("sail_lut_gemv", (xq, sx, packed, zero, scale, bits, g, k,
        act_group))``."""
        where = f"{var.name} = R.call_dps_packed({LUT_SYMBOL}, ...)"
        fields = list(call.args[1].fields)
        xq, sx = (self.value(f, where) for f in fields[:2])
        packed, zero, scale = fields[2:5]
        if not all(isinstance(c, tvm.ir.GenericConst) for c in (packed, zero, scale)):
            self.problems.append(f"{where}: the weight operands are not constants")
            return
        bits, group_size, k, act_group = (int(f.value) for f in fields[5:9])
        zeros = zero.value.numpy()
        n_groups, n = zeros.shape
        q = unpack_bits(packed.value.numpy(), bits, n_groups * group_size, axis=0)
        symmetric = bits > 1 and bool(np.all(zeros == 1 << (bits - 1)))
        scales = scale.value.numpy()  # float16 for --scale-dtype float16 (legalize_c_lut_gemv)
        qw = QuantizedWeight(q, scales.astype(np.float32), None if symmetric else
                             zeros.astype(np.uint8), bits, group_size, k)
        lut = relayout(qw, act_group, scales.dtype.name)
        layer = (constant_name(packed) or (f"lut_{len(self.luts)}", ""))[0]
        planes = self.add_weight(lut.planes, layer, "lut_planes")
        scales = self.add_weight(lut.scales, layer, "lut_scales")
        zero_index = -1 if lut.zeros is None else \
            self.add_weight(lut.zeros, layer, "lut_zeros").index
        self.luts.append(_Lut(layer, bits, k, n, lut.group_size, lut.act_group, planes.index,
                              scales.index, zero_index))
        output = self.temp(var.name, call.ty_args[0])
        self.values[var] = output
        if isinstance(xq, _Buffer) and isinstance(sx, _Buffer):
            self.steps.append(_Call(LUT_SYMBOL, [xq, sx, output], [output], [layer],
                                    lut=len(self.luts) - 1))

    def move_call(self, var: relax.Var, call: relax.Call, symbol: str) -> None:
        """``R.call_dps_packed(symbol, (tensors..., ints...))`` of the runtime's data movement
        (``sail_concat``: parts and the axis; ``sail_copy``: one tensor; ``sail_transpose``: one
        tensor and the permutation)."""
        where = f"{var.name} = R.call_dps_packed({symbol}, ...)"
        fields = list(call.args[1].fields)
        tensors = [self.value(f, where) for f in fields
                   if isinstance(f.ty, relax.TensorType)]
        ints = [int(f.value) for f in fields if isinstance(f.ty, tvm.ir.PrimType)]
        output = self.temp(var.name, call.ty_args[0])
        self.values[var] = output
        if all(isinstance(t, _Buffer) for t in tensors):
            shown = f"axis={ints[0]}" if symbol == CONCAT_SYMBOL else f"perm={ints}"
            scalars = [_Scalar(", ".join(map(str, ints)), shown)] if ints else []
            self.steps.append(_Call(symbol, [*tensors, *scalars, output], [output], []))

    def attention_call(self, var: relax.Var, call: relax.Call) -> None:
        """``R.call_dps_packed("sail_attention", (q, k, v[, mask], scale, softcap))``."""
        where = f"{var.name} = R.call_dps_packed({ATTENTION_SYMBOL}, ...)"
        fields = list(call.args[1].fields)
        tensors = [self.value(f, where) for f in fields if isinstance(f.ty, relax.TensorType)]
        scale, softcap = (float(f.value) for f in fields
                          if isinstance(f.ty, tvm.ir.PrimType))
        output = self.temp(var.name, call.ty_args[0])
        self.values[var] = output
        if all(isinstance(t, _Buffer) for t in tensors):
            scalars = [_Scalar(repr(scale), f"scale={scale!r}"),
                       _Scalar(repr(softcap), f"softcap={softcap!r}")]
            self.steps.append(_Call(ATTENTION_SYMBOL, [*tensors, *scalars, output], [output],
                                    []))

    def match_cast(self, binding: relax.MatchCast) -> None:
        name = binding.var.name
        source = self.value(binding.value, f"{name} = R.match_cast(...)")
        ty = binding.ty
        if not isinstance(source, _Buffer) or not isinstance(ty, relax.TensorType) \
                or ty.shape is None or len(ty.shape.values) != len(source.shape):
            if source is not None:
                self.problems.append(f"{name} = R.match_cast(...): to {ty}")
            return
        lines = []
        for axis, (have, want) in enumerate(zip(source.shape, ty.shape.values, strict=True)):
            if isinstance(want, tirx.Var) and want not in self.dims:
                lines.append(f"  {self.define_dim(want)} = {source.ref}.shape[{axis}];")
            elif not self.analyzer.can_prove_equal(have, want):
                lines += _try("sail_rt_check_dim", [
                    "model", _c_string(name), str(axis), f"{source.ref}.shape[{axis}]",
                    self.expr(want)])
        if lines:
            shape = _dims_text(ty.shape.values)
            self.steps.append(_Check(f"{name} = match_cast({source.name}): {ty.dtype}[{shape}]",
                                     lines))
        self.values[binding.var] = source

    def binding(self, binding: relax.Binding) -> None:
        var, value = binding.var, binding.value
        op = value.op.name if isinstance(value, relax.Call) \
            and isinstance(value.op, tvm.ir.Op) else None
        packed = str(value.args[0].global_symbol) if op == "relax.call_dps_packed" \
            and isinstance(value.args[0], relax.ExternFunc) else None
        if isinstance(binding, relax.MatchCast):
            self.match_cast(binding)
        elif op == "relax.call_tir":
            self.call_tir(var, value)
        elif packed == LUT_SYMBOL:
            self.lut_call(var, value)
        elif packed in MOVE_SYMBOLS:
            self.move_call(var, value, packed)
        elif packed == ATTENTION_SYMBOL:
            self.attention_call(var, value)
        elif isinstance(value, relax.TupleGetItem):
            source = self.value(value.tuple_value, f"{var.name} = TupleGetItem")
            if isinstance(source, list):
                self.values[var] = source[int(value.index)]
        elif isinstance(value, (relax.Var, relax.Tuple, tvm.ir.GenericConst)):
            source = self.value(value, f"{var.name} = {type(value).__name__}")
            if source is not None:
                self.values[var] = source
        else:
            self.problems.append(f"{var.name} = {op or type(value).__name__}(...)")

    def read(self) -> None:
        body = self.main.body
        if not isinstance(body, relax.SeqExpr):
            raise SailError("the c target expects main to be a sequence of bindings")
        bindings = [b for block in body.blocks for b in block.bindings]
        self.bind_inputs()
        for binding in bindings:  # name tuple outputs after the variables that take them
            value = binding.value
            if isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var):
                self.tuple_names.setdefault((value.tuple_value, int(value.index)),
                                            binding.var.name)
        for binding in bindings:
            self.binding(binding)
        result = None if self.problems else self.value(body.body, "the result of main")
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise SailError(f"the c target cannot emit {len(self.problems)} binding(s) of the "
                            f"lowered model:\n{listed}")
        self.outputs = result if isinstance(result, list) else [result]  # type: ignore[list-item]
        specs = self.signature.outputs
        if len(self.outputs) != len(specs):
            raise SailError(f"main returns {len(self.outputs)} tensors, the model has "
                            f"{len(specs)} outputs")
        for buffer, spec in zip(self.outputs, specs, strict=True):
            if buffer.dtype != spec.dtype:
                raise SailError(f"output {spec.name}: the compiled model computes "
                                f"{buffer.dtype}, the ONNX model declares {spec.dtype}")

    def cache_pairs(self) -> tuple[list[_CachePair], str]:
        """The past/present pairs ``sail_model_run_cached`` keeps in a KV cache: every present
        (as the signature pairs them) must be ``concat(past, new)``, the past read by nothing
        else and the present only by the attention (it becomes a strided view of the cache).
        Returns the pairs, or none and the reason."""
        past_of = {spec.present: i for i, spec in enumerate(self.signature.inputs)
                   if spec.present is not None}
        calls = [step for step in self.steps if isinstance(step, _Call)]
        readers: dict[int, list[_Call]] = {}
        for step in calls:
            for arg in step.args:
                if isinstance(arg, _Buffer) and arg not in step.outputs:
                    readers.setdefault(id(arg), []).append(step)
        producer = {id(out): step for step in calls for out in step.outputs}
        pairs = []
        for j, (spec, buffer) in enumerate(zip(self.signature.outputs, self.outputs,
                                               strict=True)):
            if j not in past_of:
                continue
            name = self.signature.inputs[past_of[j]].name
            step = producer.get(id(buffer))
            if step is None or step.kernel != CONCAT_SYMBOL \
                    or len(step.args) != 4 or step.args[0] is not self.inputs[past_of[j]]:
                return [], f"{spec.name} is not {name} with the new positions appended"
            if [s.kernel for s in readers.get(id(step.args[0]), [])] != [CONCAT_SYMBOL]:
                return [], f"{name} is read by more than the concatenation that appends to it"
            others = [s.kernel for s in readers.get(id(buffer), [])
                      if s.kernel != ATTENTION_SYMBOL or buffer not in s.args[1:3]]
            if others or sum(o is buffer for o in self.outputs) != 1:
                return [], (f"{spec.name} is read by {others[0]} (only the attention reads a "
                            "cache in place)" if others else f"{spec.name} is returned twice")
            pairs.append(_CachePair(name, j, past_of[j], int(step.args[2].arg), step))
        if not pairs:
            return [], "it has no present.* outputs (a decoder with a KV cache has)"
        return pairs, ""

    def releases(self) -> dict[int, list[_Buffer]]:
        """Step index -> intermediates to free after it (liveness; outputs are kept)."""
        last_read: dict[_Buffer, int] = {}
        for position, step in enumerate(self.steps):
            if isinstance(step, _Call):
                for arg in step.args:
                    if isinstance(arg, _Buffer) and arg.kind == "temp":
                        last_read[arg] = position
        kept = set(self.outputs)
        releases: dict[int, list[_Buffer]] = {}
        for buffer in self.temps:
            if buffer not in kept:
                releases.setdefault(last_read[buffer], []).append(buffer)
        return releases


# -- C text ----------------------------------------------------------------------------------


def _statement(head: str, args: Sequence[str], end: str = ");", width: int = _LINE) -> list[str]:
    """``head(args...);`` indented in a function, wrapped after commas at ``width`` columns."""
    line = f"  {head}({', '.join(args)}{end}"
    if len(line) <= width:
        return [line]
    lines, current = [], f"  {head}("
    pad = " " * len(current)
    for i, arg in enumerate(args):
        piece = arg + (", " if i + 1 < len(args) else end)
        if len(current) + len(piece.rstrip()) > width and current != f"  {head}(":
            lines.append(current.rstrip())
            current = pad
        current += piece
    lines.append(current)
    return lines


def _try(function: str, args: Sequence[str], width: int = _LINE) -> list[str]:
    """``SAIL_TRY(function(args...));``: a runtime call that leaves ``sail_model_run`` on error
    (``width``: the columns left, for a call nested one level deeper)."""
    return _statement(f"SAIL_TRY({function}", args, end="));", width=width)


def _comment(text: str, indent: str = "  ") -> list[str]:
    """A ``/* ... */`` comment wrapped at ``_LINE`` columns."""
    lines, current = [], f"{indent}/*"
    for word in text.split(" "):
        if len(current) + len(word) + 4 > _LINE and current.strip() not in ("/*", "*"):
            lines.append(current)
            current = f"{indent} *"
        current += " " + word
    lines.append(current + " */")
    return lines


def _spec_entry(spec: TensorSpec, compiled: Sequence[tirx.PrimExpr]) -> str:
    """One ``sail_io_spec`` initializer: dims fixed by the compile count as fixed; the input's
    role and its present (``sail_generate.c`` reads them)."""
    shape, names = [], []
    for dim, have in zip(spec.dims, compiled, strict=True):
        if isinstance(have, tirx.IntImm) or isinstance(dim, int):
            shape.append(str(int(have.value)) if isinstance(have, tirx.IntImm) else str(dim))
            names.append("NULL")
        else:
            shape.append("-1")
            names.append(_c_string(str(dim)))
    bound = spec.index_bound or 0
    present = -1 if spec.present is None else spec.present
    return (f"    {{{_c_string(spec.name)}, {_C_DTYPES[spec.dtype]}, {len(spec.dims)}, "
            f"{{{', '.join(shape) or '0'}}}, {{{', '.join(names) or 'NULL'}}}, {bound}, "
            f"SAIL_ROLE_{spec.role.upper()}, {present}}},")


def _tables(graph: _Graph) -> list[str]:
    lines = ["/* The tensors of weights.bin, in file order; SAIL_W(i) is tensor i. */",
             "static const sail_weight_spec WEIGHTS[] = {"]
    for index, weight in enumerate(graph.weights):
        array = weight.array
        value = f" = {array.reshape(-1)[0].item()!r}" if array.size == 1 else ""
        lines.append(f"    {{{_c_string(weight.name)}, {_C_DTYPES[array.dtype.name]}, "
                     f"{array.ndim}, {{{', '.join(map(str, array.shape)) or '0'}}}}}, "
                     f"/* w{index}{value} */")
    if not graph.weights:
        lines.append("    {NULL, SAIL_FLOAT32, 0, {0}},")
    lines += ["};", f"enum {{ NUM_WEIGHTS = {len(graph.weights)} }};", "",
              "/* Weights re-laid out for the runtime's LUT-GEMV kernels (sail_lut.h): layer, "
              "bits, K, N,", " * group size, columns per activation scale, and the tensors of "
              "its bit-plane indices, scales", " * and zero points (-1: none). */",
              "static const sail_lut_spec LUTS[] = {"]
    lines += [f"    {{{_c_string(lut.layer)}, {lut.bits}, {lut.k}, {lut.n}, {lut.group_size}, "
              f"{lut.act_group}, {lut.planes}, {lut.scales}, {lut.zeros}}},"
              for lut in graph.luts]
    if not graph.luts:
        lines.append("    {NULL, 0, 0, 0, 0, 0, -1, -1, -1},")
    pairs, unsupported = graph.cache_pairs()
    lines += ["};", f"enum {{ NUM_LUTS = {len(graph.luts)} }};", "",
              "/* The presents sail_model_run_cached keeps in a KV cache: past input, output "
              "index, input", " * index and the axis new positions are appended along. */",
              "static const sail_cache_spec CACHE[] = {"]
    lines += [f"    {{{_c_string(p.name)}, {p.output}, {p.input}, {p.axis}}}," for p in pairs]
    if not pairs:
        lines.append("    {NULL, -1, -1, -1},")
    lines += ["};", f"enum {{ NUM_CACHE = {len(pairs)} }};",
              f"static const char CACHE_UNSUPPORTED[] = {_c_string(unsupported)};", "",
              f"const int sail_model_num_inputs = {len(graph.inputs)};",
              f"const int sail_model_num_outputs = {len(graph.outputs)};",
              "const sail_io_spec sail_model_inputs[] = {"]
    lines += [_spec_entry(s, b.shape) for s, b in zip(graph.signature.inputs, graph.inputs,
                                                       strict=True)]
    lines += ["};", "const sail_io_spec sail_model_outputs[] = {"]
    lines += [_spec_entry(s, b.shape) for s, b in zip(graph.signature.outputs, graph.outputs,
                                                       strict=True)]
    lines += ["};", "", "/* Index in dims[] of the symbolic dim of each input axis (-1: fixed). */",
              f"static const int32_t INPUT_DIMS[{max(len(graph.inputs), 1)}][SAIL_MAX_NDIM] = {{"]
    position = {var: i for i, var in enumerate(graph.input_dims)}
    for buffer in graph.inputs:
        ids = [str(position[d]) if isinstance(d, tirx.Var) else "-1" for d in buffer.shape]
        lines.append(f"    {{{', '.join(ids) or '-1'}}}, /* {buffer.name} */")
    if not graph.inputs:
        lines.append("    {-1},")
    lines += ["};", "", "/* The buffers of one run: views of the inputs, then the "
              "intermediates. */", "typedef struct buffers {"]
    for buffer in [*graph.inputs, *graph.temps]:
        role = "input " if buffer.kind == "input" else ""
        lines.append(f"  sail_buffer {buffer.name}; /* {role}{buffer.dtype}"
                     f"[{_dims_text(buffer.shape)}] */")
    if not graph.inputs and not graph.temps:
        lines.append("  sail_buffer none;")
    return [*lines, "} buffers;"]


def _run_function(graph: _Graph) -> list[str]:
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    pairs = {id(p.step): index for index, p in enumerate(graph.cache_pairs()[0])}
    cached_outputs = {p.output for p in graph.cache_pairs()[0]}
    lines = ["/* One run; with a KV cache (sail_model_run_cached) the presents are appended to it "
             "in place. */",
             "static int model_run(sail_model *model, const sail_tensor *inputs, "
             "sail_tensor *outputs,", "                     sail_kv_cache *cache) {",
             f"  int64_t dims[{max(len(graph.input_dims), 1)}];"]
    if not pairs:
        lines.append("  (void)cache;")
    if graph.dims:
        lines.append("  int64_t " + ", ".join(f"{name} = 0" for name in graph.dims.values())
                     + ";")
    views = f"&b->{graph.inputs[0].name}" if graph.inputs else "NULL"
    lines += ["  if (!model)", "    return -1;", "  model->error[0] = '\\0';",
              "  if (!outputs)", '    return sail_rt_fail(model, "no array for the outputs");',
              f"  sail_rt_clear_outputs(outputs, {n_out});", "  int status = -1;",
              "  buffers *b = calloc(1, sizeof *b);", "  if (!b)",
              '    return sail_rt_fail(model, "out of memory");']
    lines += _try("sail_rt_check_inputs", ["model", "inputs", "sail_model_inputs", "INPUT_DIMS",
                                           str(n_in), views, "dims", str(len(graph.input_dims))])
    lines += [f"  {graph.dims[var]} = dims[{i}];" for i, var in enumerate(graph.input_dims)]
    for buffer in graph.inputs:  # input dims that are expressions of other dims
        for axis, dim in enumerate(buffer.shape):
            if not isinstance(dim, (tirx.Var, tirx.IntImm)):
                lines += _try("sail_rt_check_dim", [
                    "model", _c_string(buffer.name), str(axis), f"{buffer.ref}.shape[{axis}]",
                    graph.expr(dim)])
    releases = graph.releases()
    for position, step in enumerate(graph.steps):
        lines.append("")
        if isinstance(step, _Check):
            lines += [*_comment(step.comment), *step.lines]
            continue
        shown = ", ".join(a.name if isinstance(a, _Buffer) else a.shown
                          for a in step.args if a not in step.outputs)
        results = ", ".join(f"{o.name}: {o.dtype}[{_dims_text(o.shape)}]" for o in step.outputs)
        layers = f"layer {', '.join(step.layers)}: " if step.layers else ""
        lines += _comment(f"{layers}{step.kernel}({shown}) -> {results}")
        if id(step) in pairs:  # args: past, new, axis, present
            past, new, _, present = step.args
            lines += ["  if (cache) {",
                      *("  " + line for line in _try("sail_rt_cache_append", [
                          "model", "cache", str(pairs[id(step)]), f"&{past.ref}", f"&{new.ref}",
                          f"&{present.ref}"], width=_LINE - 2)), "  } else {"]
        body_start = len(lines)
        width = _LINE - 2 if id(step) in pairs else _LINE  # the else branch is indented
        for out in step.outputs:
            shape = ", ".join(graph.expr(d) for d in out.shape)
            lines += _try("sail_rt_alloc", [
                "model", f"&b->{out.name}", _c_string(out.name), _C_DTYPES[out.dtype],
                str(len(out.shape)), f"(int64_t[]){{{shape}}}" if out.shape else "NULL"],
                width=width)
        if step.lut is not None:
            lines += _try("sail_rt_lut_gemv", ["model", str(step.lut),
                                               *(f"&{a.ref}" for a in step.args)])
        elif step.kernel == CONCAT_SYMBOL:  # args: parts..., axis, output
            parts = [f"&{a.ref}" for a in step.args[:-2]]
            lines += _try("sail_rt_concat", [
                "model", f"(const sail_buffer *[]){{{', '.join(parts)}}}", str(len(parts)),
                step.args[-2].arg, f"&{step.args[-1].ref}"], width=width)
        elif step.kernel in (COPY_SYMBOL, BROADCAST_SYMBOL):  # args: x, output
            function = "sail_rt_copy" if step.kernel == COPY_SYMBOL else "sail_rt_broadcast"
            lines += _try(function, ["model", *(f"&{a.ref}" for a in step.args)])
        elif step.kernel == ATTENTION_SYMBOL:  # args: q, k, v, [mask], scale, softcap, output
            tensors = [f"&{a.ref}" for a in step.args[:-3]]
            lines += _try("sail_rt_attention", [
                "model", *tensors, *(["NULL"] if len(tensors) == 3 else []),
                *(a.arg for a in step.args[-3:-1]), f"&{step.args[-1].ref}"])
        elif step.kernel == TRANSPOSE_SYMBOL:  # args: x, perm, output
            lines += _try("sail_rt_transpose", [
                "model", f"&{step.args[0].ref}", f"(const int32_t[]){{{step.args[1].arg}}}",
                f"&{step.args[2].ref}"])
        else:
            lines += _statement("SAIL_CALL", [step.kernel, *(a.arg for a in step.args)])
        if id(step) in pairs:
            lines[body_start:] = ["  " + line for line in lines[body_start:]] + ["  }"]
        lines += [f"  sail_rt_release(model, &b->{b.name});" for b in releases.get(position, [])]
    lines += ["", "  /* Outputs: intermediates move to the caller; inputs and weights are "
              "copied. */"]
    for position, (buffer, spec) in enumerate(zip(graph.outputs, graph.signature.outputs,
                                                  strict=True)):
        # An intermediate returned twice is copied until its last position, where it moves.
        copy = buffer.kind == "temp" and any(o is buffer for o in graph.outputs[position + 1:])
        if copy:
            lines.append(f"  {buffer.ref}.owned = 0;")
        if position in cached_outputs:  # in the cache; the output stays empty
            lines.append("  if (!cache)")
            lines += ["  " + line for line in _try("sail_rt_set_output", [
                "model", f"&outputs[{position}]", f"&{buffer.ref}", _C_DTYPES[spec.dtype]],
                width=_LINE - 2)]
        else:
            lines += _try("sail_rt_set_output", ["model", f"&outputs[{position}]",
                                                 f"&{buffer.ref}", _C_DTYPES[spec.dtype]])
        if copy:
            lines.append(f"  {buffer.ref}.owned = 1;")
    return [*lines, "  status = 0;", "", "fail:", "  if (status != 0)",
            f"    sail_rt_release_outputs(outputs, {n_out});",
            "  sail_rt_release_all(model, (sail_buffer *)b, sizeof *b / sizeof(sail_buffer));",
            "  free(b);", "  return status;", "}", "",
            "int sail_model_run(sail_model *model, const sail_tensor *inputs, "
            "sail_tensor *outputs) {", "  return model_run(model, inputs, outputs, NULL);", "}", "",
            "int sail_model_has_kv_cache(void) { return NUM_CACHE > 0; }", "",
            "sail_kv_cache *sail_model_cache_create(sail_model *model, int64_t batch, "
            "int64_t capacity) {",
            "  return sail_rt_cache_create(model, CACHE, NUM_CACHE, CACHE_UNSUPPORTED, batch, "
            "capacity, 0);", "}", "",
            "sail_kv_cache *sail_model_cache_create_typed(sail_model *model, int64_t batch, "
            "int64_t capacity,",
            "                                             sail_dtype storage) {",
            "  return sail_rt_cache_create(model, CACHE, NUM_CACHE, CACHE_UNSUPPORTED, batch, "
            "capacity, storage);", "}", "",
            "int sail_model_run_cached(sail_model *model, const sail_tensor *inputs, "
            "sail_tensor *outputs,", "                          sail_kv_cache *cache) {",
            "  if (model && !cache)",
            '    return sail_rt_fail(model, "no KV cache (make one with '
            'sail_model_cache_create)");',
            "  return model_run(model, inputs, outputs, cache);", "}"]


def _describe(spec: TensorSpec) -> str:
    bound = f", values in [0, {spec.index_bound})" if spec.index_bound else ""
    return f"{spec.name}: {spec.dtype}[{', '.join(str(d) for d in spec.dims)}]{bound}"


def _model_h(graph: _Graph, title: str) -> str:
    signature = graph.signature
    lines = [f"/* model.h: {title}.", " *", " * Inputs:"]
    lines += [f" *   {i}  {_describe(s)}" for i, s in enumerate(signature.inputs)]
    lines += [" * Outputs:"]
    lines += [f" *   {i}  {_describe(s)}" for i, s in enumerate(signature.outputs)]
    if signature.symbolic_dims():
        lines += [f" * Symbolic dims, taken from the inputs at every run: "
                  f"{', '.join(signature.symbolic_dims())}."]
    lines += [" * The functions are declared in sail_model_api.h. */", "#ifndef SAIL_MODEL_H",
              "#define SAIL_MODEL_H", "", '#include "sail_model_api.h"', "",
              f"#define SAIL_MODEL_NUM_INPUTS {len(graph.inputs)}",
              f"#define SAIL_MODEL_NUM_OUTPUTS {len(graph.outputs)}", "",
              "#endif /* SAIL_MODEL_H */", ""]
    return "\n".join(lines)


def emit_model(mod: tvm.IRModule, signature: ModelSignature, title: str,
               weights: WeightFileWriter | None = None) -> EmittedModel:
    """Emit ``model.c`` and ``model.h`` for the lowered ``mod`` (see the module docstring).

    Parameters
    ----------
    mod
        The module after the ``c`` target's ``lower`` stage; everything the C comes from,
        the weights' names included, is read from it.
    signature
        The ONNX model's inputs and outputs (``main``'s parameters are the inputs, in order).
    title
        What was compiled, for the header comments (one line, no trailing period).
    weights
        Where to write each tensor of ``weights.bin`` as soon as it is made (the re-laid-out
        LUT-GEMV weights of a 7B model are 4 GB); None keeps them in the result.

    Raises
    ------
    SailError
        ``main`` holds bindings the emitter does not support (all of them listed), or a shape
        that cannot be computed from the inputs.
    """
    graph = _Graph(mod, signature, weights)
    graph.read()
    lines = [f"/* model.c: {title}.", " *",
             " * The model as kernel calls over named buffers. The kernels are in kernels.c "
             "(TVM's C code", " * generator), the LUT-GEMVs in the runtime (sail_lut.h, "
             "sail_rt_lut_gemv); each call is", " * commented with its results and, for SAIL "
             "operators, the ONNX layer. Memory: each intermediate buffer is "
             "allocated right before the call that writes", " * it and freed after its last "
             "reader; the weights are views into weights.bin. */",
             "#include <stdint.h>", "#include <stdlib.h>", "", '#include "model.h"',
             '#include "sail_model_rt.h"', ""]
    lines += [f"SAIL_KERNEL({name});" for name in sorted(graph.kernels)]
    lines += ["", *_tables(graph), "",
              "sail_model *sail_model_load(const char *weights_path, char **err) {",
              "  return sail_rt_load(weights_path, WEIGHTS, NUM_WEIGHTS, LUTS, NUM_LUTS, err);",
              "}", "",
              "void sail_model_free(sail_model *model) { sail_rt_free(model); }", "",
              *_run_function(graph), ""]
    calls = [step for step in graph.steps if isinstance(step, _Call)]
    return EmittedModel("\n".join(lines), _model_h(graph, title), graph.kernels,
                        [(w.name, w.array) for w in graph.weights], len(calls),
                        sum(step.lut is not None for step in calls),
                        [lut.layer for lut in graph.luts])
