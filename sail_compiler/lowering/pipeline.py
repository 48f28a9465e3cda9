"""The CPU lowering of every target: Relax of high-level operators -> fused, scheduled TIR.

Without any autotuning, :func:`lowering_passes` runs:

1. ``FoldConstant`` at the Relax level, so that e.g. ``Gemm(transB=1)`` weights become plain
   ``[K, N]`` constants;
2. :class:`~.pack_matmul_weights.PackMatmulWeights` (constant weights in column panels);
3. the usual CPU legalization and fusion (``LegalizeOps``, ``AnnotateTIROpPattern``,
   ``FoldConstant``, then ``FuseOps`` and ``FuseTIR`` inside
   :class:`~.fuse_ops_and_tir.FuseOpsAndTIR`, which keeps the module unfused where TVM's
   ``FuseTIR`` fails);
4. :class:`~.schedule_llvm.ScheduleLLVM` (the default schedule rules).

:func:`build_pipeline` is the ``relax_pipeline`` for ``relax.build`` afterwards: CPU dataflow
lowering and finalization only, no second legalization, then :class:`MarkShapeFuncsNoalias`.
:func:`host_target` is the ``llvm`` target of this machine all three targets lower for.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tvm
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.target import codegen

from .checked_take import legalize_checked_take
from .fuse_ops_and_tir import FuseOpsAndTIR
from .pack_matmul_weights import PANEL, PackMatmulWeights
from .schedule_llvm import ScheduleLLVM

__all__ = ["MarkShapeFuncsNoalias", "build_pipeline", "host_target", "lowering_passes"]


def host_target(num_threads: int | None = None) -> tvm.target.Target:
    """llvm target for this host (mcpu detected, e.g. znver3; num-cores).

    Parameters
    ----------
    num_threads : int, optional
        Value of the ``num-cores`` attribute. Defaults to the number of CPUs of the host.

    Returns
    -------
    tvm.target.Target
        An ``llvm`` target built from a dict (TVM 0.27 rejects target strings).
    """
    config: dict[str, object] = {"kind": "llvm"}
    cpu = str(codegen.llvm_get_system_cpu())
    if cpu and cpu != "generic":
        config["mcpu"] = cpu
    config["num-cores"] = int(num_threads) if num_threads else max(1, os.cpu_count() or 1)
    return tvm.target.Target(config)


def _under_target(inner: tvm.transform.Pass, target: tvm.target.Target) -> tvm.transform.Pass:
    """Run ``inner`` with ``target`` as the current target, keeping its pass name."""

    @tvm.transform.module_pass(opt_level=0, name=inner.info.name)
    def run(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            return inner(mod)

    return run


def lowering_passes(target: tvm.target.Target,
                    legalize_map: dict[str, Callable] | None = None,
                    check_indices: bool = True) -> list[tvm.transform.Pass]:
    """Passes that take a Relax IRModule of high-level ops (relax.op.matmul etc., possibly already
    containing R.call_tir to user TIR) to legalized, fused, SCHEDULED TIR ready for relax.build.

    Parameters
    ----------
    target : tvm.target.Target
        The ``llvm`` target (see :func:`host_target`).
    legalize_map : dict, optional
        Operator name -> legalization replacing the registered ``FLegalize`` (the ``c`` target
        legalizes ``sail.lut_gemv`` without LLVM intrinsics).
    check_indices : bool
        Legalize ``relax.take`` with a kernel that checks its indices first
        (:func:`~.checked_take.legalize_checked_take`; a ``legalize_map`` entry for
        ``relax.take`` wins). The c target's runtime checks them itself.

    Returns
    -------
    list of tvm.transform.Pass
        Ordinary passes, to run in order; each can be dumped by its name.
    """
    legalizations = {"relax.take": legalize_checked_take} if check_indices else {}
    legalizations.update(legalize_map or {})
    passes = [
        relax.transform.FoldConstant(),
        PackMatmulWeights(PANEL),
        *cpu_pipeline.library_dispatch_passes(target),
        relax.transform.LegalizeOps(legalizations or None),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        FuseOpsAndTIR(),
        relax.transform.DeadCodeElimination(),
        ScheduleLLVM(target),
    ]
    return [_under_target(p, target) for p in passes]


@tvm.transform.module_pass(opt_level=0, name="MarkShapeFuncsNoalias")
class MarkShapeFuncsNoalias:
    """Give the VM's shape functions the ``tirx.noalias`` attribute every kernel has.

    TVM 0.27's LLVM codegen drops the per-buffer alias information of every function of a module
    that holds one PrimFunc without ``tirx.noalias``, and the shape functions ``relax.build``
    adds for symbolic shapes (``tirx.is_host_func``) lack it: LLVM then assumes that all buffers
    alias, and the LUT-GEMV kernel ran 2x slower. A shape function has a single buffer, so the
    attribute is safe there.
    """

    def transform_module(  # noqa: D102
        self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
    ) -> tvm.ir.IRModule:
        updates = {gv: func.with_attr("tirx.noalias", True)
                   for gv, func in mod.functions_items()
                   if isinstance(func, tirx.PrimFunc) and func.attrs is not None
                   and "tirx.is_host_func" in func.attrs and "tirx.noalias" not in func.attrs}
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def build_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """The relax_pipeline to pass to relax.build after lowering_passes ran (dataflow lowering +
    finalization; must not re-run legalization).

    Parameters
    ----------
    target : tvm.target.Target
        The ``llvm`` target.

    Returns
    -------
    tvm.transform.Pass
        One module pass running CPU dataflow lowering and finalization under ``target``.
    """
    passes = cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target) \
        + [MarkShapeFuncsNoalias()]

    @tvm.transform.module_pass(opt_level=0, name="SailLLVMBuildPipeline")
    def pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
