"""``kernels.c``: TVM's C code generator applied to the lowered PrimFuncs of a model.

Every PrimFunc ``main`` calls becomes one C function,
``int32_t __tvm_ffi_<name>(void *self, void *args, int32_t num_args, void *result)`` (TVM's
packed calling convention: ``args`` is an array of ``TVMFFIAny``; see
``runtime/sail_tvm_shim.h``). This module holds everything specific to apache-tvm 0.27's C
backend, so that a TVM upgrade touches one file:

* The TIR pipeline is TVM's default one with ``tirx.disable_vectorize``: the C code generator
  cannot print vector types ("Cannot convert type float32x32 to C type"), so vectorized loops
  become scalar loops (the C compiler vectorizes them again). ``parallel`` loops come out as
  serial loops.
* TVM's C printer emits the helper variables of an expression (``int64_t rmod = ...;`` for a
  ``floordiv`` whose divisor sign it cannot prove, ``int64_t v_ = ...;`` for ``min``/``max``)
  in the middle of a ``TVMBackendAllocWorkspace(...)`` call when that expression is the size of
  a workspace buffer, which is not C. :func:`_hoist_workspace_sizes` binds such sizes to a
  variable first (``uint64_t <buffer>_nbytes = ...;``), where the printer handles them.
* TVM has no C lowering for a few math intrinsics (``tirx.fabs``, ``exp2``, ``exp10``,
  ``fmod``: "Unresolved call" at code generation); :func:`_register_c_intrinsics` maps them to
  the C library (``fabsf``, ``exp2f``, ``powf(10, x)``, ``fmodf``) for the ``c`` target only.
* The generated file includes four TVM headers; they are replaced by ``sail_tvm_shim.h``
  (:data:`TVM_INCLUDES`). An include not in that list is an error: a new TVM needs the shim
  checked.
* **Threads.** TVM's C printer writes a ``parallel`` loop as a serial one. A kernel whose whole
  body (under its root block) is one ``parallel`` loop, the shape the default CPU schedules give
  elementwise, norm and softmax kernels (:func:`splittable`), is rewritten after TVM's
  lowering to run the share ``[sail_par_begin(n), sail_par_end(n))`` of that loop's ``n``
  iterations. The runtime (``sail_rt_call``) runs such a kernel on the LUT-GEMV thread pool,
  one share per part, when its output is large enough to pay for the wake-up
  (``SAIL_PAR_MIN_ELEMENTS``); called directly, the share is the whole loop. ``kernels.c``
  ends with one ``const int8_t sail_parallel_<name>`` per kernel saying which ones were
  rewritten (``SAIL_KERNEL`` / ``SAIL_CALL`` in ``sail_model_rt.h``). Iterations of a
  ``parallel`` loop are independent by the schedule's construction, and each part allocates
  its own workspace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tvm
from tvm import s_tir, tirx
from tvm.tirx.build import codegen_build

#: The lines of TVM's generated C that pull in TVM's headers; ``sail_tvm_shim.h`` replaces them.
TVM_INCLUDES = (
    "#define TVM_EXPORTS",
    '#include "tvm/ffi/extra/c_env_api.h"',
    '#include "tvm/runtime/base.h"',
    '#include "tvm/runtime/c_backend_api.h"',
    '#include "tvm/ffi/c_api.h"',
)
#: Standard headers the generated C may include (kept as they are).
SYSTEM_INCLUDES = ("#include <math.h>", "#include <stdbool.h>")
SHIM_HEADER = "sail_tvm_shim.h"
#: The runtime functions that give a thread its share of a split parallel loop (sail_tvm_shim.h).
PAR_BEGIN, PAR_END = "sail_par_begin", "sail_par_end"
#: The flag kernels.c defines for every kernel: 1 if it was split (run on the thread pool).
PARALLEL_FLAG = "sail_parallel_"

_ALLOC_WORKSPACE = "tirx.TVMBackendAllocWorkspace"
#: Math intrinsics TVM 0.27 cannot print as C -> the C library function (float64 name).
_C_MATH = {"tirx.fabs": "fabs", "tirx.exp2": "exp2", "tirx.fmod": "fmod"}


def _c_math_rule(call: tvm.ir.Call) -> tvm.ir.Expr:
    dtype = str(call.ty.dtype)
    suffix = {"float32": "f", "float64": ""}.get(dtype)
    if suffix is None:
        return call  # float16 and others: left to TVM (and reported by it)
    if call.op.name == "tirx.exp10":
        return tirx.call_pure_extern(dtype, f"pow{suffix}", tirx.const(10.0, dtype), *call.args)
    return tirx.call_pure_extern(dtype, _C_MATH[call.op.name] + suffix, *call.args)


@functools.cache
def _register_c_intrinsics() -> None:
    """Give the intrinsics of :data:`_C_MATH` (and ``exp10``) a lowering for target ``c``."""
    for name in [*_C_MATH, "tirx.exp10"]:
        tirx.register_intrin_lowering(name, target="c", f=_c_math_rule, level=99)


def _trivial(expr: tvm.ir.Expr) -> bool:
    return isinstance(expr, (tirx.Var, tirx.IntImm, tirx.FloatImm, tvm.ir.StringImm))


def _hoisted_decl(decl: tirx.DeclBuffer) -> list[tirx.Stmt]:
    """``decl`` of a workspace buffer whose size is an expression -> bind the size, then decl."""
    call = decl.data
    if not (isinstance(call, tvm.ir.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == _ALLOC_WORKSPACE and not all(_trivial(a) for a in call.args)):
        return [decl]
    bindings, args = [], []
    for arg in call.args:
        if _trivial(arg):
            args.append(arg)
            continue
        size = tirx.Var(f"{decl.buffer.name}_nbytes", arg.ty.dtype)
        bindings.append(tirx.Bind(size, arg))
        args.append(size)
    data = tvm.ir.Call(call.op, args, call.attrs, call.ty_args, call.span, ret_ty=call.ty)
    return [*bindings, tirx.DeclBuffer(decl.buffer, decl.span, data=data)]


def _rebuild(stmt: tirx.Stmt,
             replace: Callable[[tirx.Stmt], list[tirx.Stmt] | None]) -> tirx.Stmt:
    """Rebuild ``stmt`` with every statement for which ``replace`` gives a list put in as those
    statements (spliced into the enclosing sequence); statements for which it gives ``None``
    are rebuilt around their rebuilt bodies (sequences, loops, conditions, attributes)."""

    def parts(node: tirx.Stmt) -> list[tirx.Stmt]:
        new = replace(node)
        return [inner(node)] if new is None else new

    def one(node: tirx.Stmt) -> tirx.Stmt:
        nodes = parts(node)
        return nodes[0] if len(nodes) == 1 else tirx.SeqStmt(nodes)

    def inner(node: tirx.Stmt) -> tirx.Stmt:
        if isinstance(node, tirx.SeqStmt):
            return tirx.SeqStmt([new for child in node.seq for new in parts(child)])
        if isinstance(node, tirx.For):
            return tirx.For(node.loop_var, node.min, node.extent, node.kind, one(node.body),
                            node.thread_binding, node.annotations, node.step, node.span)
        if isinstance(node, tirx.IfThenElse):
            otherwise = None if node.else_case is None else one(node.else_case)
            return tirx.IfThenElse(node.condition, one(node.then_case), otherwise, node.span)
        if isinstance(node, tirx.AttrStmt):
            return tirx.AttrStmt(node.node, node.attr_key, node.value, one(node.body),
                                 node.span)
        if isinstance(node, tirx.While):
            return tirx.While(node.condition, one(node.body), node.span)
        return node

    return one(stmt)


def _hoist_workspace_sizes(stmt: tirx.Stmt) -> tirx.Stmt:
    """Rebuild ``stmt`` with every workspace size bound to a variable (module docstring)."""
    return _rebuild(stmt, lambda node: _hoisted_decl(node) if isinstance(node, tirx.DeclBuffer)
                    and node.data is not None else None)


def _rewrite_includes(source: str) -> str:
    """Replace TVM's includes by the shim; fail on any include this module does not know."""
    lines, shim_at = [], None
    for line in source.splitlines():
        if line in TVM_INCLUDES:
            if shim_at is None:
                shim_at = len(lines)
                lines.append(f'#include "{SHIM_HEADER}"')
            continue
        if line.startswith("#include") and line not in SYSTEM_INCLUDES:
            raise RuntimeError(f"TVM's C code includes {line[len('#include'):].strip()}, which "
                               f"{SHIM_HEADER} does not replace; extend the shim for this TVM")
        lines.append(line)
    if shim_at is None:
        raise RuntimeError("TVM's C code no longer includes its runtime headers as expected; "
                           "check TVM_INCLUDES for this TVM")
    return "\n".join(lines) + "\n"


def splittable(func: tirx.PrimFunc) -> bool:
    """Whether ``func``'s root block is one ``parallel`` loop from 0 and nothing else.

    Only then may each part of a pool job run the kernel with a share of that loop: nothing
    outside the loop runs in every part.
    """
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        return False
    loop = realize.block.body
    return (isinstance(loop, tirx.For) and loop.kind == tirx.ForKind.PARALLEL
            and isinstance(loop.min, tirx.IntImm) and int(loop.min.value) == 0
            and (loop.step is None or (isinstance(loop.step, tirx.IntImm)
                                       and int(loop.step.value) == 1)))


def _share(loop: tirx.For) -> list[tirx.Stmt]:
    """``for i in parallel(n)`` -> ``b = sail_par_begin(n); e = sail_par_end(n); for i in [b, e)``.

    Done on the lowered function, after TVM simplified the body's index arithmetic knowing
    ``0 <= i < n``, which stays true of the share (on the block-level function the unknown
    start made TVM write every index as a sign-checked floor division, 20x slower).
    """
    dtype = str(loop.loop_var.ty)
    extent = loop.extent if str(loop.extent.ty) == dtype else tirx.Cast(dtype, loop.extent)
    begin = tirx.Var(f"{loop.loop_var.name}_begin", dtype)
    end = tirx.Var(f"{loop.loop_var.name}_end", dtype)
    return [tirx.Bind(begin, tirx.call_extern(dtype, PAR_BEGIN, extent)),
            tirx.Bind(end, tirx.call_extern(dtype, PAR_END, extent)),
            tirx.For(loop.loop_var, begin, end - begin, tirx.ForKind.SERIAL, loop.body,
                     loop.thread_binding, loop.annotations, None, loop.span)]


def _share_parallel_loops(stmt: tirx.Stmt) -> tuple[tirx.Stmt, int]:
    """Rebuild ``stmt`` with every ``parallel`` loop outside any other loop cut to this call's
    share (:func:`_share`); returns the statement and how many loops were cut."""
    cut = 0

    def replace(node: tirx.Stmt) -> list[tirx.Stmt] | None:
        nonlocal cut
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL:
            cut += 1
            return _share(node)
        if isinstance(node, (tirx.For, tirx.While)):
            return [node]  # loops inside other loops stay as they are
        return None

    return _rebuild(stmt, replace), cut


def kernels_source(funcs: dict[str, tirx.PrimFunc]) -> str:
    """C source of the PrimFuncs, each exported as ``__tvm_ffi_<name>``.

    Parameters
    ----------
    funcs
        Kernel name (a C identifier) -> scheduled PrimFunc.

    Returns
    -------
    str
        The text of ``kernels.c``, including ``sail_tvm_shim.h`` instead of TVM's headers.
    """
    _register_c_intrinsics()
    target = tvm.target.Target({"kind": "c"})
    split = {name for name, func in funcs.items() if splittable(func)}
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)
                        for name, func in funcs.items()})
    current = tvm.transform.PassContext.current()
    config = {**dict(current.config), "tirx.disable_vectorize": True}
    # No instruments: IR dumps of the compile must not see TVM's TIR lowering of every kernel.
    with tvm.transform.PassContext(opt_level=current.opt_level, config=config):
        mod = tirx.transform.BindTarget(target.with_host(target))(mod)
        pipeline, finalize_host, _ = tirx.get_tir_pipeline("default")
        mod = finalize_host()(pipeline(mod))
        funcs_out = {}
        for gvar, func in mod.functions_items():
            body = _hoist_workspace_sizes(func.body)
            if gvar.name_hint in split:
                shared, cut = _share_parallel_loops(body)
                if cut == 1:
                    body = shared
                else:  # not the one loop the check saw: run it whole
                    split.discard(gvar.name_hint)
            funcs_out[gvar] = func.with_body(body)
        mod = tvm.IRModule(funcs_out, attrs=mod.attrs)
        source = codegen_build(mod, target).inspect_source()
    flags = "".join(f"const int8_t {PARALLEL_FLAG}{name} = {int(name in split)};\n"
                    for name in funcs)
    return (_rewrite_includes(source)
            + "\n/* 1: runs a share of its parallel loop per call (sail_rt_call) */\n" + flags)
