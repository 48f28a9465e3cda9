"""LUT-GEMV speed: ``sail.lut_gemv`` against the two-kernel ``sail.quant_matmul`` and NumPy fp32.

All arms run in this process on the same activations ``x[T, K]`` and weights ``W[K, N]``
(``y = x @ W``), one thread each by default; read the ratios (these machines are shared, absolute
times drift). Every arm's output is checked against
:func:`~sail_compiler.quant.reference.quantized_matmul` (NumPy: against ``x @ W``) before it is
timed.

Arms, each compiled once with a symbolic batch dim ``t`` and timed as the median of repeated
calls:

* ``quant``: ``sail.quantize`` (activation quantization) alone, through the llvm pipeline;
* ``lut``: the scheduled LUT-GEMV kernel alone (``lut_gemv_te`` + ``schedule_lut_gemv``,
  fused float output), on activations quantized beforehand;
* ``sail``: ``sail.quantize`` + ``sail.lut_gemv(output="float")`` in one Relax VM call, built
  with ``lowering_passes`` (plus the LUT-GEMV rule in ``ScheduleLLVM``) and ``build_pipeline``:
  what a compiled model runs per layer;
* ``2-kernel``: ``sail.quant_matmul`` (quantize + integer sums, then dequantization) through the
  same pipeline: today's llvm path;
* ``numpy``: fp32 ``x @ W``.

Weights are arguments, not constants, so every arm cycles through ``--layers`` weight sets: with
several layers the weights do not sit in the last-level cache between calls (DESIGN.md
section 6; 4-bit 4096x4096 weights are 8 MiB, fp32 ones 64 MiB).

The VM arms are built exactly as the llvm target builds a model, whose ``build_pipeline`` marks
the VM's shape functions ``tirx.noalias`` (``MarkShapeFuncsNoalias``: without it TVM 0.27 drops
the alias information of every kernel in the module and the LUT-GEMV kernel ran 2x slower).
``--threads`` sets ``TVM_NUM_THREADS`` and, by restarting the script, NumPy's
``OPENBLAS_NUM_THREADS``.

    python benchmarks/lut_gemv.py [--shapes 4096x4096,4096x11008] [--bits 2,4,8] [--batch 1,8]
                                  [--nbw 4] [--group-size 128] [--act-bits 8] [--layers 4]
                                  [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx

from sail_compiler.lowering import (
    build_pipeline,
    host_target,
    lowering_passes,
)
from sail_compiler.ops.lut_kernel import lut_gemv_te, schedule_lut_gemv
from sail_compiler.ops.quant_matmul import quant_matmul
from sail_compiler.ops.sail_ops import act_dtype, lut_gemv, quantize
from sail_compiler.quant.reference import (
    QuantizedWeight,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme

#: Largest relative L2 error accepted before timing (DESIGN.md section 3 allows 1e-5).
_MAX_REL_ERROR = 1e-5


def _i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


@dataclass
class _Config:
    k: int
    n: int
    bits: int
    group_size: int
    act_bits: int
    nbw: int

    def attrs(self) -> dict[str, int]:
        return {"bits": self.bits, "group_size": self.group_size, "k": self.k,
                "act_bits": self.act_bits}


def _median_ms(fn: Callable[[int], object], repeats: int, budget_s: float = 2.0) -> float:
    """Median time of ``fn(i)`` in ms; ``i`` counts calls (to cycle weight sets).

    Slow arms stop early after ``budget_s`` seconds (at least 3 timed calls).
    """
    fn(0)
    times: list[float] = []
    spent = 0.0
    for i in range(1, repeats + 1):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
        spent += times[-1]
        if spent > budget_s and len(times) >= 3:
            break
    return float(np.median(times)) * 1e3


def _lowered(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VirtualMachine:
    """Build ``mod`` as the llvm target does (``lowering_passes`` + ``build_pipeline``) and check
    that ScheduleLLVM's LUT-GEMV rule scheduled every LUT-GEMV kernel."""
    passes = lowering_passes(target)
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    report = next(p.report for p in passes if p.info.name == "ScheduleLLVM")
    lut_funcs = [name for name in report if "lut" in name]
    if any(report[name] != "lut_gemv" for name in lut_funcs):
        raise RuntimeError(f"a LUT-GEMV kernel was not scheduled by its rule: {report}")
    ex = relax.build(mod, target=target, relax_pipeline=build_pipeline(target))
    return relax.VirtualMachine(ex, tvm.cpu())


def _weight_vars(cfg: _Config, qw: QuantizedWeight) -> list[relax.Var]:
    return [relax.Var("packed", relax.TensorType(list(qw.packed().shape), "uint8")),
            relax.Var("scale", relax.TensorType([qw.n_groups, cfg.n], "float32")),
            relax.Var("zero", relax.TensorType([qw.n_groups, cfg.n], "int32"))]


def _module(cfg: _Config, qw: QuantizedWeight, arm: str) -> tvm.IRModule:
    """``main(x[t, K], packed, scale, zero)`` for the ``sail``, ``2-kernel`` or ``quant`` arm."""
    x = relax.Var("x", relax.TensorType([tirx.Var("t", "int64"), cfg.k], "float32"))
    weights = _weight_vars(cfg, qw) if arm != "quant" else []
    bb = relax.BlockBuilder()
    with bb.function("main", [x, *weights]):
        with bb.dataflow():
            if arm == "2-kernel":
                y = bb.emit(quant_matmul(x, *weights, **cfg.attrs()))
            else:
                q = bb.emit(quantize(x, act_bits=cfg.act_bits, placement="host"))
                if arm == "quant":
                    y = q
                else:
                    xq, sx = bb.emit(q[0]), bb.emit(q[1])
                    packed, scale, zero = weights
                    y = bb.emit(lut_gemv(xq, packed, zero, nbw=cfg.nbw, placement="host",
                                         sx=sx, scale=scale, **cfg.attrs()))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _lut_kernel(cfg: _Config, qw: QuantizedWeight,
                target: tvm.target.Target) -> tvm.runtime.Module:
    """The scheduled LUT-GEMV kernel alone: ``(xq, packed, zero, sx, scale) -> y``."""
    t = tirx.Var("t", "int64")
    xq = te.placeholder([t, _i64(cfg.k)], act_dtype(cfg.act_bits), "xq")
    packed = te.placeholder([_i64(d) for d in qw.packed().shape], "uint8", "packed")
    zero = te.placeholder([_i64(qw.n_groups), _i64(cfg.n)], "int32", "zero")
    sx = te.placeholder([t], "float32", "sx")
    scale = te.placeholder([_i64(qw.n_groups), _i64(cfg.n)], "float32", "scale")
    y = lut_gemv_te(xq, packed, zero, nbw=cfg.nbw, sx=sx, scale=scale, **cfg.attrs())
    func = te.create_prim_func([xq, packed, zero, sx, scale, y])
    return tvm.tirx.build(schedule_lut_gemv(func, target).mod["main"], target=target)


def _check(arm: str, got: np.ndarray, want: np.ndarray) -> str:
    """Relative L2 error of ``got`` (raises beyond the contract); '=' marks bit-identical."""
    err = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))
    if not err <= _MAX_REL_ERROR:
        raise RuntimeError(f"{arm}: relative L2 error {err:.2e} against the reference")
    return "=" if np.array_equal(got, want) else f"{err:.0e}"


def _runs(x: np.ndarray, cfg: _Config, vms: dict[str, relax.VirtualMachine],
          kernel: tvm.runtime.Module, args: list[list[tvm.runtime.Tensor]],
          floats: list[np.ndarray]) -> dict[str, Callable[[int], object]]:
    """One call of each arm on ``x`` with weight set ``i % layers``, by arm name."""
    dev, layers = tvm.cpu(), len(args)
    x_tvm = tvm.runtime.tensor(x, dev)
    xq, sx = quantize_activations(x, cfg.act_bits)
    xq_tvm = tvm.runtime.tensor(xq.astype(act_dtype(cfg.act_bits)), dev)
    sx_tvm = tvm.runtime.tensor(sx, dev)
    y_tvm = tvm.runtime.empty((x.shape[0], cfg.n), "float32", dev)

    def run_lut(i: int) -> tvm.runtime.Tensor:
        packed, scale, zero = args[i % layers]
        kernel(xq_tvm, packed, zero, sx_tvm, scale, y_tvm)
        return y_tvm

    return {
        "quant": lambda i: vms["quant"](x_tvm),
        "lut": run_lut,
        "sail": lambda i: vms["sail"](x_tvm, *args[i % layers]),
        "2-kernel": lambda i: vms["2-kernel"](x_tvm, *args[i % layers]),
        "numpy": lambda i: x @ floats[i % layers],
    }


def _bench(cfg: _Config, batches: list[int], layers: int, repeats: int,
           target: tvm.target.Target, rng: np.random.Generator) -> None:
    scheme = QuantScheme(cfg.bits, cfg.group_size)
    floats = [rng.standard_normal((cfg.k, cfg.n), dtype=np.float32) for _ in range(layers)]
    qws = [quantize_weights_rtn(w, scheme) for w in floats]
    dev = tvm.cpu()
    args = [[tvm.runtime.tensor(a, dev) for a in (qw.packed(), qw.scale, qw.zero_points())]
            for qw in qws]  # (packed, scale, zero) per layer
    vms = {arm: _lowered(_module(cfg, qws[0], arm), target)["main"]
           for arm in ("quant", "sail", "2-kernel")}
    kernel = _lut_kernel(cfg, qws[0], target)
    for batch in batches:
        x = rng.standard_normal((batch, cfg.k), dtype=np.float32)
        runs = _runs(x, cfg, vms, kernel, args, floats)
        want = quantized_matmul(x, qws[0], cfg.act_bits)
        marks = {arm: _check(arm, runs[arm](0).numpy(), want)
                 for arm in ("lut", "sail", "2-kernel")}
        _check("numpy", x @ floats[0],
                np.asarray(x, np.float64) @ floats[0].astype(np.float64))
        ms = {arm: _median_ms(run, repeats) for arm, run in runs.items()}
        label = f"{cfg.k}x{cfg.n} w{cfg.bits} T={batch}"
        print(f"{label:<22} " + " ".join(f"{ms[a]:>9.2f}" for a in runs)
              + f" {ms['sail'] / ms['numpy']:>10.2f}x {ms['2-kernel'] / ms['sail']:>13.2f}x"
              + f"   {' '.join(marks[a] for a in ('lut', 'sail', '2-kernel'))}", flush=True)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008", help="KxN,KxN,...")
    parser.add_argument("--bits", type=_ints, default=[2, 4, 8])
    parser.add_argument("--batch", type=_ints, default=[1, 8])
    parser.add_argument("--nbw", type=int, default=4, help="weights per table (1..8)")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--act-bits", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4, help="weight sets cycled through")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    threads = str(args.threads)
    if os.environ.get("OPENBLAS_NUM_THREADS") != threads:
        # NumPy's BLAS reads its thread count when it loads: start again with it set.
        os.environ["OPENBLAS_NUM_THREADS"] = threads
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.environ["TVM_NUM_THREADS"] = threads  # read when TVM's runtime starts its thread pool

    target = host_target(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), NBW {args.nbw}, g {args.group_size}, "
          f"{args.act_bits}-bit activations, {args.layers} weight set(s) cycled; ms (median)")
    arms = ("quant", "lut", "sail", "2-kernel", "numpy")
    print(f"{'shape':<22} " + " ".join(f"{a:>9}" for a in arms)
          + f" {'sail/numpy':>11} {'2-kernel/sail':>14}   error lut/sail/2-kernel")
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        for bits in args.bits:
            cfg = _Config(k, n, bits, args.group_size, args.act_bits, args.nbw)
            _bench(cfg, args.batch, args.layers, args.repeats, target, rng)


if __name__ == "__main__":
    main()
